"""Spec of the skip path's ops (``scaled_index_add``, ``index_scale``): plain ``index_add`` /
``index_select`` in the math dtype, rounded once; differentiable."""
from __future__ import annotations

from typing import Optional

import torch

from ..dtypes import acc_dtype

__all__ = ["scaled_index_add", "index_scale"]


def scaled_index_add(
    residual: torch.Tensor, src: torch.Tensor, index: torch.Tensor, sample_dim: int, alpha: float
) -> torch.Tensor:
    """Spec of ``torch.ops.sdkernels.scaled_index_add``: ``out = residual``, ``out[index[j]] += src[j] * alpha``."""
    out_dtype = torch.promote_types(residual.dtype, src.dtype)
    acc = acc_dtype(residual.dtype, src.dtype)
    dim = sample_dim % residual.dim()
    scaled = src.to(acc) * torch.tensor(alpha, dtype=acc, device=src.device)
    return torch.index_add(residual.to(acc), dim, index, scaled).to(out_dtype)


def index_scale(
    grad: torch.Tensor, index: torch.Tensor, sample_dim: int, alpha: float, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Spec of ``torch.ops.sdkernels.index_scale``: ``out[j] = grad[index[j]] * alpha`` in ``dtype`` (grad's)."""
    out_dtype = grad.dtype if dtype is None else dtype
    acc = acc_dtype(grad.dtype, out_dtype)
    dim = sample_dim % grad.dim()
    g = grad.index_select(dim, index).to(acc)
    return (g * torch.tensor(alpha, dtype=acc, device=grad.device)).to(out_dtype)
