"""The eager code sdkernels replaces, from timm's and torchvision's documented algorithms: the baselines
of the benchmarks and the twins' tests."""
from __future__ import annotations

import torch

from .layer_scale import layer_scale_view

__all__ = ["timm_drop_path", "torchvision_stochastic_depth", "timm_layer_scale_drop_path_add"]


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
