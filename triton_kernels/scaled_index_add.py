"""Triton kernels of the skip-path ops and their launchers.

``scaled_index_add``: ``out = residual`` with ``out[index[j]] += src[j] * alpha``
along the sample dim; ``index_scale``: ``out[j] = grad[index[j]] * alpha``.
(Registered as ``sdkernels::scaled_index_add_triton`` and
``sdkernels::index_scale_triton`` by ``sdkernels/skip.py``.)

Layout: every tensor is a dense block ``[outer, n, inner]`` (``inner`` = the
sample dim's stride, the whole tensor when ``n == 1``; the rule of
``csrc/common/sample_layout.h``); a k-sample partner (``src``, index_scale's
output) is ``[outer, k, inner]`` with the same outer and inner.

* ``scaled_index_add`` walks the output's rows ``(o, s)``; ``inv[s]`` (the
  inverse map built by the caller: ``j`` with ``index[j] == s``, else -1)
  says whether the row copies the residual or adds ``src`` row ``(o, inv[s])``
  times alpha.  One pass over residual and src, every output element written
  by exactly one program: no atomics.
* ``index_scale`` walks its output's rows ``(o, j)`` and reads grad row
  ``(o, index[j])``.

Two kernel shapes per op, as in ``drop_path.py``: a row kernel (rows of at
least ``ROW_KERNEL_MIN_INNER`` elements: one (row, column block) tile per
program, 1D grid) that branches on the row's sample, and a tile kernel for
short rows (``ROWS x COLS`` tiles, loads masked by the row's keep flag).

Math is fp32 (fp64 when ``ACC64``), offsets int64.  ``alpha`` arrives as
three fp32 pieces ``hi + mid + lo == alpha`` so fp64 math gets the exact
double whatever type the runtime gives float scalars.  Index range and
uniqueness are the caller's responsibility (not checked on the device;
``drop_path_residual`` only passes ``randperm``/``nonzero`` outputs).
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "INTERPRET",
    "ROW_KERNEL_MIN_INNER",
    "KERNELS",
    "split_alpha",
    "plan",
    "in_layout",
    "launch_scaled_index_add",
    "launch_index_scale",
]

ROW_KERNEL_MIN_INNER = 1024
_TILE = 4096

# Shared with the core kernels: conversion to the math type, rounding to the
# output type, alpha's fp32 split and the block/warp choice.
# TRITON_INTERPRET too, read once there.
from .drop_path import split_alpha
from .common import INTERPRET, alpha_value, next_pow2, num_warps, row_block, to_acc, to_out


@triton.jit
def _sia_rows_kernel(
    out_ptr, res_ptr, src_ptr, inv_ptr, a_hi, a_mid, a_lo,
    inner, n, k, nblk,
    BLOCK: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // nblk
    cb = pid - row * nblk
    s = row % n
    o = row // n
    j = tl.load(inv_ptr + s)
    cols = cb.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    offs = row.to(tl.int64) * inner + cols
    r = to_acc(tl.load(res_ptr + offs, mask=mask), ACC64)
    if j >= 0:
        m = alpha_value(a_hi, a_mid, a_lo, ACC64)
        soffs = (o.to(tl.int64) * k + j) * inner + cols
        b = to_acc(tl.load(src_ptr + soffs, mask=mask), ACC64)
        tl.store(out_ptr + offs, to_out(r + b * m, out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + offs, to_out(r, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sia_tiles_kernel(
    out_ptr, res_ptr, src_ptr, inv_ptr, a_hi, a_mid, a_lo,
    inner, n, k, nrows,
    ROWS: tl.constexpr, COLS: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    row_ok = rows < nrows
    j = tl.load(inv_ptr + rows % n, mask=row_ok, other=-1)
    kept = j >= 0
    o = rows // n
    m = alpha_value(a_hi, a_mid, a_lo, ACC64)
    mask = row_ok[:, None] & (cols < inner)[None, :]
    offs = rows[:, None] * inner + cols[None, :]
    soffs = (o * k + j)[:, None] * inner + cols[None, :]
    r = to_acc(tl.load(res_ptr + offs, mask=mask), ACC64)
    b = to_acc(tl.load(src_ptr + soffs, mask=mask & kept[:, None], other=0), ACC64)
    res = tl.where(kept[:, None], r + b * m, r)
    tl.store(out_ptr + offs, to_out(res, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _is_rows_kernel(
    out_ptr, g_ptr, idx_ptr, a_hi, a_mid, a_lo,
    inner, n, k, nblk,
    BLOCK: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    row = pid // nblk  # output row (o, j)
    cb = pid - row * nblk
    j = row % k
    o = row // k
    s = tl.load(idx_ptr + j)
    cols = cb.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inner
    goffs = (o.to(tl.int64) * n + s) * inner + cols
    m = alpha_value(a_hi, a_mid, a_lo, ACC64)
    g = to_acc(tl.load(g_ptr + goffs, mask=mask), ACC64)
    tl.store(out_ptr + row.to(tl.int64) * inner + cols, to_out(g * m, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _is_tiles_kernel(
    out_ptr, g_ptr, idx_ptr, a_hi, a_mid, a_lo,
    inner, n, k, nrows,
    ROWS: tl.constexpr, COLS: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, COLS)
    row_ok = rows < nrows
    s = tl.load(idx_ptr + rows % k, mask=row_ok, other=0)
    o = rows // k
    mask = row_ok[:, None] & (cols < inner)[None, :]
    goffs = (o * n + s)[:, None] * inner + cols[None, :]
    m = alpha_value(a_hi, a_mid, a_lo, ACC64)
    g = to_acc(tl.load(g_ptr + goffs, mask=mask), ACC64)
    offs = rows[:, None] * inner + cols[None, :]  # one int64 offset (not ptr + row part + int32 cols)
    tl.store(out_ptr + offs, to_out(g * m, out_ptr.dtype.element_ty), mask=mask)


#: Every kernel, for ahead-of-time compile checks.
KERNELS = {
    "scaled_index_add_rows": _sia_rows_kernel,
    "scaled_index_add_tiles": _sia_tiles_kernel,
    "index_scale_rows": _is_rows_kernel,
    "index_scale_tiles": _is_tiles_kernel,
}


# ----------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------


def plan(t, sample_dim: int):
    """(n, inner) of the ``[outer, n, inner]`` view of the dense tensor ``t``."""
    n = t.shape[sample_dim]
    if n == 1:
        return 1, t.numel()
    return n, t.stride(sample_dim)


def in_layout(t, like):
    """t itself when it addresses memory as the dense ``like`` does (size-1 dims aside), else a copy."""
    import torch

    # Same sizes and the same strides on every dim of size > 1 as a dense tensor: t is dense too.
    if all(sz == 1 or a == b for sz, a, b in zip(like.shape, t.stride(), like.stride())):
        return t
    dst = torch.empty_strided(like.shape, like.stride(), dtype=t.dtype, device=t.device)
    dst.copy_(t)
    return dst


def _launch(rows_kernel, tiles_kernel, tensors, alpha, n, inner, k, out_rows, acc64, wrap):
    hi, mid, lo = split_alpha(alpha)
    wrap = wrap or (lambda kern: kern)
    if inner >= ROW_KERNEL_MIN_INNER or out_rows == 1:
        block = row_block(inner)
        nblk = -(-inner // block)
        wrap(rows_kernel)[(out_rows * nblk,)](
            *tensors, hi, mid, lo, inner, n, k, nblk,
            BLOCK=block, ACC64=acc64, num_warps=num_warps(block),
        )
    else:
        cols = next_pow2(inner)
        rows_per = max(1, _TILE // cols)
        if INTERPRET:
            rows_per = min(rows_per, next_pow2(out_rows))
        wrap(tiles_kernel)[(-(-out_rows // rows_per),)](
            *tensors, hi, mid, lo, inner, n, k, out_rows,
            ROWS=rows_per, COLS=cols, ACC64=acc64, num_warps=num_warps(rows_per * cols),
        )


def launch_scaled_index_add(out, residual, src, inv, alpha, n, inner, k, wrap=None):
    """out = residual; rows (o, s) with ``inv[s] = j >= 0`` get ``+ src[(o, j)] * alpha``.

    ``residual`` in ``out``'s layout, ``src`` in the k-sample layout; ``inv``
    int64 of n values; ``(n, inner)`` from :func:`plan` of ``out``.
    """
    if out.numel() == 0:
        return out
    import torch

    acc64 = torch.float64 in (residual.dtype, src.dtype, out.dtype)
    rows = out.numel() // inner
    _launch(_sia_rows_kernel, _sia_tiles_kernel, (out, residual, src, inv), alpha, n, inner, max(k, 1), rows, acc64, wrap)
    return out


def launch_index_scale(out, grad, index, alpha, n, inner, k, wrap=None):
    """out rows (o, j) = grad rows (o, index[j]) * alpha.  ``(n, inner)`` from :func:`plan` of grad."""
    if out.numel() == 0:
        return out
    import torch

    acc64 = torch.float64 in (grad.dtype, out.dtype)
    rows = out.numel() // inner
    _launch(_is_rows_kernel, _is_tiles_kernel, (out, grad, index), alpha, n, inner, k, rows, acc64, wrap)
    return out
