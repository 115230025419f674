"""Helpers shared by every Triton kernel file of sdkernels: the math-type conversions, the sample
multiplier, alpha rebuilt from its fp32 pieces, and the launch-size rules.

Math is fp32 for fp16/bf16/fp32 (fp64 when ``ACC64``); see :mod:`.drop_path` for the alpha split.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

__all__ = ["INTERPRET", "MAX_BLOCK", "MAX_WASTE", "to_acc", "to_out", "multiplier", "alpha_value", "next_pow2",
           "row_block", "num_warps"]

# Read once, as @triton.jit does: the interpreter and compiled kernels never mix in one process.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

MAX_BLOCK = 4096  # elements per program of a row kernel (16 per thread at 8 warps)
MAX_WASTE = 0.125  # a row kernel's block size leaves at most this idle fraction per row when it can

_INTERP = tl.constexpr(INTERPRET)


@triton.jit
def to_acc(x, ACC64: tl.constexpr):
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
def to_out(x, OUT: tl.constexpr):
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
def multiplier(sc, a_hi, a_mid, a_lo, ACC64: tl.constexpr):
    """m = scale * alpha in the math type (alpha rebuilt exactly from its fp32 pieces for fp64)."""
    if ACC64:
        alpha = tl.cast(a_hi, tl.float64) + tl.cast(a_mid, tl.float64) + tl.cast(a_lo, tl.float64)
        return sc.to(tl.float64) * alpha
    else:
        return sc.to(tl.float32) * tl.cast(a_hi, tl.float32)


@triton.jit
def alpha_value(a_hi, a_mid, a_lo, ACC64: tl.constexpr):
    """alpha in the math type (rebuilt exactly from its fp32 pieces for fp64)."""
    if ACC64:
        return tl.cast(a_hi, tl.float64) + tl.cast(a_mid, tl.float64) + tl.cast(a_lo, tl.float64)
    else:
        return tl.cast(a_hi, tl.float32)


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def row_block(inner: int) -> int:
    """Block of the row kernel: the largest power of two <= 4096 leaving <= 1/8 of the row's lanes idle."""
    if INTERPRET:
        # Fewer, larger programs run faster on the interpreter; tails still get hit.
        return min(MAX_BLOCK, next_pow2(inner))
    best, best_waste = MAX_BLOCK, None
    b = MAX_BLOCK
    while b >= 256:
        padded = -(-inner // b) * b
        waste = (padded - inner) / padded
        if waste <= MAX_WASTE:
            return b
        if best_waste is None or waste < best_waste:
            best, best_waste = b, waste
        b //= 2
    return best


def num_warps(block: int) -> int:
    # >= 8 elements per thread: a 16-byte vector for 16-bit types, two for fp32.
    return max(1, min(8, block // 256))


