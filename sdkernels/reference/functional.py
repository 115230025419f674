"""Spec of the public functions (:mod:`sdkernels.functional`): the draw, then the family's op."""
from __future__ import annotations

from typing import Optional

import torch

from ..dtypes import acc_dtype, draw_dtype, drop_dtypes, keep_scale, opt_dtype
from .add_norm import add_norm
from .core import draw_keep, draw_keep_hf, sample_scale, scaled_residual_add
from .layer_scale import layer_scale_view, sample_scale_ls, scaled_residual_add_ls

__all__ = ["keep_mask", "drop_path_add", "drop_path", "drop_path_add_ls", "drop_path_ls", "drop_path_add_norm"]


def keep_mask(n: int, p: float, mode: str, device, generator: Optional[torch.Generator], dropped: torch.dtype,
              draw: str = "timm") -> torch.Tensor:
    """The keep mask of the public functions for ``n`` samples of a dropped tensor of dtype ``dropped``:
    timm's draw (:func:`draw_keep`) or Hugging Face's (``draw="hf"``, :func:`draw_keep_hf`), in
    :func:`sdkernels.dtypes.draw_dtype` of ``dropped``."""
    if draw == "hf":
        return draw_keep_hf(n if mode == "row" else 1, p, device, generator, dropped).to(draw_dtype(dropped))
    return draw_keep(n, p, mode, device, generator, draw_dtype(dropped))


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
    draw: str = "timm",
) -> torch.Tensor:
    """Reference of :func:`sdkernels.drop_path_add` (draws, then :func:`scaled_residual_add`).

    With ``layer_scale`` (checked by the caller): :func:`scaled_residual_add_ls`.
    """
    if layer_scale is not None:
        return drop_path_add_ls(residual, branch, p, training, mode, scale_by_keep, sample_dim, generator,
                                layer_scale, channel_dim, draw)
    if not training or p == 0.0:
        return residual + branch
    dim = sample_dim % residual.dim()
    keep = keep_mask(residual.shape[dim], p, mode, residual.device, generator, branch.dtype, draw)
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
    draw: str = "timm",
) -> torch.Tensor:
    """Reference of :func:`sdkernels.drop_path` (draws, then :func:`sample_scale`).

    With ``layer_scale`` (checked by the caller): :func:`sample_scale_ls`.
    """
    if layer_scale is not None:
        return drop_path_ls(x, p, training, mode, scale_by_keep, sample_dim, generator, layer_scale, channel_dim, draw)
    if not training or p == 0.0:
        return x
    dim = sample_dim % x.dim()
    keep = keep_mask(x.shape[dim], p, mode, x.device, generator, x.dtype, draw)
    return sample_scale(x, keep, dim, keep_scale(p, scale_by_keep, acc_dtype(x.dtype)))


def drop_path_add_ls(residual, branch, p, training, mode, scale_by_keep, sample_dim, generator, layer_scale,
                     channel_dim, draw="timm"):
    """Reference of :func:`sdkernels.drop_path_add` with ``layer_scale`` (positional arguments)."""
    nd = residual.dim()
    gamma = layer_scale.reshape(-1)
    if not training or p == 0.0:
        return residual + branch * layer_scale_view(gamma, nd, channel_dim)
    dim = sample_dim % nd
    acc = drop_dtypes(residual.dtype, branch.dtype, gamma.dtype)[1]
    keep = keep_mask(residual.shape[dim], p, mode, residual.device, generator,
                     torch.promote_types(branch.dtype, gamma.dtype), draw)
    return scaled_residual_add_ls(residual, branch, keep, gamma, dim, channel_dim,
                                  keep_scale(p, scale_by_keep, acc))


def drop_path_ls(x, p, training, mode, scale_by_keep, sample_dim, generator, layer_scale, channel_dim, draw="timm"):
    """Reference of :func:`sdkernels.drop_path` with ``layer_scale`` (positional arguments)."""
    gamma = layer_scale.reshape(-1)
    if not training or p == 0.0:
        return x * layer_scale_view(gamma, x.dim(), channel_dim)
    dim = sample_dim % x.dim()
    keep = keep_mask(x.shape[dim], p, mode, x.device, generator, torch.promote_types(x.dtype, gamma.dtype), draw)
    return sample_scale_ls(x, keep, gamma, dim, channel_dim,
                           keep_scale(p, scale_by_keep, acc_dtype(x.dtype, gamma.dtype)))


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
    ddt, acc = drop_dtypes(residual.dtype, branch.dtype, opt_dtype(layer_scale))
    keep = draw_keep(residual.shape[dim], p, mode, residual.device, generator, ddt)
    alpha = keep_scale(p, scale_by_keep, acc)
    return add_norm(residual, branch, keep, weight, bias, layer_scale, dim, alpha, eps, rms, out_dtype)
