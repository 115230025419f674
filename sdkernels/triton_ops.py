"""The Triton backend: ``sdkernels::scaled_residual_add_triton`` and ``sdkernels::sample_scale_triton``.

Same argument lists and semantics as the C++ ops (``csrc/ops.cpp``).  They
are registered with ``torch.library.triton_op`` and launch through
``wrap_triton``, so ``torch.compile`` sees the Triton kernels themselves; the
output allocation is :func:`sdkernels.ops.out_like` (the fake kernel is the
same Python function run on fake tensors) and autograd follows the C++ ops'
rules: :func:`sdkernels.ops.register_pair_autograd` registers
:func:`sdkernels.ops.pair_autograd_rules` for them.  (The C++ ops have the
same rules in C++, ``csrc/autograd.cpp``, to keep Python off their dispatch
path: a deliberate second copy, tested against the reference like the first.)

Under ``TRITON_INTERPRET=1`` (read once, at import) the ops also accept CPU
tensors, for testing without a GPU.  Interpreted kernels cannot be compiled
by Inductor, so there the ops are plain ``custom_op``s (opaque to
``torch.compile``, which then calls them like any other op) with this module's
function as their fake kernel.

Importing this module registers the ``"triton"`` backend of
:mod:`sdkernels.functional`; it raises ImportError when Triton is missing.

Eager fast path.  The backend does not call the ops above directly but
:func:`_eager_scaled_residual_add` / :func:`_eager_sample_scale`.  In plain
eager mode these run the ops' own body (same checks, errors, allocation and
kernels; the launch unwrapped) under a private ``torch.autograd.Function``
with the rules of :func:`sdkernels.ops.pair_autograd_rules` (saves
only ``scale``; the backward is the fast-path ``sample_scale`` again, so
double backward works), and record no autograd node when nothing requires
grad.  Why: the torch.library layers (custom-op dispatch, ``OpOverload``
calls, default filling, the generated autograd Function and its redispatch)
are pure host overhead, and dominate at small sizes: on an H200 the Triton
path took 145 us forward at 8x16x64 (the C++ op 28 us) and a flat ~325 us
backward from 64x197x768 to 256x197x1024; on CPU with the launch stubbed
out, forward plus backward cost 113 us against 42 us for the C++ op.
When: the fast path is taken only when not ``torch.compiler.is_compiling()``,
with no TorchDispatchMode (FakeTensorMode, FlopCounterMode...) or
TorchFunctionMode active, no functorch transform, no JIT tracing, no
forward-mode AD level, and every tensor argument a plain ``torch.Tensor`` (or
``nn.Parameter``) and the scalars of the schema's types; otherwise the call
goes to the registered op, exactly as before.  ``scaled_residual_add`` and
``sample_scale`` below stay the ops (for opcheck, ``torch.compile``, fake
kernels).
"""
import contextlib
from typing import Optional  # no `from __future__ import annotations`: older torch infers schemas from real types

import torch
from torch.autograd import forward_ad as _forward_ad

from . import functional, ops
from .triton_kernels import drop_path as _k

__all__ = ["scaled_residual_add", "sample_scale", "INTERPRET", "AVAILABLE"]

INTERPRET = _k.INTERPRET
DEVICES = frozenset({"cuda", "cpu"} if INTERPRET else {"cuda"})
AVAILABLE = bool(INTERPRET or torch.cuda.is_available())

_RESIDUAL_ADD_SCHEMA = "(Tensor residual, Tensor branch, Tensor scale, int sample_dim, float alpha=1.0) -> Tensor"
_SAMPLE_SCALE_SCHEMA = "(Tensor x, Tensor scale, int sample_dim, float alpha=1.0, ScalarType? dtype=None) -> Tensor"


def _wrap(kernel):
    """wrap_triton for compiled kernels; the bare kernel under the interpreter (and no launch on fake tensors)."""
    return kernel if INTERPRET else torch.library.wrap_triton(kernel)


def _skip_launch(t: torch.Tensor) -> bool:
    # Under the interpreter the fake kernel is this module's code run on fake
    # tensors: allocate the output, launch nothing.  (Compiled kernels go
    # through wrap_triton, whose fake rule launches nothing either.)
    if not INTERPRET:
        return False
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def _launch_device(t: torch.Tensor):
    """A context making ``t``'s GPU the current device for the launch.

    Triton's launcher compiles for, and launches on, the *current* device and
    its current stream, not the tensors' device: without this a tensor on
    ``cuda:1`` while ``cuda:0`` is current would be handed to a kernel running
    on GPU 0.  (Inductor's generated code sets the device itself; a no-op there.)
    """
    if INTERPRET or t.device.type != "cuda" or t.device.index is None or not torch.cuda.is_available():
        return contextlib.nullcontext()
    if t.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device.index)


