"""Argument checks, random draws and backend choice for the public functions."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Optional, Tuple

import torch

from . import _fx, ops, reference, rng
from ._ext import has_kernel

__all__ = ["drop_path_add", "drop_path", "available_backends", "drop_path_rates", "register_backend",
           "register_layer_scale_ops"]

MODES = ("row", "batch")
FLOAT_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
BACKEND_NAMES = ("auto", "reference", "cpu", "cuda", "triton")


@dataclass(frozen=True)
class Backend:
    """One way to run the two fused ops.

    ``residual_add(residual, branch, scale, sample_dim, alpha)`` and
    ``sample_scale(x, scale, sample_dim, alpha, dtype)`` follow the op schemas;
    ``devices`` are the tensor device types it accepts (None: any).
    ``residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim, alpha)``
    and ``sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, alpha, dtype)``
    are its LayerScale ops (issue 13; :func:`register_layer_scale_ops`), None
    until registered.
    """

    name: str
    residual_add: Callable
    sample_scale: Callable
    devices: Optional[FrozenSet[str]]
    available: bool
    residual_add_ls: Optional[Callable] = None
    sample_scale_ls: Optional[Callable] = None


_BACKENDS: Dict[str, Backend] = {}


def register_backend(name: str, residual_add: Callable, sample_scale: Callable, devices, available: bool) -> None:
    """Add (or replace) a backend; used by the compiled and Triton backends."""
    if name not in BACKEND_NAMES or name == "auto":
        raise ValueError(f"unknown backend name {name!r}")
    old = _BACKENDS.get(name)
    _BACKENDS[name] = Backend(name, residual_add, sample_scale, None if devices is None else frozenset(devices),
                              bool(available), *((old.residual_add_ls, old.sample_scale_ls) if old else ()))


def register_layer_scale_ops(name: str, residual_add_ls: Callable, sample_scale_ls: Callable) -> None:
    """Give the registered backend ``name`` its LayerScale ops (schemas of ``scaled_residual_add_ls`` / ``sample_scale_ls``)."""
    if name not in _BACKENDS:
        raise ValueError(f"backend {name!r} is not registered")
    _BACKENDS[name] = dataclasses.replace(_BACKENDS[name], residual_add_ls=residual_add_ls,
                                          sample_scale_ls=sample_scale_ls)


register_backend("reference", reference.scaled_residual_add, reference.sample_scale, None, True)
_HAS_CPU = has_kernel("scaled_residual_add", "CPU") and has_kernel("sample_scale", "CPU")
_HAS_CUDA = has_kernel("scaled_residual_add", "CUDA") and has_kernel("sample_scale", "CUDA") and torch.cuda.is_available()
if _HAS_CPU:
    register_backend("cpu", ops.scaled_residual_add, ops.sample_scale, {"cpu"}, True)
if _HAS_CUDA:
    register_backend("cuda", ops.scaled_residual_add, ops.sample_scale, {"cuda"}, True)


# ---- LayerScale ops of the built-in backends (issue 13) ---------------------
register_layer_scale_ops("reference", reference.scaled_residual_add_ls, reference.sample_scale_ls)
if _HAS_CPU and has_kernel("scaled_residual_add_ls", "CPU"):
    register_layer_scale_ops("cpu", ops.scaled_residual_add_ls, ops.sample_scale_ls)
if _HAS_CUDA and has_kernel("scaled_residual_add_ls", "CUDA"):
    register_layer_scale_ops("cuda", ops.scaled_residual_add_ls, ops.sample_scale_ls)


def available_in(table) -> Tuple[str, ...]:
    """Names of the usable entries of a backend table (this module's or the skip path's)."""
    return tuple(n for n in BACKEND_NAMES if n in table and table[n].available)


def available_backends() -> Tuple[str, ...]:
    """Names of the backends usable in this process, e.g. ``("reference", "cpu")``."""
    return available_in(_BACKENDS)


# ---- auto rule between "cuda" and "triton" (Triton backend, issue 3) ------
# Measured on an NVIDIA H200 (torch 2.11, triton 3.6, 2026-11-27, one run of
# `python -m benchmarks`, benchmarks/results/cuda-h200-2026-11-27.csv): the C++
# CUDA op is as fast or faster in 48 of the 50 rows timed for both.  Forward
# bf16 256x197x1024, p=0.1: cuda 84 us (94% of copy bandwidth) vs triton 96 us;
# 2048x8x4096 seq-first: 107 vs 234 us; backward 256x197x1024: 56 vs 329 us;
# host-bound 8x16x64: 28 vs 145 us.  The two exceptions are forwards at
# 256x197x1024 with fp32 outputs: fp32 p=0.5, 129 (triton) vs 134 us, and
# fp32+bf16 (autocast) p=0.1, 125 vs 140 us; the C++ op wins every fwd+bwd
# row.  So "auto" takes the C++ op whenever it is built and
# Triton only where it is not (TRITON_MIN_NUMEL = inf).  Those Triton times
# were host-bound (the backward was a flat ~325 us from 64x197x768 to
# 256x197x1024): the torch.library layers cost more than the kernels.  The
# Triton backend's eager fast path (sdkernels/triton_ops.py) has since halved
# that host time (stubbed-launch CPU check: fwd+bwd 114 -> 67 us, the C++ op
# 38 us); re-measure on a GPU before changing this rule.
TRITON_MIN_NUMEL = float("inf")


def _auto_backend(device_type: str, numel: int = 0, table=None):
    # The compiled kernel for the tensor's device, else the reference.
    table = _BACKENDS if table is None else table
    if device_type == "cpu" and "cpu" in table:
        return table["cpu"]
    if device_type == "cuda":
        order = ("triton", "cuda") if numel >= TRITON_MIN_NUMEL else ("cuda", "triton")
        for name in order:
            be = table.get(name)
            if be is not None and be.available and (be.devices is None or "cuda" in be.devices):
                return be
    return table["reference"]


def pick_backend(backend: str, device: torch.device, numel: int = 0, table=None):
    """The entry of ``table`` (default: the core backends) that runs ``backend`` on ``device``.

    Shared with the skip path, whose table holds its own ops under the same names.
    """
    table = _BACKENDS if table is None else table
    if backend == "auto":
        return _auto_backend(device.type, numel, table)
    be = table.get(backend)
    if be is None or not be.available:
        raise ValueError(
            f"backend {backend!r} is not available here; available backends: {available_in(table)}"
        )
    if be.devices is not None and device.type not in be.devices:
        raise ValueError(f"backend {backend!r} runs on {sorted(be.devices)} tensors, got a tensor on {device}")
    return be


def _check_module_rate_and_mode(p, mode) -> None:
    """The modules' constructor checks of ``p`` and ``mode`` (ValueError naming the argument)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p (drop probability) must be in [0, 1], got {p}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def check_backend_name(backend) -> None:
    """ValueError unless ``backend`` is one of :data:`BACKEND_NAMES` (every public entry point's check)."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")


def _check_common(x: torch.Tensor, name: str, p, mode, sample_dim, backend, generator) -> int:
    """Validate everything but the tensor pairing; returns sample_dim wrapped to [0, ndim)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a float, got {type(p).__name__}")
    if math.isnan(p) or p < 0.0 or p > 1.0:
        raise ValueError(f"p (drop probability) must be in [0, 1], got {p}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_backend_name(backend)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the sample dim), got a 0-dim tensor")
    if isinstance(sample_dim, bool) or not isinstance(sample_dim, int):
        raise TypeError(f"sample_dim must be an int, got {type(sample_dim).__name__}")
    nd = x.dim()
    if not -nd <= sample_dim < nd:
        raise IndexError(f"sample_dim {sample_dim} is out of range for a tensor with {nd} dims")
    return sample_dim % nd


