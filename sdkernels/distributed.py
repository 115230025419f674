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
nothing is gathered.  Rules of the op families added later (LayerScale, add + norm) are registered
by :func:`register_rules` too, from the table :data:`RULES`.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

__all__ = ["RULES", "register_rules", "registered"]

_REGISTERED: List[str] = []


def _placements():
    from torch.distributed.tensor import Partial, Replicate, Shard

    return Replicate(), Shard, Partial()


def _wrap(d: int, nd: int) -> int:
    return d % nd if nd else 0


def _sample_op_rules(x, scale, sample_dim: int, n_extra: int, partial: Tuple[bool, ...], shard_samples: bool):
    """Rules of an op whose tensor inputs are ``len(partial)`` activations of one shape followed by a
    per-sample scale / index vector, then ``n_extra`` non-tensor arguments.

    ``partial[i]``: the op is linear in activation ``i`` jointly with the others marked True.
    """
    R, S, P = _placements()
    nd = x.ndim
    sd = _wrap(sample_dim, nd)
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


def _residual_add(residual, branch, scale, sample_dim, alpha=1.0):
    return _sample_op_rules(residual, scale, sample_dim, 2, (True, True), True)


def _sample_scale(x, scale, sample_dim, alpha=1.0, dtype=None):
    return _sample_op_rules(x, scale, sample_dim, 3, (True,), True)


def _scaled_index_add(residual, src, index, sample_dim, alpha):
    return _sample_op_rules(residual, index, sample_dim, 2, (True, True), False)


def _index_scale(grad, index, sample_dim, alpha, dtype=None):
    return _sample_op_rules(grad, index, sample_dim, 3, (True,), False)


# ---- LayerScale (issue 13): a per-channel gamma (1-D at the op level) besides the per-sample scale --------
# Shard(channel_dim) shards gamma alike (Shard(0)); gamma's gradient, a sum over every dim but the channel,
# is Partial when another dim is sharded.

def _ls_rules(x, scale, sample_dim, channel_dim, n_act: int, n_extra: int, grads: bool, linear: bool):
    R, S, P = _placements()
    nd = x.ndim
    sd, cd = _wrap(sample_dim, nd), _wrap(channel_dim, nd)
    tail = [None] * n_extra
    one_scale = len(scale.shape) >= 1 and scale.shape[0] == 1

    def rule(act, scale_p, gamma_p, gamma_grad):
        outs = [act, gamma_grad] if grads else [act]
        return outs, [act] * n_act + [scale_p, gamma_p] + tail

    rules = [rule(R, R, R, R)]
    for d in range(nd):
        if d == cd:
            rules.append(rule(S(d), R, S(0), S(0)))
        elif d == sd:
            rules.append(rule(S(d), R if one_scale else S(0), R, P))
        else:
            rules.append(rule(S(d), R, R, P))
    if linear:  # in the activations jointly (gamma and the scale replicated); its gamma gradient too
        rules.append(rule(P, R, R, P))
    return rules


def _residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
    return _ls_rules(residual, scale, sample_dim, channel_dim, 2, 3, False, True)


def _sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, alpha=1.0, dtype=None):
    return _ls_rules(x, scale, sample_dim, channel_dim, 1, 4, False, True)


