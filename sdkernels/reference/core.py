"""Spec of the core ops (``scaled_residual_add``, ``sample_scale``) and of the draw.

The operation (``s`` indexes ``sample_dim``)::

    out[s] = residual[s] + branch[s] * (scale[s] * alpha)   if scale[s] != 0
    out[s] = residual[s]                                    if scale[s] == 0

A dropped sample's branch is never read, so NaN or Inf there does not reach
the output.  The math is fp32 (fp64 when any tensor is fp64) and the result is
rounded once to ``torch.promote_types(residual.dtype, branch.dtype)``.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from ..dtypes import acc_dtype

__all__ = ["draw_keep", "draw_keep_hf", "per_sample", "scaled_residual_add", "sample_scale", "drop_path_rates"]


def draw_keep(
    n: int, p: float, mode: str, device, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Draw the keep mask: zeros and ones, ``n`` values for mode "row", one for "batch".

    The draw is ``torch.empty(k, dtype=dtype, device=device).bernoulli_(1 - p, generator=generator)``
    with ``dtype`` from :func:`sdkernels.dtypes.draw_dtype` of the input (float32 or float64), the
    stream timm's ``drop_path`` and torchvision's ``stochastic_depth`` consume, so one
    seed keeps the same samples.
    """
    k = n if mode == "row" else 1
    return torch.empty(k, dtype=dtype, device=device).bernoulli_(1.0 - p, generator=generator)


def draw_keep_hf(n: int, p: float, device, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Hugging Face transformers' draw: ``floor(keep + torch.rand(n, dtype=dtype))`` with ``keep = 1 - p``.

    The mask its models' ``drop_path`` functions compute for an input of ``dtype`` (the sum rounded to
    ``dtype`` before the floor, as there), so one seed keeps the samples they keep.  Zeros and ones in
    ``dtype``.
    """
    return (1.0 - p + torch.rand(n, dtype=dtype, device=device, generator=generator)).floor_()


def per_sample(scale: torch.Tensor, x: torch.Tensor, sample_dim: int, dtype: torch.dtype) -> torch.Tensor:
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
    s = per_sample(scale, residual, sample_dim, scale.dtype)
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
    s = per_sample(scale, x, sample_dim, scale.dtype)
    m = s.to(acc) * torch.tensor(alpha, dtype=acc)
    kept = s != 0
    out = torch.where(kept, x.to(acc) * m, torch.zeros((), dtype=acc, device=x.device))
    return out.to(out_dtype)



def drop_path_rates(rate: float, depth: int) -> List[float]:
    """Linear decay rule: block i of ``depth`` gets ``rate * i / (depth - 1)`` (timm, Huang et al. 2016)."""
    return [x.item() for x in torch.linspace(0, rate, depth)]

