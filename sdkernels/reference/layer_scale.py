"""Spec of the LayerScale ops: ``residual + drop_path(branch * gamma)``.

::

    out[s] = residual[s] + (branch[s] * gamma[c]) * m[s]   kept s    m[s] = scale[s] * alpha
    out[s] = residual[s]                                   dropped s (branch[s] never read)

``c`` indexes ``channel_dim``; each multiply and the add are rounded
separately in the math dtype (fp32, fp64 when any tensor is fp64), the result
once to promote_types(residual, branch, gamma).  That is the order of eager
timm, ``x + drop_path(x_branch * gamma)``: with fp32 tensors and the
multiplier of :func:`sdkernels.dtypes.keep_scale` it gives timm's bits exactly.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..dtypes import acc_dtype
from .core import per_sample

__all__ = ["layer_scale_view", "scaled_residual_add_ls", "sample_scale_ls", "layer_scale_grads"]


def layer_scale_view(gamma: torch.Tensor, ndim: int, channel_dim: int) -> torch.Tensor:
    """``gamma`` (``C`` values) viewed to broadcast along ``channel_dim`` of an ``ndim``-dim tensor: [1, .., C, .., 1]."""
    shape = [1] * ndim
    shape[channel_dim % ndim] = gamma.numel()
    return gamma.reshape(shape)


def _ls_factors(scale, gamma, like, sample_dim, channel_dim, alpha, acc):
    """(kept mask, m = scale * alpha, gamma view), each broadcasting against ``like``, in ``acc``."""
    nd = like.dim()
    s = per_sample(scale, like, sample_dim % nd, scale.dtype)
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