def _check_branch(residual: torch.Tensor, branch) -> None:
    """``branch`` pairs with ``residual``: a floating-point tensor of its shape, on its device."""
    if not isinstance(branch, torch.Tensor):
        raise TypeError(f"branch must be a torch.Tensor, got {type(branch).__name__}")
    if branch.dtype not in FLOAT_DTYPES:
        raise TypeError(f"branch must be a floating-point tensor (float16, bfloat16, float32 or float64), got {branch.dtype}")
    if residual.shape != branch.shape:
        raise ValueError(f"residual and branch must have the same shape, got {tuple(residual.shape)} and {tuple(branch.shape)}")
    if residual.device != branch.device:
        raise ValueError(f"residual and branch must be on the same device, got {residual.device} and {branch.device}")


#: The keep mask of ``x`` (the tensor timm would drop): :func:`sdkernels.rng.draw`, the one draw rule.
_draw = rng.draw


def _check_layer_scale(layer_scale, x: torch.Tensor, channel_dim, sample_dim: int):
    """Validate ``layer_scale`` against ``x`` (the branch); returns ``(gamma, channel_dim)``.

    ``gamma`` is ``layer_scale`` as a 1-D view of its ``C`` values and
    ``channel_dim`` is wrapped to [0, ndim).  ``layer_scale`` may be 1-D with
    ``C = x.shape[channel_dim]`` values, or any shape that broadcasts to ``x``
    along ``channel_dim`` only (torchvision's ``(C, 1, 1)`` with ``channel_dim=1``).
    """
    if not isinstance(layer_scale, torch.Tensor):
        raise TypeError(f"layer_scale must be a torch.Tensor or None, got {type(layer_scale).__name__}")
    if layer_scale.dtype not in FLOAT_DTYPES:
        raise TypeError("layer_scale must be a floating-point tensor (float16, bfloat16, float32 or float64), "
                        f"got {layer_scale.dtype}")
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
        raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")
    nd = x.dim()
    if not -nd <= channel_dim < nd:
        raise IndexError(f"channel_dim {channel_dim} is out of range for a tensor with {nd} dims")
    cd = channel_dim % nd
    if cd == sample_dim:
        raise ValueError(f"channel_dim ({channel_dim}) must differ from sample_dim ({sample_dim}): "
                         "LayerScale scales channels, drop path drops samples")
    C = x.shape[cd]
    gs = tuple(layer_scale.shape)
    if layer_scale.dim() == 1:
        ok = gs[0] == C
    else:
        lead = nd - layer_scale.dim()  # right-aligned broadcasting
        ok = 1 <= layer_scale.dim() <= nd and lead <= cd and all(
            size == (C if lead + k == cd else 1) for k, size in enumerate(gs))
    if not ok:
        raise ValueError(
            f"layer_scale must hold one value per channel: a 1-D tensor of {C} values (x.shape[{channel_dim}]) or a "
            f"shape broadcasting to {tuple(x.shape)} along channel_dim {channel_dim} only, got shape {gs}")
    if layer_scale.device != x.device:
        raise ValueError(f"layer_scale is on {layer_scale.device} but the tensors are on {x.device}")
    return rng.replicated_like(layer_scale, x).reshape(-1), cd


