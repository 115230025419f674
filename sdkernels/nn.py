"""The modules: timm's ``DropPath`` and torchvision's ``StochasticDepth`` twins, the fused ``DropPathAdd`` and
``DropPathAddNorm``, and the skip path's ``StochasticResidual``.  Each ``forward`` calls the function of
:mod:`sdkernels.functional` with the module's attributes."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import checks, functional as F
from ._fx import NotScriptable

__all__ = ["DropPath", "StochasticDepth", "DropPathAdd", "DropPathAddNorm", "StochasticResidual"]


class DropPath(NotScriptable, nn.Module):
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


class StochasticDepth(NotScriptable, nn.Module):
    """torchvision's ``StochasticDepth(p, mode)``: randomly drop rows ("row") or the whole batch ("batch").

    Raises torchvision's ``ValueError`` messages for a bad ``p`` or ``mode``
    (at construction, and again in ``forward`` if the attributes were changed).
    """

    def __init__(self, p: float, mode: str, *, backend: str = "auto") -> None:
        super().__init__()
        checks.check_torchvision_args(p, mode)
        self.p = p
        self.mode = mode
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        checks.check_torchvision_args(self.p, self.mode)
        return F.drop_path(input, self.p, training=self.training, mode=self.mode, backend=self.backend)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p}, mode={self.mode})"


class DropPathAdd(NotScriptable, nn.Module):
    """``forward(residual, branch) = residual + drop_path(branch)``, fused in one pass.

    Replace ``x = x + self.drop_path(self.mlp(x))`` by
    ``x = self.drop_path_add(x, self.mlp(x))``.  See :func:`sdkernels.drop_path_add`.

    LayerScale: with ``layer_scale_dim=C`` the module owns ``gamma``,
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
        checks.check_module_args(p, mode)
        self.p = p
        self.mode = mode
        self.scale_by_keep = scale_by_keep
        self.sample_dim = sample_dim
        self.backend = backend
        self.channel_dim = channel_dim
        if layer_scale_dim is None:
            self.gamma = None  # a plain attribute: not in the state_dict, and read without Module.__getattr__
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


class DropPathAddNorm(NotScriptable, nn.Module):
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
        checks.check_module_args(p, mode)
        checks.check_norm(norm)
        normalized_shape = checks.check_normalized_shape(normalized_shape)
        checks.check_eps(eps)
        checks.check_param_dtype(dtype)
        if bias is None:
            bias = elementwise_affine and norm == "layer"
        if bias and not elementwise_affine:
            raise ValueError("bias=True needs elementwise_affine=True")
        checks.check_backend_name(backend)
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
        return F.drop_path_add_norm(
            residual, branch, self.p, self.weight, self.bias, self.eps, norm=self.norm, training=self.training,
            mode=self.mode, scale_by_keep=self.scale_by_keep, sample_dim=self.sample_dim, layer_scale=layer_scale,
            backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, p={self.p}, eps={self.eps}, norm={self.norm!r}, "
                f"elementwise_affine={self.elementwise_affine}, mode={self.mode!r}, sample_dim={self.sample_dim}")


class StochasticResidual(NotScriptable, nn.Module):
    """``forward(x) = x + drop_path(branch(x))`` with ``branch`` run on the kept samples only.

    A residual block with stochastic depth that saves the dropped samples'
    compute (DINOv2-style subset residual, fused).  Wrap each residual
    branch: ``x = StochasticResidual(nn.Sequential(norm, attn), p)(x)``.
    See :func:`sdkernels.drop_path_residual` for every argument and caveat: the realised
    drop rate of count "fixed" is ``1 - k/n`` (warned once when it differs
    from ``p`` by more than 0.1), count "bernoulli" costs one host sync per
    call, mode "batch" returns ``x`` itself for a dropped batch, freezes its
    decision into a captured CUDA graph and needs
    ``find_unused_parameters=True`` under DDP (with ranks seeded alike), and a
    branch with BatchNorm in training mode sees only the kept samples.

    In eval mode (or ``p == 0``) ``forward(x) = x + branch(x)``.

    Args:
        branch: the residual branch (any callable module returning x's shape).
        p: drop probability in [0, 1].
        mode, count, scale_by_keep, sample_dim, generator, backend: as in
            :func:`sdkernels.drop_path_residual`.
    """

    def __init__(
        self,
        branch: nn.Module,
        p: float = 0.0,
        mode: str = "row",
        count: str = "fixed",
        scale_by_keep: bool = True,
        sample_dim: int = 0,
        generator: Optional[torch.Generator] = None,
        backend: str = "auto",
    ):
        super().__init__()
        checks.check_module_args(p, mode)
        checks.check_count(count)
        checks.check_backend_name(backend)
        self.branch = branch
        self.p = p
        self.mode = mode
        self.count = count
        self.scale_by_keep = scale_by_keep
        self.sample_dim = sample_dim
        self.generator = generator
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.drop_path_residual(
            x, self.branch, self.p, training=self.training, mode=self.mode, count=self.count,
            scale_by_keep=self.scale_by_keep, sample_dim=self.sample_dim, generator=self.generator,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, mode={self.mode!r}, count={self.count!r}, scale_by_keep={self.scale_by_keep}, "
            f"sample_dim={self.sample_dim}"
        )
