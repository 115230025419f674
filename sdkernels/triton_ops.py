"""The Triton backend: ``sdkernels::scaled_residual_add_triton`` and ``sdkernels::sample_scale_triton``.

Same argument lists and semantics as the C++ ops (``csrc/ops.cpp``).  They
are registered with ``torch.library.triton_op`` and launch through
``wrap_triton``, so ``torch.compile`` sees the Triton kernels themselves; the
output allocation is :func:`sdkernels.ops.out_like` (the fake kernel is the
same Python function run on fake tensors) and autograd is the C++ ops' own,
via :func:`sdkernels.ops.register_pair_autograd`.

Under ``TRITON_INTERPRET=1`` (read once, at import) the ops also accept CPU
tensors, for testing without a GPU.  Interpreted kernels cannot be compiled
by Inductor, so there the ops are plain ``custom_op``s (opaque to
``torch.compile``, which then calls them like any other op) with this module's
function as their fake kernel.

Importing this module registers the ``"triton"`` backend of
:mod:`sdkernels.functional`; it raises ImportError when Triton is missing.
"""
import contextlib
from typing import Optional  # no `from __future__ import annotations`: older torch infers schemas from real types

import torch

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


def _scaled_residual_add(
    residual: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor, sample_dim: int, alpha: float = 1.0
) -> torch.Tensor:
    _check_float(residual, "residual")
    _check_float(branch, "branch")
    if residual.shape != branch.shape:
        raise ValueError(
            f"sdkernels: residual and branch must have the same shape, got {tuple(residual.shape)} and {tuple(branch.shape)}"
        )
    if residual.device != branch.device:
        raise ValueError(f"sdkernels: residual is on {residual.device} but branch is on {branch.device}")
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
        _k.launch_scaled_residual_add(out, r, b, sc, alpha, n, inner, wrap=_wrap)
    return out


def _sample_scale(
    x: torch.Tensor, scale: torch.Tensor, sample_dim: int, alpha: float = 1.0, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
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
        _k.launch_sample_scale(out, xs, sc, alpha, n, inner, wrap=_wrap)
    return out


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

functional.register_backend("triton", scaled_residual_add, sample_scale, DEVICES, AVAILABLE)
