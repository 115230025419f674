"""Vision transformers: timm ``vision_transformer.Block`` (ViT, DeiT, DeiT III) and ``eva.EvaBlock`` (EVA-02).

timm 1.0 ``Block.forward(x, attn_mask=None, is_causal=False)``::

    x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
    x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

``ls1``/``ls2`` are ``LayerScale`` (``x * gamma``, gamma of shape (C,)) or ``Identity``.

timm 1.0 ``EvaBlock.forward(x, rope=None, attn_mask=None, is_causal=False)``::

    x_attn = self.attn(self.norm1(x), rope=rope, attn_mask=attn_mask, is_causal=is_causal)
    if self.gamma_1 is not None: x_attn = self.gamma_1 * x_attn
    x = x + self.drop_path1(x_attn)
    (the same for the MLP with gamma_2)

With ``fuse_norm`` (fused, not skipped) the first add and ``norm2`` are one ``drop_path_add_norm`` pass.
Both branches act on each sample alone, so ``skip=True`` runs them on the kept samples only, unless
the call passes an attention mask (which may be per sample) or a rope tensor with a batch dim.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .core import Pattern, check_drop_paths, rate_of, any_active, register, residual_norm_site, residual_site

_DROP_PATHS = ("drop_path1", "drop_path2")


def _layer_scale(ls: nn.Module):
    """(gamma, extra): the LayerScale's gamma to fuse, or None and the module to apply in the branch."""
    from timm.layers import LayerScale

    if isinstance(ls, nn.Identity):
        return None, None
    if type(ls) is LayerScale:
        return ls.gamma, None
    return None, ls


def _ls_branch(fn, extra: Optional[nn.Module]):
    return fn if extra is None else (lambda t: extra(fn(t)))


def vit_block_forward(block, settings, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                      is_causal: bool = False) -> torch.Tensor:
    """timm ``Block.forward`` with each drop path and residual add fused (module docstring)."""
    r1, r2 = rate_of(block.drop_path1), rate_of(block.drop_path2)
    if not any_active(r1, r2):
        return type(block).forward(block, x, attn_mask=attn_mask, is_causal=is_causal)
    g1, ls1 = _layer_scale(block.ls1)
    g2, ls2 = _layer_scale(block.ls2)
    attn = _ls_branch(lambda t: block.attn(block.norm1(t), attn_mask=attn_mask, is_causal=is_causal), ls1)
    fused = residual_norm_site(settings, x, attn, r1, block.norm2, gamma=g1)
    if fused is not None:  # x and norm2(x) from one pass
        x, h = fused
        return residual_site(settings, x, _ls_branch(lambda _: block.mlp(h), ls2), r2, gamma=g2, skip=False)
    x = residual_site(settings, x, attn, r1, gamma=g1, skip=attn_mask is None)
    return residual_site(settings, x, _ls_branch(lambda t: block.mlp(block.norm2(t)), ls2), r2, gamma=g2)


def eva_block_forward(block, settings, x: torch.Tensor, rope: Optional[torch.Tensor] = None,
                      attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
    """timm ``EvaBlock.forward`` with each drop path and residual add fused (module docstring)."""
    r1, r2 = rate_of(block.drop_path1), rate_of(block.drop_path2)
    if not any_active(r1, r2):
        return type(block).forward(block, x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)
    per_sample_ok = attn_mask is None and (rope is None or rope.dim() <= 3)  # a 4-d rope may carry a batch dim
    attn = lambda t: block.attn(block.norm1(t), rope=rope, attn_mask=attn_mask, is_causal=is_causal)  # noqa: E731
    fused = residual_norm_site(settings, x, attn, r1, block.norm2, gamma=block.gamma_1)
    if fused is not None:  # x and norm2(x) from one pass
        x, h = fused
        return residual_site(settings, x, lambda _: block.mlp(h), r2, gamma=block.gamma_2, skip=False)
    x = residual_site(settings, x, attn, r1, gamma=block.gamma_1, skip=per_sample_ok)
    return residual_site(settings, x, lambda t: block.mlp(block.norm2(t)), r2, gamma=block.gamma_2)


def _check_vit(block) -> Optional[str]:
    return check_drop_paths(block, _DROP_PATHS)


try:
    from timm.models.vision_transformer import Block as _BLOCK
    from timm.models.eva import EvaBlock as _EVA
except Exception:  # noqa: BLE001 - timm missing: nothing to register
    pass
else:
    register(Pattern(_BLOCK, vit_block_forward, ("self", "x", "attn_mask", "is_causal"), _DROP_PATHS, _check_vit,
                     fuses_norm=True))
    register(Pattern(_EVA, eva_block_forward, ("self", "x", "rope", "attn_mask", "is_causal"), _DROP_PATHS,
                     _check_vit, fuses_norm=True))
