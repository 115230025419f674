"""PNG plots drawn from a results CSV alone (so GPU results can be plotted anywhere).

``python -m benchmarks.plot results/cpu-2026-11-27.csv [--out DIR]`` writes, beside
the CSV (or in DIR):

- ``<stem>-speedup.png``: speed-up against eager timm-style code per size,
  one panel per (mode, p), one bar per provider;
- ``<stem>-bandwidth.png``: fraction of the copy bandwidth (measured in the
  same run) per size, same layout, the baselines included;
- ``<stem>-e2e.png``: speed-up of the end-to-end / block suites against p,
  when the CSV has such rows.

Each title names the device, torch version and date the CSV records.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Sequence

from .report import read_csv

__all__ = ["plot_rows", "plot_csv", "main"]

_MODE_ORDER = ("fwd", "fwd-nograd", "bwd", "fwd+bwd")
# One colour per provider in every plot (tab20 pairs: dark/light).
_COLORS = {
    "eager_timm": "#1f77b4", "eager_tv": "#aec7e8", "compile": "#2ca02c", "sdk-reference": "#d62728",
    "sdk-cpu": "#9467bd", "sdk-cuda": "#ff7f0e", "sdk-triton": "#8c564b", "sdk-auto": "#e377c2",
    "copy": "#7f7f7f", "clone": "#c7c7c7", "add": "#bcbd22", "scale": "#17becf",
}


def _color(provider: str):
    if provider in _COLORS:
        return _COLORS[provider]
    import matplotlib.pyplot as plt

    return plt.get_cmap("tab20")(hash(provider) % 20)


def _ok(r) -> bool:
    return r.get("status") == "ok" and r.get("time_ms") is not None


def _title(rows: Sequence[Dict], what: str) -> str:
    r = rows[0]
    thr = f", {r['threads']} threads" if r.get("threads") else ""
    load = f", load {r['loadavg']:g}" if r.get("loadavg") is not None else ""
    return (f"{what}\n{r.get('device_name')} ({r.get('device')}{thr}{load}), torch {r.get('torch')}, "
            f"triton {r.get('triton')}, {r.get('date')}; medians of one run")


def _panels(rows, value_key: str, providers: List[str], ylabel: str, title: str, path: str, ref_line: Optional[float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops_rows = [r for r in rows if r["suite"] == "ops" and _ok(r) and r.get(value_key) is not None]
    if not ops_rows:
        return None
    cases: List[str] = []
    for r in ops_rows:
        c = f"{r['size']}\n{r['shape']}\n{r['dtype']}"
        if r["op"] != "drop_path_add":
            c = f"{r['op']}\n" + c
        if c not in cases:
            cases.append(c)
    ps = sorted({r["p"] for r in ops_rows if r["p"] is not None})
    modes = [m for m in _MODE_ORDER if any(r["mode"] == m for r in ops_rows)]
    panels = [(m, p) for m in modes for p in ps]
    baseline_rows = [r for r in ops_rows if r["p"] is None]
    if baseline_rows and value_key == "frac_copy":
        panels.append(("baselines", None))
    if not panels:
        return None
    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(8, 1.9 * len(cases)) * ncols, 3.6 * nrows), squeeze=False)
    every = list(providers) + sorted({r["provider"] for r in baseline_rows} - set(providers))

    def case_of(r):
        rc = f"{r['size']}\n{r['shape']}\n{r['dtype']}"
        return rc if r["op"] == "drop_path_add" else f"{r['op']}\n" + rc

    for i, (m, p) in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        if m == "baselines":
            sel = baseline_rows
            provs = [q for q in every if any(r["provider"] == q for r in sel)]
            ax.set_title("baselines (no p)")
        else:
            sel = [r for r in ops_rows if r["mode"] == m and r["p"] == p]
            provs = [q for q in providers if any(r["provider"] == q for r in sel)]
            ax.set_title(f"{m}, p={p:g}")
        here = [c for c in cases if any(case_of(r) == c for r in sel)]
        width = 0.8 / max(1, len(provs))
        for j, prov in enumerate(provs):
            xs, ys = [], []
            for k, c in enumerate(here):
                for r in sel:
                    if r["provider"] == prov and case_of(r) == c:
                        xs.append(k - 0.4 + width * (j + 0.5))
                        ys.append(r[value_key])
                        break
            ax.bar(xs, ys, width, label=prov, color=_color(prov))
        if ref_line is not None:
            ax.axhline(ref_line, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(here)))
        ax.set_xticklabels(here, fontsize=7)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, ncol=2)
        ax.grid(axis="y", alpha=0.3)
    for i in range(len(panels), nrows * ncols):
        axes[i // ncols][i % ncols].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _e2e_plot(rows, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["suite"] in ("e2e", "blocks") and _ok(r) and r.get("speedup_vs_eager") is not None
           and r["p"] is not None]
    if not sel:
        return None
    groups: Dict[tuple, List[Dict]] = {}
    for r in sel:
        groups.setdefault((r["suite"], r["op"], r["dtype"], r["provider"]), []).append(r)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (suite, op, dtype, prov), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["p"])
        ax.plot([r["p"] for r in rs], [r["speedup_vs_eager"] for r in rs], marker="o",
                label=f"{suite}/{op} {dtype} {prov}")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("drop probability p")
    ax.set_ylabel("speed-up vs eager (time ratio)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(_title(sel, "training step: speed-up against eager drop path"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_rows(rows: Sequence[Dict], stem: str) -> List[str]:
    """Write the PNGs for ``rows`` as ``<stem>-*.png``; returns the paths written."""
    rows = list(rows)
    if not rows:
        return []
    provs: List[str] = []
    for r in rows:
        if r["suite"] == "ops" and r["provider"] not in provs:
            provs.append(r["provider"])
    out = []
    sp = [q for q in provs if q not in ("copy", "clone", "add", "scale")]
    p1 = _panels(rows, "speedup_vs_eager", sp, "speed-up vs eager_timm",
                 _title(rows, "drop path: speed-up against eager timm-style code (time ratio, higher is better)"),
                 stem + "-speedup.png", 1.0)
    p2 = _panels(rows, "frac_copy", provs, "fraction of copy GB/s",
                 _title(rows, "fraction of the copy bandwidth measured in the same run (bytes each provider moves)"),
                 stem + "-bandwidth.png", 1.0)
    p3 = _e2e_plot(rows, stem + "-e2e.png")
    return [p for p in (p1, p2, p3) if p]


def plot_csv(path: str, out_dir: Optional[str] = None) -> List[str]:
    """Plots of a results CSV, beside it or in ``out_dir``."""
    rows = read_csv(path)
    stem = os.path.splitext(path)[0]
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, os.path.basename(stem))
    return plot_rows(rows, stem)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.plot",
                                 description="Draw the benchmark PNGs from a results CSV.")
    ap.add_argument("csv", nargs="+", help="results CSV file(s) written by python -m benchmarks")
    ap.add_argument("--out", default=None, help="folder for the PNGs (default: beside each CSV)")
    a = ap.parse_args(argv)
    for path in a.csv:
        if not os.path.exists(path):
            ap.error(f"no such file: {path}")
        for p in plot_csv(path, a.out):
            print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
