"""What every family's Triton twin shares: registration, launch helpers and the eager fast path.

Importing this module imports Triton (ImportError without it); each family imports it inside the
``try`` of its "Triton twin" section, so ``import sdkernels`` never breaks on Triton.

* Registration (:func:`register_op`): ``torch.library.triton_op`` so ``torch.compile`` sees the
  Triton kernels themselves (launched through ``wrap_triton``).  Under ``TRITON_INTERPRET=1``
  (read once, at import) the ops also accept CPU tensors, for testing without a GPU; interpreted
  kernels cannot be compiled by Inductor, so there the ops are plain ``custom_op``s with the
  function itself as their fake kernel (:func:`skip_launch`: allocate, launch nothing).
* Eager fast path (:func:`is_eager`, :func:`fast_function`): in plain eager mode a family calls its
  op's own body (same checks, errors, allocation and kernels; the launch unwrapped) under a
  ``torch.autograd.Function`` with the family's autograd rules, skipping the torch.library layers
  (custom-op dispatch, ``OpOverload`` calls, default filling, the generated autograd Function and
  its redispatch), which are pure host overhead and dominate at small sizes (on an H200 the Triton
  path took 145 us forward at 8x16x64 where the C++ op took 28 us).  The fast path is taken only
  when not compiling, with no TorchDispatchMode (FakeTensorMode, FlopCounterMode ...) or
  TorchFunctionMode active, no functorch transform, no JIT tracing, no forward-mode AD level, and
  every tensor argument a plain ``torch.Tensor`` (or ``nn.Parameter``); otherwise the call goes to
  the registered op.
"""
import contextlib

import torch
from torch.autograd import forward_ad

from ..triton_kernels.common import INTERPRET

__all__ = ["INTERPRET", "DEVICES", "AVAILABLE", "wrap", "unwrapped", "skip_launch", "launch_device",
           "check_device", "in_layout_of", "register_op", "is_eager", "needs_grad", "fast_function", "NUMBERS"]

DEVICES = frozenset({"cuda", "cpu"} if INTERPRET else {"cuda"})
AVAILABLE = bool(INTERPRET or torch.cuda.is_available())
#: What a schema's ``float`` argument takes on the fast path (not bool).
NUMBERS = frozenset({int, float})


def wrap(kernel):
    """``wrap_triton`` for compiled kernels; the bare kernel under the interpreter."""
    return kernel if INTERPRET else torch.library.wrap_triton(kernel)


def unwrapped(kernel):
    """The fast path's ``wrap``: launch the Triton kernel itself."""
    return kernel


def skip_launch(t: torch.Tensor) -> bool:
    """Under the interpreter an op's fake kernel is its own body run on fake tensors: allocate, launch nothing.

    (Compiled kernels go through ``wrap_triton``, whose fake rule launches nothing either.)
    """
    if not INTERPRET:
        return False
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def launch_device(t: torch.Tensor):
    """A context making ``t``'s GPU the current device for the launch.

    Triton's launcher compiles for, and launches on, the *current* device and its current stream,
    not the tensors' device: without this a tensor on ``cuda:1`` while ``cuda:0`` is current would
    be handed to a kernel running on GPU 0.  (Inductor's generated code sets the device itself.)
    """
    if INTERPRET or t.device.type != "cuda" or t.device.index is None or not torch.cuda.is_available():
        return contextlib.nullcontext()
    if t.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device.index)


def check_device(t: torch.Tensor) -> None:
    if t.device.type not in DEVICES:
        raise ValueError(
            f"sdkernels: the Triton ops run on CUDA tensors (CPU tensors too under TRITON_INTERPRET=1), got {t.device}")


def in_layout_of(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """src itself when it has out's strides (dims of size 1 aside), else a copy in out's layout.

    ``out`` is dense (``empty_like`` makes it so), hence so is a ``src`` with its strides.
    """
    if all(sz == 1 or a == b for sz, a, b in zip(out.shape, src.stride(), out.stride())):
        return src
    dst = torch.empty_strided(out.shape, out.stride(), dtype=src.dtype, device=src.device)
    dst.copy_(src)
    return dst


def register_op(name: str, fn, schema: str):
    """Register ``fn`` as the Triton op ``name`` ("sdkernels::..."); returns its default overload."""
    if INTERPRET:
        op = torch.library.custom_op(name, fn, mutates_args=(), schema=schema)
        op.register_fake(fn)
    else:
        try:
            torch.library.triton_op(name, fn, mutates_args=(), schema=schema)
        except TypeError:  # torch < 2.7: no schema argument; the schema is inferred from the annotations
            torch.library.triton_op(name, fn, mutates_args=())
    ns, op_name = name.split("::")
    return getattr(getattr(torch.ops, ns), op_name).default


_C = torch._C
_PLAIN_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})  # no __torch_function__ / __torch_dispatch__
_is_compiling = torch.compiler.is_compiling
# The probes of is_eager; a torch without one of them takes the ops every time.
_PROBES_OK = all(
    hasattr(_C, name)
    for name in ("_len_torch_dispatch_stack", "_is_torch_function_mode_enabled",
                 "_are_functorch_transforms_active", "_get_tracing_state")
) and hasattr(forward_ad, "_current_level")


def is_eager(*tensors) -> bool:
    """True when a call may skip the registered op: plain eager mode, plain tensors (None allowed).

    ``is_compiling`` comes first: under dynamo it is the constant True and the rest is never traced.
    """
    if _is_compiling() or not _PROBES_OK:
        return False
    for t in tensors:
        if t is not None and type(t) not in _PLAIN_TENSORS:
            return False
    return not (
        _C._len_torch_dispatch_stack()
        or _C._is_torch_function_mode_enabled()
        or _C._are_functorch_transforms_active()
        or _C._get_tracing_state() is not None
        or forward_ad._current_level >= 0
    )


def needs_grad(*tensors) -> bool:
    """Grad mode is on and some tensor (None allowed) requires grad."""
    return _C.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fast_function(name: str, impl, setup, backward, module: str = __name__):
    """An autograd.Function running ``impl(*args, unwrapped)`` with ``torch.library.register_autograd``-style
    ``setup(ctx, inputs, output)`` and ``backward(ctx, *grads)`` rules."""

    def forward(ctx, *args):
        out = impl(*args, unwrapped)
        setup(ctx, args, out)
        return out

    def bwd(ctx, *grads):
        return backward(ctx, *grads)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(bwd),
                                                   "__module__": module})
