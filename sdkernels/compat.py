"""Exact-signature twins of timm's and torchvision's drop-path functions and modules.

Swap an import and nothing else changes::

    from timm.layers import drop_path, DropPath                  # before
    from sdkernels.compat import drop_path, DropPath              # after

    from torchvision.ops import stochastic_depth, StochasticDepth   # before
    from sdkernels.compat import stochastic_depth, StochasticDepth   # after

Same signatures, defaults, errors and train/eval behaviour as the originals,
and the same samples dropped under one seed (the draw consumes the random
stream the originals consume: :func:`sdkernels.reference.draw_keep`).  What
differs is how the work is done: one fused pass that never reads a dropped
sample, with the scale ``1 / (1 - p)`` applied exactly in fp32 (the originals
round the mask to the input's dtype first, so fp16/bf16 results may differ in
the last bit) and zeros for dropped samples even where the input holds NaN
or Inf (the originals give ``NaN * 0 = NaN`` there).

Which to use when:

* these twins, to drop sdkernels into code written for timm or torchvision
  (``drop_path(x, self.drop_prob, self.training)``: ``training`` is positional
  and defaults to False, as in timm; ``stochastic_depth(x, p, mode)``: ``training``
  defaults to True, as in torchvision);
* :func:`sdkernels.drop_path` / :func:`sdkernels.drop_path_add` in new code: ``p``
  is the argument name, ``training`` is keyword-only and defaults to True, and
  they take ``sample_dim``, ``generator`` and ``backend``;
  ``drop_path_add`` also fuses the residual add, where most of the time is saved;
* ``sdkernels.convert(model)`` for whole timm and torchvision models.

The modules are the ones in :mod:`sdkernels.nn` (already timm's and
torchvision's signatures).  Under ``torch.fx`` every function and module here
traces as one leaf node.
"""
from __future__ import annotations

import torch

from . import _fx, checks, functional
from .nn import DropPath, StochasticDepth

__all__ = ["drop_path", "DropPath", "stochastic_depth", "StochasticDepth"]


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    """timm's ``drop_path(x, drop_prob=0., training=False, scale_by_keep=True)``, fused.

    Returns ``x`` itself when ``drop_prob == 0`` or not ``training``; otherwise each
    sample (dim 0) is kept with probability ``1 - drop_prob`` and scaled by
    ``1 / (1 - drop_prob)`` when ``scale_by_keep``, and dropped samples are zeros.
    ``drop_prob`` outside [0, 1] raises ``ValueError``.
    """
    return functional.drop_path(x, drop_prob, training=training, scale_by_keep=scale_by_keep)


def stochastic_depth(input: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """torchvision's ``stochastic_depth(input, p, mode, training=True)``, fused.

    ``mode`` "row" drops each sample (dim 0) with probability ``p``, "batch" the
    whole input; survivors are scaled by ``1 / (1 - p)``.  Returns ``input``
    itself when not ``training`` or ``p == 0``.  Raises torchvision's
    ``ValueError`` messages for ``p`` outside [0, 1] and an unknown ``mode``.
    """
    if isinstance(input, _fx.Proxy):
        return _fx.record(input, stochastic_depth, (input, p, mode), dict(training=training))
    checks.check_torchvision_args(p, mode)
    return functional.drop_path(input, p, training=training, mode=mode)
