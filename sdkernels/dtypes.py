"""The dtype rules every op family follows: float dtypes, the math dtype, the draw dtype, the multiplier.

One place for them: the public functions, the Triton twins and the reference all call these.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import torch

__all__ = ["FLOAT_DTYPES", "FLOAT_NAMES", "acc_dtype", "draw_dtype", "drop_dtypes", "keep_scale", "add_norm_dtypes",
           "opt_dtype", "round_f32"]

#: The tensor dtypes every sdkernels op takes.
FLOAT_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
#: How error messages name them.
FLOAT_NAMES = "float16, bfloat16, float32 or float64"


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The math dtype: float64 if any dtype is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def draw_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the keep mask of a ``dtype`` input is drawn in: float64 for float64, else float32.

    timm's ``drop_path`` and torchvision's ``stochastic_depth`` draw their mask in
    the input's dtype.  For fp16, bf16 and fp32 that consumes the stream an fp32
    draw does (same values on CPU and CUDA); fp64 takes another path on CUDA, so
    fp64 inputs draw in fp64 and keep the same samples there too.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def drop_dtypes(residual_dtype: torch.dtype, branch_dtype: torch.dtype,
                gamma_dtype: Optional[torch.dtype] = None) -> Tuple[torch.dtype, torch.dtype]:
    """(draw dtype, math dtype) of ``residual + drop_path(branch [* gamma])``.

    The mask is drawn as timm draws it for the tensor it drops (``branch``, or
    ``branch * gamma`` with LayerScale: :func:`draw_dtype` of their promoted dtype); the
    multiplier (:func:`keep_scale`) and the add are in :func:`acc_dtype` of all the inputs.
    """
    if gamma_dtype is None:
        return draw_dtype(branch_dtype), acc_dtype(residual_dtype, branch_dtype)
    return (draw_dtype(torch.promote_types(branch_dtype, gamma_dtype)),
            acc_dtype(residual_dtype, branch_dtype, gamma_dtype))


def add_norm_dtypes(residual_dtype, branch_dtype, gamma_dtype=None, *more):
    """(x dtype, math dtype) of the add + norm op.

    x takes ``promote_types(residual, branch[, gamma])`` (the core op's rule with the
    LayerScale vector joining it); the math is fp64 when any tensor (``more``: weight,
    bias, the h dtype) is fp64, else fp32.
    """
    x_dtype = torch.promote_types(residual_dtype, branch_dtype)
    if gamma_dtype is not None:
        x_dtype = torch.promote_types(x_dtype, gamma_dtype)
    dts = [residual_dtype, branch_dtype, x_dtype] + [d for d in (gamma_dtype,) + more if d is not None]
    return x_dtype, acc_dtype(*dts)


def opt_dtype(t: Optional[torch.Tensor]) -> Optional[torch.dtype]:
    """``t.dtype``, or None for a missing optional tensor."""
    return None if t is None else t.dtype


def round_f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (ties to even), for finite ``x`` in float32's normal range.

    Plain float arithmetic (no struct, no tensor), so torch.compile folds it to a constant.
    """
    m, e = math.frexp(x)
    return math.ldexp(round(m * 16777216.0) / 16777216.0, e)


def _fp32_quotient(keep: float) -> float:
    # 1 / fp32(keep) in double, rounded once to fp32: the correctly rounded fp32 quotient (double has more
    # than 2 * 24 + 2 bits, so the double rounding is innocuous for a division).
    return round_f32(1.0 / round_f32(keep))


_fp32_reciprocal = functools.lru_cache(maxsize=256)(_fp32_quotient)  # a model has a few rates; every call needs one


def keep_scale(p: float, scale_by_keep: bool, dtype: torch.dtype = torch.float32) -> float:
    """The multiplier of kept samples, 1/(1-p) with scale_by_keep (1 when p == 1: nothing is kept), as the
    math dtype ``dtype`` (float32, or float64 for float64 tensors) holds it.

    For float32 math it is ``float32(1) / float32(1 - p)``, the value timm's ``drop_path`` and
    torchvision's ``stochastic_depth`` divide their mask by (``mask.div_(keep_prob)`` runs in fp32 for
    fp16/bf16/fp32 masks), so fp32 results match theirs bit for bit; it may differ from the correctly
    rounded ``float32(1 / (1 - p))`` by one unit in the last place (e.g. p = 0.0444).  For float64
    math it is ``1.0 / (1 - p)`` in double, as timm computes it for fp64 inputs.
    """
    keep = 1.0 - p
    if not scale_by_keep or keep <= 0.0:
        return 1.0
    if dtype == torch.float64:
        return 1.0 / keep
    if torch.compiler.is_compiling():  # traced once per graph; dynamo would warn about the cache wrapper
        return _fp32_quotient(keep)
    return _fp32_reciprocal(keep)
