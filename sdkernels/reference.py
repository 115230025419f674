"""Pure-PyTorch reference: the executable specification of sdkernels.

Every test and benchmark compares against these functions; nothing else in
the project re-types them.  They favour clarity over speed.

The operation (``s`` indexes ``sample_dim``)::

    out[s] = residual[s] + branch[s] * (scale[s] * alpha)   if scale[s] != 0
    out[s] = residual[s]                                    if scale[s] == 0

A dropped sample's branch is never read, so NaN or Inf there does not reach
the output.  The math is fp32 (fp64 when any tensor is fp64) and the result is
rounded once to ``torch.promote_types(residual.dtype, branch.dtype)``.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Tuple

import torch

__all__ = [
    "acc_dtype",
    "draw_dtype",
    "draw_keep",
    "keep_scale",
    "scaled_residual_add",
    "sample_scale",
    "drop_path_add",
    "drop_path",
    "timm_drop_path",
    "torchvision_stochastic_depth",
    "drop_path_rates",
    # LayerScale (issue 13)
    "layer_scale_view",
    "scaled_residual_add_ls",
    "sample_scale_ls",
    "layer_scale_grads",
    "timm_layer_scale_drop_path_add",
]


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


def draw_keep(
    n: int, p: float, mode: str, device, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Draw the keep mask: zeros and ones, ``n`` values for mode "row", one for "batch".

    The draw is ``torch.empty(k, dtype=dtype, device=device).bernoulli_(1 - p, generator=generator)``
    with ``dtype`` from :func:`draw_dtype` of the input (float32 or float64), the
    stream timm's ``drop_path`` and torchvision's ``stochastic_depth`` consume, so one
    seed keeps the same samples.
    """
    k = n if mode == "row" else 1
    return torch.empty(k, dtype=dtype, device=device).bernoulli_(1.0 - p, generator=generator)


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


def _round_f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (ties to even), for finite ``x`` in float32's normal range.

    Plain float arithmetic (no struct, no tensor), so torch.compile folds it to a constant.
    """
    m, e = math.frexp(x)
    return math.ldexp(round(m * 16777216.0) / 16777216.0, e)


def _fp32_quotient(keep: float) -> float:
    # 1 / fp32(keep) in double, rounded once to fp32: the correctly rounded fp32 quotient (double has more
    # than 2 * 24 + 2 bits, so the double rounding is innocuous for a division).
    return _round_f32(1.0 / _round_f32(keep))


_fp32_reciprocal = functools.lru_cache(maxsize=256)(_fp32_quotient)  # a model has a few rates; every call needs one


def _per_sample(scale: torch.Tensor, x: torch.Tensor, sample_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """scale broadcast along x's sample dim: shape [1, .., n, .., 1]."""
    shape = [1] * x.dim()
    shape[sample_dim] = x.shape[sample_dim]
    return scale.to(dtype).reshape(-1).expand(x.shape[sample_dim]).reshape(shape)


def scaled_residual_add(
    residual: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor, sample_dim: int, alpha: float = 1.0
) -> torch.Tensor:
    """Spec of ``torch.ops.sdkernels.scaled_residual_add``."""
    out_dtype = torch.promote_types(residual.dtype, branch.dtype)
    acc = acc_dtype(residual.dtype, branch.dtype)
    sample_dim = sample_dim % residual.dim()
    s = _per_sample(scale, residual, sample_dim, scale.dtype)
    m = s.to(acc) * torch.tensor(alpha, dtype=acc)
    kept = s != 0
    r = residual.to(acc)
    b = torch.where(kept, branch.to(acc), torch.zeros((), dtype=acc, device=branch.device))
    out = torch.where(kept, r + b * m, r)
    return out.to(out_dtype)


