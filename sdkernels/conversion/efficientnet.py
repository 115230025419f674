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

from .core import Pattern, check_drop_paths, has_batchnorm, rate_of, register, residual_site, run_sequence


# The submodules each branch chains, in the order of timm's forward (after conv_s2d/bn_s2d when present).
_INVERTED_RESIDUAL = ("conv_pw", "bn1", "conv_dw", "bn2", "aa", "se", "conv_pwl", "bn3")
_DEPTHWISE_SEPARABLE = ("conv_dw", "bn1", "aa", "se", "conv_pw", "bn2")
_EDGE_RESIDUAL = ("conv_exp", "bn1", "aa", "se", "conv_pwl", "bn2")


def _branch(block, x, names):
    if getattr(block, "conv_s2d", None) is not None:
        x = block.bn_s2d(block.conv_s2d(x))
    return run_sequence(block, x, names)


def _timm_forward(block, settings, x: torch.Tensor, branch) -> torch.Tensor:
    r = rate_of(block.drop_path)
    if not block.has_skip or r is None or not r.active:
        return type(block).forward(block, x)
    out = _branch(block, x, branch)
    return residual_site(settings, x, lambda _: out, r, residual=x)


def timm_inverted_residual_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``InvertedResidual.forward`` with drop path and the residual add fused."""
    return _timm_forward(block, settings, x, _INVERTED_RESIDUAL)


def timm_depthwise_separable_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``DepthwiseSeparableConv.forward`` with drop path and the residual add fused."""
    return _timm_forward(block, settings, x, _DEPTHWISE_SEPARABLE)


def timm_edge_residual_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``EdgeResidual.forward`` with drop path and the residual add fused."""
    return _timm_forward(block, settings, x, _EDGE_RESIDUAL)


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
