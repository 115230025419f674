"""The random draws of every sdkernels op, and the contract they follow on one or many ranks.

The contract
============

* **Single process.** A drop decision is drawn from torch's generator on the tensor's device, or
  from ``generator=`` when one is given: ``torch.empty(n, dtype=d, device=dev).bernoulli_(1 - p)``
  with ``d`` float32 (float64 for float64 inputs), the stream timm's ``drop_path`` and
  torchvision's ``stochastic_depth`` consume, so one seed drops the same samples
  (:func:`sdkernels.reference.draw_keep`).  The skip path's count "fixed" draws
  ``torch.randperm(n)`` the same way.

* **Many ranks: seed every rank alike** (``torch.manual_seed(s)`` with the same ``s`` everywhere, as
  torchtitan and Megatron-LM do by default).  Then:

  - every rank that holds part of a sample makes the same decision for it: under tensor or
    sequence parallelism a sample is spread over ranks, and a drop path is the opposite of
    elementwise dropout (one decision per sample, not per element);
  - mode "batch" takes the same decision on every rank (ranks deciding differently would scale
    the gradient instead of dropping the block: torchvision issue 7722);
  - **data-parallel replicas draw the same pattern over their local sample positions** (replica 0's
    sample 3 and replica 1's sample 3 are dropped together).  Each replica's drops are still
    Bernoulli(p), but the replicas' are correlated.  To decorrelate them call
    :func:`set_data_parallel_draws` (``rank``, ``world_size`` of the data-parallel group): every rank
    then draws the decisions of the global batch (``world_size`` times its local count, the same
    values on every rank) and takes its own slice, as Megatron-LM does.  Ranks of one replica
    (tensor/sequence parallel) share the data-parallel rank, so they take the same slice: both
    guarantees above still hold.

* **DTensor inputs.** The decisions are drawn for the *global* sample count (the DTensor's shape),
  on every rank, and made a replicated DTensor holding the first rank's draw (one broadcast of the
  decisions over the mesh, from its first rank).  So ranks seeded differently **still agree**
  (the first rank's stream decides; no silent mismatch), at the cost of one small broadcast per
  call.  Each rank then uses the slice of the decisions its shard needs: activations are never
  gathered.

* **Activation checkpointing.** ``torch.utils.checkpoint`` restores the default CPU and CUDA
  generators before it recomputes a forward, so draws from them (``generator=None``, the default)
  repeat exactly.  It does not restore an explicit ``torch.Generator``: a draw from one inside a
  checkpointed region would differ in the recompute and silently give wrong gradients.  So such a
  draw **raises** (RuntimeError naming the fix) unless the region runs under
  :func:`checkpoint_context_fn` (``torch.utils.checkpoint.checkpoint(fn, ..., use_reentrant=False,
  context_fn=sdkernels.rng.checkpoint_context_fn(g))``), which saves the generator's state before the
  forward and replays it for the recompute (then puts back the state the generator had reached).

Every op follows it: ``drop_path_add``, ``drop_path`` and ``drop_path_residual`` draw through
:func:`draw` and :func:`fixed_subset` only.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Optional, Tuple

import torch

from . import reference

__all__ = ["draw", "fixed_subset", "batch_decision", "set_data_parallel_draws", "data_parallel_draws",
           "checkpoint_context_fn", "is_dtensor", "replicated_like", "replicated_agreed", "data_parallel"]

# (rank, world_size) of the data-parallel group when replicas decorrelate their draws, else None.
#: ``(rank, world_size)`` of the data-parallel group while :func:`set_data_parallel_draws` is in force, else
#: None.  Read it; change it only through :func:`set_data_parallel_draws` / :func:`data_parallel_draws`.
DATA_PARALLEL: Optional[Tuple[int, int]] = None


def set_data_parallel_draws(rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
    """Decorrelate data-parallel replicas' drop decisions (see the module docstring); ``None`` undoes it.

    Call it once per process after ``init_process_group`` with the rank and size of the
    *data-parallel* group (for DDP or plain FSDP: the global rank and world size; with tensor or
    sequence parallelism inside each replica: the replica's index and the number of replicas).
    Every rank must still be seeded alike.  ``rank`` may be a ``torch.distributed.ProcessGroup``,
    whose rank and size are then used.
    """
    global DATA_PARALLEL
    if rank is None and world_size is None:
        DATA_PARALLEL = None
        return
    if world_size is None and rank is not None and not isinstance(rank, int):
        import torch.distributed as dist

        rank, world_size = dist.get_rank(rank), dist.get_world_size(rank)
    if isinstance(rank, bool) or not isinstance(rank, int) or isinstance(world_size, bool) \
            or not isinstance(world_size, int):
        raise TypeError(f"rank and world_size must be ints (or rank a ProcessGroup), got {rank!r}, {world_size!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    DATA_PARALLEL = (rank, world_size)


@contextlib.contextmanager
def data_parallel_draws(rank: Optional[int], world_size: Optional[int] = None):
    """:func:`set_data_parallel_draws` for the duration of a ``with`` block (the previous setting after)."""
    global DATA_PARALLEL
    old = DATA_PARALLEL
    set_data_parallel_draws(rank, world_size)
    try:
        yield
    finally:
        DATA_PARALLEL = old


# ---- DTensor ------------------------------------------------------------------------------------

_DTENSOR = None


def _dtensor_cls():
    global _DTENSOR
    if _DTENSOR is None:
        try:
            from torch.distributed.tensor import DTensor
        except Exception:  # noqa: BLE001 - a torch without distributed: no DTensor can reach us
            DTensor = ()
        _DTENSOR = DTensor
    return _DTENSOR


def is_dtensor(x) -> bool:
    """Whether ``x`` is a ``torch.distributed.tensor.DTensor`` (cheap for plain tensors)."""
    if type(x) is torch.Tensor or type(x) is torch.nn.Parameter:
        return False
    cls = _dtensor_cls()
    return bool(cls) and isinstance(x, cls)


def _replicated(local: torch.Tensor, like) -> torch.Tensor:
    """``local`` (the same shape on every rank) as a replicated DTensor on ``like``'s mesh, holding the
    first rank's values on every rank: one broadcast per mesh dim from its first rank (a functional
    collective, which ``torch.compile`` traces), nothing else."""
    import torch.distributed._functional_collectives as funcol

    mesh = like.device_mesh
    for d in range(mesh.ndim):
        if mesh.size(d) > 1:
            local = funcol.broadcast(local.contiguous(), 0, (mesh, d))
    return replicated_agreed(local, like)


def replicated_agreed(local: torch.Tensor, like) -> torch.Tensor:
    """``local`` (already equal on every rank) as a replicated DTensor on ``like``'s mesh, no communication."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = like.device_mesh
    return DTensor.from_local(local, mesh, [Replicate()] * mesh.ndim, run_check=False)


