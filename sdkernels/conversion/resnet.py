"""ResNets: timm ``resnet.BasicBlock`` and ``resnet.Bottleneck`` (ResNet, ResNeXt, SE-ResNet ...).

timm 1.0 ``Bottleneck.forward(x)`` (``BasicBlock`` has two convolutions)::

    shortcut = x
    x = conv1, bn1, act1, conv2, bn2, drop_block, act2, aa, conv3, bn3
    if self.se is not None: x = self.se(x)
    if self.drop_path is not None: x = self.drop_path(x)     # None at rate 0
    if self.downsample is not None: shortcut = self.downsample(shortcut)
    x += shortcut
    x = self.act3(x)

The branch holds BatchNorm, so these blocks are always fused, never skipped.  The original draws the
mask before the downsample runs; neither the downsample (conv + BatchNorm) nor anything after consumes
random numbers, so the fused op's draw after it keeps the same samples.
"""
from __future__ import annotations

import torch

from .core import Pattern, check_drop_paths, has_batchnorm, rate_of, register, residual_site, run_sequence


# The submodules each branch chains, in the order of timm's forward (se, when present, after them).
_BASIC_CHAIN = ("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2")
_BOTTLENECK_CHAIN = ("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3")


def _forward(block, settings, x: torch.Tensor, branch, act) -> torch.Tensor:
    r = rate_of(block.drop_path)
    if r is None or not r.active:
        return type(block).forward(block, x)
    out = run_sequence(block, x, branch)
    if block.se is not None:
        out = block.se(out)
    shortcut = x if block.downsample is None else block.downsample(x)
    return act(residual_site(settings, x, lambda _: out, r, residual=shortcut))


def timm_basic_block_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``BasicBlock.forward`` with drop path and the residual add fused."""
    return _forward(block, settings, x, _BASIC_CHAIN, block.act2)


def timm_bottleneck_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``Bottleneck.forward`` with drop path and the residual add fused."""
    return _forward(block, settings, x, _BOTTLENECK_CHAIN, block.act3)


try:
    from timm.models.resnet import BasicBlock as _BASIC, Bottleneck as _BOTTLENECK
except Exception:  # noqa: BLE001
    pass
else:
    for _cls, _fwd in ((_BASIC, timm_basic_block_forward), (_BOTTLENECK, timm_bottleneck_forward)):
        register(Pattern(_cls, _fwd, ("self", "x"), ("drop_path",),
                         lambda b: check_drop_paths(b, ("drop_path",)), has_batchnorm))
