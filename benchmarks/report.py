"""Result rows: their schema, the CSV file, the terminal table and the headline ratios.

Row schema
==========

Every measurement is one ``dict`` row; every suite (ops, e2e, blocks) writes
the same columns, and one CSV holds them all.  A suite returns rows with the
*required* keys set (others may be missing or None); :func:`finish_rows` adds
the environment columns and the derived ones (GB/s, fractions, speed-ups).

Required keys (a suite must set them):

=============  ======================================================================
suite          "ops", "e2e" or "blocks"
op             what is measured: "drop_path_add", "drop_path", "drop_path_add_ls", "add_layernorm",
               "add_rmsnorm" (ops), "vit_block" (e2e), "vit_s..." (models), "vit-digits" (train),
               "vit_b_block", "resnet_bottleneck" (blocks), ...
size           a size name ("vit-b", "small", ...; e2e: "vit-b-block"; blocks: e.g. "vit-b-block")
shape          the activation shape as "64x197x768"
dtype          "fp32", "bf16", "fp16" or "fp32+bf16" (fp32 residual, bf16 branch)
provider       the implementation ("eager_timm", "compile", "sdk-cpu", ...; e2e and
               blocks: "eager" is the baseline of speedup_vs_eager, "compile" that
               of speedup_vs_compile; e.g. "eager", "fused", "skip")
mode           "fwd", "bwd", "fwd+bwd", "fwd-nograd", "copy" (bandwidth baselines)
               or "step" (a training step)
p              drop probability (None for baselines)
status         "ok", "skipped" (unavailable: note says why) or "error" (note: message)
time_ms        median time of one call in milliseconds (None unless status is "ok")
=============  ======================================================================

Optional keys (None when not measured):

=================  ==================================================================
sample_dim         int, the dim that indexes samples
layout             "contiguous" or "channels_last"
requires_grad      bool, inputs require grad
batch              samples per call (e2e and blocks)
iqr_ms             inter-quartile range of the samples, ms
n_samples          number of timed samples the median is taken over
timer              "torch.utils.benchmark", "cuda_events+l2_flush", "wall_clock_sync"
gpu_ms             ops suite on CUDA: median GPU time of one call, the call captured in a CUDA
                   graph and replayed (L2 flushed before each replay): the kernels' time
                   without any host overhead (benchmarks.timing.time_cuda_graph)
gpu_frac_copy      bytes / gpu_ms over the copy baseline's bytes / gpu_ms, same shape and run
gpu_speedup_vs_eager    gpu_ms(eager) / gpu_ms(row), groups as speedup_vs_eager
gpu_speedup_vs_compile  gpu_ms(compile) / gpu_ms(row), likewise
ops_per_step       blocks --profile: top-level operator calls (ATen and custom ops) per step
launches_per_step  blocks --profile on CUDA: kernels, memsets and copies per step
gpu_busy_ms        blocks --profile on CUDA: their summed device time per step, ms
syncs_per_step     blocks --profile on CUDA: blocking CUDA runtime calls (host syncs) per step
top_ops            blocks --profile: the 5 top-level operators taking the most host time per step
top_kernels        blocks --profile on CUDA: the 5 kernels taking the most device time per step
bytes              bytes moved per call (benchmarks.providers.moved_bytes)
bytes_model        "fused", "eager", "compiled", "external", "copy", "add", "scale" or "n/a"
tensor_mb          size of one output-dtype tensor, MB (10^6 bytes)
gbps               bytes / time, GB/s (10^9)
frac_copy          gbps / the copy baseline's gbps for the same shape, same run
speedup_vs_eager   time(eager) / time(row), same suite, op, size, dtype, mode, p
speedup_vs_compile time(compile) / time(row), likewise
peak_mem_mb        memory allocated above the live set during one fwd+bwd, MB
mem_method         "cuda_max_memory_allocated" or "cpu_rss_hwm_estimate" or "n/a ..."
items_per_s        samples (images) per second: batch / time (e2e, blocks)
cost_s             wall seconds the measurement took, warm-up and compile included
note               free text
=================  ==================================================================

Environment keys (set by :func:`finish_rows` for every row): run_id, date,
device, device_name, threads, loadavg (the host's 1-minute load average when
the run started: other processes share a CPU), torch, triton, sdkernels,
python, host.
"""
from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import platform
import re
import socket
from typing import Dict, Iterable, List, Optional, Sequence