def replicated_like(t: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    """A plain parameter ``t`` (LayerScale gamma, a norm's weight) beside DTensor activations ``like``: the
    same replicated DTensor on every rank, without communication (a plain parameter is the same on every
    rank under the contract).  ``t`` itself when it is None, already a DTensor, or ``like`` is not one."""
    if t is None or not is_dtensor(like) or is_dtensor(t):
        return t
    return replicated_agreed(t, like)


# ---- explicit generators under activation checkpointing --------------------------------------------

_TLS = threading.local()


def _covered() -> set:
    s = getattr(_TLS, "generators", None)
    if s is None:
        s = _TLS.generators = set()
    return s


def _in_checkpoint() -> bool:
    """Inside a non-reentrant ``torch.utils.checkpoint`` forward or recompute, or a backward pass
    (where the reentrant variant recomputes)."""
    try:
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    except Exception:  # noqa: BLE001 - older torch: no probe
        hooks = None
    if hooks is not None:
        pack = hooks[0]
        if getattr(pack, "_checkpoint_internal", False) or "checkpoint" in getattr(pack, "__qualname__", "") \
                or "recomputation" in getattr(pack, "__qualname__", ""):
            return True
    try:
        return torch.is_grad_enabled() and torch._C._current_graph_task_id() != -1
    except Exception:  # noqa: BLE001
        return False


def _check_generator(generator: Optional[torch.Generator]) -> None:
    if generator is None or torch.compiler.is_compiling():
        return
    if id(generator) in _covered():
        return
    if _in_checkpoint():
        raise RuntimeError(
            "sdkernels: a draw from an explicit generator= inside torch.utils.checkpoint would not repeat "
            "in the recompute (checkpoint restores only the default generators), giving wrong gradients. "
            "Leave generator=None (and seed torch), or checkpoint with use_reentrant=False and "
            "context_fn=sdkernels.rng.checkpoint_context_fn(generator)."
        )


class _GeneratorContext:
    def __init__(self, generators, states: dict, recompute: bool):
        self.generators, self.states, self.recompute = generators, states, recompute
        self.later = {}

    def __enter__(self):
        for g in self.generators:
            if self.recompute:
                self.later[id(g)] = g.get_state()
                g.set_state(self.states[id(g)])
            else:
                self.states[id(g)] = g.get_state()
            _covered().add(id(g))
        return self

    def __exit__(self, *exc):
        for g in self.generators:
            _covered().discard(id(g))
            if self.recompute:
                g.set_state(self.later.pop(id(g)))
        return False


def checkpoint_context_fn(*generators: torch.Generator):
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` that makes draws
    from the explicit ``generators`` repeat in the recompute.

    The forward context saves each generator's state; the recompute context sets it back to that state
    for the recompute and afterwards restores the state the generator had reached, so the recompute
    neither changes the masks nor the generator's later draws.
    """
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise TypeError(f"checkpoint_context_fn takes torch.Generator objects, got {type(g).__name__}")

    def context_fn():
        states: dict = {}
        return _GeneratorContext(generators, states, False), _GeneratorContext(generators, states, True)

    return context_fn


# ---- the draws ----------------------------------------------------------------------------------------

def data_parallel() -> Optional[Tuple[int, int]]:
    """``(rank, world_size)`` set by :func:`set_data_parallel_draws`, or None (every rank draws alike)."""
    return DATA_PARALLEL


_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})


def draw(x: torch.Tensor, dim: int, p: float, mode: str, generator: Optional[torch.Generator],
         dtype: Optional[torch.dtype] = None, rule: str = "timm") -> torch.Tensor:
    """The keep mask for the samples of ``x`` along ``dim``.

    One value per sample (mode "row") or one for all ("batch"), zeros and ones in float32 (float64
    when the tensor timm would drop is float64: ``dtype``, by default ``x.dtype``; with LayerScale the
    dtype of ``branch * gamma``).  A DTensor ``x`` gets a replicated DTensor mask over its global
    sample count; with :func:`set_data_parallel_draws` a plain ``x`` gets its slice of the global
    batch's draw.

    ``rule`` "timm" draws as timm and torchvision do (:func:`sdkernels.reference.draw_keep`); "hf" as
    Hugging Face transformers' models do (:func:`sdkernels.reference.draw_keep_hf`: ``torch.rand`` in the
    dropped tensor's own dtype ``dtype``, then ``floor(keep + r)``), another stream with the same
    distribution.
    """
    if generator is not None:
        _check_generator(generator)
    n = x.shape[dim] if mode == "row" else 1
    dropped = x.dtype if dtype is None else dtype
    dtype = reference.draw_dtype(dropped)
    if rule == "timm" and type(x) in _PLAIN and DATA_PARALLEL is None:  # the common case: one plain draw
        return reference.draw_keep(n, p, mode, x.device, generator, dtype)
    dtensor = is_dtensor(x)
    dp = DATA_PARALLEL if (mode == "row" and not dtensor) else None
    count = n if dp is None else n * dp[1]
    if rule == "hf":  # Hugging Face's draw, in the dropped tensor's own dtype
        keep = reference.draw_keep_hf(count, p, x.device, generator, dropped).to(dtype)
    else:
        keep = reference.draw_keep(count, p, "row" if dp is not None else mode, x.device, generator, dtype)
    if dp is not None:
        rank = dp[0]
        keep = keep[rank * n:(rank + 1) * n]
    return _replicated(keep, x) if dtensor else keep


def fixed_subset(x: torch.Tensor, n: int, k: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``k`` distinct sample indices of ``n``, uniformly at random (the skip path's count "fixed").

    ``torch.randperm(n)[:k]`` on ``x``'s device; with :func:`set_data_parallel_draws` each replica takes
    row ``rank`` of ``world_size`` independent permutations drawn alike on every rank; for a DTensor
    ``x`` they are a replicated DTensor holding the first rank's draw on every rank of its mesh.
    """
    _check_generator(generator)
    dtensor = is_dtensor(x)
    dp = None if dtensor else DATA_PARALLEL
    if dp is None:
        index = torch.randperm(n, device=x.device, generator=generator)[:k]
    else:
        rank, world = dp
        keys = torch.rand(world, n, device=x.device, generator=generator)
        index = keys[rank].argsort()[:k]
    return _replicated(index, x) if dtensor else index


def batch_decision(p: float, generator: Optional[torch.Generator], like: Optional[torch.Tensor] = None) -> bool:
    """Mode "batch" of the skip path: one host-side decision, kept with probability ``1 - p``.

    Drawn from ``generator`` (the default CPU generator when None); for a DTensor ``like`` the first
    rank's decision is taken over the mesh, so every rank agrees.
    """
    _check_generator(generator)
    device = generator.device if generator is not None else torch.device("cpu")
    keep = reference.draw_keep(1, p, "batch", device, generator)
    if like is not None and is_dtensor(like):
        keep = _replicated(keep.to(like.device), like).to_local()
    return bool(keep.item() != 0.0)
