"""Sweep the launch configs of the Triton drop-path kernels: correctness of each, and its bandwidth.

``python -m benchmarks.triton_sweep`` on a GPU (H100 / H200): for every size and
kernel, launches the kernel through its launcher
(``sdkernels.triton_kernels.drop_path``) once per :class:`LaunchConfig` of a
small grid plus the shipped heuristics ("default"), checks each output against
``sdkernels.reference`` and times the correct ones with CUDA events, the L2
flushed before every call (``benchmarks.timing.time_cuda_events``).  Bandwidth
is reported as a fraction of a ``dst.copy_(src)`` of the same size and dtype
timed in the same run.  A final ``best:`` line per (size, kernel) names the
fastest correct config and the default's figure.

Kernels: ``fwd`` = the scaled residual add (``out = residual + branch *
scale[s] * alpha``, dropped rows copy the residual); ``bwd`` = the sample scale
as the backward uses it (``grad_branch = grad * scale[s] * alpha``, zeros for
dropped rows).  ``scale`` is a Bernoulli(1 - p) keep mask and ``alpha = 1 / (1 -
p)``, as the ops are called.  Bytes moved (realised kept fraction ``k`` of the
mask): fwd = residual read + out written + ``k`` x branch read; bwd = out
written + ``k`` x grad read.

On CPU under ``TRITON_INTERPRET=1`` it checks correctness only (no times; the
"1st call" column is interpreter wall time).  Exit status 1 when any config
gives a wrong result or fails, 2 on bad arguments, else 0.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks.report import error_note, join_notes

__all__ = [
    "SweepSize",
    "Result",
    "SWEEP_SIZES",
    "DEFAULT_SIZES",
    "KERNELS",
    "config_grid",
    "parse_shape",
    "resolve_sizes",
    "sweep",
    "pick_best",
    "main",
]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}

# How close is correct: one rounding of the output for 16-bit types, a few ulps for fp32 / fp64
# (the same figures as tests/_tolerances.py; kernel and reference both compute in fp32 / fp64).
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1.3e-6, atol=1e-5),
    torch.float16: dict(rtol=9.8e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=7.9e-3, atol=1e-4),
}

KERNELS = ("fwd", "bwd")
BLOCKS = (1024, 2048, 4096, 8192)
WARPS = (2, 4, 8, 16)
QUICK_BLOCKS = (2048, 4096, 8192)
QUICK_WARPS = (4, 8)
# Elements per thread kept in the grid: >= 4 (a 64-bit access in bf16 at least), <= 64 (registers).
MIN_PER_THREAD, MAX_PER_THREAD = 4, 64


@dataclass(frozen=True)
class SweepSize:
    """One tensor to sweep: shape, dtype (all tensors the same), sample dim and memory format."""

    name: str
    shape: Tuple[int, ...]
    dtype: torch.dtype
    sample_dim: int = 0
    channels_last: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def shape_str(self) -> str:
        return "x".join(str(s) for s in self.shape)

    @property
    def dtype_name(self) -> str:
        return _DTYPE_NAMES.get(self.dtype, str(self.dtype))


SWEEP_SIZES: Dict[str, SweepSize] = {
    s.name: s
    for s in [
        SweepSize("vit-l", (256, 197, 1024), torch.bfloat16, 0),
        SweepSize("llm", (2048, 8, 4096), torch.bfloat16, 1),  # seq-first [S, B, H]
        SweepSize("vit-l-fp32", (256, 197, 1024), torch.float32, 0),
    ]
}
DEFAULT_SIZES = ("vit-l", "llm", "vit-l-fp32")


@dataclass
class Result:
    """One row of the sweep: a config of one kernel on one size (or the size's copy baseline)."""

    size: str
    shape: str
    dtype: str
    sample_dim: int
    kernel: str  # "fwd", "bwd" or "copy"
    config: str  # "default", "b4096 w8", ...
    launch: str = ""  # what the launcher ran: "rows b4096 w8" / "tiles 16x256 w8"
    status: str = "ok"  # ok | wrong | error | skipped
    time_us: float = math.nan
    iqr_us: float = math.nan
    bytes: float = math.nan
    gbps: float = math.nan
    copy_pct: float = math.nan
    max_abs_err: float = math.nan
    same_as_default: str = ""  # "yes" / "no": bit for bit equal to the default config's output
    first_call_s: float = math.nan  # wall time of the first (compiling / interpreted) call
    kept_frac: float = math.nan
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("wrong", "error")


def config_grid(quick: bool = False, rows_kernel: Optional[bool] = None) -> List[Tuple[str, object]]:
    """``[(label, LaunchConfig or None)]``: the default (None) first, then block x num_warps.

    Only combinations with 4 to 64 elements per thread; ``rows_kernel`` is
    passed to every config of the grid (None: the heuristic's choice of kernel).
    """
    from sdkernels.triton_kernels.drop_path import LaunchConfig

    blocks, warps = (QUICK_BLOCKS, QUICK_WARPS) if quick else (BLOCKS, WARPS)
    tag = {None: "", True: " rows", False: " tiles"}[rows_kernel]
    grid: List[Tuple[str, object]] = [("default", None)]
    for b in blocks:
        for w in warps:
            if MIN_PER_THREAD <= b // (32 * w) <= MAX_PER_THREAD:
                grid.append((f"b{b} w{w}{tag}", LaunchConfig(block=b, num_warps=w, rows_kernel=rows_kernel)))
    return grid


def parse_shape(text: str) -> Tuple[int, ...]:
    """``"3x5x40"`` -> ``(3, 5, 40)``; ``ValueError`` naming ``--shape`` otherwise."""
    try:
        shape = tuple(int(t) for t in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"--shape must be positive sizes joined by 'x' (e.g. 3x5x40), got {text!r}")
    return shape


def resolve_sizes(names: Sequence[str] = (), shapes: Sequence[str] = (), dtype: Optional[str] = None,
                  sample_dim: int = 0) -> List[SweepSize]:
    """The sizes to sweep: named sizes, then ``--shape`` ones; neither: :data:`DEFAULT_SIZES`.

    Names are :data:`SWEEP_SIZES` or ``benchmarks.sizes.SIZES`` (bf16 unless
    ``dtype``); ``dtype`` (a name among bf16, fp16, fp32, fp64) overrides every
    size's dtype when given.  ``sample_dim`` applies to the ``shapes``.
    """
    from benchmarks import sizes as S

    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    dt = _DTYPES[dtype] if dtype is not None else None
    if not names and not shapes:
        names = DEFAULT_SIZES
    out: List[SweepSize] = []
    for name in names:
        if name in SWEEP_SIZES:
            s = SWEEP_SIZES[name]
            out.append(SweepSize(s.name, s.shape, dt or s.dtype, s.sample_dim, s.channels_last))
        elif name in S.SIZES:
            s = S.SIZES[name]
            out.append(SweepSize(s.name, s.shape, dt or torch.bfloat16, s.sample_dim, s.channels_last))
        else:
            valid = list(SWEEP_SIZES) + [n for n in S.SIZES if n not in SWEEP_SIZES]
            raise ValueError(f"unknown size name {name!r}; valid size names: {', '.join(valid)}")
    for text in shapes:
        shape = parse_shape(text)
        if not -len(shape) <= sample_dim < len(shape):
            raise ValueError(f"--sample-dim {sample_dim} is out of range for --shape {text}")
        out.append(SweepSize(text, shape, dt or torch.bfloat16, sample_dim % len(shape)))
    return out


def pick_best(results: Sequence[Result]) -> Tuple[Optional[Result], Optional[Result]]:
    """(fastest correct result, the default's result) among one (size, kernel)'s rows.

    Only rows with status "ok" and a finite time can win: a wrong or failed
    config is never the best, however fast.
    """
    timed = [r for r in results if r.status == "ok" and math.isfinite(r.time_us)]
    best = min(timed, key=lambda r: r.time_us) if timed else None
    default = next((r for r in results if r.config == "default"), None)
    return best, default


# ---------------------------------------------------------------------------- running ----


def _keep_mask(n: int, p: float, device: str, gen: torch.Generator, R) -> Tuple[torch.Tensor, str]:
    """The Bernoulli(1 - p) keep mask; with 0 < p < 1 and n >= 2, at least one kept and one dropped sample."""
    keep = R.draw_keep(n, p, "row", device, gen)
    note = ""
    if 0.0 < p < 1.0 and n >= 2:
        s = int(keep.sum().item())
        if s == n:
            keep[0] = 0.0
            note = "all kept by the draw: sample 0 dropped to test both paths"
        elif s == 0:
            keep[0] = 1.0
            note = "all dropped by the draw: sample 0 kept to test both paths"
    return keep, note


def _randn(size: SweepSize, device: str, gen: torch.Generator) -> torch.Tensor:
    """Random normals (never zeros) in the size's dtype and memory format."""
    t = torch.randn(size.shape, generator=gen, device=device, dtype=torch.float32).to(size.dtype)
    if size.channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class _Clock:
    """Wall time since the start; ``expired`` once past the limit (0 or None: never)."""

    def __init__(self, limit_s: Optional[float]):
        self.t0 = time.perf_counter()
        self.limit_s = limit_s

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def expired(self) -> bool:
        return bool(self.limit_s) and self.elapsed >= self.limit_s


def _time(fn: Callable[[], object], device: str, repeats: int) -> Tuple[float, float]:
    """(median, iqr) seconds per call: CUDA events with an L2 flush before each call; NaN on CPU."""
    if device != "cuda":
        return math.nan, math.nan
    from benchmarks.timing import time_cuda_events

    t = time_cuda_events(fn, repeats)
    return t.median, t.iqr


def _measure_copy(size: SweepSize, device: str, repeats: int, gen: torch.Generator) -> Result:
    src = _randn(size, device, gen)
    dst = torch.empty_like(src)
    res = Result(size.name, size.shape_str, size.dtype_name, size.sample_dim, "copy", "dst.copy_(src)")
    res.bytes = 2.0 * size.numel * src.element_size()
    med, iqr = _time(lambda: dst.copy_(src), device, repeats)
    res.time_us, res.iqr_us = med * 1e6, iqr * 1e6
    res.gbps = res.bytes / med / 1e9 if med > 0 else math.nan
    res.copy_pct = 100.0 if math.isfinite(res.gbps) else math.nan
    if device != "cuda":
        res.note = "no timing on CPU"
    return res


def _run_kernel(size: SweepSize, kernel: str, configs, p: float, device: str, repeats: int, copy: Result,
                clock: _Clock, seed: int, emit: Callable[[Result], None]) -> List[Result]:
    """Every config of one (size, kernel): check against the reference, then time the correct ones."""
    from sdkernels import reference as R
    from sdkernels.triton_kernels import drop_path as K

    gen = torch.Generator(device=device).manual_seed(seed)
    dim = size.sample_dim
    keep, keep_note = _keep_mask(size.shape[dim], p, device, gen, R)
    alpha = R.keep_scale(p, True)
    n_kept = int(keep.sum().item())
    kept = n_kept / keep.numel()
    es = torch.empty((), dtype=size.dtype).element_size()
    if kernel == "fwd":
        residual, branch = _randn(size, device, gen), _randn(size, device, gen)
        out = torch.empty_like(residual)
        ref = R.scaled_residual_add(residual, branch, keep, dim, alpha)
        nbytes = size.numel * es * (2.0 + kept)

        def launch(cfg):
            return K.launch_scaled_residual_add(out, residual, branch, keep, alpha, n, inner, config=cfg)
    elif kernel == "bwd":
        grad = _randn(size, device, gen)
        out = torch.empty_like(grad)
        ref = R.sample_scale(grad, keep, dim, alpha)
        nbytes = size.numel * es * (1.0 + kept)

        def launch(cfg):
            return K.launch_sample_scale(out, grad, keep, alpha, n, inner, config=cfg)
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    n, inner = K.plan(out, dim, keep.numel())
    tol = TOL[size.dtype]
    acc = torch.float64 if size.dtype == torch.float64 else torch.float32
    ref_acc = ref.to(acc)
    default_out: Optional[torch.Tensor] = None
    results: List[Result] = []
    for label, cfg in configs:
        res = Result(size.name, size.shape_str, size.dtype_name, dim, kernel, label, kept_frac=kept, bytes=nbytes)
        if not results:  # the first row of the kernel says which samples the mask kept
            res.note = join_notes(f"keeps {n_kept}/{keep.numel()} samples", keep_note)
        results.append(res)
        if clock.expired:
            res.status, res.note = "skipped", join_notes(res.note, f"time limit ({clock.limit_s:g} s) reached")
            emit(res)
            continue
        try:
            res.launch = K.launch_params(inner, out.numel(), cfg).label
        except ValueError as e:  # a config this shape cannot take: not a failure of the kernel
            res.status, res.note = "skipped", join_notes(res.note, error_note(e, 160))
            emit(res)
            continue
        try:
            out.fill_(math.nan)  # a config that writes nothing fails the check
            _sync(device)
            t0 = time.perf_counter()
            launch(cfg)
            _sync(device)
            res.first_call_s = time.perf_counter() - t0
            got = out.to(acc)
            res.max_abs_err = float((got - ref_acc).abs().max().item()) if out.numel() else 0.0
            ok = bool(torch.allclose(got, ref_acc, **tol))
            if default_out is None and cfg is None:
                default_out = out.clone()
            if default_out is not None:
                res.same_as_default = "yes" if torch.equal(out, default_out) else "no"
            del got
            if not ok:
                res.status = "wrong"
                res.note = join_notes(res.note, f"differs from sdkernels.reference: max abs err {res.max_abs_err:.3g} "
                                           f"(rtol {tol['rtol']:g}, atol {tol['atol']:g})")
                emit(res)
                continue
            med, iqr = _time(lambda: launch(cfg), device, repeats)
            res.time_us, res.iqr_us = med * 1e6, iqr * 1e6
            if math.isfinite(med) and med > 0:
                res.gbps = nbytes / med / 1e9
                res.copy_pct = 100.0 * res.gbps / copy.gbps if math.isfinite(copy.gbps) else math.nan
        except Exception as e:  # noqa: BLE001  (a failing config is a row, not the end of the sweep)
            res.status, res.note = "error", join_notes(res.note, error_note(e, 160))
        emit(res)
    return results


def sweep(sizes: Sequence[SweepSize], kernels: Sequence[str] = KERNELS, p: float = 0.1, device: str = "cuda",
          repeats: int = 20, time_limit: Optional[float] = None, quick: bool = False,
          rows_kernel: Optional[bool] = None, seed: int = 0,
          emit: Callable[[Result], None] = lambda r: None) -> List[Result]:
    """Run the sweep; returns every row (copy baselines included), calling ``emit`` on each as it is done.

    ``time_limit`` (seconds, None or 0 for none): configs not started by then
    are rows with status "skipped"; what was measured is kept.
    """
    clock = _Clock(time_limit)
    configs = config_grid(quick, rows_kernel)
    rows: List[Result] = []
    for i, size in enumerate(sizes):
        gen = torch.Generator(device=device).manual_seed(seed + 1000 * i)
        if clock.expired:
            copy = Result(size.name, size.shape_str, size.dtype_name, size.sample_dim, "copy", "dst.copy_(src)",
                          status="skipped", note="time limit reached")
        else:
            try:
                copy = _measure_copy(size, device, repeats, gen)
            except Exception as e:  # noqa: BLE001
                copy = Result(size.name, size.shape_str, size.dtype_name, size.sample_dim, "copy", "dst.copy_(src)",
                              status="error", note=error_note(e, 160))
        emit(copy)
        rows.append(copy)
        for kernel in kernels:
            rows += _run_kernel(size, kernel, configs, p, device, repeats, copy, clock, seed + 1000 * i + 1, emit)
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------- output ----

_COLS = [("size", 12), ("dtype", 5), ("kernel", 6), ("config", 16), ("launch", 18), ("time us", 9), ("GB/s", 7),
         ("%copy", 6), ("1st s", 6), ("=dflt", 5), ("status", 7)]


def _fmt(x: float, spec: str) -> str:
    return format(x, spec) if isinstance(x, float) and math.isfinite(x) else "n/a"


def format_header() -> str:
    """The table's header line."""
    return " ".join(name.ljust(w) if i < 5 else name.rjust(w) for i, (name, w) in enumerate(_COLS))


def format_row(r: Result) -> str:
    """One table line (with the note, if any, after the status)."""
    cells = [r.size, r.dtype, r.kernel, r.config, r.launch or "-", _fmt(r.time_us, ".1f"), _fmt(r.gbps, ".0f"),
             _fmt(r.copy_pct, ".1f"), _fmt(r.first_call_s, ".2f"), r.same_as_default or "-", r.status]
    line = " ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, _COLS)))
    return line + (f"  {r.note}" if r.note else "")


def best_lines(rows: Sequence[Result]) -> List[str]:
    """``best: <size> <kernel>: <config> X us = Y% copy BW (default: Z%)``, one per (size, kernel)."""
    lines = []
    keys = []
    for r in rows:
        if r.kernel != "copy" and (r.size, r.kernel) not in keys:
            keys.append((r.size, r.kernel))
    for size, kernel in keys:
        group = [r for r in rows if r.size == size and r.kernel == kernel]
        best, default = pick_best(group)
        n_ok = sum(r.status == "ok" for r in group)
        n_bad = sum(r.failed for r in group)
        head = f"best: {size} {kernel}:"
        if best is None:
            if n_ok:
                lines.append(f"{head} n/a (no timing: correctness only, {n_ok}/{len(group)} configs ok, "
                             f"{n_bad} wrong or failed)")
            else:
                lines.append(f"{head} none (no config ran correctly: {n_bad} wrong or failed)")
            continue
        d = "n/a"
        if default is not None and default.status == "ok" and math.isfinite(default.copy_pct):
            d = f"{default.copy_pct:.1f}% [{default.launch}], best is {default.time_us / best.time_us:.2f}x it"
        elif default is not None:
            d = default.status
        lines.append(f"{head} {best.config} [{best.launch}] {best.time_us:.1f} us = "
                     f"{_fmt(best.copy_pct, '.1f')}% copy BW (default: {d})")
    return lines


def write_csv(path: str, rows: Sequence[Result], env: Dict[str, str]) -> None:
    """Every row with the environment columns (device, versions, date, p)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fields = list(env) + list(asdict(rows[0]).keys()) if rows else list(env)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({**env, **asdict(r)})


def _env(device: str, p: float, repeats: int) -> Dict[str, str]:
    import triton

    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (TRITON_INTERPRET=1)"
    return {"device": name, "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "p": f"{p:g}",
            "repeats": str(repeats), "timer": "cuda_events+l2_flush" if device == "cuda" else "none (interpreter)"}


# ---------------------------------------------------------------------------- CLI ----


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.triton_sweep",
        description=("Sweep launch configs (block x num_warps) of the Triton drop-path kernels: check each against "
                     "sdkernels.reference, time the correct ones (CUDA events, L2 flushed) and report the best per "
                     "size and kernel as a fraction of copy bandwidth. On CPU (TRITON_INTERPRET=1 only): "
                     "correctness, no times."),
        epilog="Exit status: 0 all configs correct, 1 a config was wrong or failed, 2 bad arguments.",
    )
    ap.add_argument("--sizes", default=None,
                    help=f"comma list of size names (default {','.join(DEFAULT_SIZES)}); sweep sizes: "
                         + "; ".join(f"{s.name} = {s.dtype_name} {s.shape_str} sample_dim {s.sample_dim}"
                                     for s in SWEEP_SIZES.values())
                         + "; also the names of benchmarks/sizes.py (in bf16 unless --dtype)")
    ap.add_argument("--shape", action="append", default=[],
                    help="a custom shape such as 3x5x40 (repeatable; with --dtype, --sample-dim)")
    ap.add_argument("--dtype", default=None, choices=list(_DTYPES),
                    help="dtype of --shape sizes (default bf16); overrides the named sizes' dtypes when given")
    ap.add_argument("--sample-dim", type=int, default=0, help="sample dim of --shape sizes (default 0)")
    ap.add_argument("--kernels", default=",".join(KERNELS),
                    help="comma list among fwd (scaled residual add), bwd (sample scale, as the backward uses it)")
    ap.add_argument("--p", type=float, default=0.1, help="drop probability (default 0.1)")
    ap.add_argument("--kernel-shape", default="auto", choices=["auto", "rows", "tiles"],
                    help="kernel of the grid's configs: the heuristic's choice (auto), or forced (default auto)")
    ap.add_argument("--device", default=None, choices=["cuda", "cpu"],
                    help="cuda (default when available); cpu only under TRITON_INTERPRET=1 (correctness only)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per config (default 20, --quick 10)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds: configs not started by then are skipped, what was measured is printed "
                         "(default: none)")
    ap.add_argument("--quick", action="store_true",
                    help=f"a smaller grid (block {'/'.join(map(str, QUICK_BLOCKS))} x warps "
                         f"{'/'.join(map(str, QUICK_WARPS))}) and 10 repeats")
    ap.add_argument("--seed", type=int, default=0, help="seed of the inputs and the keep mask (default 0)")
    ap.add_argument("--csv", default=None, metavar="PATH", help="also write every row to this CSV file")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point; returns the exit status (see the module docstring)."""
    ap = _parser()
    args = ap.parse_args(argv)
    from benchmarks import sizes as S

    try:
        kernels = S.parse_names("kernel", args.kernels, KERNELS)
        names = S.parse_names("size", args.sizes, list(SWEEP_SIZES) + list(S.SIZES)) if args.sizes else []
        sizes = resolve_sizes(names, args.shape, args.dtype, args.sample_dim)
    except ValueError as e:
        ap.error(str(e))
    if not kernels:
        ap.error("--kernels: give at least one of fwd, bwd")
    if not 0.0 <= args.p <= 1.0:
        ap.error(f"--p must be in [0, 1], got {args.p}")
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.time_limit is not None and args.time_limit < 0:
        ap.error(f"--time-limit must be >= 0 seconds, got {args.time_limit}")

    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    device = args.device or ("cpu" if interpret else "cuda")
    if device == "cpu" and not interpret:
        ap.error("--device cpu runs the kernels under the Triton interpreter only: set TRITON_INTERPRET=1")
    if device == "cuda" and interpret:
        ap.error("--device cuda: TRITON_INTERPRET=1 is set, so the kernels would be interpreted; unset it "
                 "(or use --device cpu for a correctness-only run)")
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (on CPU: TRITON_INTERPRET=1 ... --device cpu, correctness only)")
    try:
        from sdkernels.triton_kernels import drop_path as K
    except ImportError as e:
        print(f"triton_sweep: cannot import the Triton kernels: {e}", file=sys.stderr)
        return 2
    if K.INTERPRET != interpret:  # pragma: no cover  (imported earlier in this process with another setting)
        print("triton_sweep: sdkernels.triton_kernels was imported with another TRITON_INTERPRET", file=sys.stderr)
        return 2

    repeats = args.repeats or (10 if args.quick else 20)
    rows_kernel = {"auto": None, "rows": True, "tiles": False}[args.kernel_shape]
    env = _env(device, args.p, repeats)
    print(f"# triton_sweep: {env['device']}, torch {env['torch']}, triton {env['triton']}, p={args.p:g}, "
          f"repeats {repeats}, timer {env['timer']}")
    print(f"# {len(config_grid(args.quick, rows_kernel))} configs x {len(kernels)} kernels x {len(sizes)} sizes"
          + (f", time limit {args.time_limit:g} s" if args.time_limit else ""))
    if device != "cuda":
        print("# interpreter: correctness only; '1st s' is interpreter wall time, no bandwidth is claimed")
    print(format_header())

    def emit(r: Result) -> None:
        print(format_row(r), flush=True)

    t0 = time.perf_counter()
    rows = sweep(sizes, kernels, args.p, device, repeats, args.time_limit, args.quick, rows_kernel, args.seed, emit)
    wall = time.perf_counter() - t0
    print()
    for line in best_lines(rows):
        print(line)
    first = sum(r.first_call_s for r in rows if math.isfinite(r.first_call_s))
    n_bad = sum(r.failed for r in rows)
    n_skip = sum(r.status == "skipped" for r in rows)
    print(f"# {len(rows)} rows in {wall:.1f} s (first calls, compiles included: {first:.1f} s); "
          f"{n_bad} wrong or failed, {n_skip} skipped")
    if args.csv:
        write_csv(args.csv, rows, env)
        print(f"# wrote {args.csv}")
    return 1 if n_bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