import torch

__all__ = [
    "REQUIRED",
    "OPTIONAL",
    "ENV",
    "FIELDS",
    "environment",
    "finish_rows",
    "write_csv",
    "read_csv",
    "format_table",
    "headline",
    "output_stem",
    "join_notes",
    "error_note",
]

REQUIRED = ("suite", "op", "size", "shape", "dtype", "provider", "mode", "p", "status", "time_ms")
OPTIONAL = (
    "sample_dim", "layout", "requires_grad", "batch", "iqr_ms", "n_samples", "timer", "bytes", "bytes_model",
    "tensor_mb", "gbps", "frac_copy", "speedup_vs_eager", "speedup_vs_compile", "peak_mem_mb", "mem_method",
    "items_per_s", "cost_s", "note", "gpu_ms", "gpu_frac_copy", "gpu_speedup_vs_eager", "gpu_speedup_vs_compile",
    "ops_per_step", "launches_per_step", "gpu_busy_ms", "syncs_per_step", "top_ops", "top_kernels",
)
ENV = ("run_id", "date", "device", "device_name", "threads", "loadavg", "torch", "triton", "sdkernels", "python", "host")
FIELDS = REQUIRED + OPTIONAL + ENV

_INT = {"sample_dim", "batch", "n_samples", "threads"}
_FLOAT = {"cost_s", "loadavg", "p", "time_ms", "iqr_ms", "bytes", "tensor_mb", "gbps", "frac_copy", "speedup_vs_eager",
          "speedup_vs_compile", "peak_mem_mb", "items_per_s", "gpu_ms", "gpu_frac_copy", "gpu_speedup_vs_eager",
          "gpu_speedup_vs_compile", "ops_per_step", "launches_per_step", "gpu_busy_ms", "syncs_per_step"}
_BOOL = {"requires_grad"}

EAGER_BASELINES = ("eager_timm", "eager")
COMPILE_BASELINES = ("compile",)


def environment(device: str) -> Dict[str, object]:
    """Device name, versions, date: the environment columns."""
    now = _dt.datetime.now()
    if device == "cuda":
        name = torch.cuda.get_device_name()
        threads = None
    else:
        name = _cpu_name()
        threads = torch.get_num_threads()
    try:
        import triton

        triton_v = triton.__version__
    except Exception:
        triton_v = None
    try:
        import sdkernels

        sdk_v = sdkernels.__version__
    except Exception:
        sdk_v = None
    return {
        "run_id": now.strftime("%Y%m%dT%H%M%S"),
        "date": now.strftime("%Y-%m-%d"),
        "device": device,
        "device_name": name,
        "threads": threads,
        "loadavg": _loadavg(),
        "torch": torch.__version__,
        "triton": triton_v,
        "sdkernels": sdk_v,
        "python": platform.python_version(),
        "host": socket.gethostname(),
    }


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def join_notes(*notes: str) -> str:
    """The non-empty notes joined by "; " (a row's ``note`` column)."""
    return "; ".join(n for n in notes if n)