def _check_device(t: torch.Tensor) -> None:
    if t.device.type not in DEVICES:
        raise ValueError(
            f"sdkernels: the Triton ops run on CUDA tensors (CPU tensors too under TRITON_INTERPRET=1), got {t.device}"
        )


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _FLOATS:
        raise TypeError(f"sdkernels: {name} must be a float16, bfloat16, float32 or float64 tensor, got {t.dtype}")


def _check_pair(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Both floating-point, of one shape, on one device (the C++ ops' messages)."""
    _check_float(a, name_a)
    _check_float(b, name_b)
    if a.shape != b.shape:
        raise ValueError(
            f"sdkernels: {name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"sdkernels: {name_a} is on {a.device} but {name_b} is on {b.device}")


def _wrap_dim(sample_dim: int, ndim: int) -> int:
    if ndim < 1:
        raise IndexError("sdkernels: a 0-dim tensor has no sample dim")
    if not -ndim <= sample_dim < ndim:
        raise IndexError(f"sdkernels: sample_dim {sample_dim} is out of range for a tensor of {ndim} dims")
    return sample_dim % ndim


def _checked_scale(scale: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    if scale.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"sdkernels: scale must be float32 or float64, got {scale.dtype}")
    if scale.dim() > 1 or (scale.numel() != n and scale.numel() != 1):
        raise ValueError(
            f"sdkernels: scale must hold one value per sample ({n}) or a single value, got shape {tuple(scale.shape)}"
        )
    if scale.device != device:
        raise ValueError(f"sdkernels: scale is on {scale.device} but the input is on {device}")
    return scale.contiguous()


def _in_layout_of(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """src itself when it has out's strides (dims of size 1 aside), else a copy in out's layout.

    ``out`` is dense (``empty_like`` makes it so), hence so is a ``src`` with its strides.
    """
    if all(sz == 1 or a == b for sz, a, b in zip(out.shape, src.stride(), out.stride())):
        return src
    dst = torch.empty_strided(out.shape, out.stride(), dtype=src.dtype, device=src.device)
    dst.copy_(src)
    return dst


def _residual_add_impl(residual, branch, scale, sample_dim, alpha, wrap):
    """The body of ``scaled_residual_add_triton``; ``wrap`` is :func:`_wrap` in the op, identity in the fast path."""
    _check_pair(residual, branch, "residual", "branch")
    _check_device(residual)
    dim = _wrap_dim(sample_dim, residual.dim())
    sc = _checked_scale(scale, residual.shape[dim], residual.device)
    out = ops.out_like(residual, branch)
    if out.numel() == 0 or _skip_launch(out):
        return out
    r = _in_layout_of(residual, out)
    b = _in_layout_of(branch, out)
    n, inner = _k.plan(out, dim, sc.numel())
    with _launch_device(out):
        _k.launch_scaled_residual_add(out, r, b, sc, alpha, n, inner, wrap=wrap)
    return out


def _sample_scale_impl(x, scale, sample_dim, alpha, dtype, wrap):
    """The body of ``sample_scale_triton``; ``wrap`` as in :func:`_residual_add_impl`."""
    _check_float(x, "x")
    out_dtype = x.dtype if dtype is None else dtype
    if out_dtype not in _FLOATS:
        raise TypeError(f"sdkernels: dtype must be float16, bfloat16, float32 or float64, got {out_dtype}")
    _check_device(x)
    dim = _wrap_dim(sample_dim, x.dim())
    sc = _checked_scale(scale, x.shape[dim], x.device)
    out = torch.empty_like(x, dtype=out_dtype)
    if out.numel() == 0 or _skip_launch(out):
        return out
    xs = _in_layout_of(x, out)
    n, inner = _k.plan(out, dim, sc.numel())
    with _launch_device(out):
        _k.launch_sample_scale(out, xs, sc, alpha, n, inner, wrap=wrap)
    return out


# The functions registered as the ops (their annotations give the schema on torch < 2.7).
def _scaled_residual_add(
    residual: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor, sample_dim: int, alpha: float = 1.0
) -> torch.Tensor:
    return _residual_add_impl(residual, branch, scale, sample_dim, alpha, _wrap)


def _sample_scale(
    x: torch.Tensor, scale: torch.Tensor, sample_dim: int, alpha: float = 1.0, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    return _sample_scale_impl(x, scale, sample_dim, alpha, dtype, _wrap)


def _register(name: str, fn, schema: str):
    if INTERPRET:
        op = torch.library.custom_op(name, fn, mutates_args=(), schema=schema)
        op.register_fake(fn)
        return op
    try:
        return torch.library.triton_op(name, fn, mutates_args=(), schema=schema)
    except TypeError:  # torch < 2.7: no schema argument; the schema is inferred from the annotations
        return torch.library.triton_op(name, fn, mutates_args=())


_register("sdkernels::scaled_residual_add_triton", _scaled_residual_add, _RESIDUAL_ADD_SCHEMA)
_register("sdkernels::sample_scale_triton", _sample_scale, _SAMPLE_SCALE_SCHEMA)
ops.register_pair_autograd("sdkernels::scaled_residual_add_triton", "sdkernels::sample_scale_triton")

#: ``torch.ops.sdkernels.scaled_residual_add_triton.default`` (signature of the C++ op).
scaled_residual_add = torch.ops.sdkernels.scaled_residual_add_triton.default
#: ``torch.ops.sdkernels.sample_scale_triton.default`` (signature of the C++ op).
sample_scale = torch.ops.sdkernels.sample_scale_triton.default


# ---- eager fast path ----------------------------------------------------------------------------
# What the "triton" backend of sdkernels.functional calls (see the module docstring): the ops' own
# body and the autograd rules of ops.register_pair_autograd, without the torch.library layers.

_C = torch._C
_PLAIN_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})  # no __torch_function__ / __torch_dispatch__ of their own
_NUMBERS = frozenset({int, float})  # what the schema's `float alpha` takes (not bool)
_is_compiling = torch.compiler.is_compiling
# The probes of _eager; a torch without one of them takes the ops every time.
_PROBES_OK = all(
    hasattr(_C, name)
    for name in ("_len_torch_dispatch_stack", "_is_torch_function_mode_enabled",
                 "_are_functorch_transforms_active", "_get_tracing_state")
) and hasattr(_forward_ad, "_current_level")


def _unwrapped(kernel):
    """The fast path's ``wrap``: launch the Triton kernel itself (no ``wrap_triton``)."""
    return kernel


def _eager(*tensors) -> bool:
    """True when a call may skip the registered op: plain eager mode, plain tensors.

    Anything that must see the op (torch.compile / export, a TorchDispatchMode such as
    FakeTensorMode or FlopCounterMode, a TorchFunctionMode, functorch transforms, the JIT
    tracer, forward-mode AD, tensor subclasses) takes the op instead.  ``is_compiling``
    comes first: under dynamo it is the constant True and the rest is never traced.
    """
    if _is_compiling() or not _PROBES_OK:
        return False
    for t in tensors:
        if type(t) not in _PLAIN_TENSORS:
            return False
    return not (
        _C._len_torch_dispatch_stack()
        or _C._is_torch_function_mode_enabled()
        or _C._are_functorch_transforms_active()
        or _C._get_tracing_state() is not None
        or _forward_ad._current_level >= 0
    )


def _rules_sample_scale(*args):
    return _eager_sample_scale(*args)  # differentiable: double backward records sample_scale again


_SETUP_ADD, _BACKWARD_ADD, _SETUP_SCALE, _BACKWARD_SCALE = ops.pair_autograd_rules(_rules_sample_scale)


class _ResidualAddFn(torch.autograd.Function):
    """Autograd of the fast path: the rules of ops.pair_autograd_rules (saves only ``scale``)."""

    @staticmethod
    def forward(ctx, residual, branch, scale, sample_dim, alpha):
        _SETUP_ADD(ctx, (residual, branch, scale, sample_dim, alpha), None)
        return _residual_add_impl(residual, branch, scale, sample_dim, alpha, _unwrapped)

    @staticmethod
    def backward(ctx, grad):
        return _BACKWARD_ADD(ctx, grad)


class _SampleScaleFn(torch.autograd.Function):
    """Autograd of the fast path's sample_scale: sample_scale again, into x's dtype (saves only ``scale``)."""

    @staticmethod
    def forward(ctx, x, scale, sample_dim, alpha, dtype):
        _SETUP_SCALE(ctx, (x, scale, sample_dim, alpha, dtype), None)
        return _sample_scale_impl(x, scale, sample_dim, alpha, dtype, _unwrapped)

    @staticmethod
    def backward(ctx, grad):
        return _BACKWARD_SCALE(ctx, grad)


def _eager_scaled_residual_add(residual, branch, scale, sample_dim, alpha=1.0):
    """``scaled_residual_add_triton`` without torch.library in plain eager mode; the op otherwise."""
    if type(sample_dim) is int and type(alpha) in _NUMBERS and _eager(residual, branch, scale):
        alpha = float(alpha)
        if _C.is_grad_enabled() and (residual.requires_grad or branch.requires_grad or scale.requires_grad):
            return _ResidualAddFn.apply(residual, branch, scale, sample_dim, alpha)
        return _residual_add_impl(residual, branch, scale, sample_dim, alpha, _unwrapped)
    return scaled_residual_add(residual, branch, scale, sample_dim, alpha)


def _eager_sample_scale(x, scale, sample_dim, alpha=1.0, dtype=None):
    """``sample_scale_triton`` without torch.library in plain eager mode; the op otherwise."""
    if (
        type(sample_dim) is int
        and type(alpha) in _NUMBERS
        and (dtype is None or type(dtype) is torch.dtype)
        and _eager(x, scale)
    ):
        alpha = float(alpha)
        if _C.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
            return _SampleScaleFn.apply(x, scale, sample_dim, alpha, dtype)
        return _sample_scale_impl(x, scale, sample_dim, alpha, dtype, _unwrapped)
    return sample_scale(x, scale, sample_dim, alpha, dtype)


functional.register_backend("triton", _eager_scaled_residual_add, _eager_sample_scale, DEVICES, AVAILABLE)


# ---- LayerScale (issue 13) -----------------------------------------------------------------------
# ``sdkernels::{scaled_residual_add_ls,sample_scale_ls,layer_scale_grads}_triton``: the C++ ops'
# schemas and semantics (csrc/ops.cpp), kernels in triton_kernels/layer_scale.py, autograd from
# ops.register_layer_scale_autograd, and the same eager fast path as the core pair.
from typing import Tuple  # noqa: E402

from .triton_kernels import layer_scale as _ls  # noqa: E402

_RESIDUAL_ADD_LS_SCHEMA = ("(Tensor residual, Tensor branch, Tensor scale, Tensor gamma, int sample_dim, "
                           "int channel_dim, float alpha=1.0) -> Tensor")
_SAMPLE_SCALE_LS_SCHEMA = ("(Tensor x, Tensor scale, Tensor gamma, int sample_dim, int channel_dim, "
                           "float alpha=1.0, ScalarType? dtype=None) -> Tensor")
_LAYER_SCALE_GRADS_SCHEMA = ("(Tensor grad, Tensor branch, Tensor scale, Tensor gamma, int sample_dim, "
                             "int channel_dim, float alpha=1.0) -> (Tensor, Tensor)")


def _wrap_channel_dim(channel_dim: int, ndim: int, sample_dim: int) -> int:
    if not -ndim <= channel_dim < ndim:
        raise IndexError(f"sdkernels: channel_dim {channel_dim} is out of range for a tensor of {ndim} dims")
    cd = channel_dim % ndim
    if cd == sample_dim:
        raise ValueError(f"sdkernels: channel_dim ({channel_dim}) must differ from sample_dim ({sample_dim})")
    return cd


def _checked_gamma(gamma: torch.Tensor, C: int, device: torch.device, acc: torch.dtype) -> torch.Tensor:
    _check_float(gamma, "gamma")
    if gamma.dim() != 1 or gamma.shape[0] != C:
        raise ValueError(f"sdkernels: gamma must be 1-D with one value per channel ({C}), got shape {tuple(gamma.shape)}")
    if gamma.device != device:
        raise ValueError(f"sdkernels: gamma is on {gamma.device} but the input is on {device}")
    return gamma.to(acc).contiguous()


def _acc(*dtypes) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _ls_dims(x: torch.Tensor, scale, sample_dim: int, channel_dim: int):
    _check_device(x)
    dim = _wrap_dim(sample_dim, x.dim())
    cd = _wrap_channel_dim(channel_dim, x.dim(), dim)
    return dim, cd, _checked_scale(scale, x.shape[dim], x.device)


def _residual_add_ls_impl(residual, branch, scale, gamma, sample_dim, channel_dim, alpha, wrap):
    _check_pair(residual, branch, "residual", "branch")
    dim, cd, sc = _ls_dims(residual, scale, sample_dim, channel_dim)
    out = ops.out_like_ls(residual, branch, gamma)
    g = _checked_gamma(gamma, residual.shape[cd], residual.device, _acc(out.dtype))
    if out.numel() == 0 or _skip_launch(out):
        return out
    v = _ls.ls_view(out, dim, cd, sc.numel())
    with _launch_device(out):
        _ls.launch_residual_add_ls(out, _in_layout_of(residual, out), _in_layout_of(branch, out), sc, g, alpha, v,
                                   wrap=wrap)
    return out


def _sample_scale_ls_impl(x, scale, gamma, sample_dim, channel_dim, alpha, dtype, wrap):
    _check_float(x, "x")
    out_dtype = torch.promote_types(x.dtype, gamma.dtype) if dtype is None else dtype
    if out_dtype not in _FLOATS:
        raise TypeError(f"sdkernels: dtype must be float16, bfloat16, float32 or float64, got {out_dtype}")
    dim, cd, sc = _ls_dims(x, scale, sample_dim, channel_dim)
    acc = _acc(x.dtype, out_dtype, gamma.dtype)
    g = _checked_gamma(gamma, x.shape[cd], x.device, acc)
    out = torch.empty_like(x, dtype=out_dtype)
    if out.numel() == 0 or _skip_launch(out):
        return out
    v = _ls.ls_view(out, dim, cd, sc.numel())
    with _launch_device(out):  # an fp64 gamma makes the math fp64 (ACC64) whatever x's dtype
        _ls.launch_sample_scale_ls(out, _in_layout_of(x, out), sc, g, alpha, v, wrap=wrap)
    return out


def _layer_scale_grads_impl(grad, branch, scale, gamma, sample_dim, channel_dim, alpha, wrap):
    _check_pair(grad, branch, "grad", "branch")
    dim, cd, sc = _ls_dims(grad, scale, sample_dim, channel_dim)
    acc = _acc(grad.dtype, branch.dtype, gamma.dtype)
    g = _checked_gamma(gamma, grad.shape[cd], grad.device, acc)
    gb, gg = ops.layer_scale_grads_out(grad, branch, gamma)
    if gb.numel() == 0:
        return gb, gg.zero_()
    if _skip_launch(gb):
        return gb, gg
    v = _ls.ls_view(gb, dim, cd, sc.numel())
    partials = torch.empty(_ls.partials_numel(v), dtype=acc, device=gb.device)
    with _launch_device(gb):
        outer = _ls.launch_layer_scale_grads(gb, _in_layout_of(grad, gb), _in_layout_of(branch, gb), sc, g, partials,
                                             alpha, v, wrap=wrap)
    # One sum of the fixed partials, in a fixed order (torch's reductions use no atomics).
    gg.copy_(partials[: outer * v.C * v.c_div].view(outer, v.C, v.c_div).sum(dim=(0, 2)))
    return gb, gg


def _scaled_residual_add_ls(
    residual: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor, gamma: torch.Tensor, sample_dim: int,
    channel_dim: int, alpha: float = 1.0,
) -> torch.Tensor:
    return _residual_add_ls_impl(residual, branch, scale, gamma, sample_dim, channel_dim, alpha, _wrap)


def _sample_scale_ls(
    x: torch.Tensor, scale: torch.Tensor, gamma: torch.Tensor, sample_dim: int, channel_dim: int, alpha: float = 1.0,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    return _sample_scale_ls_impl(x, scale, gamma, sample_dim, channel_dim, alpha, dtype, _wrap)


def _layer_scale_grads(
    grad: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor, gamma: torch.Tensor, sample_dim: int,
    channel_dim: int, alpha: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    return _layer_scale_grads_impl(grad, branch, scale, gamma, sample_dim, channel_dim, alpha, _wrap)


_register("sdkernels::scaled_residual_add_ls_triton", _scaled_residual_add_ls, _RESIDUAL_ADD_LS_SCHEMA)
_register("sdkernels::sample_scale_ls_triton", _sample_scale_ls, _SAMPLE_SCALE_LS_SCHEMA)
_register("sdkernels::layer_scale_grads_triton", _layer_scale_grads, _LAYER_SCALE_GRADS_SCHEMA)
ops.register_layer_scale_autograd("sdkernels::scaled_residual_add_ls_triton", "sdkernels::sample_scale_ls_triton",
                                  "sdkernels::layer_scale_grads_triton")

#: ``torch.ops.sdkernels.scaled_residual_add_ls_triton.default`` (signature of the C++ op).
scaled_residual_add_ls = torch.ops.sdkernels.scaled_residual_add_ls_triton.default
#: ``torch.ops.sdkernels.sample_scale_ls_triton.default``.
sample_scale_ls = torch.ops.sdkernels.sample_scale_ls_triton.default
#: ``torch.ops.sdkernels.layer_scale_grads_triton.default``.
layer_scale_grads = torch.ops.sdkernels.layer_scale_grads_triton.default

# Eager fast path: the ops' bodies under private autograd.Functions with the rules of
# ops.layer_scale_autograd_rules (their backward calls the fast-path ops again: double backward).


def _fast_function(name: str, impl, setup, backward):
    """An autograd.Function running ``impl(*args, _unwrapped)`` with the given register_autograd-style rules."""

    def forward(ctx, *args):
        setup(ctx, args, None)
        return impl(*args, _unwrapped)

    def bwd(ctx, *grads):
        return backward(ctx, *grads)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(bwd),
                                                   "__module__": __name__})


def _rules_sample_scale_ls(*args):
    return _eager_sample_scale_ls(*args)


def _rules_layer_scale_grads(*args):
    return _eager_layer_scale_grads(*args)


_LS_RULES = ops.layer_scale_autograd_rules(_rules_sample_scale_ls, _rules_layer_scale_grads)
_ResidualAddLsFn = _fast_function("_ResidualAddLsFn", _residual_add_ls_impl, *_LS_RULES["residual_add"])
_SampleScaleLsFn = _fast_function("_SampleScaleLsFn", _sample_scale_ls_impl, *_LS_RULES["sample_scale"])
_LayerScaleGradsFn = _fast_function("_LayerScaleGradsFn", _layer_scale_grads_impl, *_LS_RULES["grads"])


def _ls_fast(tensors, ints, alpha) -> bool:
    return all(type(i) is int for i in ints) and type(alpha) in _NUMBERS and _eager(*tensors)


def _needs_grad(*tensors) -> bool:
    return _C.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _eager_scaled_residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
    """``scaled_residual_add_ls_triton`` without torch.library in plain eager mode; the op otherwise."""
    if _ls_fast((residual, branch, scale, gamma), (sample_dim, channel_dim), alpha):
        args = (residual, branch, scale, gamma, sample_dim, channel_dim, float(alpha))
        if _needs_grad(residual, branch, gamma):
            return _ResidualAddLsFn.apply(*args)
        return _residual_add_ls_impl(*args, _unwrapped)
    return scaled_residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim, alpha)


def _eager_sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, alpha=1.0, dtype=None):
    """``sample_scale_ls_triton`` without torch.library in plain eager mode; the op otherwise."""
    if (dtype is None or type(dtype) is torch.dtype) and _ls_fast((x, scale, gamma), (sample_dim, channel_dim), alpha):
        args = (x, scale, gamma, sample_dim, channel_dim, float(alpha), dtype)
        if _needs_grad(x, gamma):
            return _SampleScaleLsFn.apply(*args)
        return _sample_scale_ls_impl(*args, _unwrapped)
    return sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, alpha, dtype)


def _eager_layer_scale_grads(grad, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
    """``layer_scale_grads_triton`` without torch.library in plain eager mode; the op otherwise."""
    if _ls_fast((grad, branch, scale, gamma), (sample_dim, channel_dim), alpha):
        args = (grad, branch, scale, gamma, sample_dim, channel_dim, float(alpha))
        if _needs_grad(grad, branch, gamma):
            return _LayerScaleGradsFn.apply(*args)
        return _layer_scale_grads_impl(*args, _unwrapped)
    return layer_scale_grads(grad, branch, scale, gamma, sample_dim, channel_dim, alpha)


functional.register_layer_scale_ops("triton", _eager_scaled_residual_add_ls, _eager_sample_scale_ls)
