"""Drop-in modules: timm's ``DropPath``, torchvision's ``StochasticDepth``, and the fused ``DropPathAdd``."""
from __future__ import annotations

from typing import Optional

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

    LayerScale (issue 13): with ``layer_scale_dim=C`` the module owns ``gamma``,
    an ``nn.Parameter`` of ``C`` values filled with ``init_values`` (timm's
    ``LayerScale``), and computes ``residual + drop_path(gamma * branch)`` in the
    same single pass (``x + drop_path(ls(y))`` of DeiT III, CaiT, EVA, ConvNeXt),
    ``gamma`` scaling ``channel_dim`` (-1: tokens ``[B, N, C]``; 1: NCHW).
    Without it (the default) there is no ``gamma``: the module and its
    ``state_dict`` are as before.
    """

    def __init__(self, p: float = 0.0, mode: str = "row", scale_by_keep: bool = True, sample_dim: int = 0,
                 backend: str = "auto", layer_scale_dim: Optional[int] = None, init_values: float = 1e-5,
                 channel_dim: int = -1):
        super().__init__()
        F._check_module_rate_and_mode(p, mode)
        self.p = p
        self.mode = mode
        self.scale_by_keep = scale_by_keep
        self.sample_dim = sample_dim
        self.backend = backend
        self.channel_dim = channel_dim
        if layer_scale_dim is None:
            self.register_parameter("gamma", None)  # not in the state_dict
        else:
            if isinstance(layer_scale_dim, bool) or not isinstance(layer_scale_dim, int) or layer_scale_dim < 1:
                raise ValueError(f"layer_scale_dim must be a positive int or None, got {layer_scale_dim!r}")
            if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
                raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")
            self.init_values = init_values
            self.gamma = nn.Parameter(torch.empty(layer_scale_dim))
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fill ``gamma`` with ``init_values`` (as timm's ``LayerScale``); nothing without LayerScale."""
        if self.gamma is not None:
            nn.init.constant_(self.gamma, self.init_values)

    def forward(self, residual: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return F.drop_path_add(residual, branch, self.p, training=self.training, mode=self.mode,
                               scale_by_keep=self.scale_by_keep, sample_dim=self.sample_dim, backend=self.backend,
                               layer_scale=self.gamma, channel_dim=self.channel_dim)

    def extra_repr(self) -> str:
        s = f"p={self.p}, mode={self.mode!r}, scale_by_keep={self.scale_by_keep}, sample_dim={self.sample_dim}"
        if self.gamma is not None:
            s += f", layer_scale_dim={self.gamma.numel()}, channel_dim={self.channel_dim}"
        return s


# ---- skip path (issue 5): branch run on kept samples only ------------------
from .skip import StochasticResidual  # noqa: E402

__all__ += ["StochasticResidual"]


# ---- add + norm (issue 14): drop path + residual add + LayerNorm / RMSNorm ------
from . import add_norm as _add_norm  # noqa: E402


class DropPathAddNorm(nn.Module):
    """``forward(residual, branch) -> (x, h)``: ``x = residual + drop_path(branch)``, ``h = norm(x)``, fused.

    The first residual add of a pre-norm block and the norm after it
    (``x = x + self.drop_path1(self.attn(self.norm1(x))); h = self.norm2(x)``) in one
    pass: ``x, h = self.add_norm2(x, self.attn(self.norm1(x)))``.  See
    :func:`sdkernels.drop_path_add_norm`.

    Parameters are named as ``nn.LayerNorm``'s (``weight``, ``bias``) and ``nn.RMSNorm``'s
    (``weight``), so a LayerNorm's or RMSNorm's state dict loads into it.

    Args:
        normalized_shape: H, the last dim (an int, or a 1-element tuple/list/Size).
        p: drop probability in [0, 1].
        eps: the norm's epsilon.
        norm: "layer" or "rms".
        elementwise_affine: learn ``weight`` (ones at init).
        bias: learn ``bias`` (zeros at init); default None means the norm's own module's
            choice: True for "layer" (as ``nn.LayerNorm``), False for "rms" (``nn.RMSNorm``
            has none), False without ``elementwise_affine``.  True needs ``elementwise_affine``.
        mode, scale_by_keep, sample_dim, backend: as in :func:`sdkernels.drop_path_add_norm`.
        device, dtype: of the parameters.

    ``forward(residual, branch, layer_scale=None)`` also takes LayerScale's ``gamma``.
    """

    def __init__(self, normalized_shape, p: float = 0.0, eps: float = 1e-5, norm: str = "layer",
                 elementwise_affine: bool = True, bias=None, mode: str = "row", scale_by_keep: bool = True,
                 sample_dim: int = 0, backend: str = "auto", device=None, dtype=None):
        super().__init__()
        F._check_module_rate_and_mode(p, mode)
        if norm not in _add_norm.NORMS:
            raise ValueError(f"norm must be one of {_add_norm.NORMS}, got {norm!r}")
        if isinstance(normalized_shape, int):
            normalized_shape = (normalized_shape,)
        normalized_shape = tuple(normalized_shape)
        if len(normalized_shape) != 1 or not isinstance(normalized_shape[0], int) or normalized_shape[0] < 1:
            raise ValueError(f"normalized_shape must be one positive int (the last dim), got {normalized_shape}")
        if bias is None:
            bias = elementwise_affine and norm == "layer"
        if bias and not elementwise_affine:
            raise ValueError("bias=True needs elementwise_affine=True")
        F.check_backend_name(backend)
        self.normalized_shape = normalized_shape
        self.p = p
        self.eps = eps
        self.norm = norm
        self.elementwise_affine = elementwise_affine
        self.mode = mode
        self.scale_by_keep = scale_by_keep
        self.sample_dim = sample_dim
        self.backend = backend
        kw = dict(device=device, dtype=dtype)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(normalized_shape, **kw))
            self.bias = nn.Parameter(torch.zeros(normalized_shape, **kw)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, residual: torch.Tensor, branch: torch.Tensor, layer_scale=None):
        return _add_norm.drop_path_add_norm(
            residual, branch, self.p, self.weight, self.bias, self.eps, norm=self.norm, training=self.training,
            mode=self.mode, scale_by_keep=self.scale_by_keep, sample_dim=self.sample_dim, layer_scale=layer_scale,
            backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, p={self.p}, eps={self.eps}, norm={self.norm!r}, "
                f"elementwise_affine={self.elementwise_affine}, mode={self.mode!r}, sample_dim={self.sample_dim}")


__all__ += ["DropPathAddNorm"]
