"""``python -m benchmarks``: the main command (see benchmarks/README.md).

Runs the chosen suites on the chosen device, prints a table, and writes
``<out>/<device>-<date>.csv`` (one row per measurement, schema in
:mod:`benchmarks.report`), ``.txt`` (the table) and the PNG plots.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Dict, List, Optional

import torch

from . import providers as P
from . import sizes as S

__all__ = ["main", "build_parser"]

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
BLOCK_PS = (0.1, 0.2, 0.3, 0.5)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark sdkernels' fused drop path against eager PyTorch and torch.compile.",
        epilog="Names are comma lists, e.g. --sizes vit-b,small --dtypes fp32,bf16. "
               "--list prints every valid name.",
    )
    ap.add_argument("--suite", default=None,
                    help=f"suites among {', '.join(S.SUITES)} or 'all' (default: ops,e2e; blocks, models, train and host "
                         "are opt-in: models takes tens of minutes on a 2-core CPU, mostly compiling; host times "
                         "per-call host cost against eager; 'all' runs every suite; 'zoo' alone: convert's coverage "
                         "of timm, torchvision and transformers on the meta device)")
    ap.add_argument("--ops", default=None,
                    help=f"ops among {', '.join(S.OPS)} (default: drop_path_add; drop_path_add_ls (LayerScale) and the "
                         "add + norm ops have their own default sizes, and the add + norm ops their own p)")
    ap.add_argument("--modes", default=None,
                    help=f"modes among {', '.join(S.MODES)} (default: fwd,bwd,fwd+bwd; plus fwd-nograd on host-bound sizes)")
    ap.add_argument("--sizes", default=None, help=f"sizes among {', '.join(S.SIZES)}")
    ap.add_argument("--dtypes", default=None, help=f"dtypes among {', '.join(S.DTYPES)}")
    ap.add_argument("--providers", default=None, help="providers of the op suite (default: all but sdk-auto; --list)")
    ap.add_argument("--ps", default=None,
                    help="drop probabilities (default: 0.1,0.5; add + norm ops: 0.1; blocks suite: 0.1,0.2,0.3,0.5)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="auto: cuda when a GPU is visible, else cpu")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed samples per measurement, median reported (default: CPU 7 blocks of >=20 ms; "
                         "GPU 50 event-timed calls, or 50 wall-clock blocks of >=5 ms for host-bound sizes; "
                         "e2e 5 steps)")
    ap.add_argument("--batch", type=int, default=None, help="batch of the e2e and blocks suites (default e2e: CPU 4, GPU 64)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: benchmarks/results)")
    ap.add_argument("--name", default=None, help="file stem (default: <device>-<date>, suffixed if taken)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke test: 2 small cases, p=0.5, 3 repeats, a ViT-Ti block for e2e")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds; measurements not started by then are recorded as skipped, and outputs still written")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    ap.add_argument("--no-graph-timer", action="store_true",
                    help="CUDA: skip the second timing of each op row as a captured CUDA graph "
                         "(gpu_ms: the kernels' time without host overhead)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--list", action="store_true", help="print the valid names and exit")
    return ap


def _parse_ps(text: Optional[str], ap) -> Optional[List[float]]:
    if text is None:
        return None
    out = []
    for t in text.split(","):
        t = t.strip()
        if not t:
            continue
        try:
            v = float(t)
        except ValueError:
            ap.error(f"--ps: {t!r} is not a number; give drop probabilities in [0, 1], e.g. --ps 0.1,0.5")
        if not 0.0 <= v <= 1.0:
            ap.error(f"--ps: {v} is outside [0, 1]")
        out.append(v)
    return out


def _list_names() -> str:
    lines = ["suites:    " + ", ".join(S.SUITES) + ", all",
             "ops:       " + ", ".join(S.OPS),
             "modes:     " + ", ".join(S.MODES),
             "dtypes:    " + ", ".join(S.DTYPES),
             "providers: " + ", ".join(P.all_providers()),
             "sizes:"]
    for s in S.SIZES.values():
        lines.append(f"  {s.name:<12} {s.shape_str:<14} sample_dim={s.sample_dim} {s.layout:<13} {s.about}")
    return "\n".join(lines)


class _Interrupted(BaseException):
    """SIGTERM (e.g. from `timeout`): a BaseException, so the per-measurement handlers let it through."""


def _on_term(signum, frame):
    raise _Interrupted(f"signal {signum}")


def _progress(total: int, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, disable=disable, desc="benchmarks", unit="meas", dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5)


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.list:
        print(_list_names())
        return 0
    try:
        suites = S.parse_names("suite", a.suite, S.SUITES + ("all", "zoo")) or ["ops", "e2e"]
        if "all" in suites:
            suites = list(S.SUITES)
        ops = S.parse_names("op", a.ops, S.OPS) or ["drop_path_add"]
        modes = S.parse_names("mode", a.modes, S.MODES) or None
        size_names = S.parse_names("size", a.sizes, list(S.SIZES))
        dtype_names = S.parse_names("dtype", a.dtypes, list(S.DTYPES))
        providers = S.parse_names("provider", a.providers, P.all_providers()) or list(P.default_providers())
    except ValueError as e:
        ap.error(str(e))
    if "zoo" in suites:  # convert's coverage of the model zoo: meta device, no timing (benchmarks/zoo.py)
        from . import zoo

        return zoo.main(out=a.out, quick=a.quick, name=a.name)
    ps = _parse_ps(a.ps, ap)
    if a.repeats is not None and a.repeats < 1:
        ap.error("--repeats must be >= 1")
    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible")

    from . import e2e, opsuite, report

    start = time.monotonic()
    deadline = start + a.time_limit if a.time_limit else None
    op_ps = ps or ([0.5] if a.quick else list(S.DEFAULT_PS))
    cases_by_op = {op: S.cases_from(device, size_names, dtype_names, quick=a.quick, op=op) for op in ops}
    cases = []
    for cs in cases_by_op.values():
        cases += [c for c in cs if c not in cases]
    repeats = a.repeats or (3 if a.quick else (50 if device == "cuda" else 7))
    env = report.environment(device)
    if device == "cpu":
        print(f"CPU: {torch.get_num_threads()} threads (torch.get_num_threads()); "
              f"{os.cpu_count()} logical cores visible", file=sys.stderr)

    ps_by_op = {op: (op_ps if (ps or a.quick or op not in S.NORM_OPS) else list(S.DEFAULT_NORM_PS)) for op in ops}
    plans = opsuite.plan_ops(ops, cases_by_op, providers, modes, ps_by_op) if "ops" in suites else []
    e2e_ps = op_ps
    e2e_batch = a.batch or e2e.default_batch(device, a.quick)
    e2e_repeats = a.repeats or (2 if a.quick else 5)
    n_e2e = len(e2e_ps) * len(e2e.E2E_PROVIDERS) if "e2e" in suites else 0
    n_mem = 0 if a.no_memory else (sum(1 for pl in plans if pl.mode == "fwd+bwd" and pl.provider not in P.BASELINES)
                                   + (n_e2e if device == "cuda" else 0))
    blocks_mod = None
    if "blocks" in suites:
        import importlib
        import importlib.util

        if importlib.util.find_spec(__package__ + ".blocks") is None:
            ap.error("--suite blocks: benchmarks/blocks.py (the skip-path block suite) is not there yet; "
                     f"valid suites now: {', '.join(s for s in S.SUITES if s != 'blocks')}")
        blocks_mod = importlib.import_module(__package__ + ".blocks")
        if not hasattr(blocks_mod, "run_block_suite"):
            ap.error("--suite blocks: benchmarks/blocks.py has no run_block_suite(device, dtype, batch, ps, repeats, progress)")

    rows: List[Dict] = []
    train_curves = None
    n_models = 0
    if "models" in suites:
        from . import models

        n_models = len(models.default_models(device)) * len(models.RATES) * len(models.PROVIDERS)
    n_train = 0
    if "train" in suites:
        from . import train

        n_train = len(train.SEEDS) * len(train.VARIANTS)
    n_host = 0
    if "host" in suites:
        from . import host

        n_host = len(host.CASES)
    bar = _progress(len(plans) + n_e2e + n_mem + n_models + n_train + n_host, a.no_progress)
    old = signal.signal(signal.SIGTERM, _on_term)
    interrupted = None
    phases: Dict[str, float] = {}
    t_phase = time.monotonic()

    def phase(name):
        nonlocal t_phase
        now = time.monotonic()
        phases[name] = now - t_phase
        t_phase = now

    try:
        if plans:
            gpu_timer = None
            if device == "cuda" and not a.no_graph_timer:
                from .timing import time_cuda_graph as gpu_timer
            opsuite.run_ops(plans, device, repeats, bar, deadline, rows, gpu_timer=gpu_timer)
            phase("ops")
        if "e2e" in suites:
            e2e.run_e2e(device, e2e_ps, e2e_batch, e2e_repeats, size="vit-ti-block" if a.quick else "vit-b-block",
                        progress=bar, deadline=deadline, rows=rows)
            phase("e2e")
        if blocks_mod is not None:
            bdtypes = [S.DTYPES[d][1] for d in dtype_names if d in ("fp32", "bf16", "fp16")] or \
                      [torch.bfloat16 if device == "cuda" else torch.float32]
            for dt in bdtypes:
                rows += blocks_mod.run_block_suite(device, dt, a.batch, ps or list(BLOCK_PS),
                                                   a.repeats, bar)
            phase("blocks")
        if "models" in suites:
            from . import models

            rows += models.run_models(device, batch=a.batch, repeats=a.repeats, progress=bar, deadline=deadline)
            phase("models")
        if "train" in suites:
            from . import train

            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # a tiny model: more threads only wait on each other
            try:
                train_rows, train_curves = train.run_train(progress=bar)
            finally:
                torch.set_num_threads(threads)
            rows += train_rows
            phase("train")
        if "host" in suites:
            from . import host

            rows += host.run_host(device, rounds=a.repeats or 7, progress=bar)
            phase("host")
        if not a.no_memory:
            # The minimum over tries: a transient (a late free) can only add.
            opsuite.measure_memory(rows, cases, device, bar, deadline, tries=3 if device == "cuda" else 2)
            if device == "cuda":
                e2e.measure_memory(rows, device, bar, deadline, tries=3)
            else:  # a few seconds of 2-core time per step: left out of the 3-minute default
                for r in rows:
                    if r["suite"] == "e2e":
                        r["mem_method"] = "n/a (not measured on CPU: time budget)"
            phase("memory")
    except (KeyboardInterrupt, _Interrupted) as e:
        interrupted = e
        for r in rows:
            if r.get("status") == "ok" and r.get("time_ms") is None:
                r.update(status="skipped", note=f"interrupted ({e})")
    finally:
        signal.signal(signal.SIGTERM, old)
        if bar is not None:
            bar.close()
    elapsed = time.monotonic() - start
    report.finish_rows(rows, env)
    os.makedirs(a.out, exist_ok=True)
    stem = report.output_stem(env, a.out, a.name)
    csv_path = report.write_csv(rows, stem + ".csv")
    table = report.format_table(rows, env)
    head = report.headline(rows)
    with open(stem + ".txt", "w") as f:
        f.write(table + "\n\nheadline:\n" + head + f"\n\nwall time {elapsed:.1f} s\n")
        if "host" in suites:
            from . import host

            f.write("\n" + host.format_rows(rows) + "\n")
    print(table)
    if "models" in suites:
        print("\n" + models.format_rows(rows))
    if "train" in suites:
        print("\n" + train.format_rows(rows))
    if "host" in suites:
        print("\n" + host.format_rows(rows))
    pngs = []
    if not a.no_plots:
        from . import plot

        try:
            pngs = plot.plot_rows(rows, stem)
            if train_curves:
                from . import train

                pngs.append(train.plot_curves(train_curves, stem + "-train.png"))
        except Exception as e:  # plots must not lose the data
            print(f"plots failed: {type(e).__name__}: {e}", file=sys.stderr)
    print("\nheadline:\n" + (head or "(none)"))
    print(f"\nwrote {csv_path}, {stem}.txt" + "".join(f", {p}" for p in pngs))
    phase("output")
    print(f"wall time {time.monotonic() - start:.1f} s on {env['device_name']} ("
          + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()) + ")")
    if interrupted is not None:
        print(f"INTERRUPTED ({interrupted}): partial results written", file=sys.stderr)
        return 130
    return 0
