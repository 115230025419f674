"""Swin transformers: timm ``swin_transformer.SwinTransformerBlock``, ``swin_transformer_v2.SwinTransformerV2Block``
and torchvision ``swin_transformer.SwinTransformerBlock`` / ``SwinTransformerBlockV2``.

timm 1.0, v1 (pre-norm) and v2 (post-norm: the norm ends the branch), on NHWC then tokens::

    B, H, W, C = x.shape
    x = x + self.drop_path1(self._attn(self.norm1(x)))        # v2: self.norm1(self._attn(x))
    x = x.reshape(B, -1, C)
    x = x + self.drop_path2(self.mlp(self.norm2(x)))          # v2: self.norm2(self.mlp(x))
    x = x.reshape(B, H, W, C)

torchvision 0.2x, one ``StochasticDepth(p, "row")`` module used for both branches (two draws)::

    x = x + self.stochastic_depth(self.attn(self.norm1(x)))   # V2: self.norm1(self.attn(x))
    x = x + self.stochastic_depth(self.mlp(self.norm2(x)))    # V2: self.norm2(self.mlp(x))

Pre-norm v1 blocks with ``fuse_norm`` (fused, not skipped) do the first add and ``norm2`` in one
``drop_path_add_norm`` pass.
Shifted-window attention partitions each sample into windows (its mask is per window, not per
sample), so every branch acts on each sample alone and ``skip=True`` runs it on the kept samples.
"""
from __future__ import annotations

import torch

from .core import Pattern, any_active, check_drop_paths, rate_of, register, residual_norm_site, residual_site

_DROP_PATHS = ("drop_path1", "drop_path2")


def _timm_forward(block, settings, x: torch.Tensor, post_norm: bool) -> torch.Tensor:
    r1, r2 = rate_of(block.drop_path1), rate_of(block.drop_path2)
    if not any_active(r1, r2):
        return type(block).forward(block, x)
    B, H, W, C = x.shape
    if post_norm:
        attn, mlp = (lambda t: block.norm1(block._attn(t))), (lambda t: block.norm2(block.mlp(t)))
    else:
        attn, mlp = (lambda t: block._attn(block.norm1(t))), (lambda t: block.mlp(block.norm2(t)))
        fused = residual_norm_site(settings, x, attn, r1, block.norm2)
        if fused is not None:  # x and norm2(x) from one pass (over C, the last dim of NHWC and of the tokens)
            x, h = fused
            h = h.reshape(B, -1, C)
            x = residual_site(settings, x.reshape(B, -1, C), lambda _: block.mlp(h), r2, skip=False)
            return x.reshape(B, H, W, C)
    x = residual_site(settings, x, attn, r1)
    x = x.reshape(B, -1, C)
    x = residual_site(settings, x, mlp, r2)
    return x.reshape(B, H, W, C)


def timm_swin_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``SwinTransformerBlock.forward`` (pre-norm) with drop path and the residual adds fused."""
    return _timm_forward(block, settings, x, False)


def timm_swin_v2_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """timm ``SwinTransformerV2Block.forward`` (post-norm) with drop path and the residual adds fused."""
    return _timm_forward(block, settings, x, True)


def tv_swin_forward(block, settings, x: torch.Tensor) -> torch.Tensor:
    """torchvision ``SwinTransformerBlock`` / ``SwinTransformerBlockV2`` forward, fused (V2: post-norm)."""
    r = rate_of(block.stochastic_depth)
    if not any_active(r):
        return type(block).forward(block, x)
    if isinstance(block, _TV_V2):
        attn, mlp = (lambda t: block.norm1(block.attn(t))), (lambda t: block.norm2(block.mlp(t)))
    else:
        attn, mlp = (lambda t: block.attn(block.norm1(t))), (lambda t: block.mlp(block.norm2(t)))
        fused = residual_norm_site(settings, x, attn, r, block.norm2)
        if fused is not None:  # x and norm2(x) from one pass
            x, h = fused
            return residual_site(settings, x, lambda _: block.mlp(h), r, skip=False)
    x = residual_site(settings, x, attn, r)
    return residual_site(settings, x, mlp, r)


def _check(names):
    return lambda block: check_drop_paths(block, names)


try:
    from timm.models.swin_transformer import SwinTransformerBlock as _TIMM_V1
    from timm.models.swin_transformer_v2 import SwinTransformerV2Block as _TIMM_V2
except Exception:  # noqa: BLE001
    pass
else:
    register(Pattern(_TIMM_V1, timm_swin_forward, ("self", "x"), _DROP_PATHS, _check(_DROP_PATHS), fuses_norm=True))
    register(Pattern(_TIMM_V2, timm_swin_v2_forward, ("self", "x"), _DROP_PATHS, _check(_DROP_PATHS)))

try:
    from torchvision.models.swin_transformer import SwinTransformerBlock as _TV_V1
    from torchvision.models.swin_transformer import SwinTransformerBlockV2 as _TV_V2
except Exception:  # noqa: BLE001
    pass
else:
    for _cls in (_TV_V1, _TV_V2):
        register(Pattern(_cls, tv_swin_forward, ("self", "x"), ("stochastic_depth",),
                         _check(("stochastic_depth",)), fuses_norm=_cls is _TV_V1))
