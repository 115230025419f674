"""Drop-in modules: timm's ``DropPath``, torchvision's ``StochasticDepth``, and the fused ``DropPathAdd``."""
from __future__ import annotations

import torch
from torch import nn

from . import functional as F
from ._fx import NotScriptable as _NotScriptable

__all__ = ["DropPath", "StochasticDepth", "DropPathAdd"]


class DropPath(_NotScriptable, nn.Module):
    """Drop paths per sample (stochastic depth), with timm's signature and train/eval behaviour.

    ``forward(x)`` returns ``x`` in eval mode or at ``drop_prob == 0``, else
    ``x / (1 - drop_prob)`` for kept samples and zeros for dropped ones, in one
    fused pass.  Prefer :class:`DropPathAdd` where the result is added to a
    residual: it fuses the add too.
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True, *, backend: str = "auto"):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.drop_path(x, self.drop_prob, training=self.training, scale_by_keep=self.scale_by_keep,
                           backend=self.backend)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


def _tv_check(p, mode):
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")


class StochasticDepth(_NotScriptable, nn.Module):
    """torchvision's ``StochasticDepth(p, mode)``: randomly drop rows ("row") or the whole batch ("batch").

    Raises torchvision's ``ValueError`` messages for a bad ``p`` or ``mode``
    (at construction, and again in ``forward`` if the attributes were changed).
    """

    def __init__(self, p: float, mode: str, *, backend: str = "auto") -> None:
        super().__init__()
        _tv_check(p, mode)
        self.p = p
        self.mode = mode
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _tv_check(self.p, self.mode)
        return F.drop_path(input, self.p, training=self.training, mode=self.mode, backend=self.backend)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, mode={self.mode})"


class DropPathAdd(_NotScriptable, nn.Module):
    """``forward(residual, branch) = residual + drop_path(branch)``, fused in one pass.

    Replace ``x = x + self.drop_path(self.mlp(x))`` by
    ``x = self.drop_path_add(x, self.mlp(x))``.  See :func:`sdkernels.drop_path_add`.
    """

    def __init__(self, p: float = 0.0, mode: str = "row", scale_by_keep: bool = True, sample_dim: int = 0,
                 backend: str = "auto"):
        super().__init__()
        F._check_module_rate_and_mode(p, mode)
        self.p = p
        self.mode = mode
        self.scale_by_keep = scale_by_keep
        self.sample_dim = sample_dim
        self.backend = backend

    def forward(self, residual: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return F.drop_path_add(residual, branch, self.p, training=self.training, mode=self.mode,
                               scale_by_keep=self.scale_by_keep, sample_dim=self.sample_dim, backend=self.backend)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}, scale_by_keep={self.scale_by_keep}, sample_dim={self.sample_dim}"


# ---- skip path (issue 5): branch run on kept samples only ------------------
from .skip import StochasticResidual  # noqa: E402

__all__ += ["StochasticResidual"]
