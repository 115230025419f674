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
``out`` and inputs already in ``out``'s strides.
"""
from __future__ import annotations

import math
import os
import struct

import triton
import triton.language as tl

__all__ = [
    "INTERPRET",
    "ROW_KERNEL_MIN_INNER",
    "split_alpha",
    "plan",
    "launch_scaled_residual_add",
    "launch_sample_scale",
    "KERNELS",
]

# Read once, as @triton.jit does: the interpreter and compiled kernels never mix in one process.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Launch heuristics (no autotuning: one config, fine for the interpreter, CUDA graphs and
# torch.compile).  These numbers are first guesses from the usual elementwise-kernel shapes
# (>= 16 bytes per thread per tensor for 128-bit accesses, a few KB per program) and await
# GPU measurement (benchmarks, issue 4).
# Rows at least this long take the row kernel; shorter ones the tile kernel.
ROW_KERNEL_MIN_INNER = 1024
_MAX_BLOCK = 4096  # elements per program of the row kernel (16 per thread at 8 warps)
_TILE = 4096  # elements per program of the tile kernel (ROWS * COLS)
_MAX_WASTE = 0.125  # the row kernel's block size leaves at most this idle fraction per row when it can


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


_INTERP = tl.constexpr(INTERPRET)


@triton.jit
def _to_acc(x, ACC64: tl.constexpr):
    """x in the math type (fp64 when ACC64, else fp32), converted before any arithmetic.

    16-bit values reach fp64 through fp32 (exact; the interpreter cannot cast bf16 to fp64 directly).
    """
    if ACC64:
        if x.dtype == tl.float64:
            return x
        else:
            return x.to(tl.float32).to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _to_out(x, OUT: tl.constexpr):
    """x (fp32 or fp64) rounded to nearest-even in the output type.

    fp64 goes to 16-bit types through fp32, as torch's own conversions do.  The
    interpreter truncates fp32 -> bf16, so there the rounding is done on the bits.
    """
    if x.dtype == tl.float64 and (OUT == tl.bfloat16 or OUT == tl.float16):
        y = x.to(tl.float32)
    else:
        y = x
    if _INTERP and OUT == tl.bfloat16:
        u = y.to(tl.uint32, bitcast=True)
        rne = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        bits = tl.where(y != y, (u >> 16) | 0x40, rne)  # NaN stays a (quiet) NaN
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return y.to(OUT)


@triton.jit
def _multiplier(sc, a_hi, a_mid, a_lo, ACC64: tl.constexpr):
    """m = scale * alpha in the math type (alpha rebuilt exactly from its fp32 pieces for fp64)."""
    if ACC64:
        alpha = tl.cast(a_hi, tl.float64) + tl.cast(a_mid, tl.float64) + tl.cast(a_lo, tl.float64)
        return sc.to(tl.float64) * alpha
    else:
        return sc.to(tl.float32) * tl.cast(a_hi, tl.float32)


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
    r = _to_acc(tl.load(res_ptr + offs, mask=mask), ACC64)
    if sc != 0:
        m = _multiplier(sc, a_hi, a_mid, a_lo, ACC64)
        b = _to_acc(tl.load(br_ptr + offs, mask=mask), ACC64)
        tl.store(out_ptr + offs, _to_out(r + b * m, out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + offs, _to_out(r, out_ptr.dtype.element_ty), mask=mask)


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
    m = _multiplier(sc, a_hi, a_mid, a_lo, ACC64)
    offs = rows[:, None] * inner + cols[None, :]
    mask = row_ok[:, None] & (cols < inner)[None, :]
    r = _to_acc(tl.load(res_ptr + offs, mask=mask), ACC64)
    b = _to_acc(tl.load(br_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
    o = tl.where(kept[:, None], r + b * m[:, None], r)
    tl.store(out_ptr + offs, _to_out(o, out_ptr.dtype.element_ty), mask=mask)


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
        m = _multiplier(sc, a_hi, a_mid, a_lo, ACC64)
        x = _to_acc(tl.load(x_ptr + offs, mask=mask), ACC64)
        tl.store(out_ptr + offs, _to_out(x * m, out_ptr.dtype.element_ty), mask=mask)
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
    m = _multiplier(sc, a_hi, a_mid, a_lo, ACC64)
    offs = rows[:, None] * inner + cols[None, :]
    mask = row_ok[:, None] & (cols < inner)[None, :]
    x = _to_acc(tl.load(x_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
    o = tl.where(kept[:, None], x * m[:, None], 0.0)
    tl.store(out_ptr + offs, _to_out(o, out_ptr.dtype.element_ty), mask=mask)


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
    hi = _f32(alpha)
    if not math.isfinite(hi):
        return hi, 0.0, 0.0
    r1 = alpha - hi  # exact in fp64
    mid = _f32(r1)
    lo = _f32(r1 - mid)
    return hi, mid, lo


def plan(out, sample_dim: int, scale_numel: int):
    """(n, inner) of the ``[outer, n, inner]`` view of the dense tensor ``out``.

    One value of scale (or one sample) makes the whole tensor a single row.
    """
    numel = out.numel()
    n = out.shape[sample_dim]
    if scale_numel == 1 or n == 1:
        return 1, numel
    return n, out.stride(sample_dim)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _row_block(inner: int) -> int:
    """Block of the row kernel: the largest power of two <= 4096 leaving <= 1/8 of the row's lanes idle."""
    if INTERPRET:
        # Fewer, larger programs run faster on the interpreter; tails still get hit.
        return min(_MAX_BLOCK, _next_pow2(inner))
    best, best_waste = _MAX_BLOCK, None
    b = _MAX_BLOCK
    while b >= 256:
        padded = -(-inner // b) * b
        waste = (padded - inner) / padded
        if waste <= _MAX_WASTE:
            return b
        if best_waste is None or waste < best_waste:
            best, best_waste = b, waste
        b //= 2
    return best


def _num_warps(block: int) -> int:
    # >= 8 elements per thread: a 16-byte vector for 16-bit types, two for fp32.
    return max(1, min(8, block // 256))


def _identity(kernel):
    return kernel


def _launch(rows_kernel, tiles_kernel, tensors, scale, alpha, n, inner, acc64, wrap):
    numel = tensors[0].numel()
    hi, mid, lo = split_alpha(alpha)
    wrap = wrap or _identity
    if inner >= ROW_KERNEL_MIN_INNER or inner == numel:
        block = _row_block(inner)
        nblk = -(-inner // block)
        rows = numel // inner
        wrap(rows_kernel)[(rows * nblk,)](
            *tensors, scale, hi, mid, lo, inner, n, nblk,
            BLOCK=block, ACC64=acc64, num_warps=_num_warps(block),
        )
    else:
        cols = _next_pow2(inner)
        rows_per = max(1, _TILE // cols)
        nrows = numel // inner
        if INTERPRET:
            rows_per = min(rows_per, _next_pow2(nrows))
        wrap(tiles_kernel)[(-(-nrows // rows_per),)](
            *tensors, scale, hi, mid, lo, inner, n, nrows,
            ROWS=rows_per, COLS=cols, ACC64=acc64, num_warps=_num_warps(rows_per * cols),
        )


def launch_scaled_residual_add(out, residual, branch, scale, alpha, n, inner, wrap=None):
    """out = residual + branch * (scale[s] * alpha) (kept), residual (dropped, branch unread).

    All three tensors dense with ``out``'s strides; ``scale`` contiguous fp32/fp64
    holding ``n`` values (or one, with ``n == 1``); ``(n, inner)`` from :func:`plan`.
    """
    if out.numel() == 0:
        return out
    import torch

    acc64 = torch.float64 in (residual.dtype, branch.dtype, out.dtype)
    _launch(_residual_add_rows_kernel, _residual_add_tiles_kernel, (out, residual, branch),
            scale, alpha, n, inner, acc64, wrap)
    return out


def launch_sample_scale(out, x, scale, alpha, n, inner, wrap=None):
    """out = x * (scale[s] * alpha) (kept), zeros (dropped, x unread).  Arguments as above."""
    if out.numel() == 0:
        return out
    import torch

    acc64 = torch.float64 in (x.dtype, out.dtype)
    _launch(_sample_scale_rows_kernel, _sample_scale_tiles_kernel, (out, x), scale, alpha, n, inner, acc64, wrap)
    return out