def error_note(e: BaseException, limit: int = 200) -> str:
    """``"TypeName: <first line of the message>"``, the message cut to ``limit`` characters."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:limit] if lines else ''}"


def _key(r, *extra):
    return (r.get("suite"), r.get("op"), r.get("size"), r.get("shape"), r.get("dtype"), r.get("mode"),
            r.get("p"), r.get("requires_grad")) + extra


def _ok(r) -> bool:
    return r.get("status") == "ok" and r.get("time_ms") is not None and not _isnan(r.get("time_ms"))


def _isnan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def finish_rows(rows: List[Dict], env: Dict[str, object]) -> List[Dict]:
    """Fill environment and derived columns in place; returns ``rows``.

    Derived: gbps (bytes / time), frac_copy (gbps over the same suite/op/
    shape/dtype's copy baseline), items_per_s (batch / time), and the two
    speed-ups against the row of the same group with provider eager (or
    eager_timm) and compile; the same three from ``gpu_ms`` where rows have
    it (``gpu_*``).  Values a suite already set are kept.
    """
    for r in rows:
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ValueError(f"row lacks required keys {missing}: {r}")
        for k in FIELDS:
            r.setdefault(k, None)
        for k, v in env.items():
            if r.get(k) is None:
                r[k] = v
    copy_gbps, copy_gpu_gbps = {}, {}
    for r in rows:
        if _ok(r) and r.get("bytes") is not None and not _isnan(r["bytes"]) and r.get("gbps") is None:
            r["gbps"] = r["bytes"] / (r["time_ms"] * 1e-3) / 1e9
        if _ok(r) and r.get("batch") and r.get("items_per_s") is None and r["suite"] != "ops":
            r["items_per_s"] = r["batch"] / (r["time_ms"] * 1e-3)
        if _ok(r) and r["provider"] == "copy" and r.get("gbps"):
            copy_gbps[(r["suite"], r["op"], r["shape"], r["dtype"])] = r["gbps"]
        if _ok(r) and r["provider"] == "copy" and _gpu_gbps(r):
            copy_gpu_gbps[(r["suite"], r["op"], r["shape"], r["dtype"])] = _gpu_gbps(r)
    eager, comp, eager_gpu, comp_gpu = {}, {}, {}, {}
    for r in rows:
        if not _ok(r):
            continue
        if r["provider"] in EAGER_BASELINES:
            eager.setdefault(_key(r), r["time_ms"])
            if _has_gpu(r):
                eager_gpu.setdefault(_key(r), r["gpu_ms"])
        if r["provider"] in COMPILE_BASELINES:
            comp.setdefault(_key(r), r["time_ms"])
            if _has_gpu(r):
                comp_gpu.setdefault(_key(r), r["gpu_ms"])
    for r in rows:
        if not _ok(r):
            continue
        ck = (r["suite"], r["op"], r["shape"], r["dtype"])
        c = copy_gbps.get(ck)
        if r.get("frac_copy") is None and c and r.get("gbps"):
            r["frac_copy"] = r["gbps"] / c
        cg = copy_gpu_gbps.get(ck)
        if r.get("gpu_frac_copy") is None and cg and _gpu_gbps(r):
            r["gpu_frac_copy"] = _gpu_gbps(r) / cg
        if r["p"] is None:
            continue
        te, tc = eager.get(_key(r)), comp.get(_key(r))
        if r.get("speedup_vs_eager") is None and te:
            r["speedup_vs_eager"] = te / r["time_ms"]
        if r.get("speedup_vs_compile") is None and tc:
            r["speedup_vs_compile"] = tc / r["time_ms"]
        if _has_gpu(r):
            ge, gc = eager_gpu.get(_key(r)), comp_gpu.get(_key(r))
            if r.get("gpu_speedup_vs_eager") is None and ge:
                r["gpu_speedup_vs_eager"] = ge / r["gpu_ms"]
            if r.get("gpu_speedup_vs_compile") is None and gc:
                r["gpu_speedup_vs_compile"] = gc / r["gpu_ms"]
    return rows


def _has_gpu(r) -> bool:
    v = r.get("gpu_ms")
    return v is not None and not _isnan(v) and v > 0


def _gpu_gbps(r) -> Optional[float]:
    """bytes / gpu_ms in GB/s, or None."""
    if not _has_gpu(r) or r.get("bytes") is None or _isnan(r["bytes"]):
        return None
    return r["bytes"] / (r["gpu_ms"] * 1e-3) / 1e9


def _fmt_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return repr(round(v, 6)) if abs(v) < 1e15 else repr(v)
    return str(v)


def write_csv(rows: Iterable[Dict], path: str) -> str:
    """Write rows with the :data:`FIELDS` columns (plus any extra keys, sorted, at the end)."""
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(FIELDS))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(FIELDS) + extra)
        for r in rows:
            w.writerow([_fmt_cell(r.get(k)) for k in list(FIELDS) + extra])
    return path


def _parse(k: str, v: str):
    if v == "":
        return None
    if k in _INT:
        return int(float(v))
    if k in _FLOAT:
        return float(v)
    if k in _BOOL:
        return v in ("1", "True", "true")
    return v


def read_csv(path: str) -> List[Dict]:
    """Rows of a CSV written by :func:`write_csv`, with numbers and booleans typed back."""
    with open(path, newline="") as f:
        return [{k: _parse(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def output_stem(env: Dict[str, object], out_dir: str, name: Optional[str] = None) -> str:
    """``<out_dir>/<device-tag>-<date>``, e.g. ``results/cpu-2026-11-27``; never overwrites an earlier run."""
    if name is None:
        if env["device"] == "cuda":
            tag = re.sub(r"[^a-z0-9]+", "-", str(env["device_name"]).lower()).strip("-")
            tag = re.sub(r"^nvidia-", "", tag)
            tag = "cuda-" + "-".join(tag.split("-")[:2])
        else:
            tag = "cpu"
        name = f"{tag}-{env['date']}"
    stem = os.path.join(out_dir, name)
    k = 2
    base = stem
    while os.path.exists(stem + ".csv"):
        stem = f"{base}-{k}"
        k += 1
    return stem


# ----------------------------------------------------------------- table ----

def _f(v, fmt: str) -> str:
    if v is None or _isnan(v):
        return "-"
    return format(v, fmt)


def _pct(frac) -> str:
    return _f(None if frac is None else 100 * frac, ".0f")


def _time_str(ms) -> str:
    if ms is None or _isnan(ms):
        return "-"
    if ms < 1:
        return f"{ms * 1e3:.1f} us"
    return f"{ms:.3f} ms"


def format_table(rows: Sequence[Dict], env: Optional[Dict] = None) -> str:
    """The terminal table: one block per (suite, op, size, dtype, mode, p), one line per provider."""
    lines: List[str] = []
    if env:
        thr = f", {env['threads']} threads (torch.get_num_threads())" if env.get("threads") else ""
        load = f"; load average {env['loadavg']} at start" if env.get("loadavg") is not None else ""
        lines.append(f"device: {env['device_name']} ({env['device']}{thr}); torch {env['torch']}, "
                     f"triton {env['triton']}, sdkernels {env['sdkernels']}; {env['date']}{load}")
        lines.append("medians of one run; GB/s from the bytes each provider moves (dropped rows not read by sdk-*); "
                     "copy% = fraction of the copy baseline's GB/s; xEager / xCompile = time ratios")
    gpu_cols = any(_has_gpu(r) for r in rows)
    if gpu_cols:
        lines.append("gpu / gcopy% / gEager: the same from CUDA-graph replays (the kernels' time, no host overhead)")
    hdr = f"{'provider':<14} {'time':>11} {'GB/s':>8} {'copy%':>6} {'xEager':>7} {'xCompile':>8} {'peakMB':>8}"
    if gpu_cols:
        hdr += f" {'gpu':>11} {'gcopy%':>6} {'gEager':>7}"
    hdr += "  note"
    groups: Dict[tuple, List[Dict]] = {}
    order: List[tuple] = []
    skipped: Dict[str, str] = {}
    for r in rows:
        if r["status"] == "skipped":
            skipped.setdefault(r["provider"], r.get("note") or "")
            continue
        g = (r["suite"], r["op"], r["size"], r["shape"], r["dtype"], r.get("layout"))
        if g not in groups:
            groups[g] = []
            order.append(g)
        groups[g].append(r)
    for g in order:
        suite, op, size, shape, dtype, layout = g
        grp = groups[g]
        tmb = next((r.get("tensor_mb") for r in grp if r.get("tensor_mb")), None)
        extra = f", {tmb:.1f} MB/tensor" if tmb else ""
        lines.append("")
        lines.append(f"== {suite}/{op}: {size} {shape} {dtype}"
                     f"{' ' + layout if layout and layout != 'contiguous' else ''}{extra}")
        sub: Dict[tuple, List[Dict]] = {}
        for r in grp:
            sub.setdefault((r["mode"], r["p"], r.get("requires_grad")), []).append(r)
        for (mode, p, rg), rs in sub.items():
            ptxt = "" if p is None else f" p={p:g}"
            gtxt = ""
            lines.append(f"  -- {mode}{ptxt}{gtxt}")
            lines.append("  " + hdr)
            for r in rs:
                note = r.get("note") or ""
                if r["status"] == "error":
                    note = "ERROR: " + note
                if r.get("items_per_s"):
                    note = (f"{r['items_per_s']:.1f} items/s " + note).strip()
                pk = r.get("peak_mem_mb")
                lines.append("  " + f"{r['provider']:<14} {_time_str(r.get('time_ms')):>11} {_f(r.get('gbps'), '.1f'):>8} "
                             f"{_pct(r.get('frac_copy')):>6} "
                             f"{_f(r.get('speedup_vs_eager'), '.2f'):>7} {_f(r.get('speedup_vs_compile'), '.2f'):>8} "
                             f"{_f(pk, '.1f'):>8}"
                             + (f" {_time_str(r.get('gpu_ms')):>11} {_pct(r.get('gpu_frac_copy')):>6} "
                                f"{_f(r.get('gpu_speedup_vs_eager'), '.2f'):>7}" if gpu_cols else "")
                             + f"  {note[:70]}")
    if skipped:
        lines.append("")
        lines.append("skipped providers (rows kept in the CSV with status 'skipped'):")
        for prov, why in skipped.items():
            lines.append(f"  {prov}: {why}")
    return "\n".join(lines)


# -------------------------------------------------------------- headline ----

def _find(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()) and _ok(r):
            return r
    return None


def _ratio_part(name: str, r: Dict, prefix: str = "") -> str:
    """'fwd 84.1 us 94% copy BW 2.46x eager 0.97x compile' from a row's time columns (``prefix`` "gpu_": gpu_*)."""
    txt = f"{name} {_time_str(r['gpu_ms' if prefix else 'time_ms'])}"
    if r.get(prefix + "frac_copy"):
        txt += f" {100 * r[prefix + 'frac_copy']:.0f}% copy BW"
    if r.get(prefix + "speedup_vs_eager"):
        txt += f" {r[prefix + 'speedup_vs_eager']:.2f}x eager"
    if r.get(prefix + "speedup_vs_compile"):
        txt += f" {r[prefix + 'speedup_vs_compile']:.2f}x compile"
    return txt


def _gpu_part(name: str, r: Dict) -> str:
    """:func:`_ratio_part` of a row's gpu_* columns (the kernels' own times)."""
    return _ratio_part(name, r, "gpu_")


#: ops of the headline: the fused add, and with LayerScale
HEADLINE_OPS = ("drop_path_add", "drop_path_add_ls")


def headline(rows: Sequence[Dict]) -> str:
    """A few key ratios per size of the op suite: the fused op against its floors, eager and compile.

    For each (size, dtype), p and sdk backend (not the reference): the
    forward's speed-up (time ratio) against one ``torch.add``, eager and
    compile, and its fraction of the copy bandwidth; the no-grad forward
    where measured; the backward against one ``grad * scale`` and eager;
    then, where rows have ``gpu_ms``, the kernels' own times (CUDA-graph
    replays) of the forward and backward with their copy-bandwidth fractions
    and speed-ups against eager and compile.
    """
    out = []
    cases = []
    for r in rows:
        if r["suite"] == "ops" and r["op"] in HEADLINE_OPS and _ok(r):
            c = (r["op"], r["size"], r["shape"], r["dtype"])
            if c not in cases:
                cases.append(c)
    for op, size, shape, dtype in cases:
        sdk = sorted({r["provider"] for r in rows if r["provider"].startswith("sdk-") and r["provider"] != "sdk-reference"
                      and _ok(r) and r["size"] == size and r["dtype"] == dtype})
        ps = sorted({r["p"] for r in rows if r["p"] is not None and r["size"] == size and r["dtype"] == dtype})
        for prov in sdk:
            for p in ps:
                sel = dict(suite="ops", op=op, size=size, shape=shape, dtype=dtype)
                f = _find(rows, provider=prov, mode="fwd", p=p, **sel)
                b = _find(rows, provider=prov, mode="bwd", p=p, **sel)
                fn = _find(rows, provider=prov, mode="fwd-nograd", p=p, **sel)
                add = _find(rows, provider="add", **sel)
                scale = _find(rows, provider="scale", **sel)
                parts = []
                if f:
                    parts.append(f"fwd {_time_str(f['time_ms'])}")
                    if add:
                        parts.append(f"vs one add {add['time_ms'] / f['time_ms']:.2f}x")
                    if f.get("speedup_vs_eager"):
                        parts.append(f"vs eager {f['speedup_vs_eager']:.2f}x")
                    if f.get("speedup_vs_compile"):
                        parts.append(f"vs compile {f['speedup_vs_compile']:.2f}x")
                    if f.get("frac_copy"):
                        parts.append(f"{100 * f['frac_copy']:.0f}% copy BW")
                if fn:
                    parts.append(f"fwd no-grad {_time_str(fn['time_ms'])}"
                                 + (f" (vs eager {fn['speedup_vs_eager']:.2f}x)" if fn.get("speedup_vs_eager") else ""))
                if b:
                    parts.append(f"bwd {_time_str(b['time_ms'])}")
                    if scale:
                        parts.append(f"vs grad*scale {scale['time_ms'] / b['time_ms']:.2f}x")
                    if b.get("speedup_vs_eager"):
                        parts.append(f"vs eager {b['speedup_vs_eager']:.2f}x")
                gpu = [_gpu_part(name, r) for name, r in (("fwd", f), ("bwd", b)) if r and _has_gpu(r)]
                if gpu:
                    parts.append("GPU only: " + "; ".join(gpu))
                if parts:
                    what = "" if op == "drop_path_add" else f"{op} "
                    out.append(f"{what}{size} {shape} {dtype} p={p:g} {prov}: " + ", ".join(parts))
    out += _norm_headline(rows)
    for r in rows:
        if r["suite"] in ("e2e", "blocks") and _ok(r) and r.get("speedup_vs_eager") and r["provider"] not in EAGER_BASELINES:
            out.append(f"{r['suite']} {r['op']} {r['size']} {r['dtype']} p={r['p']:g} {r['provider']}: "
                       f"{_time_str(r['time_ms'])}/step, {r.get('items_per_s') or 0:.1f} items/s, "
                       f"vs eager {r['speedup_vs_eager']:.3f}x")
    return "\n".join(out)


NORM_OPS = ("add_layernorm", "add_rmsnorm")


def _norm_headline(rows: Sequence[Dict]) -> List[str]:
    """The add + norm ops: per op, case, p and sdk backend, the forward and backward
    against eager, compile and the other libraries' fused kernels (time ratios), with their
    fractions of the copy bandwidth; then the same from the kernels' own times (gpu_ms)."""
    keys = []
    for r in rows:
        if (r["suite"] == "ops" and r["op"] in NORM_OPS and _ok(r) and r["provider"].startswith("sdk-")
                and r["provider"] != "sdk-reference" and r["mode"] in ("fwd", "bwd")):
            k = (r["op"], r["size"], r["shape"], r["dtype"], r["p"], r["provider"])
            if k not in keys:
                keys.append(k)
    out = []
    for op, size, shape, dtype, p, prov in keys:
        sel = dict(suite="ops", op=op, size=size, shape=shape, dtype=dtype, p=p)
        parts, gpu = [], []
        for mode in ("fwd", "bwd"):
            r = _find(rows, provider=prov, mode=mode, **sel)
            if not r:
                continue
            txt = _ratio_part(mode, r)
            for ext in ("flash_attn", "liger"):
                e = _find(rows, provider=ext, mode=mode, **sel)
                if e:
                    txt += f" {e['time_ms'] / r['time_ms']:.2f}x {ext}"
            parts.append(txt)
            if _has_gpu(r):
                gpu.append(_gpu_part(mode, r))
        if gpu:
            parts.append("GPU only: " + "; ".join(gpu))
        if parts:
            out.append(f"{op} {size} {shape} {dtype} p={p:g} {prov}: " + ", ".join(parts))
    return out


def main(argv=None) -> int:
    """``python -m benchmarks.report results.csv [--headline]``: reprint a CSV's table or headline."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__)
    ap.add_argument("csv")
    ap.add_argument("--headline", action="store_true", help="print only the headline ratios")
    a = ap.parse_args(argv)
    rows = read_csv(a.csv)
    print(headline(rows) if a.headline else format_table(rows, rows[0] if rows else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
