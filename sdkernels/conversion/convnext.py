"""ConvNeXt: timm ``convnext.ConvNeXtBlock`` (v1 and v2) and torchvision ``convnext.CNBlock``.

timm 1.0 ``ConvNeXtBlock.forward(x)``::

    shortcut = x
    x = self.conv_dw(x)
    x = norm then mlp, channels last (use_conv_mlp: on NCHW)
    if self.gamma is not None: x = x.mul(self.gamma.reshape(1, -1, 1, 1))
    x = self.drop_path(x) + self.shortcut(shortcut)

torchvision 0.2x ``CNBlock.forward(input)``::

    result = self.layer_scale * self.block(input)      # layer_scale: (C, 1, 1)
    result = self.stochastic_depth(result)             # StochasticDepth(p, "row")
    result += input

Both branches act on each sample alone (depthwise conv, LayerNorm, GRN in v2, MLP): ``skip=True`` runs
them on the kept samples, except a timm block whose shortcut is not the identity (a downsample).
The in-place ``result += input`` of torchvision keeps ``result``'s dtype; the fused op returns the
promoted dtype of the two (they agree outside autocast).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .core import Pattern, check_drop_paths, rate_of, register, residual_site


def _timm_branch(block):
    def branch(x):
        x = block.conv_dw(x)
        if block.use_conv_mlp:
            x = block.norm(x)
            x = block.mlp(x)
        else:
            x = x.permute(0, 2, 3, 1)
            x = block.norm(x)
            x = block.mlp(x)
            x = x.permute(0, 3, 1, 2)
        return x

    return branch


def timm_convnext_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``ConvNeXtBlock.forward`` with drop path and the residual add fused (module docstring)."""
    r = rate_of(block.drop_path)
    if r is None or not r.active:
        return type(block).forward(block, x)
    if isinstance(block.shortcut, nn.Identity):
        return residual_site(settings, x, _timm_branch(block), r, gamma=block.gamma, channel_dim=1)
    branch_out = _timm_branch(block)(x)
    return residual_site(settings, x, lambda _: branch_out, r, gamma=block.gamma, channel_dim=1,
                         residual=block.shortcut(x))


def tv_cnblock_forward(block, settings, input: torch.Tensor) -> torch.Tensor:
    """torchvision ``CNBlock.forward`` with drop path and the residual add fused (module docstring)."""
    r = rate_of(block.stochastic_depth)
    if r is None or not r.active:
        return type(block).forward(block, input)
    return residual_site(settings, input, block.block, r, gamma=block.layer_scale, channel_dim=1)


def _no_skip_timm(block) -> Optional[str]:
    if not isinstance(block.shortcut, nn.Identity):
        return f"the shortcut is a {type(block.shortcut).__name__}, not the identity: the branch must see every sample"
    return None


try:
    from timm.models.convnext import ConvNeXtBlock as _TIMM
except Exception:  # noqa: BLE001
    pass
else:
    register(Pattern(_TIMM, timm_convnext_forward, ("self", "x"), ("drop_path",),
                     lambda b: check_drop_paths(b, ("drop_path",)), _no_skip_timm))

try:
    from torchvision.models.convnext import CNBlock as _TV
except Exception:  # noqa: BLE001
    pass
else:
    register(Pattern(_TV, tv_cnblock_forward, ("self", "input"), ("stochastic_depth",),
                     lambda b: check_drop_paths(b, ("stochastic_depth",))))
