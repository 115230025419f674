"""Triton kernels of the add + norm ops and their launchers.

``x = residual + (branch * gamma[h]) * m[s]`` (kept samples; ``x = residual`` and the
branch unread for dropped ones), then ``h = norm(x as stored) * weight + bias`` over the
last dim ``H`` (LayerNorm, or RMSNorm with ``RMS``), in one pass; the backward reads
``x``, ``grad_h`` and ``grad_x`` once and writes ``grad_residual`` and ``grad_branch``.
Semantics: ``sdkernels.reference.add_norm`` / ``add_norm_backward``.

Rows are the ``H`` contiguous elements of the last dim in memory order (row ``r`` at
element ``r * H``); the sample of a row is ``((r * H) // inner) % n``, the rule of
``csrc/common/add_norm_index.h``.

Two shapes per kernel:

* register path (``H <= MAX_FUSED_N``): a tile of ``ROWS x BLOCK_N`` (``BLOCK_N`` the
  next power of two >= ``H``) holds whole rows; x never leaves registers between the
  add and the norm.
* loop path (longer rows, any length): one row per program, walked in column blocks of
  ``BLOCK_N``: the add writes x, then the statistics and h re-read x (written by this
  program moments before: from L2).  The backward likewise.

The backward's parameter gradients (weight, bias, gamma) are per-program fp32 (fp64)
partial rows ``[programs, H]``: every program writes its partial row, even one given no
rows (zeros), and :func:`launch_reduce_partials` sums the partial rows 0, 1, 2, ... in
that order: no atomics, same bits on every run.  The x computation multiplies with
``_mul_rn`` (PTX ``mul.rn``, never contracted into an FMA) so ``x`` is rounded exactly as
the C++ kernels and the reference round it.

Math is fp32 (fp64 with ``ACC64``), offsets 64-bit.  ``alpha`` and ``eps`` arrive split
into fp32 pieces (:func:`sdkernels.triton_kernels.drop_path.split_alpha`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import triton
import triton.language as tl

from .drop_path import split_alpha
from .common import INTERPRET, alpha_value, multiplier, next_pow2, to_acc, to_out

__all__ = [
    "MAX_FUSED_N",
    "AddNormLaunch",
    "forward_params",
    "backward_params",
    "launch_forward",
    "launch_backward",
    "launch_reduce_partials",
    "KERNELS",
]

_INTERP = tl.constexpr(INTERPRET)

# Launch heuristics: first guesses (a few KB of registers per program, >= 16 bytes per
# thread per tensor), awaiting a GPU sweep.  Rows up to MAX_FUSED_N elements stay in
# registers (forward); the backward holds more per element, so MAX_FUSED_N_BWD.
MAX_FUSED_N = 16384
MAX_FUSED_N_BWD = 8192
_TILE = 4096  # elements per program tile (ROWS * BLOCK_N) for short rows
_LOOP_BLOCK = 4096  # column block of the loop path
_PROGRAMS_PER_SM = 4  # backward programs per SM (GPU)
_INTERPRET_PROGRAMS = 3  # backward programs under the interpreter
_CONFIG_MAX_PER_THREAD = 64


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


@triton.jit
def _mul_rn(a, b):
    """a * b rounded once, never fused with a following add (PTX mul.rn; plain * under the interpreter)."""
    if _INTERP:
        return a * b
    else:
        if a.dtype == tl.float64:
            return tl.inline_asm_elementwise("mul.rn.f64 $0, $1, $2;", "=d,d,d", [a, b], dtype=tl.float64,
                                             is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                             is_pure=True, pack=1)


@triton.jit
def _row_samples(rows, H, inner, n):
    return ((rows * H) // inner) % n


@triton.jit
def _add(res_ptr, br_ptr, g_ptr, offs, cols, cmask, mask, kept, m, HAS_G: tl.constexpr, ACC64: tl.constexpr):
    """x in the math dtype for a [ROWS, BLOCK] tile (branch read on kept rows only)."""
    r = to_acc(tl.load(res_ptr + offs, mask=mask, other=0), ACC64)
    b = to_acc(tl.load(br_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
    if HAS_G:
        g = to_acc(tl.load(g_ptr + cols, mask=cmask, other=0), ACC64)
        b = _mul_rn(b, g[None, :])
    return tl.where(kept[:, None], r + _mul_rn(b, m[:, None]), r)


@triton.jit
def _affine(y, w_ptr, b_ptr, cols, cmask, HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC64: tl.constexpr):
    if HAS_W:
        y = y * to_acc(tl.load(w_ptr + cols, mask=cmask, other=0), ACC64)[None, :]
    if HAS_B:
        y = y + to_acc(tl.load(b_ptr + cols, mask=cmask, other=0), ACC64)[None, :]
    return y


@triton.jit
def _add_norm_fwd_kernel(
    x_ptr, h_ptr, mean_ptr, rstd_ptr, res_ptr, br_ptr, scale_ptr, w_ptr, b_ptr, g_ptr,
    a_hi, a_mid, a_lo, a_eps_hi, a_eps_mid, a_eps_lo,
    nrows, H, n, inner,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, LOOP: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_G: tl.constexpr, RMS: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < nrows
    sc = tl.load(scale_ptr + _row_samples(rows, H, inner, n), mask=row_ok, other=0)
    kept = sc != 0
    m = multiplier(sc, a_hi, a_mid, a_lo, ACC64)
    eps = alpha_value(a_eps_hi, a_eps_mid, a_eps_lo, ACC64)  # eps rebuilt from its fp32 pieces like alpha
    xdt = x_ptr.dtype.element_ty
    if not LOOP:
        cols = tl.arange(0, BLOCK_N).to(tl.int64)  # int64 like every other offset
        cmask = cols < H
        offs = rows[:, None] * H + cols[None, :]
        mask = row_ok[:, None] & cmask[None, :]
        xs = to_out(_add(res_ptr, br_ptr, g_ptr, offs, cols, cmask, mask, kept, m, HAS_G, ACC64), xdt)
        tl.store(x_ptr + offs, xs, mask=mask)
        xa = tl.where(mask, to_acc(xs, ACC64), 0.0)  # x as stored
        if RMS:
            d = xa
        else:
            mean = tl.sum(xa, axis=1) / H
            d = tl.where(mask, xa - mean[:, None], 0.0)
            tl.store(mean_ptr + rows, mean, mask=row_ok)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / H + eps)
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)
        y = _affine(d * rstd[:, None], w_ptr, b_ptr, cols, cmask, HAS_W, HAS_B, ACC64)
        tl.store(h_ptr + offs, to_out(y, h_ptr.dtype.element_ty), mask=mask)
    else:
        # ROWS == 1: walk the row in column blocks; x is re-read for each statistic.
        base = rows[:, None] * H
        acc = tl.zeros([1, BLOCK_N], dtype=tl.float64 if ACC64 else tl.float32)
        for c0 in range(0, H, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
            cmask = cols < H
            mask = row_ok[:, None] & cmask[None, :]
            offs = base + cols[None, :]
            xs = to_out(_add(res_ptr, br_ptr, g_ptr, offs, cols, cmask, mask, kept, m, HAS_G, ACC64), xdt)
            tl.store(x_ptr + offs, xs, mask=mask)
            acc += tl.where(mask, to_acc(xs, ACC64), 0.0)
        tl.debug_barrier()
        if RMS:
            mean = tl.zeros([1], dtype=acc.dtype)
        else:
            mean = tl.sum(acc, axis=1) / H
            tl.store(mean_ptr + rows, mean, mask=row_ok)
        acc = tl.zeros([1, BLOCK_N], dtype=acc.dtype)
        for c0 in range(0, H, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
            mask = row_ok[:, None] & (cols < H)[None, :]
            d = tl.where(mask, to_acc(tl.load(x_ptr + base + cols[None, :], mask=mask, other=0), ACC64)
                         - mean[:, None], 0.0)
            acc += d * d
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=1) / H + eps)
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)
        for c0 in range(0, H, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
            cmask = cols < H
            mask = row_ok[:, None] & cmask[None, :]
            offs = base + cols[None, :]
            d = to_acc(tl.load(x_ptr + offs, mask=mask, other=0), ACC64) - mean[:, None]
            y = _affine(d * rstd[:, None], w_ptr, b_ptr, cols, cmask, HAS_W, HAS_B, ACC64)
            tl.store(h_ptr + offs, to_out(y, h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_tile(
    gr_ptr, gb_ptr, gx_ptr, gh_ptr, x_ptr, br_ptr, w_ptr, g_ptr,
    offs, cols, cmask, mask, mean, rstd, kept, m, c1, c2,
    HAS_GX: tl.constexpr, HAS_W: tl.constexpr, HAS_G: tl.constexpr, WANT_G: tl.constexpr, RMS: tl.constexpr,
    ACC64: tl.constexpr,
):
    """Write grad_residual and grad_branch of a tile; returns (gh * xhat, gh, (dx * m) * branch) for the partials."""
    xa = to_acc(tl.load(x_ptr + offs, mask=mask, other=0), ACC64)
    if RMS:
        xhat = tl.where(mask, xa * rstd[:, None], 0.0)
    else:
        xhat = tl.where(mask, (xa - mean[:, None]) * rstd[:, None], 0.0)
    gh = to_acc(tl.load(gh_ptr + offs, mask=mask, other=0), ACC64)
    dy = gh
    if HAS_W:
        dy = gh * to_acc(tl.load(w_ptr + cols, mask=cmask, other=0), ACC64)[None, :]
    if RMS:
        dx = (dy - xhat * c1[:, None]) * rstd[:, None]
    else:
        dx = (dy - c2[:, None] - xhat * c1[:, None]) * rstd[:, None]
    if HAS_GX:
        dx += to_acc(tl.load(gx_ptr + offs, mask=mask, other=0), ACC64)
    tl.store(gr_ptr + offs, to_out(dx, gr_ptr.dtype.element_ty), mask=mask)
    dxm = tl.where(kept[:, None], dx * m[:, None], 0.0)
    gbr = dxm
    if HAS_G:
        gbr = dxm * to_acc(tl.load(g_ptr + cols, mask=cmask, other=0), ACC64)[None, :]
    tl.store(gb_ptr + offs, to_out(gbr, gb_ptr.dtype.element_ty), mask=mask)
    if WANT_G:
        b = to_acc(tl.load(br_ptr + offs, mask=mask & kept[:, None], other=0), ACC64)
        pg = dxm * b
    else:
        pg = gh
    return gh * xhat, gh, pg


@triton.jit
def _bwd_row_sums(x_ptr, gh_ptr, w_ptr, offs, cols, cmask, mask, mean, rstd,
                  HAS_W: tl.constexpr, RMS: tl.constexpr, ACC64: tl.constexpr):
    """(sum(dy * xhat), sum(dy)) per row of a tile."""
    xa = to_acc(tl.load(x_ptr + offs, mask=mask, other=0), ACC64)
    if RMS:
        xhat = tl.where(mask, xa * rstd[:, None], 0.0)
    else:
        xhat = tl.where(mask, (xa - mean[:, None]) * rstd[:, None], 0.0)
    dy = to_acc(tl.load(gh_ptr + offs, mask=mask, other=0), ACC64)
    if HAS_W:
        dy = dy * to_acc(tl.load(w_ptr + cols, mask=cmask, other=0), ACC64)[None, :]
    return tl.sum(dy * xhat, axis=1), tl.sum(dy, axis=1)


@triton.jit
def _add_norm_bwd_kernel(
    gr_ptr, gb_ptr, pw_ptr, pb_ptr, pg_ptr,
    gx_ptr, gh_ptr, x_ptr, mean_ptr, rstd_ptr, scale_ptr, w_ptr, g_ptr, br_ptr,
    a_hi, a_mid, a_lo,
    nrows, H, n, inner, tiles,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, LOOP: tl.constexpr,
    HAS_GX: tl.constexpr, HAS_W: tl.constexpr, HAS_G: tl.constexpr,
    WANT_W: tl.constexpr, WANT_B: tl.constexpr, WANT_G: tl.constexpr, RMS: tl.constexpr, ACC64: tl.constexpr,
):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    adt = tl.float64 if ACC64 else tl.float32
    if not LOOP:
        cols = tl.arange(0, BLOCK_N).to(tl.int64)  # int64 like every other offset
        cmask = cols < H
        pw = tl.zeros([BLOCK_N], dtype=adt)
        pb = tl.zeros([BLOCK_N], dtype=adt)
        pg = tl.zeros([BLOCK_N], dtype=adt)
        # Tiles pid, pid + programs, ...: none when pid >= tiles (the partials are still written).
        for t in range(pid, tiles, programs):
            rows = tl.cast(t, tl.int64) * ROWS + tl.arange(0, ROWS)
            row_ok = rows < nrows
            mask = row_ok[:, None] & cmask[None, :]
            offs = rows[:, None] * H + cols[None, :]
            sc = tl.load(scale_ptr + _row_samples(rows, H, inner, n), mask=row_ok, other=0)
            kept = sc != 0
            m = multiplier(sc, a_hi, a_mid, a_lo, ACC64)
            mean = tl.zeros([ROWS], dtype=adt)
            if not RMS:
                mean = tl.load(mean_ptr + rows, mask=row_ok, other=0)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0)
            s1, s2 = _bwd_row_sums(x_ptr, gh_ptr, w_ptr, offs, cols, cmask, mask, mean, rstd, HAS_W, RMS, ACC64)
            tw, tb, tg = _bwd_tile(gr_ptr, gb_ptr, gx_ptr, gh_ptr, x_ptr, br_ptr, w_ptr, g_ptr,
                                   offs, cols, cmask, mask, mean, rstd, kept, m, s1 / H, s2 / H,
                                   HAS_GX, HAS_W, HAS_G, WANT_G, RMS, ACC64)
            if WANT_W:
                pw += tl.sum(tw, axis=0)
            if WANT_B:
                pb += tl.sum(tb, axis=0)
            if WANT_G:
                pg += tl.sum(tg, axis=0)
        prow = pid.to(tl.int64) * H + cols
        if WANT_W:
            tl.store(pw_ptr + prow, pw, mask=cmask)
        if WANT_B:
            tl.store(pb_ptr + prow, pb, mask=cmask)
        if WANT_G:
            tl.store(pg_ptr + prow, pg, mask=cmask)
    else:
        # ROWS == 1, rows of any length: two walks over the row per row; the partial rows
        # (zeroed by the launcher) are read, added to and written back by this program only.
        for t in range(pid, tiles, programs):
            rows = tl.cast(t, tl.int64) + tl.arange(0, 1)
            row_ok = rows < nrows
            sc = tl.load(scale_ptr + _row_samples(rows, H, inner, n), mask=row_ok, other=0)
            kept = sc != 0
            m = multiplier(sc, a_hi, a_mid, a_lo, ACC64)
            mean = tl.zeros([1], dtype=adt)
            if not RMS:
                mean = tl.load(mean_ptr + rows, mask=row_ok, other=0)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0)
            s1 = tl.zeros([1], dtype=adt)
            s2 = tl.zeros([1], dtype=adt)
            for c0 in range(0, H, BLOCK_N):
                cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
                cmask = cols < H
                mask = row_ok[:, None] & cmask[None, :]
                offs = rows[:, None] * H + cols[None, :]
                b1, b2 = _bwd_row_sums(x_ptr, gh_ptr, w_ptr, offs, cols, cmask, mask, mean, rstd, HAS_W, RMS, ACC64)
                s1 += b1
                s2 += b2
            c1 = s1 / H
            c2 = s2 / H
            # The partial rows are read back below by whichever thread the load's layout gives:
            # the previous row's stores must be visible to it.
            tl.debug_barrier()
            for c0 in range(0, H, BLOCK_N):
                cols = c0 + tl.arange(0, BLOCK_N).to(tl.int64)
                cmask = cols < H
                mask = row_ok[:, None] & cmask[None, :]
                offs = rows[:, None] * H + cols[None, :]
                tw, tb, tg = _bwd_tile(gr_ptr, gb_ptr, gx_ptr, gh_ptr, x_ptr, br_ptr, w_ptr, g_ptr,
                                       offs, cols, cmask, mask, mean, rstd, kept, m, c1, c2,
                                       HAS_GX, HAS_W, HAS_G, WANT_G, RMS, ACC64)
                prow = pid.to(tl.int64) * H + cols
                if WANT_W:
                    tl.store(pw_ptr + prow, tl.load(pw_ptr + prow, mask=cmask) + tl.sum(tw, axis=0), mask=cmask)
                if WANT_B:
                    tl.store(pb_ptr + prow, tl.load(pb_ptr + prow, mask=cmask) + tl.sum(tb, axis=0), mask=cmask)
                if WANT_G:
                    tl.store(pg_ptr + prow, tl.load(pg_ptr + prow, mask=cmask) + tl.sum(tg, axis=0), mask=cmask)


@triton.jit
def _reduce_partials_kernel(out_ptr, part_ptr, programs, H, BLOCK: tl.constexpr, ACC64: tl.constexpr):
    """out[k] = sum over p = 0, 1, ... of part[p, k], in that order, rounded once to out's dtype."""
    cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < H
    acc = tl.zeros([BLOCK], dtype=tl.float64 if ACC64 else tl.float32)
    for p in range(0, programs):
        acc += tl.load(part_ptr + p * H + cols, mask=cmask, other=0)
    tl.store(out_ptr + cols, to_out(acc, out_ptr.dtype.element_ty), mask=cmask)