def sample_scale(
    x: torch.Tensor, scale: torch.Tensor, sample_dim: int, alpha: float = 1.0, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Spec of ``torch.ops.sdkernels.sample_scale``: x * scale[s] * alpha, exact zeros for dropped samples."""
    out_dtype = x.dtype if dtype is None else dtype
    acc = acc_dtype(x.dtype, out_dtype)
    sample_dim = sample_dim % x.dim()
    s = _per_sample(scale, x, sample_dim, scale.dtype)
    m = s.to(acc) * torch.tensor(alpha, dtype=acc)
    kept = s != 0
    out = torch.where(kept, x.to(acc) * m, torch.zeros((), dtype=acc, device=x.device))
    return out.to(out_dtype)


def drop_path_add(
    residual: torch.Tensor,
    branch: torch.Tensor,
    p: float,
    *,
    training: bool = True,
    mode: str = "row",
    scale_by_keep: bool = True,
    sample_dim: int = 0,
    generator: Optional[torch.Generator] = None,
    layer_scale: Optional[torch.Tensor] = None,
    channel_dim: int = -1,
) -> torch.Tensor:
    """Reference of :func:`sdkernels.drop_path_add` (draws, then :func:`scaled_residual_add`).

    With ``layer_scale`` (checked by the caller): :func:`scaled_residual_add_ls`.
    """
    if layer_scale is not None:
        return _drop_path_add_ls(residual, branch, p, training, mode, scale_by_keep, sample_dim, generator,
                                 layer_scale, channel_dim)
    if not training or p == 0.0:
        return residual + branch
    dim = sample_dim % residual.dim()
    keep = draw_keep(residual.shape[dim], p, mode, residual.device, generator, draw_dtype(branch.dtype))
    return scaled_residual_add(residual, branch, keep, dim,
                               keep_scale(p, scale_by_keep, acc_dtype(residual.dtype, branch.dtype)))


def drop_path(
    x: torch.Tensor,
    p: float,
    *,
    training: bool = True,
    mode: str = "row",
    scale_by_keep: bool = True,
    sample_dim: int = 0,
    generator: Optional[torch.Generator] = None,
    layer_scale: Optional[torch.Tensor] = None,
    channel_dim: int = -1,
) -> torch.Tensor:
    """Reference of :func:`sdkernels.drop_path` (draws, then :func:`sample_scale`).

    With ``layer_scale`` (checked by the caller): :func:`sample_scale_ls`.
    """
    if layer_scale is not None:
        return _drop_path_ls(x, p, training, mode, scale_by_keep, sample_dim, generator, layer_scale, channel_dim)
    if not training or p == 0.0:
        return x
    dim = sample_dim % x.dim()
    keep = draw_keep(x.shape[dim], p, mode, x.device, generator, draw_dtype(x.dtype))
    return sample_scale(x, keep, dim, keep_scale(p, scale_by_keep, acc_dtype(x.dtype)))


def timm_drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    """Eager timm-style drop path, from timm's documented algorithm (the baseline we beat).

    A ``[B, 1, ..., 1]`` Bernoulli(1 - p) mask in x's dtype, divided in place by
    the keep probability, then multiplied into x: one pass for the mask, one for
    the multiply (and the caller's add is a third).
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


def torchvision_stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """Eager torchvision-style ``stochastic_depth``, from its documented algorithm (a baseline)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    if mode == "row":
        size = [input.shape[0]] + [1] * (input.ndim - 1)
    else:
        size = [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device)
    noise = noise.bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


def drop_path_rates(rate: float, depth: int) -> List[float]:
    """Linear decay rule: block i of ``depth`` gets ``rate * i / (depth - 1)`` (timm, Huang et al. 2016)."""
    return [x.item() for x in torch.linspace(0, rate, depth)]


# ---------------------------------------------------------------------------
# LayerScale (issue 13): residual + drop_path(gamma * branch)
# ---------------------------------------------------------------------------
#
#     out[s] = residual[s] + (branch[s] * gamma[c]) * m[s]   kept s    m[s] = scale[s] * alpha
#     out[s] = residual[s]                                   dropped s (branch[s] never read)
#
# ``c`` indexes ``channel_dim``; each multiply and the add are rounded
# separately in the math dtype (fp32, fp64 when any tensor is fp64), the result
# once to promote_types(residual, branch, gamma).  That is the order of eager
# timm, ``x + drop_path(x_branch * gamma)``: with fp32 tensors and the
# multiplier of :func:`keep_scale` it gives timm's bits exactly.


def layer_scale_view(gamma: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    """``gamma`` (``C`` values) viewed to broadcast along ``channel_dim`` of an ``ndim``-dim tensor: [1, .., C, .., 1]."""
    shape = [1] * ndim
    shape[channel_dim % ndim] = gamma.numel()
    return gamma.reshape(shape)


def _ls_factors(scale, gamma, like, sample_dim, channel_dim, alpha, acc):
    """(kept mask, m = scale * alpha, gamma view), each broadcasting against ``like``, in ``acc``."""
    nd = like.dim()
    s = _per_sample(scale, like, sample_dim % nd, scale.dtype)
    m = s.to(acc) * torch.tensor(alpha, dtype=acc)
    return s != 0, m, layer_scale_view(gamma.to(acc), nd, channel_dim)


def _kept(t: torch.Tensor, kept: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``t`` in ``acc`` where kept, exact zeros where dropped (its values there, NaN included, unused)."""
    return torch.where(kept, t.to(acc), torch.zeros((), dtype=acc, device=t.device))


def scaled_residual_add_ls(
    residual: torch.Tensor,
    branch: torch.Tensor,
    scale: torch.Tensor,
    gamma: torch.Tensor,
    sample_dim: int,
    channel_dim: int,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Spec of ``torch.ops.sdkernels.scaled_residual_add_ls`` (``gamma``: the ``C`` per-channel values)."""
    out_dtype = torch.promote_types(torch.promote_types(residual.dtype, branch.dtype), gamma.dtype)
    acc = acc_dtype(residual.dtype, branch.dtype, gamma.dtype)
    kept, m, g = _ls_factors(scale, gamma, residual, sample_dim, channel_dim, alpha, acc)
    r = residual.to(acc)
    return torch.where(kept, r + (_kept(branch, kept, acc) * g) * m, r).to(out_dtype)


def sample_scale_ls(
    x: torch.Tensor,
    scale: torch.Tensor,
    gamma: torch.Tensor,
    sample_dim: int,
    channel_dim: int,
    alpha: float = 1.0,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Spec of ``torch.ops.sdkernels.sample_scale_ls``: ``(x * gamma[c]) * m[s]``, exact zeros for dropped samples.

    ``dtype`` defaults to ``promote_types(x, gamma)``.
    """
    out_dtype = torch.promote_types(x.dtype, gamma.dtype) if dtype is None else dtype
    acc = acc_dtype(x.dtype, out_dtype, gamma.dtype)
    kept, m, g = _ls_factors(scale, gamma, x, sample_dim, channel_dim, alpha, acc)
    return _kept((_kept(x, kept, acc) * g) * m, kept, acc).to(out_dtype)


def layer_scale_grads(
    grad: torch.Tensor,
    branch: torch.Tensor,
    scale: torch.Tensor,
    gamma: torch.Tensor,
    sample_dim: int,
    channel_dim: int,
    alpha: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Spec of ``torch.ops.sdkernels.layer_scale_grads``: ``(grad_branch, grad_gamma)``.

    ``grad_branch = sample_scale_ls(grad, scale, gamma, ..., branch.dtype)``;
    ``grad_gamma[c]`` = the sum over every other dim of ``(grad * m[s]) * branch``
    (dropped samples add 0 and their branch is not used), in gamma's dtype.
    """
    gb = sample_scale_ls(grad, scale, gamma, sample_dim, channel_dim, alpha, branch.dtype)
    acc = acc_dtype(grad.dtype, branch.dtype, gamma.dtype)
    kept, m, _ = _ls_factors(scale, gamma, grad, sample_dim, channel_dim, alpha, acc)
    t = _kept((grad.to(acc) * m) * _kept(branch, kept, acc), kept, acc)
    cd = channel_dim % grad.dim()
    dims = [d for d in range(grad.dim()) if d != cd]
    gg = t.sum(dim=dims) if dims else t
    return gb, gg.to(gamma.dtype)


def _drop_path_add_ls(residual, branch, p, training, mode, scale_by_keep, sample_dim, generator, layer_scale,
                      channel_dim):
    nd = residual.dim()
    gamma = layer_scale.reshape(-1)
    if not training or p == 0.0:
        return residual + branch * layer_scale_view(gamma, nd, channel_dim)
    dim = sample_dim % nd
    ls_dtype = torch.promote_types(branch.dtype, gamma.dtype)  # the dtype of the tensor timm drops
    keep = draw_keep(residual.shape[dim], p, mode, residual.device, generator, draw_dtype(ls_dtype))
    acc = acc_dtype(residual.dtype, branch.dtype, gamma.dtype)
    return scaled_residual_add_ls(residual, branch, keep, gamma, dim, channel_dim,
                                  keep_scale(p, scale_by_keep, acc))


def _drop_path_ls(x, p, training, mode, scale_by_keep, sample_dim, generator, layer_scale, channel_dim):
    gamma = layer_scale.reshape(-1)
    if not training or p == 0.0:
        return x * layer_scale_view(gamma, x.dim(), channel_dim)
    dim = sample_dim % x.dim()
    keep = draw_keep(x.shape[dim], p, mode, x.device, generator,
                     draw_dtype(torch.promote_types(x.dtype, gamma.dtype)))
    return sample_scale_ls(x, keep, gamma, dim, channel_dim,
                           keep_scale(p, scale_by_keep, acc_dtype(x.dtype, gamma.dtype)))


def timm_layer_scale_drop_path_add(residual: torch.Tensor, branch: torch.Tensor, gamma: torch.Tensor, p: float,
                                   channel_dim: int = -1, sample_dim: int = 0, training: bool = True) -> torch.Tensor:
    """Eager timm LayerScale, then drop path, then the add (the baseline of the LayerScale ops).

    ``residual + timm_drop_path(branch * gamma_view, p)``: three kernels forward
    (seven tensors of traffic), as timm's ``x + self.drop_path(self.ls(y))``;
    samples along ``sample_dim`` (moved to the front for timm's mask: a view).
    """
    ls = branch * layer_scale_view(gamma, branch.dim(), channel_dim)
    dp = timm_drop_path(ls if sample_dim == 0 else ls.movedim(sample_dim, 0), p, training)
    return residual + (dp if sample_dim == 0 else dp.movedim(0, sample_dim))
