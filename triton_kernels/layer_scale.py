"""Triton kernels of the LayerScale ops and their launchers.

The ops (``csrc/ops.cpp``, spec in ``sdkernels/reference.py``)::

    scaled_residual_add_ls: out = residual + (branch * gamma[c]) * m[s]   (kept s; residual for dropped s)
    sample_scale_ls:        out = (x * gamma[c]) * m[s]                   (kept s; zeros for dropped s)
    layer_scale_grads:      grad_branch = (grad * gamma[c]) * m[s], grad_gamma[c] = sum (grad * m[s]) * branch

with ``m[s] = scale[s] * alpha``, each multiply and the add rounded separately
(PTX ``mul.rn`` / ``add.rn``: no FMA contraction, no flush to zero, so fp32 results are bit for
bit eager timm's), math in fp32 (fp64 when ``ACC64``), 64-bit offsets.

Row view (the rule of ``csrc/common/layer_scale.h``, :func:`ls_view`): the
dense output is seen as ``[rows, L]`` where each row lies in one sample
(``sample(row) = (row // s_div) % n``) and gamma is either per column
(``GAMMA_COLS``: the channel dim is innermost, ``L = C``: tokens,
channels_last, seq-first) or one value per row (``channel(row) = (row //
c_div) % C``: contiguous NCHW, or a channel dim outside the sample dim).
Every kernel is a 2D tile of ``ROWS x COLS``; a dropped row's branch (or
grad) loads are masked off, so it is never read.

The gamma gradient is reduced without atomics: with ``GAMMA_COLS`` each
program owns a group of rows and a block of columns and writes one partial
per column (zeros when its group is empty: a grid larger than the rows must
still write every partial); with gamma per row each program writes one
partial per row.  The partials (``[O, C, c_div]``, see :func:`ls_view`) are
then summed in a fixed order by the caller.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import triton
import triton.language as tl

from .drop_path import split_alpha
from .common import INTERPRET, multiplier, next_pow2, num_warps, to_acc, to_out

__all__ = ["LsView", "ls_view", "ls_launch_params", "launch_residual_add_ls", "launch_sample_scale_ls",
           "launch_layer_scale_grads", "KERNELS", "MAX_PROGRAMS"]

_INTERP = tl.constexpr(INTERPRET)
_TILE = 4096  # elements per program
_MAX_COLS = 4096
#: Programs of the gamma_cols backward grid (a few per SM of an H100/H200; the interpreter uses few).
MAX_PROGRAMS = 4 if INTERPRET else 528


# a * b and a + b each rounded once: PTX mul.rn / add.rn, which ptxas never contracts into an FMA
# (a plain `*` followed by `+` may become one), and without .ftz (libdevice's mul_rn flushes denormals
# under Triton's FTZ setting, eager torch does not).  The interpreter's numpy rounds each operation.
@triton.jit
def _mul(a, b):
    if _INTERP:
        return a * b
    else:
        x, y = tl.broadcast(a, b)
        if x.dtype == tl.float64:
            return tl.inline_asm_elementwise("mul.rn.f64 $0, $1, $2;", "=d,d,d", [x, y], dtype=tl.float64,
                                             is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [x, y], dtype=tl.float32,
                                             is_pure=True, pack=1)


@triton.jit
def _add(a, b):
    if _INTERP:
        return a + b
    else:
        x, y = tl.broadcast(a, b)
        if x.dtype == tl.float64:
            return tl.inline_asm_elementwise("add.rn.f64 $0, $1, $2;", "=d,d,d", [x, y], dtype=tl.float64,
                                             is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise("add.rn.f32 $0, $1, $2;", "=f,f,f", [x, y], dtype=tl.float32,
                                             is_pure=True, pack=1)


@triton.jit
def _row_factors(scale_ptr, gamma_ptr, rws, cols, row_ok, col_ok, s_div, n, c_div, C, a_hi, a_mid, a_lo,
                 GAMMA_COLS: tl.constexpr, ACC64: tl.constexpr):
    """(kept [ROWS], m [ROWS, 1], gamma broadcastable to [ROWS, COLS]) of a tile, in the math type."""
    sc = tl.load(scale_ptr + (rws // s_div) % n, mask=row_ok, other=0)
    kept = sc != 0
    m = multiplier(sc, a_hi, a_mid, a_lo, ACC64)
    if GAMMA_COLS:
        g = to_acc(tl.load(gamma_ptr + cols, mask=col_ok, other=0), ACC64)[None, :]
    else:
        g = to_acc(tl.load(gamma_ptr + (rws // c_div) % C, mask=row_ok, other=0), ACC64)[:, None]
    return kept, m[:, None], g


@triton.jit
def _tile(scale_ptr, gamma_ptr, a_hi, a_mid, a_lo, rows, L, s_div, n, c_div, C, ncb,
          ROWS: tl.constexpr, COLS: tl.constexpr, GAMMA_COLS: tl.constexpr, ACC64: tl.constexpr):
    """This program's ROWS x COLS tile of the forward grid (row-block major): offsets, mask and factors."""
    pid = tl.program_id(0)
    rb = pid // ncb
    cb = pid - rb * ncb
    rws = rb.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = cb.to(tl.int64) * COLS + tl.arange(0, COLS)
    row_ok = rws < rows
    col_ok = cols < L
    kept, m, g = _row_factors(scale_ptr, gamma_ptr, rws, cols, row_ok, col_ok, s_div, n, c_div, C,
                              a_hi, a_mid, a_lo, GAMMA_COLS, ACC64)
    return rws[:, None] * L + cols[None, :], row_ok[:, None] & col_ok[None, :], kept, m, g


