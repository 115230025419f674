"""EfficientNet / MobileNet blocks: timm ``_efficientnet_blocks`` ``InvertedResidual``,
``DepthwiseSeparableConv``, ``EdgeResidual``; torchvision ``efficientnet.MBConv``, ``FusedMBConv``.

timm 1.0 (``InvertedResidual``; the other two differ only in the convolutions)::

    shortcut = x
    x = conv_s2d/bn_s2d (when present), conv_pw, bn1, conv_dw, bn2, aa, se, conv_pwl, bn3
    if self.has_skip: x = self.drop_path(x) + shortcut

torchvision 0.2x::

    result = self.block(input)
    if self.use_res_connect: result = self.stochastic_depth(result); result += input

Every branch holds BatchNorm, which in training normalises over the batch: running it on the kept
samples only would change its statistics, so these blocks are always fused, never skipped.
"""
from __future__ import annotations

import torch

from .core import Pattern, check_drop_paths, has_batchnorm, rate_of, register, residual_site


def _s2d(block, x):
    if getattr(block, "conv_s2d", None) is not None:
        x = block.conv_s2d(x)
        x = block.bn_s2d(x)
    return x


def _inverted_residual(block, x):
    x = _s2d(block, x)
    x = block.conv_pw(x)
    x = block.bn1(x)
    x = block.conv_dw(x)
    x = block.bn2(x)
    x = block.aa(x)
    x = block.se(x)
    x = block.conv_pwl(x)
    return block.bn3(x)


def _depthwise_separable(block, x):
    x = _s2d(block, x)
    x = block.conv_dw(x)
    x = block.bn1(x)
    x = block.aa(x)
    x = block.se(x)
    x = block.conv_pw(x)
    return block.bn2(x)


def _edge_residual(block, x):
    x = block.conv_exp(x)
    x = block.bn1(x)
    x = block.aa(x)
    x = block.se(x)
    x = block.conv_pwl(x)
    return block.bn2(x)


def _timm_forward(block, settings, x: torch.Tensor, branch) -> torch.Tensor:
    r = rate_of(block.drop_path)
    if not block.has_skip or r is None or not r.active:
        return type(block).forward(block, x)
    out = branch(block, x)
    return residual_site(settings, x, lambda _: out, r, residual=x)


def timm_inverted_residual_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``InvertedResidual.forward`` with drop path and the residual add fused."""
    return _timm_forward(block, settings, x, _inverted_residual)


def timm_depthwise_separable_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``DepthwiseSeparableConv.forward`` with drop path and the residual add fused."""
    return _timm_forward(block, settings, x, _depthwise_separable)


def timm_edge_residual_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``EdgeResidual.forward`` with drop path and the residual add fused."""
    return _timm_forward(block, settings, x, _edge_residual)


def tv_mbconv_forward(block, settings, input: torch.Tensor) -> torch.Tensor:
    """torchvision ``MBConv`` / ``FusedMBConv`` forward with drop path and the residual add fused."""
    r = rate_of(block.stochastic_depth)
    if not block.use_res_connect or r is None or not r.active:
        return type(block).forward(block, input)
    result = block.block(input)
    return residual_site(settings, input, lambda _: result, r, residual=input)


def _checks(name):
    return (lambda b: check_drop_paths(b, (name,))), (lambda b: has_batchnorm(b))


try:
    from timm.models import _efficientnet_blocks as _eb
except Exception:  # noqa: BLE001
    pass
else:
    for _cls, _fwd in ((_eb.InvertedResidual, timm_inverted_residual_forward),
                       (_eb.DepthwiseSeparableConv, timm_depthwise_separable_forward),
                       (_eb.EdgeResidual, timm_edge_residual_forward)):
        register(Pattern(_cls, _fwd, ("self", "x"), ("drop_path",), *_checks("drop_path")))

try:
    from torchvision.models.efficientnet import FusedMBConv as _TV_FUSED, MBConv as _TV_MB
except Exception:  # noqa: BLE001
    pass
else:
    for _cls in (_TV_MB, _TV_FUSED):
        register(Pattern(_cls, tv_mbconv_forward, ("self", "input"), ("stochastic_depth",),
                         *_checks("stochastic_depth")))
