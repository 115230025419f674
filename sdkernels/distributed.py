"""DTensor sharding rules for every sdkernels op (tensor, sequence and FSDP2 x TP parallelism).

The RNG contract these rules rely on (which ranks must be seeded alike, what differs per data-parallel
replica, what ``generator=`` does, activation checkpointing) is written once, in :mod:`sdkernels.rng`.

Each op gets the placements under which running it on every rank's local shard is exactly the op
on the global tensor (``torch.distributed.tensor.experimental.register_sharding``), for one mesh dim:

* all ``Replicate``;
* ``Shard(d)`` of the activations on a dim ``d`` other than the sample dim, the per-sample scale (or
  the skip path's index) replicated;
* ``Shard(sample_dim)`` with the per-sample scale sharded alike (``Shard(0)``; a single "batch" value
  stays replicated).  Not for the skip-path ops: their ``index`` holds global sample indices, so a
  shard of the samples would need its own, local indices;
* ``Partial`` inputs give a ``Partial`` output where the op is linear in them: ``residual`` and
  ``branch`` together for the residual add (``r + b * m`` summed over ranks is ``R + B * m``), ``x``
  for ``sample_scale``, and the same for the skip path's pair.

DTensor propagates these rules through the ops' autograd too (the backward runs the same ops on
DTensor gradients).  The public functions accept DTensors and draw their masks as :mod:`sdkernels.rng`
says (global sample count, replicated, agreed over the mesh): with the activations sharded as above
nothing is gathered.  Each op family keeps its rules beside its ops (``SHARDING`` in
``sdkernels/ops/<family>.py``); :func:`register_rules` registers them all.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

__all__ = ["rules", "register_rules", "registered", "placements", "wrap_dim", "sample_op_rules"]

_REGISTERED: List[str] = []


def placements():
    """``(Replicate(), Shard, Partial())`` (imported when a rule runs: a torch without distributed never does)."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    return Replicate(), Shard, Partial()


def wrap_dim(d: int, nd: int) -> int:
    return d % nd if nd else 0


def sample_op_rules(x, scale, sample_dim: int, n_extra: int, partial: Tuple[bool, ...], shard_samples: bool):
    """Rules of an op whose tensor inputs are ``len(partial)`` activations of one shape followed by a
    per-sample scale / index vector, then ``n_extra`` non-tensor arguments.

    ``partial[i]``: the op is linear in activation ``i`` jointly with the others marked True.
    """
    R, S, P = placements()
    nd = x.ndim
    sd = wrap_dim(sample_dim, nd)
    n_act = len(partial)
    tail = [None] * n_extra
    one_scale = scale is not None and len(scale.shape) >= 1 and scale.shape[0] == 1
    rules = [([R], [R] * n_act + [R] + tail)]
    for d in range(nd):
        if d != sd:
            rules.append(([S(d)], [S(d)] * n_act + [R] + tail))
    if shard_samples:
        rules.append(([S(sd)], [S(sd)] * n_act + [R if one_scale else S(0)] + tail))
    if all(partial):
        rules.append(([P], [P] * n_act + [R] + tail))
    return rules


def rules() -> Dict[str, Callable]:
    """op name (in the ``sdkernels`` namespace) -> its rule function: every family's ``SHARDING`` table."""
    from .ops import FAMILIES

    table: Dict[str, Callable] = {}
    for fam in FAMILIES:
        table.update(fam.SHARDING)
    return table


def register_rules() -> Tuple[str, ...]:
    """Register :func:`rules` for every sdkernels op that exists in this process; returns their names.

    Called on ``import sdkernels``; calling it again (after more ops were registered) adds the rest.
    A torch without ``torch.distributed`` registers nothing.
    """
    try:
        from torch.distributed.tensor.experimental import register_sharding
    except Exception:  # noqa: BLE001 - no distributed support in this torch build
        return ()
    ns = torch.ops.sdkernels
    for name, rule in rules().items():
        if name in _REGISTERED:
            continue
        try:
            op = getattr(ns, name).default
        except (AttributeError, RuntimeError):
            continue
        register_sharding(op)(rule)
        _REGISTERED.append(name)
    return tuple(_REGISTERED)


def registered() -> Tuple[str, ...]:
    """Names of the ops whose sharding rules are registered."""
    return tuple(_REGISTERED)