def _ls_backend(be: Backend) -> Backend:
    if be.residual_add_ls is None or be.sample_scale_ls is None:
        raise ValueError(f"backend {be.name!r} has no LayerScale ops (layer_scale=...)")
    return be


def drop_path_add(
    residual: torch.Tensor,
    branch: torch.Tensor,
    p: float,
    *,
    training: bool = True,
    mode: str = "row",
    scale_by_keep: bool = True,
    sample_dim: int = 0,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
    layer_scale: Optional[torch.Tensor] = None,
    channel_dim: int = -1,
) -> torch.Tensor:
    """Fused stochastic depth and residual add: ``residual + drop_path(branch)`` in one pass.

    For each sample ``s`` along ``sample_dim`` (kept with probability ``1 - p``)::

        out[s] = residual[s] + branch[s] / (1 - p)   kept    (no division without scale_by_keep)
        out[s] = residual[s]                         dropped (branch[s] is never read)

    Args:
        residual: the residual stream, any shape with ``ndim >= 1``.
        branch: the branch output, residual's shape and device.  Its dtype may
            differ (autocast: fp32 residual, bf16 branch); the output dtype is
            ``torch.promote_types(residual.dtype, branch.dtype)`` and the math is fp32.
        p: drop probability in [0, 1].  ``p == 1`` returns ``residual`` values
            (still connected to ``branch``, whose gradient is zeros).
        training: when False (or ``p == 0``) returns ``residual + branch`` and
            consumes no random numbers.
        mode: "row" draws one keep decision per sample, "batch" one for all.
        scale_by_keep: divide kept samples by ``1 - p`` (timm's default).
        sample_dim: the dim that indexes samples (e.g. 1 for seq-first ``[S, B, H]``).
        generator: optional ``torch.Generator`` for the draw.  The draw is
            ``torch.empty(n, dtype=torch.float32, device=...).bernoulli_(1 - p, generator=generator)``,
            the stream timm's ``drop_path`` consumes for fp16/bf16/fp32 inputs.  Under
            ``torch.compile`` a generator cannot be traced: dynamo breaks the graph there
            (an error with ``fullgraph=True``); pass ``None`` and seed torch instead.
        backend: "auto" (the compiled kernel for the tensor's device, else the
            reference), "reference", "cpu", "cuda" or "triton".
        layer_scale: None, or a per-channel LayerScale ``gamma`` applied to the
            branch before drop path, fused into the same pass (see below).
        channel_dim: the dim ``layer_scale`` scales (default -1: tokens
            ``[B, N, C]``; 1 for NCHW, contiguous or channels_last).  Must differ
            from ``sample_dim``.  Ignored without ``layer_scale``.

    The backward saves only the per-sample scale: ``grad_residual`` is
    ``grad_out`` itself and ``grad_branch`` is ``grad_out / (1 - p)`` on kept
    samples, zeros on dropped ones.

    LayerScale (``x + drop_path(ls(branch))`` of DeiT III, CaiT, EVA, BEiT,
    DINOv2, ConvNeXt): ``layer_scale`` is a 1-D tensor of ``C =
    branch.shape[channel_dim]`` values (timm's ``ls1.gamma``), or any shape that
    broadcasts to the branch along ``channel_dim`` only (torchvision's ``(C, 1,
    1)`` ``layer_scale`` with ``channel_dim=1``), of any floating dtype (an fp32
    gamma under bf16 autocast is fine).  Per kept sample ``s`` and channel ``c``::

        out = residual + (branch * gamma[c]) * (1 / (1 - p))   (each product and the add rounded once)

    in fp32 (fp64 when any tensor is fp64), output dtype
    ``promote_types(residual, branch, gamma)``.  The multiplier is the one
    timm's mask holds (:func:`sdkernels.reference.keep_scale`) and the mask
    is drawn in the dtype of ``branch * gamma`` as timm draws it, so with fp32
    tensors the result is bit for bit eager timm's ``x + drop_path(ls(y))``
    under one seed.  In eval or at ``p == 0`` the result is the eager
    expression ``residual + branch * gamma_view`` itself (bitwise eager in every
    dtype).  Gradients: ``grad_branch = (grad_out * gamma[c]) / (1 - p)``
    (zeros for dropped samples) and ``grad_gamma[c]`` the sum over every other
    dim of ``grad_out * branch / (1 - p)`` over the kept samples only (a
    dropped sample's branch is never read, so NaN there stays out), one fused
    pass, deterministic (no atomics).  The backward saves the per-sample scale,
    gamma and, only when gamma requires grad, the branch.
    """
    proxy = _fx.first_proxy(residual, branch, layer_scale)
    if proxy is not None:  # torch.fx tracing: one leaf node
        return _fx.record(proxy, drop_path_add, (residual, branch, p), dict(
            training=training, mode=mode, scale_by_keep=scale_by_keep, sample_dim=sample_dim,
            generator=generator, backend=backend, layer_scale=layer_scale, channel_dim=channel_dim))
    dim = _check_common(residual, "residual", p, mode, sample_dim, backend, generator)
    _check_branch(residual, branch)
    be = pick_backend(backend, residual.device, residual.numel())
    if layer_scale is not None:
        gamma, cd = _check_layer_scale(layer_scale, branch, channel_dim, dim)
        if not training or p == 0.0:
            return residual + branch * reference.layer_scale_view(gamma, branch.dim(), cd)
        ddt, acc = reference.drop_dtypes(residual.dtype, branch.dtype, gamma.dtype)
        keep = _draw(branch, dim, p, mode, generator, ddt)
        alpha = reference.keep_scale(p, scale_by_keep, acc)
        return _ls_backend(be).residual_add_ls(residual, branch, keep, gamma, dim, cd, alpha)
    if not training or p == 0.0:
        return residual + branch
    ddt, acc = reference.drop_dtypes(residual.dtype, branch.dtype)
    keep = _draw(branch, dim, p, mode, generator, ddt)
    alpha = reference.keep_scale(p, scale_by_keep, acc)
    return be.residual_add(residual, branch, keep, dim, alpha)


