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
    "drop_dtypes",
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
    "add_norm_dtypes",
    "norm_rows",
    "add_norm",
    "norm_stats",
    "add_norm_backward",
    "drop_path_add_norm",
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


def drop_dtypes(residual_dtype: torch.dtype, branch_dtype: torch.dtype,
                gamma_dtype: Optional[torch.dtype] = None) -> Tuple[torch.dtype, torch.dtype]:
    """(draw dtype, math dtype) of ``residual + drop_path(branch [* gamma])``.

    The mask is drawn as timm draws it for the tensor it drops (``branch``, or
    ``branch * gamma`` with LayerScale: :func:`draw_dtype` of their promoted dtype); the
    multiplier (:func:`keep_scale`) and the add are in :func:`acc_dtype` of all the inputs.
    """
    dts = (residual_dtype, branch_dtype) + (() if gamma_dtype is None else (gamma_dtype,))
    dropped = branch_dtype if gamma_dtype is None else torch.promote_types(branch_dtype, gamma_dtype)
    return draw_dtype(dropped), acc_dtype(*dts)


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
    ddt, acc = drop_dtypes(residual.dtype, branch.dtype, gamma.dtype)
    keep = draw_keep(residual.shape[dim], p, mode, residual.device, generator, ddt)
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
# ---- add + norm (issue 14): drop path, residual add, LayerNorm / RMSNorm ----------------------
# The spec of ``sdkernels::add_norm`` / ``add_norm_backward`` and of
# :func:`sdkernels.drop_path_add_norm`: ``x`` is the fused drop-path add (with an
# optional LayerScale ``gamma`` over the last dim), ``h`` the norm of ``x`` *as
# stored* (after its rounding to x's dtype) over the last dim, in the math dtype.

NORMS = ("layer", "rms")


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


def _opt_dtype(t: Optional[torch.Tensor]):
    return None if t is None else t.dtype


def norm_rows(x: torch.Tensor, weight, bias, eps: float, rms: bool, acc: torch.dtype) -> torch.Tensor:
    """``F.layer_norm`` / ``F.rms_norm`` (+ bias) of ``x`` over its last dim, computed in ``acc``; differentiable."""
    import torch.nn.functional as F

    H = x.shape[-1]
    xa = x.to(acc)
    w = None if weight is None else weight.to(acc)
    b = None if bias is None else bias.to(acc)
    if rms:
        h = F.rms_norm(xa, (H,), w, eps)
        return h if b is None else h + b
    return F.layer_norm(xa, (H,), w, b, eps)


def add_norm(
    residual: torch.Tensor,
    branch: torch.Tensor,
    scale: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    gamma: Optional[torch.Tensor],
    sample_dim: int,
    alpha: float,
    eps: float,
    rms: bool,
    out_dtype: Optional[torch.dtype] = None,
):
    """Spec of ``torch.ops.sdkernels.add_norm`` (its ``x`` and ``h``; the op also returns mean and rstd).

    ``x`` = :func:`scaled_residual_add` (:func:`scaled_residual_add_ls` with ``gamma``, on the last dim);
    ``h`` = :func:`norm_rows` of ``x`` as stored, in the math dtype, rounded once to ``out_dtype``
    (default x's dtype).  Differentiable.
    """
    if gamma is None:
        x = scaled_residual_add(residual, branch, scale, sample_dim, alpha)
    else:
        x = scaled_residual_add_ls(residual, branch, scale, gamma, sample_dim, -1, alpha)
    _, acc = add_norm_dtypes(residual.dtype, branch.dtype, _opt_dtype(gamma), _opt_dtype(weight), _opt_dtype(bias),
                             out_dtype)
    h = norm_rows(x, weight, bias, eps, rms, acc)
    return x, h.to(x.dtype if out_dtype is None else out_dtype)


def norm_stats(x: torch.Tensor, eps: float, rms: bool, acc: torch.dtype):
    """``(xhat, rstd)`` of x's rows in ``acc``: LayerNorm ``((x - mean) * rstd, 1 / sqrt(var + eps))``
    or RMSNorm ``(x * rstd, 1 / sqrt(mean(x^2) + eps))`` (rstd keeps a trailing dim of 1); differentiable."""
    xa = x.to(acc)
    if rms:
        rstd = torch.rsqrt((xa * xa).mean(-1, keepdim=True) + eps)
        return xa * rstd, rstd
    d = xa - xa.mean(-1, keepdim=True)
    rstd = torch.rsqrt((d * d).mean(-1, keepdim=True) + eps)
    return d * rstd, rstd


