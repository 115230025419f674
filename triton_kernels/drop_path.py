"""Triton kernels of the fused drop-path ops and their launchers.

Both ops see their tensors as one dense memory block viewed as
``[outer, n, inner]`` (``inner`` = the sample dim's stride, ``n`` = its size;
the same rule as ``csrc/common/sample_layout.h``): memory row ``row`` of
``inner`` contiguous elements belongs to sample ``row % n``.  A scale of one
value (mode "batch") or a single sample makes the whole tensor one row.

Two kernel shapes per op:

* ``*_rows_kernel`` (the hot path, rows of at least ``ROW_KERNEL_MIN_INNER``
  elements): a 1D grid of (row, column block) tiles with the row on the
  major index, so the grid never hits the 65535 limit of axes 1 and 2.  Each
  program knows its sample from its row id, loads the scale once and
  branches on it: a dropped row copies the residual (or writes zeros) and
  never issues a load of the branch (or of grad_out).  Seq-first
  ``[S, B, H]`` with ``sample_dim=1`` is just ``inner = H``, ``n = B``.
* ``*_tiles_kernel`` (short rows, e.g. ``sample_dim=-1``): a 2D tile of
  ``ROWS x COLS`` (``COLS`` = next power of two >= inner), one scale per tile
  row; the branch load is masked by the row's keep flag, so a dropped row's
  branch is not read either.

Math is fp32 for fp16/bf16/fp32 (fp64 when ``ACC64``), offsets are 64-bit.
``alpha`` arrives as three fp32 pieces (``hi + mid + lo == alpha`` exactly for
``2**-70 < |alpha| < 2**127``): fp32 math uses ``hi`` (= ``float32(alpha)``, as
the C++ kernels do), fp64 math rebuilds the double exactly, whatever type a
runtime (Triton's launcher, Inductor) gives float scalars.

The launchers take ``wrap`` (``torch.library.wrap_triton`` from a
``triton_op``; identity otherwise) and do no allocation: the caller passes
``out`` and inputs already in ``out``'s strides.  An optional
:class:`LaunchConfig` overrides the launch heuristics (kernel shape, block,
warps) for tuning sweeps (``benchmarks/triton_sweep.py``);
:func:`launch_params` says what a launch will use.
"""
from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Optional

import triton
import triton.language as tl

from .common import INTERPRET, MAX_BLOCK, multiplier, next_pow2, num_warps, row_block, to_acc, to_out  # noqa: F401

__all__ = [
    "INTERPRET",
    "ROW_KERNEL_MIN_INNER",
    "LaunchConfig",
    "LaunchParams",
    "split_alpha",
    "plan",
    "launch_params",
    "launch_scaled_residual_add",
    "launch_sample_scale",
    "KERNELS",
]

# Launch heuristics (no autotuning: one config, fine for the interpreter, CUDA graphs and
# torch.compile).  These numbers are first guesses from the usual elementwise-kernel shapes
# (>= 16 bytes per thread per tensor for 128-bit accesses, a few KB per program) and await
# GPU measurement (python -m benchmarks.triton_sweep).
# Rows at least this long take the row kernel; shorter ones the tile kernel.
ROW_KERNEL_MIN_INNER = 1024
_TILE = 4096  # elements per program of the tile kernel (ROWS * COLS)

# Bounds of a LaunchConfig (the heuristics stay well inside them).
_CONFIG_WARPS = (1, 2, 4, 8, 16)
_CONFIG_MAX_BLOCK = 1 << 16  # elements per program (Triton allows 2**20 per tensor)
_CONFIG_MAX_PER_THREAD = 256  # elements per thread: 65536 on one warp took > 10 min to compile for sm_90
_MAX_GRID = 2**31 - 1  # programs on grid axis 0


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