def drop_path(
    x: torch.Tensor,
    p: float,
    *,
    training: bool = True,
    mode: str = "row",
    scale_by_keep: bool = True,
    sample_dim: int = 0,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
    layer_scale: Optional[torch.Tensor] = None,
    channel_dim: int = -1,
) -> torch.Tensor:
    """Stochastic depth without the residual add (timm's ``drop_path``), one fused pass.

    Returns ``x / (1 - p)`` for kept samples and zeros for dropped ones (their
    values are never read).  With ``training=False`` or ``p == 0`` returns
    ``x`` itself.  Arguments as in :func:`drop_path_add`.

    With ``layer_scale``: ``drop_path(x * gamma_view)`` fused, ``(x * gamma[c]) /
    (1 - p)`` for kept samples, in ``promote_types(x, gamma)``; in eval or at
    ``p == 0`` it returns ``x * gamma_view`` (the eager expression), not ``x``.
    """
    proxy = _fx.first_proxy(x, layer_scale)
    if proxy is not None:  # torch.fx tracing: one leaf node
        return _fx.record(proxy, drop_path, (x, p), dict(
            training=training, mode=mode, scale_by_keep=scale_by_keep, sample_dim=sample_dim,
            generator=generator, backend=backend, layer_scale=layer_scale, channel_dim=channel_dim))
    dim = _check_common(x, "x", p, mode, sample_dim, backend, generator)
    be = pick_backend(backend, x.device, x.numel())
    if layer_scale is not None:
        gamma, cd = _check_layer_scale(layer_scale, x, channel_dim, dim)
        if not training or p == 0.0:
            return x * reference.layer_scale_view(gamma, x.dim(), cd)
        ddt, acc = reference.drop_dtypes(x.dtype, x.dtype, gamma.dtype)
        keep = _draw(x, dim, p, mode, generator, ddt)
        alpha = reference.keep_scale(p, scale_by_keep, acc)
        return _ls_backend(be).sample_scale_ls(x, keep, gamma, dim, cd, alpha, None)
    if not training or p == 0.0:
        return x
    keep = _draw(x, dim, p, mode, generator)
    return be.sample_scale(x, keep, dim, reference.keep_scale(p, scale_by_keep, reference.acc_dtype(x.dtype)), None)


def drop_path_rates(rate: float, depth: int):
    """Per-block drop rates rising linearly from 0 to ``rate`` over ``depth`` blocks.

    The schedule of the stochastic depth paper (Huang et al., 2016) and timm:
    ``[rate * i / (depth - 1) for i in range(depth)]`` (``[0.0]`` for depth 1).
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate must be a float, got {type(rate).__name__}")
    if math.isnan(rate) or rate < 0.0 or rate > 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return reference.drop_path_rates(float(rate), depth)


# ---- Triton backend (issue 3): registers itself when Triton imports -------
# Any failure (Triton missing, or a Triton/torch mismatch) leaves the backend
# out; `import sdkernels` never breaks on it.
try:
    from . import triton_ops as _triton_ops  # noqa: F401,E402
except Exception as _e:  # noqa: BLE001
    TRITON_IMPORT_ERROR: Optional[BaseException] = _e
else:
    TRITON_IMPORT_ERROR = None