def add_norm_backward(
    grad_x: Optional[torch.Tensor],
    grad_h: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    gamma: Optional[torch.Tensor],
    branch: Optional[torch.Tensor],
    sample_dim: int,
    alpha: float,
    eps: float,
    rms: bool,
    residual_dtype: torch.dtype,
    branch_dtype: torch.dtype,
    acc: Optional[torch.dtype] = None,
):
    """Spec of the add + norm backward: ``(grad_residual, grad_branch, grad_weight, grad_bias, grad_gamma)``.

    In the math dtype (``acc``, default the op's; ``torch.float64`` gives a high-precision
    expectation), with ``xhat``, ``rstd`` of x as stored (:func:`norm_stats`) and
    ``dy = grad_h * weight``::

        dx = rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) + grad_x     (LayerNorm)
        dx = rstd * (dy - xhat * mean(dy * xhat)) + grad_x                 (RMSNorm)
        grad_residual = dx
        grad_branch   = (dx * m[s]) * gamma      kept samples, zeros on dropped ones
        grad_weight   = sum over rows of grad_h * xhat     (None when weight is None)
        grad_bias     = sum over rows of grad_h            (None when bias is None)
        grad_gamma    = sum over kept rows of (dx * m[s]) * branch   (None when branch is None)

    each rounded once to its input's dtype.  Plain differentiable PyTorch ops: run with
    grad enabled the result is differentiable (double backward) through x, weight, the
    grads and branch.
    """
    if acc is None:
        _, acc = add_norm_dtypes(residual_dtype, branch_dtype, _opt_dtype(gamma), _opt_dtype(weight),
                                 _opt_dtype(bias), grad_h.dtype, x.dtype)
    H = x.shape[-1]
    xhat, rstd = norm_stats(x, eps, rms, acc)
    g = grad_h.to(acc)
    dy = g if weight is None else g * weight.to(acc)
    c1 = (dy * xhat).mean(-1, keepdim=True)
    u = dy - xhat * c1 if rms else dy - dy.mean(-1, keepdim=True) - xhat * c1
    dx = rstd * u
    if grad_x is not None:
        dx = dx + grad_x.to(acc)
    dim = sample_dim % x.dim()
    s = _per_sample(scale, x, dim, scale.dtype)
    m = s.to(acc) * torch.tensor(alpha, dtype=acc)
    kept = s != 0
    zero = torch.zeros((), dtype=acc, device=x.device)
    dxm = torch.where(kept, dx * m, zero)
    g_branch = dxm if gamma is None else dxm * gamma.to(acc)
    g_gamma = None
    if gamma is not None and branch is not None:
        bk = torch.where(kept, branch.to(acc), zero)
        g_gamma = (dxm * bk).reshape(-1, H).sum(0).to(gamma.dtype)
    g_w = None if weight is None else (g * xhat).reshape(-1, H).sum(0).to(weight.dtype)
    g_b = None if bias is None else g.reshape(-1, H).sum(0).to(bias.dtype)
    return dx.to(residual_dtype), g_branch.to(branch_dtype), g_w, g_b, g_gamma


def drop_path_add_norm(
    residual: torch.Tensor,
    branch: torch.Tensor,
    p: float,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    norm: str = "layer",
    training: bool = True,
    mode: str = "row",
    scale_by_keep: bool = True,
    sample_dim: int = 0,
    layer_scale: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    out_dtype: Optional[torch.dtype] = None,
):
    """Reference of :func:`sdkernels.drop_path_add_norm`: ``(x, h)``.

    Training with ``p > 0``: the draw of :func:`drop_path_add`, then :func:`add_norm`.
    Eval or ``p == 0``: ``x = residual + branch`` (``residual + branch * layer_scale``,
    the product rounded to its dtype first, as eager PyTorch computes it) and
    ``h = norm(x)``.
    """
    rms = norm == "rms"
    if not training or p == 0.0:
        if layer_scale is not None:
            branch = branch * layer_scale
        keep = torch.ones(1, dtype=draw_dtype(branch.dtype), device=residual.device)
        return add_norm(residual, branch, keep, weight, bias, None, 0, 1.0, eps, rms, out_dtype)
    dim = sample_dim % residual.dim()
    # drop_path_add's draw and multiplier, so x is its x
    ddt, acc = drop_dtypes(residual.dtype, branch.dtype, _opt_dtype(layer_scale))
    keep = draw_keep(residual.shape[dim], p, mode, residual.device, generator, ddt)
    alpha = keep_scale(p, scale_by_keep, acc)
    return add_norm(residual, branch, keep, weight, bias, layer_scale, dim, alpha, eps, rms, out_dtype)