def _layer_scale_grads(grad, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
    # (grad_branch, grad_gamma): both linear in grad alone, so a Partial grad with branch replicated
    # gives Partial outputs; any sharding of grad and branch together as above.
    R, _, P = _placements()
    return _ls_rules(grad, scale, sample_dim, channel_dim, 2, 3, True, False) + [([P, P], [P, R, R, R, None, None, None])]


# ---- add + norm (issue 14): the normalised last dim is never sharded ---------------------------------
# x, h, mean and rstd follow the rows; mean and rstd hold one value per row (in memory order), so the
# rows may be split along the leading dim only (Shard(0): the batch of [B, N, H], or the sequence of
# seq-first [S, B, H] as sequence parallelism shards it); a middle dim of a 3-d tensor is redistributed.
# The norm is not linear: no Partial (DTensor reduces a Partial input first, so x and h see the sum).
# The backward's weight, bias and gamma gradients are sums over rows: Partial under Shard(0).
# RMSNorm returns an empty ``mean``: it stays replicated.  Known limit: mean and rstd are 1-D (one value
# per row), so for a 3-d x whose leading dim does not split evenly over the mesh (e.g. 197 tokens on 2
# ranks) their Shard(0) metadata does not match the rows each rank holds; the values are right as long as
# they are not redistributed (the backward takes the same Shard(0) rule), but full_tensor() of them is not.

def _add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype=None):
    R, S, _ = _placements()
    nd = residual.ndim
    opt = [None if t is None else R for t in (weight, bias, gamma)]
    tail = [None] * 5
    rules = [([R] * 4, [R, R, R] + opt + tail)]
    if nd >= 2:
        sd = _wrap(sample_dim, nd)
        scale_p = S(0) if (sd == 0 and scale.shape[0] > 1) else R
        # RMSNorm's mean is an empty placeholder: replicated (an empty dim cannot be sharded)
        rules.append(([S(0), S(0), R if rms else S(0), S(0)], [S(0), S(0), scale_p] + opt + tail))
    return rules


def _add_norm_backward(grad_x, grad_h, x, mean, rstd, scale, weight, gamma, branch, sample_dim, alpha, rms,
                       residual_dtype, branch_dtype, weight_dtype=None, bias_dtype=None):
    R, S, P = _placements()
    nd = x.ndim
    opt_in = [None if t is None else R for t in (weight, gamma)]
    n_tail = 7

    def placements(rows, sums, scale_p):
        grad_ins = [None if grad_x is None else rows, rows, rows, R if rms else rows, rows, scale_p] + opt_in
        grad_ins += [None if branch is None else rows] + [None] * n_tail
        outs = [rows, rows,
                sums if weight_dtype is not None else R, sums if bias_dtype is not None else R,
                sums if branch is not None else R]
        return outs, grad_ins

    rules = [placements(R, R, R)]
    if nd >= 2:
        sd = _wrap(sample_dim, nd)
        rules.append(placements(S(0), P, S(0) if (sd == 0 and scale.shape[0] > 1) else R))
    return rules


#: op name (in the ``sdkernels`` namespace) -> its rule function.  Ops not built here are skipped.
RULES: Dict[str, Callable] = {
    "scaled_residual_add": _residual_add,
    "scaled_residual_add_triton": _residual_add,
    "sample_scale": _sample_scale,
    "sample_scale_triton": _sample_scale,
    "scaled_index_add": _scaled_index_add,
    "scaled_index_add_triton": _scaled_index_add,
    "index_scale": _index_scale,
    "index_scale_triton": _index_scale,
    "scaled_residual_add_ls": _residual_add_ls,
    "scaled_residual_add_ls_triton": _residual_add_ls,
    "sample_scale_ls": _sample_scale_ls,
    "sample_scale_ls_triton": _sample_scale_ls,
    "layer_scale_grads": _layer_scale_grads,
    "layer_scale_grads_triton": _layer_scale_grads,
    "add_norm": _add_norm,
    "add_norm_triton": _add_norm,
    "add_norm_backward": _add_norm_backward,
    "add_norm_backward_triton": _add_norm_backward,
}


def register_rules() -> Tuple[str, ...]:
    """Register :data:`RULES` for every sdkernels op that exists in this process; returns their names.

    Called on ``import sdkernels``; calling it again (after more ops were registered) adds the rest.
    A torch without ``torch.distributed`` registers nothing.
    """
    try:
        from torch.distributed.tensor.experimental import register_sharding
    except Exception:  # noqa: BLE001 - no distributed support in this torch build
        return ()
    ns = torch.ops.sdkernels
    for name, rule in RULES.items():
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