@triton.jit
def _residual_add_rows_kernel(
    out_ptr, res_ptr, br_ptr, scale_ptr, a_hi, a_mid, a_lo,
    inner, n, nblk,
    BLOCK: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // nblk
    cb = pid - row * nblk
    sc = tl.load(scale_ptr + row % n)
    cols = cb.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    offs = row.to(tl.int64) * inner + cols
    r = to_acc(tl.load(res_ptr + offs, mask=mask), ACC64)
    if sc != 0:
        m = multiplier(sc, a_hi, a_mid, a_lo, ACC64)
        b = to_acc(tl.load(br_ptr + offs, mask=mask), ACC64)
        tl.store(out_ptr + offs, to_out(r + b * m, out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + offs, to_out(r, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _residual_add_tiles_kernel(
    out_ptr, res_ptr, br_ptr, scale_ptr, a_hi, a_mid, a_lo,
    inner, n, nrows,
    ROWS: tl.constexpr, COLS: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    row_ok = rows < nrows
    sc = tl.load(scale_ptr + rows % n, mask=row_ok, other=0)
    kept = sc != 0
    m = multiplier(sc, a_hi, a_mid, a_lo, ACC64)
    offs = rows[:, None] * inner + cols[None, :]
    mask = row_ok[:, None] & (cols < inner)[None, :]
    r = to_acc(tl.load(res_ptr + offs, mask=mask), ACC64)
    b = to_acc(tl.load(br_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
    o = tl.where(kept[:, None], r + b * m[:, None], r)
    tl.store(out_ptr + offs, to_out(o, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sample_scale_rows_kernel(
    out_ptr, x_ptr, scale_ptr, a_hi, a_mid, a_lo,
    inner, n, nblk,
    BLOCK: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // nblk
    cb = pid - row * nblk
    sc = tl.load(scale_ptr + row % n)
    cols = cb.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    offs = row.to(tl.int64) * inner + cols
    if sc != 0:
        m = multiplier(sc, a_hi, a_mid, a_lo, ACC64)
        x = to_acc(tl.load(x_ptr + offs, mask=mask), ACC64)
        tl.store(out_ptr + offs, to_out(x * m, out_ptr.dtype.element_ty), mask=mask)
    else:
        zero = tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty)
        tl.store(out_ptr + offs, zero, mask=mask)


@triton.jit
def _sample_scale_tiles_kernel(
    out_ptr, x_ptr, scale_ptr, a_hi, a_mid, a_lo,
    inner, n, nrows,
    ROWS: tl.constexpr, COLS: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    row_ok = rows < nrows
    sc = tl.load(scale_ptr + rows % n, mask=row_ok, other=0)
    kept = sc != 0
    m = multiplier(sc, a_hi, a_mid, a_lo, ACC64)
    offs = rows[:, None] * inner + cols[None, :]
    mask = row_ok[:, None] & (cols < inner)[None, :]
    x = to_acc(tl.load(x_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
    o = tl.where(kept[:, None], x * m[:, None], 0.0)
    tl.store(out_ptr + offs, to_out(o, out_ptr.dtype.element_ty), mask=mask)


# Every kernel, for the ahead-of-time compile tests.
KERNELS = {
    "residual_add_rows": _residual_add_rows_kernel,
    "residual_add_tiles": _residual_add_tiles_kernel,
    "sample_scale_rows": _sample_scale_rows_kernel,
    "sample_scale_tiles": _sample_scale_tiles_kernel,
}


# ----------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------

_F32_MAX = 3.4028234663852886e38


def _f32(x: float) -> float:
    """x rounded to the nearest fp32 (inf where that overflows)."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def split_alpha(alpha: float):
    """(hi, mid, lo) fp32 values with hi == float32(alpha) and hi + mid + lo == alpha in fp64.

    Exact for 2**-70 < |alpha| < 2**127 (every drop-path multiplier); beyond
    fp32's range hi is +-inf and the fp64 path sees that too.
    """
    alpha = float(alpha)
    if alpha == 0.0 or alpha != alpha:  # +-0 (equal as cache keys, not in the kernel) and NaN: not cached
        return _split_alpha(alpha)
    return _split_alpha_cached(alpha)


def _split_alpha(alpha: float):
    hi = _f32(alpha)
    if not math.isfinite(hi):
        return hi, 0.0, 0.0
    r1 = alpha - hi  # exact in fp64
    mid = _f32(r1)
    lo = _f32(r1 - mid)
    return hi, mid, lo


# A model has a few drop rates and every launch splits one.
_split_alpha_cached = functools.lru_cache(maxsize=64)(_split_alpha)


def plan(out, sample_dim: int, scale_numel: int):
    """(n, inner) of the ``[outer, n, inner]`` view of the dense tensor ``out``.

    One value of scale (or one sample) makes the whole tensor a single row.
    """
    numel = out.numel()
    n = out.shape[sample_dim]
    if scale_numel == 1 or n == 1:
        return 1, numel
    return n, out.stride(sample_dim)


@dataclass(frozen=True)
class LaunchConfig:
    """Overrides of the launch heuristics; a field left ``None`` keeps the heuristic's choice.

    * ``block``: elements per program, a power of two from 1 to 65536: the row
      kernel's ``BLOCK``, or the tile kernel's ``ROWS * COLS`` (``COLS`` stays
      the next power of two >= ``inner``, ``ROWS = max(1, block // COLS)``).
    * ``num_warps``: 1, 2, 4, 8 or 16.
    * ``rows_kernel``: True forces the row kernel, False the tile kernel (whose
      tile holds whole rows, so it needs ``next_pow2(inner) <= 65536``).

    Field values are checked here; what depends on the tensor (tile size,
    grid, at most 256 elements per thread) is checked by :func:`launch_params`.
    Every check raises ``ValueError`` naming the field.
    """

    block: Optional[int] = None
    num_warps: Optional[int] = None
    rows_kernel: Optional[bool] = None

    def __post_init__(self):
        b = self.block
        if b is not None:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1 or b & (b - 1) or b > _CONFIG_MAX_BLOCK:
                raise ValueError(
                    f"LaunchConfig: block must be a power of two from 1 to {_CONFIG_MAX_BLOCK} (or None), got {b!r}"
                )
        w = self.num_warps
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w not in _CONFIG_WARPS):
            raise ValueError(f"LaunchConfig: num_warps must be one of {_CONFIG_WARPS} (or None), got {w!r}")
        if self.rows_kernel is not None and not isinstance(self.rows_kernel, bool):
            raise ValueError(f"LaunchConfig: rows_kernel must be True, False or None, got {self.rows_kernel!r}")

    @property
    def label(self) -> str:
        """Short name, e.g. ``rows b4096 w8`` (``auto`` / ``b-`` / ``w-`` for fields left to the heuristics)."""
        kind = {None: "auto", True: "rows", False: "tiles"}[self.rows_kernel]
        b = "-" if self.block is None else self.block
        w = "-" if self.num_warps is None else self.num_warps
        return f"{kind} b{b} w{w}"


@dataclass(frozen=True)
class LaunchParams:
    """What a launch uses: the kernel shape, its constants, warps and grid (from :func:`launch_params`).

    ``block`` is the elements per program (``BLOCK``, or ``rows * cols`` for the
    tile kernel); ``nblk`` the row kernel's programs per row and ``nrows`` the
    tile kernel's row count (0 for the other kernel, as ``rows`` / ``cols``).
    """

    rows_kernel: bool
    block: int
    num_warps: int
    grid: int
    nblk: int = 0
    nrows: int = 0
    rows: int = 0
    cols: int = 0

    @property
    def config(self) -> LaunchConfig:
        """The :class:`LaunchConfig` that reproduces this launch exactly."""
        return LaunchConfig(block=self.block, num_warps=self.num_warps, rows_kernel=self.rows_kernel)

    @property
    def label(self) -> str:
        """``rows b4096 w8`` or ``tiles 16x256 w8``."""
        if self.rows_kernel:
            return f"rows b{self.block} w{self.num_warps}"
        return f"tiles {self.rows}x{self.cols} w{self.num_warps}"


def _check_launch(lp: LaunchParams, inner: int) -> None:
    """The checks of a configured launch that depend on the tensor (ValueError naming the field)."""
    if not lp.rows_kernel and lp.cols > _CONFIG_MAX_BLOCK:
        raise ValueError(
            f"LaunchConfig: rows_kernel=False needs whole rows in one tile, but a row of inner={inner} elements "
            f"needs {lp.cols} columns (at most {_CONFIG_MAX_BLOCK}); use the row kernel"
        )
    per_thread = lp.block // (32 * lp.num_warps)
    if per_thread > _CONFIG_MAX_PER_THREAD:  # only with num_warps given: the heuristic's warps keep it <= 256
        raise ValueError(
            f"LaunchConfig: num_warps: {lp.block} elements per program on {lp.num_warps} warps is {per_thread} "
            f"elements per thread (at most {_CONFIG_MAX_PER_THREAD}); raise num_warps or lower block"
        )
    if lp.grid > _MAX_GRID:
        raise ValueError(
            f"LaunchConfig: block: the launch needs {lp.grid} programs (at most {_MAX_GRID}); use a larger block"
            + (" or the tile kernel (rows_kernel)" if lp.rows_kernel and inner < ROW_KERNEL_MIN_INNER else "")
        )


def launch_params(inner: int, numel: int, config: Optional[LaunchConfig] = None) -> LaunchParams:
    """The launch of a dense tensor of ``numel`` elements in rows of ``inner``, as the launchers make it.

    ``config`` (a :class:`LaunchConfig`) overrides the heuristics field by field;
    ``None`` keeps them.  A configured launch that cannot run raises ``ValueError``.
    """
    if config is None:
        if type(inner) is int and type(numel) is int:  # not SymInts (tracing): cached, a launch costs host time
            return _heuristic_params(inner, numel, ROW_KERNEL_MIN_INNER, MAX_BLOCK, _TILE)
        return _params(inner, numel, _NO_CONFIG)
    if not isinstance(config, LaunchConfig):
        raise TypeError(f"config must be a LaunchConfig or None, got {type(config).__name__}")
    lp = _params(inner, numel, config)
    _check_launch(lp, inner)
    return lp


_NO_CONFIG = LaunchConfig()


@functools.lru_cache(maxsize=512)
def _heuristic_params(inner: int, numel: int, _min_inner: int, _max_block: int, _tile: int) -> LaunchParams:
    # The heuristics' module constants are part of the key: tests patch them.
    return _params(inner, numel, _NO_CONFIG)


def _params(inner, numel, cfg: LaunchConfig) -> LaunchParams:
    use_rows = cfg.rows_kernel
    if use_rows is None:
        use_rows = inner >= ROW_KERNEL_MIN_INNER or inner == numel
    if use_rows:
        block = row_block(inner) if cfg.block is None else cfg.block
        nblk = -(-inner // block)
        rows = numel // inner
        warps = num_warps(block) if cfg.num_warps is None else cfg.num_warps
        return LaunchParams(True, block, warps, rows * nblk, nblk=nblk)
    cols = next_pow2(inner)
    nrows = numel // inner
    if cfg.block is None:
        rows_per = max(1, _TILE // cols)
        if INTERPRET:
            rows_per = min(rows_per, next_pow2(nrows))
    else:
        rows_per = max(1, cfg.block // cols)
    warps = num_warps(rows_per * cols) if cfg.num_warps is None else cfg.num_warps
    return LaunchParams(False, rows_per * cols, warps, -(-nrows // rows_per), nrows=nrows, rows=rows_per, cols=cols)


def _identity(kernel):
    return kernel


def _launch(rows_kernel, tiles_kernel, tensors, scale, alpha, n, inner, acc64, wrap, config=None):
    numel = tensors[0].numel()
    lp = launch_params(inner, numel, config)
    hi, mid, lo = split_alpha(alpha)
    wrap = wrap or _identity
    if lp.rows_kernel:
        wrap(rows_kernel)[(lp.grid,)](
            *tensors, scale, hi, mid, lo, inner, n, lp.nblk,
            BLOCK=lp.block, ACC64=acc64, num_warps=lp.num_warps,
        )
    else:
        wrap(tiles_kernel)[(lp.grid,)](
            *tensors, scale, hi, mid, lo, inner, n, lp.nrows,
            ROWS=lp.rows, COLS=lp.cols, ACC64=acc64, num_warps=lp.num_warps,
        )


def launch_scaled_residual_add(out, residual, branch, scale, alpha, n, inner, wrap=None, *, config=None):
    """out = residual + branch * (scale[s] * alpha) (kept), residual (dropped, branch unread).

    All three tensors dense with ``out``'s strides; ``scale`` contiguous fp32/fp64
    holding ``n`` values (or one, with ``n == 1``); ``(n, inner)`` from :func:`plan`.
    ``config``: a :class:`LaunchConfig` overriding the launch heuristics (None keeps them).
    """
    if out.numel() == 0:
        return out
    import torch

    acc64 = torch.float64 in (residual.dtype, branch.dtype, out.dtype)
    _launch(_residual_add_rows_kernel, _residual_add_tiles_kernel, (out, residual, branch),
            scale, alpha, n, inner, acc64, wrap, config)
    return out


def launch_sample_scale(out, x, scale, alpha, n, inner, wrap=None, *, config=None):
    """out = x * (scale[s] * alpha) (kept), zeros (dropped, x unread).  Arguments as above."""
    if out.numel() == 0:
        return out
    import torch

    acc64 = torch.float64 in (x.dtype, out.dtype)
    _launch(_sample_scale_rows_kernel, _sample_scale_tiles_kernel, (out, x), scale, alpha, n, inner, acc64, wrap,
            config)
    return out