@triton.jit
def _ls_add_kernel(
    out_ptr, res_ptr, br_ptr, scale_ptr, gamma_ptr, a_hi, a_mid, a_lo,
    rows, L, s_div, n, c_div, C, ncb,
    ROWS: tl.constexpr, COLS: tl.constexpr, GAMMA_COLS: tl.constexpr, ACC64: tl.constexpr,
):
    offs, mask, kept, m, g = _tile(scale_ptr, gamma_ptr, a_hi, a_mid, a_lo, rows, L, s_div, n, c_div, C, ncb,
                                   ROWS, COLS, GAMMA_COLS, ACC64)
    r = to_acc(tl.load(res_ptr + offs, mask=mask), ACC64)
    b = to_acc(tl.load(br_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
    o = tl.where(kept[:, None], _add(r, _mul(_mul(b, g), m)), r)
    tl.store(out_ptr + offs, to_out(o, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ls_scale_kernel(
    out_ptr, x_ptr, scale_ptr, gamma_ptr, a_hi, a_mid, a_lo,
    rows, L, s_div, n, c_div, C, ncb,
    ROWS: tl.constexpr, COLS: tl.constexpr, GAMMA_COLS: tl.constexpr, ACC64: tl.constexpr,
):
    offs, mask, kept, m, g = _tile(scale_ptr, gamma_ptr, a_hi, a_mid, a_lo, rows, L, s_div, n, c_div, C, ncb,
                                   ROWS, COLS, GAMMA_COLS, ACC64)
    x = to_acc(tl.load(x_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
    o = tl.where(kept[:, None], _mul(_mul(x, g), m), 0.0)
    tl.store(out_ptr + offs, to_out(o, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ls_grads_tile(gb_ptr, go_ptr, br_ptr, offs, mask, kept, m, g, ACC64: tl.constexpr):
    """grad_branch of a tile (stored) and its gamma-gradient terms (grad * m) * branch (0 where dropped)."""
    go = to_acc(tl.load(go_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
    b = to_acc(tl.load(br_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
    gb = tl.where(kept[:, None], _mul(_mul(go, g), m), 0.0)
    tl.store(gb_ptr + offs, to_out(gb, gb_ptr.dtype.element_ty), mask=mask)
    return tl.where(kept[:, None] & mask, _mul(_mul(go, m), b), 0.0)


@triton.jit
def _ls_grads_cols_kernel(
    gb_ptr, go_ptr, br_ptr, scale_ptr, gamma_ptr, part_ptr, a_hi, a_mid, a_lo,
    rows, L, s_div, n, rows_per_group, ncb,
    ROWS: tl.constexpr, COLS: tl.constexpr, ACC64: tl.constexpr,
):
    """Gamma per column: program (group, column block) loops over its group's rows; one partial per column."""
    pid = tl.program_id(0)
    grp = pid // ncb
    cb = pid - grp * ncb
    cols = cb.to(tl.int64) * COLS + tl.arange(0, COLS)
    col_ok = cols < L
    r0 = grp.to(tl.int64) * rows_per_group
    r1 = tl.minimum(r0 + rows_per_group, rows)
    if ACC64:
        acc = tl.zeros([COLS], dtype=tl.float64)
    else:
        acc = tl.zeros([COLS], dtype=tl.float32)
    for start in range(r0, r1, ROWS):
        rws = start + tl.arange(0, ROWS)
        row_ok = rws < r1
        kept, m, g = _row_factors(scale_ptr, gamma_ptr, rws, cols, row_ok, col_ok, s_div, n, 1, 1,
                                  a_hi, a_mid, a_lo, True, ACC64)
        offs = rws[:, None] * L + cols[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        acc += tl.sum(_ls_grads_tile(gb_ptr, go_ptr, br_ptr, offs, mask, kept, m, g, ACC64), axis=0)
    # Every program writes its partials, an empty group zeros.
    tl.store(part_ptr + grp.to(tl.int64) * L + cols, acc, mask=col_ok)


@triton.jit
def _ls_grads_rows_kernel(
    gb_ptr, go_ptr, br_ptr, scale_ptr, gamma_ptr, part_ptr, a_hi, a_mid, a_lo,
    rows, L, s_div, n, c_div, C,
    ROWS: tl.constexpr, COLS: tl.constexpr, ACC64: tl.constexpr,
):
    """Gamma per row: program owns ROWS rows and loops over their columns; one partial per row."""
    pid = tl.program_id(0)
    rws = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rws < rows
    if ACC64:
        acc = tl.zeros([ROWS], dtype=tl.float64)
    else:
        acc = tl.zeros([ROWS], dtype=tl.float32)
    for c0 in range(0, L, COLS):
        cols = c0 + tl.arange(0, COLS).to(tl.int64)
        col_ok = cols < L
        kept, m, g = _row_factors(scale_ptr, gamma_ptr, rws, cols, row_ok, col_ok, s_div, n, c_div, C,
                                  a_hi, a_mid, a_lo, False, ACC64)
        offs = rws[:, None] * L + cols[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        acc += tl.sum(_ls_grads_tile(gb_ptr, go_ptr, br_ptr, offs, mask, kept, m, g, ACC64), axis=1)
    tl.store(part_ptr + rws, acc, mask=row_ok)


# Every kernel, for the ahead-of-time compile tests.
KERNELS = {
    "ls_add": _ls_add_kernel,
    "ls_scale": _ls_scale_kernel,
    "ls_grads_cols": _ls_grads_cols_kernel,
    "ls_grads_rows": _ls_grads_rows_kernel,
}


# ----------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LsView:
    """The ``[rows, L]`` row view of a dense tensor (``csrc/common/layer_scale.h``'s ``LsRowView``)."""

    rows: int
    L: int
    s_div: int
    n: int
    c_div: int
    C: int
    gamma_cols: bool

    def partial_outer(self, groups: int) -> int:
        """O of the partials' ``[O, C, c_div]`` layout: the groups (gamma per column), else rows / (C c_div)."""
        return groups if self.gamma_cols else self.rows // (self.C * self.c_div)


def plan_rows(numel: int, inner: int, n: int, K: int, C: int) -> LsView:
    """The row view of ``numel`` elements: samples ``(i // inner) % n``, channels ``(i // K) % C``."""
    C = max(C, 1)
    n = max(n, 1)
    if C == 1:
        K = inner
    if C > 1 and K == 1:
        L, s_div, c_div, cols = C, (inner // C if n > 1 else 1), 1, True
    elif n > 1 and K > inner:
        L, s_div, c_div, cols = inner, 1, K // inner, False
    else:
        L, s_div, c_div, cols = K, (inner // K if n > 1 else 1), 1, False
    L = max(L, 1)
    return LsView(numel // L, L, max(s_div, 1), n, max(c_div, 1), C, cols)


def ls_view(out, sample_dim: int, channel_dim: int, scale_numel: int) -> LsView:
    """The row view of the dense tensor ``out`` (inputs already in its layout)."""
    numel = out.numel()
    n = out.shape[sample_dim]
    if scale_numel == 1 or n == 1:
        n, inner = 1, numel
    else:
        inner = out.stride(sample_dim)
    C = out.shape[channel_dim]
    return plan_rows(numel, inner, n, out.stride(channel_dim) if C > 1 else inner, C)


@dataclass(frozen=True)
class LsLaunch:
    rows_per_tile: int  # ROWS
    cols: int  # COLS
    num_warps: int
    grid: int
    ncb: int  # column blocks
    groups: int = 0  # gamma_cols backward: row groups
    rows_per_group: int = 0


def ls_launch_params(rows: int, L: int, backward: bool, gamma_cols: bool) -> LsLaunch:
    """Tile and grid of a launch over ``[rows, L]`` (cached for plain ints: a launch costs host time)."""
    if type(rows) is int and type(L) is int:  # not SymInts (tracing with dynamic shapes): unhashable there
        return _cached_params(rows, L, backward, gamma_cols, _TILE, _MAX_COLS, MAX_PROGRAMS)
    return _params(rows, L, backward, gamma_cols)


@functools.lru_cache(maxsize=512)
def _cached_params(rows, L, backward, gamma_cols, _tile, _max_cols, _max_programs) -> LsLaunch:
    # The module constants are part of the key: tests patch them.
    return _params(rows, L, backward, gamma_cols)


def _params(rows, L, backward: bool, gamma_cols: bool) -> LsLaunch:
    if backward and not gamma_cols:  # a program per ROWS rows, looping over the columns
        cols = min(next_pow2(L), 1024)
        rt = max(1, min(_TILE // cols, next_pow2(rows)))
        return LsLaunch(rt, cols, num_warps(rt * cols), -(-rows // rt), 1)
    cols = min(next_pow2(L), _MAX_COLS)
    ncb = -(-L // cols)
    rt = max(1, _TILE // cols)
    if INTERPRET:
        rt = min(rt, next_pow2(rows))
    if not backward:
        return LsLaunch(rt, cols, num_warps(rt * cols), -(-rows // rt) * ncb, ncb)
    groups = max(1, min(-(-rows // rt), MAX_PROGRAMS // ncb))
    per = -(-rows // groups)
    return LsLaunch(rt, cols, num_warps(rt * cols), groups * ncb, ncb, groups, per)


def _identity(kernel):
    return kernel


def _acc64(*tensors) -> bool:
    import torch

    return any(t.dtype == torch.float64 for t in tensors)


def launch_residual_add_ls(out, residual, branch, scale, gamma, alpha, v: LsView, wrap=None):
    """out = residual + (branch * gamma[c]) * (scale[s] * alpha) (kept), residual (dropped, branch unread).

    Tensors dense in ``out``'s strides, ``scale`` contiguous, ``gamma`` contiguous in the math dtype;
    ``v`` from :func:`ls_view`.
    """
    if out.numel() == 0:
        return out
    lp = ls_launch_params(v.rows, v.L, False, v.gamma_cols)
    hi, mid, lo = split_alpha(alpha)
    (wrap or _identity)(_ls_add_kernel)[(lp.grid,)](
        out, residual, branch, scale, gamma, hi, mid, lo, v.rows, v.L, v.s_div, v.n, v.c_div, v.C, lp.ncb,
        ROWS=lp.rows_per_tile, COLS=lp.cols, GAMMA_COLS=v.gamma_cols, ACC64=_acc64(out, residual, branch, gamma),
        num_warps=lp.num_warps,
    )
    return out


def launch_sample_scale_ls(out, x, scale, gamma, alpha, v: LsView, wrap=None):
    """out = (x * gamma[c]) * (scale[s] * alpha) (kept), zeros (dropped, x unread).  Arguments as above."""
    if out.numel() == 0:
        return out
    lp = ls_launch_params(v.rows, v.L, False, v.gamma_cols)
    hi, mid, lo = split_alpha(alpha)
    (wrap or _identity)(_ls_scale_kernel)[(lp.grid,)](
        out, x, scale, gamma, hi, mid, lo, v.rows, v.L, v.s_div, v.n, v.c_div, v.C, lp.ncb,
        ROWS=lp.rows_per_tile, COLS=lp.cols, GAMMA_COLS=v.gamma_cols, ACC64=_acc64(out, x, gamma),
        num_warps=lp.num_warps,
    )
    return out


def partials_numel(v: LsView) -> int:
    """Elements of the partials buffer a backward launch over ``v`` writes."""
    if v.gamma_cols:
        return ls_launch_params(v.rows, v.L, True, True).groups * v.L
    return v.rows


def launch_layer_scale_grads(grad_branch, grad, branch, scale, gamma, partials, alpha, v: LsView, wrap=None):
    """grad_branch = (grad * gamma[c]) * m[s] (zeros for dropped rows) and the gamma gradient's partials.

    ``partials`` (the math dtype, :func:`partials_numel` elements) is fully
    written; the gamma gradient is its ``[O, C, c_div]`` view summed over dims
    0 and 2 (``O = v.partial_outer(groups)``).  Returns ``O``.
    """
    if grad_branch.numel() == 0:
        return 0
    lp = ls_launch_params(v.rows, v.L, True, v.gamma_cols)
    hi, mid, lo = split_alpha(alpha)
    acc64 = _acc64(grad, branch, gamma)
    wrap = wrap or _identity
    if v.gamma_cols:
        wrap(_ls_grads_cols_kernel)[(lp.grid,)](
            grad_branch, grad, branch, scale, gamma, partials, hi, mid, lo,
            v.rows, v.L, v.s_div, v.n, lp.rows_per_group, lp.ncb,
            ROWS=lp.rows_per_tile, COLS=lp.cols, ACC64=acc64, num_warps=lp.num_warps,
        )
        return v.partial_outer(lp.groups)
    wrap(_ls_grads_rows_kernel)[(lp.grid,)](
        grad_branch, grad, branch, scale, gamma, partials, hi, mid, lo,
        v.rows, v.L, v.s_div, v.n, v.c_div, v.C,
        ROWS=lp.rows_per_tile, COLS=lp.cols, ACC64=acc64, num_warps=lp.num_warps,
    )
    return v.partial_outer(0)