# Every kernel, for the ahead-of-time compile tests.
KERNELS = {
    "add_norm_fwd": _add_norm_fwd_kernel,
    "add_norm_bwd": _add_norm_bwd_kernel,
    "reduce_partials": _reduce_partials_kernel,
}


# ----------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AddNormLaunch:
    """One launch: ``ROWS x BLOCK_N`` tiles (``loop``: one row walked in blocks of ``BLOCK_N``),
    ``num_warps``, and ``grid`` programs (the backward: its program count, >= 1)."""

    rows: int
    block_n: int
    loop: bool
    num_warps: int
    grid: int


def _warps(elements: int) -> int:
    # ~16 elements per thread, 1 to 16 warps.
    return max(1, min(16, elements // 512))


def forward_params(nrows: int, H: int) -> AddNormLaunch:
    """The forward's launch for ``nrows`` rows of ``H`` (cached for ints; SymInts while tracing are not hashed)."""
    if type(nrows) is int and type(H) is int:
        return _forward_params_cached(nrows, H)
    return _forward_params(nrows, H)


def _forward_params(nrows, H) -> AddNormLaunch:
    if next_pow2(H) <= MAX_FUSED_N:
        block = next_pow2(H)
        rows = max(1, min(_TILE // block, next_pow2(nrows)))
        return AddNormLaunch(rows, block, False, _warps(rows * block), -(-nrows // rows))
    block = _LOOP_BLOCK
    return AddNormLaunch(1, block, True, _warps(block), nrows)


_forward_params_cached = functools.lru_cache(maxsize=256)(_forward_params)
forward_params.cache_clear = _forward_params_cached.cache_clear  # tests patch the heuristics' constants


def _sm_count(device) -> int:
    import torch

    if device.type != "cuda":
        return 1
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count_of(idx)


@functools.lru_cache(maxsize=16)
def _sm_count_of(idx: int) -> int:
    import torch

    return torch.cuda.get_device_properties(idx).multi_processor_count


def backward_params(nrows: int, H: int, device, programs=None) -> AddNormLaunch:
    """The backward's launch: tiles as the forward's, ``programs`` persistent programs (default:
    ``_PROGRAMS_PER_SM`` per SM, at most one per tile, at least 1; under the interpreter
    ``_INTERPRET_PROGRAMS``).  More programs than tiles is valid: the extra ones write zero partials."""
    if next_pow2(H) <= MAX_FUSED_N_BWD:
        block = next_pow2(H)
        rows = max(1, min(_TILE // block, next_pow2(nrows)))
        loop = False
    else:
        block, rows, loop = _LOOP_BLOCK, 1, True
    tiles = -(-nrows // rows)
    if programs is None:
        cap = _INTERPRET_PROGRAMS if INTERPRET else _PROGRAMS_PER_SM * _sm_count(device)
        programs = max(1, min(cap, tiles))
    return AddNormLaunch(rows, block, loop, _warps(rows * block), int(programs))


def _layout_args(layout):
    nrows, H, n, inner = layout
    return nrows, H, max(1, n), max(1, inner)


def launch_forward(x, h, mean, rstd, residual, branch, scale, weight, bias, gamma, alpha, eps, rms, layout,
                   acc64, wrap=None):
    """Write x, h, mean (unless rms) and rstd.  All activations dense in x's layout; ``layout`` is
    ``(nrows, H, n, inner)``; weight / bias / gamma contiguous or None; scale contiguous fp32/fp64."""
    nrows, H, n, inner = _layout_args(layout)
    if nrows == 0 or H == 0:
        return
    lp = forward_params(nrows, H)
    wrap = wrap or (lambda k: k)
    ahi, amid, alo = split_alpha(alpha)
    ehi, emid, elo = split_alpha(eps)
    dummy = rstd
    wrap(_add_norm_fwd_kernel)[(lp.grid,)](
        x, h, mean if not rms else dummy, rstd, residual, branch, scale,
        weight if weight is not None else dummy, bias if bias is not None else dummy,
        gamma if gamma is not None else dummy,
        ahi, amid, alo, ehi, emid, elo, nrows, H, n, inner,
        ROWS=lp.rows, BLOCK_N=lp.block_n, LOOP=lp.loop, HAS_W=weight is not None, HAS_B=bias is not None,
        HAS_G=gamma is not None, RMS=bool(rms), ACC64=bool(acc64), num_warps=lp.num_warps,
    )


def launch_backward(grad_residual, grad_branch, partials, grad_x, grad_h, x, mean, rstd, scale, weight, gamma,
                    branch, alpha, rms, layout, acc64, lp: AddNormLaunch, wrap=None):
    """Write grad_residual, grad_branch and the partial rows ``partials = (pw, pb, pg)`` (each
    ``[lp.grid, H]`` or None; zero-filled by the caller when ``lp.loop``)."""
    nrows, H, n, inner = _layout_args(layout)
    wrap = wrap or (lambda k: k)
    ahi, amid, alo = split_alpha(alpha)
    pw, pb, pg = partials
    dummy = rstd
    tiles = -(-nrows // lp.rows)
    wrap(_add_norm_bwd_kernel)[(lp.grid,)](
        grad_residual, grad_branch,
        pw if pw is not None else dummy, pb if pb is not None else dummy, pg if pg is not None else dummy,
        grad_x if grad_x is not None else dummy, grad_h, x, mean if not rms else dummy, rstd, scale,
        weight if weight is not None else dummy, gamma if gamma is not None else dummy,
        branch if branch is not None else dummy,
        ahi, amid, alo, nrows, H, n, inner, tiles,
        ROWS=lp.rows, BLOCK_N=lp.block_n, LOOP=lp.loop, HAS_GX=grad_x is not None, HAS_W=weight is not None,
        HAS_G=gamma is not None, WANT_W=pw is not None, WANT_B=pb is not None, WANT_G=pg is not None,
        RMS=bool(rms), ACC64=bool(acc64), num_warps=lp.num_warps,
    )


def launch_reduce_partials(out, part, wrap=None):
    """out (H,) = the column sums of part ``[programs, H]`` in row order, rounded once to out's dtype."""
    programs, H = part.shape
    if H == 0:
        return
    wrap = wrap or (lambda k: k)
    block = min(1024, next_pow2(H))
    import torch

    wrap(_reduce_partials_kernel)[(-(-H // block),)](
        out, part, programs, H, BLOCK=block, ACC64=part.dtype == torch.float64, num_warps=max(1, min(4, block // 256)),
    )
