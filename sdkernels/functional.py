"""The public functions: argument checks, the draw, the backend pick, then one op.

Every function here follows the same steps, in the same order: record itself as one node under
``torch.fx`` tracing (:mod:`sdkernels._fx`); check its arguments (:mod:`sdkernels.checks`); in eval
or at ``p == 0`` return the eager expression; pick its family's backend
(:mod:`sdkernels.backends`); draw the keep mask (:func:`sdkernels.rng.draw`); call the op with
the multiplier of :func:`sdkernels.dtypes.keep_scale`.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Tuple

import torch

from . import _fx, checks, reference, rng
from ._ext import has_kernel
from .backends import TABLES
from .dtypes import FLOAT_DTYPES, acc_dtype, draw_dtype, drop_dtypes, keep_scale, opt_dtype
from .ops import add_norm as _add_norm_ops, core as _core_ops, layer_scale as _ls_ops, skip as _skip_ops

__all__ = ["drop_path_add", "drop_path", "drop_path_add_norm", "drop_path_residual", "drop_path_rates",
           "kept_count", "available_backends", "register_backend", "register_layer_scale_ops"]

CORE = _core_ops.BACKENDS
LAYER_SCALE = _ls_ops.BACKENDS
ADD_NORM = _add_norm_ops.BACKENDS
SKIP = _skip_ops.BACKENDS
#: Tensor types the fast paths take (no torch.fx Proxy, DTensor or other subclass: those take the full path).
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})
#: The C++ ops that draw and apply in one call (csrc/composite/draw.cpp), for the eager fast path.
_ADD_DRAW = _ADD_LS_DRAW = _SCALE_DRAW = _CPP_ADD = _CPP_ADD_LS = _CPP_SCALE = None
if has_kernel("drop_path_add_draw", "CompositeImplicitAutograd"):
    _ADD_DRAW = torch.ops.sdkernels.drop_path_add_draw.default
    _ADD_LS_DRAW = torch.ops.sdkernels.drop_path_add_ls_draw.default
    _SCALE_DRAW = torch.ops.sdkernels.drop_path_draw.default
    _CPP_ADD = torch.ops.sdkernels.scaled_residual_add.default
    _CPP_SCALE = torch.ops.sdkernels.sample_scale.default
    _CPP_ADD_LS = torch.ops.sdkernels.scaled_residual_add_ls.default
_ADD_NORM_DRAW = _CPP_ADD_NORM = None
if has_kernel("drop_path_add_norm_draw", "CompositeImplicitAutograd"):
    _ADD_NORM_DRAW = torch.ops.sdkernels.drop_path_add_norm_draw.default
    _CPP_ADD_NORM = torch.ops.sdkernels.add_norm.default
#: (on CPU, on CUDA): whether "auto" picks those C++ ops there (kept current by the tables' on_change), so
#: the fast paths may call them.  Sizes aside: TRITON_MIN_NUMEL, when finite, is not applied to them (it
#: only chooses the faster of two exact backends).
_FAST_ADD = _FAST_ADD_LS = _FAST_SCALE = _FAST_ADD_NORM = (False, False)


def _refresh_fast() -> None:
    global _FAST_ADD, _FAST_ADD_LS, _FAST_SCALE, _FAST_ADD_NORM
    devs = ("cpu", "cuda")
    built = _ADD_DRAW is not None
    _FAST_ADD = tuple(built and CORE.auto(d).ops["residual_add"] is _CPP_ADD for d in devs)
    _FAST_SCALE = tuple(built and CORE.auto(d).ops["sample_scale"] is _CPP_SCALE for d in devs)
    _FAST_ADD_LS = tuple(built and LAYER_SCALE.auto(d).ops["residual_add_ls"] is _CPP_ADD_LS for d in devs)
    _FAST_ADD_NORM = tuple(_ADD_NORM_DRAW is not None and ADD_NORM.auto(d).ops["add_norm"] is _CPP_ADD_NORM
                           for d in devs)


def _fast_on(t: torch.Tensor, flags) -> bool:
    return flags[0] if t.is_cpu else (t.is_cuda and flags[1])


CORE.on_change(_refresh_fast)
LAYER_SCALE.on_change(_refresh_fast)
ADD_NORM.on_change(_refresh_fast)
_is_compiling = torch.compiler.is_compiling
#: Warn (once per process) when count "fixed" realises a drop rate this far from p.
REALISED_RATE_WARN = 0.1


def available_backends(family: str = "core") -> Tuple[str, ...]:
    """Names of the backends usable in this process for an op family (default the core ops), e.g.
    ``("reference", "cpu")``; ``family`` is one of "core", "layer_scale", "add_norm", "skip"."""
    if family not in TABLES:
        raise ValueError(f"family must be one of {tuple(TABLES)}, got {family!r}")
    return TABLES[family].available()


def register_backend(name: str, residual_add: Callable, sample_scale: Callable, devices, available: bool) -> None:
    """Add (or replace) a core-family backend: ops with the schemas of ``scaled_residual_add`` and
    ``sample_scale``, the device types they take (None: any) and whether they are usable."""
    CORE.register(name, devices, available, residual_add=residual_add, sample_scale=sample_scale)


def register_layer_scale_ops(name: str, residual_add_ls: Callable, sample_scale_ls: Callable, devices=None,
                             available: bool = True) -> None:
    """Add (or replace) a LayerScale-family backend (schemas of ``scaled_residual_add_ls`` / ``sample_scale_ls``)."""
    LAYER_SCALE.register(name, devices, available, residual_add_ls=residual_add_ls, sample_scale_ls=sample_scale_ls)


def _plain_param(t, like: torch.Tensor) -> bool:
    """An optional ``(H,)`` norm parameter the fast path takes: None, or a plain float tensor of shape ``(H,)``
    on ``like``'s device."""
    return t is None or (type(t) in _PLAIN and t.dim() == 1 and t.shape[0] == like.shape[-1]
                         and t.dtype in FLOAT_DTYPES and t.device == like.device)


def _dropped(draw: str, ddt: torch.dtype, branch: torch.Tensor, gamma: Optional[torch.Tensor] = None) -> torch.dtype:
    """The dtype :func:`sdkernels.rng.draw` draws in: timm's rule the mapped draw dtype, Hugging Face's the
    dtype of the tensor it drops (``branch``, or ``branch * gamma``)."""
    if draw == "timm":
        return ddt
    return branch.dtype if gamma is None else torch.promote_types(branch.dtype, gamma.dtype)


def _same_backend(table, name: str):
    """The entry of ``table`` with the name of the backend another family picked, else the reference."""
    be = table.get(name)
    return be if be is not None and be.available else table["reference"]


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
    draw: str = "timm",
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
        draw: how the keep decisions are drawn: "timm" (above: timm's and torchvision's stream) or "hf",
            as Hugging Face transformers' models draw them (``floor(keep + torch.rand(n, dtype=...))`` in
            the dropped tensor's dtype): the same samples as such a model under one seed.  Those models
            then divide by ``keep`` where sdkernels multiplies by ``1 / keep`` (in fp32): the results
            agree to rounding, not always bit for bit.

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
    timm's mask holds (:func:`sdkernels.dtypes.keep_scale`) and the mask
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
    # Fast paths: plain tensors and the common arguments, checked inline; anything else (and every
    # error) takes the full path below, which checks and raises.  In eager mode with the C++ ops, one
    # call draws and applies (csrc/composite/draw.cpp: it checks every argument before it draws; on a
    # bad one the full path runs and names it).
    if (type(residual) in _PLAIN and type(branch) in _PLAIN and generator is None and backend == "auto"
            and draw == "timm" and training and type(p) is float and p > 0.0 and (mode == "row" or mode == "batch")
            and type(sample_dim) is int and rng.DATA_PARALLEL is None and not _is_compiling()):
        try:
            if layer_scale is None:
                if _fast_on(residual, _FAST_ADD):
                    return _ADD_DRAW(residual, branch, p, sample_dim, mode == "batch", scale_by_keep)
            elif (type(layer_scale) in _PLAIN and layer_scale.dim() == 1 and type(channel_dim) is int
                  and _fast_on(residual, _FAST_ADD_LS)):
                return _ADD_LS_DRAW(residual, branch, layer_scale, p, sample_dim, channel_dim, mode == "batch",
                                    scale_by_keep)
        except RuntimeError:
            pass
    if (type(residual) in _PLAIN and type(branch) in _PLAIN and layer_scale is None and generator is None
            and backend == "auto" and draw == "timm" and type(p) is float and 0.0 <= p <= 1.0
            and (mode == "row" or mode == "batch") and type(sample_dim) is int and residual.dtype in FLOAT_DTYPES
            and branch.dtype in FLOAT_DTYPES and -residual.dim() <= sample_dim < residual.dim()
            and residual.shape == branch.shape
            and residual.device == branch.device):
        if not training or p == 0.0:
            return residual + branch
        dim = sample_dim % residual.dim()
        ddt, acc = drop_dtypes(residual.dtype, branch.dtype)
        keep = rng.draw(branch, dim, p, mode, None, ddt)
        be = CORE.auto(residual.device.type, residual.numel())
        return be.ops["residual_add"](residual, branch, keep, dim, keep_scale(p, scale_by_keep, acc))
    proxy = _fx.first_proxy(residual, branch, layer_scale)
    if proxy is not None:  # torch.fx tracing: one leaf node
        return _fx.record(proxy, drop_path_add, (residual, branch, p), dict(
            training=training, mode=mode, scale_by_keep=scale_by_keep, sample_dim=sample_dim,
            generator=generator, backend=backend, layer_scale=layer_scale, channel_dim=channel_dim, draw=draw))
    dim = checks.check_call(residual, "residual", p, mode, sample_dim, backend, generator)
    checks.check_branch(residual, branch)
    checks.check_draw(draw)
    if layer_scale is not None:
        cd = checks.check_layer_scale(layer_scale, branch, channel_dim, dim)
        gamma = rng.replicated_like(layer_scale, branch).reshape(-1)
        if not training or p == 0.0:
            return residual + branch * reference.layer_scale_view(gamma, branch.dim(), cd)
        be = LAYER_SCALE.pick(backend, residual.device, residual.numel())
        ddt, acc = drop_dtypes(residual.dtype, branch.dtype, gamma.dtype)
        keep = rng.draw(branch, dim, p, mode, generator, _dropped(draw, ddt, branch, gamma), draw)
        return be.ops["residual_add_ls"](residual, branch, keep, gamma, dim, cd, keep_scale(p, scale_by_keep, acc))
    if not training or p == 0.0:
        return residual + branch
    be = CORE.pick(backend, residual.device, residual.numel())
    ddt, acc = drop_dtypes(residual.dtype, branch.dtype)
    keep = rng.draw(branch, dim, p, mode, generator, _dropped(draw, ddt, branch), draw)
    return be.ops["residual_add"](residual, branch, keep, dim, keep_scale(p, scale_by_keep, acc))


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
    draw: str = "timm",
) -> torch.Tensor:
    """Stochastic depth without the residual add (timm's ``drop_path``), one fused pass.

    Returns ``x / (1 - p)`` for kept samples and zeros for dropped ones (their
    values are never read).  With ``training=False`` or ``p == 0`` returns
    ``x`` itself.  Arguments as in :func:`drop_path_add`.

    With ``layer_scale``: ``drop_path(x * gamma_view)`` fused, ``(x * gamma[c]) /
    (1 - p)`` for kept samples, in ``promote_types(x, gamma)``; in eval or at
    ``p == 0`` it returns ``x * gamma_view`` (the eager expression), not ``x``.
    ``draw="hf"`` draws as Hugging Face transformers' models do (see :func:`drop_path_add`).
    """
    if (type(x) in _PLAIN and layer_scale is None and generator is None and backend == "auto" and draw == "timm"
            and training and type(p) is float and p > 0.0 and (mode == "row" or mode == "batch")
            and type(sample_dim) is int and rng.DATA_PARALLEL is None and not _is_compiling()
            and _fast_on(x, _FAST_SCALE)):
        try:  # fast path, as in drop_path_add
            return _SCALE_DRAW(x, p, sample_dim, mode == "batch", scale_by_keep)
        except RuntimeError:
            pass
    if (type(x) in _PLAIN and layer_scale is None and generator is None and backend == "auto" and draw == "timm"
            and type(p) is float
            and 0.0 <= p <= 1.0 and (mode == "row" or mode == "batch") and type(sample_dim) is int
            and x.dtype in FLOAT_DTYPES and -x.dim() <= sample_dim < x.dim()):  # fast path, as in drop_path_add
        if not training or p == 0.0:
            return x
        dim = sample_dim % x.dim()
        keep = rng.draw(x, dim, p, mode, None)
        be = CORE.auto(x.device.type, x.numel())
        return be.ops["sample_scale"](x, keep, dim, keep_scale(p, scale_by_keep, acc_dtype(x.dtype)), None)
    proxy = _fx.first_proxy(x, layer_scale)
    if proxy is not None:  # torch.fx tracing: one leaf node
        return _fx.record(proxy, drop_path, (x, p), dict(
            training=training, mode=mode, scale_by_keep=scale_by_keep, sample_dim=sample_dim,
            generator=generator, backend=backend, layer_scale=layer_scale, channel_dim=channel_dim, draw=draw))
    dim = checks.check_call(x, "x", p, mode, sample_dim, backend, generator)
    checks.check_draw(draw)
    if layer_scale is not None:
        cd = checks.check_layer_scale(layer_scale, x, channel_dim, dim)
        gamma = rng.replicated_like(layer_scale, x).reshape(-1)
        if not training or p == 0.0:
            return x * reference.layer_scale_view(gamma, x.dim(), cd)
        be = LAYER_SCALE.pick(backend, x.device, x.numel())
        ddt, acc = drop_dtypes(x.dtype, x.dtype, gamma.dtype)
        keep = rng.draw(x, dim, p, mode, generator, _dropped(draw, ddt, x, gamma), draw)
        return be.ops["sample_scale_ls"](x, keep, gamma, dim, cd, keep_scale(p, scale_by_keep, acc), None)
    if not training or p == 0.0:
        return x
    be = CORE.pick(backend, x.device, x.numel())
    keep = rng.draw(x, dim, p, mode, generator, None, draw)
    return be.ops["sample_scale"](x, keep, dim, keep_scale(p, scale_by_keep, acc_dtype(x.dtype)), None)


def drop_path_add_norm(
    residual: torch.Tensor,
    branch: torch.Tensor,
    p: float,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    norm: str = "layer",
    training: bool = True,
    mode: str = "row",
    scale_by_keep: bool = True,
    sample_dim: int = 0,
    layer_scale: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    out_dtype: Optional[torch.dtype] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused drop path + residual add + LayerNorm / RMSNorm: returns ``(x, h)`` in one pass.

    ``x = residual + drop_path(branch * layer_scale)`` and ``h = norm(x)`` over the last
    dim ``H``, as a pre-norm block needs them (``x = x + drop_path(attn(norm1(x)));
    h = norm2(x)``)::

        x[s] = residual[s] + (branch[s] * layer_scale) * m[s]   kept sample s, m[s] = 1 / (1 - p)
        x[s] = residual[s]                                     dropped sample s (branch[s] never read)
        h    = F.layer_norm(x, (H,), weight, bias, eps)        norm="layer"
        h    = F.rms_norm(x, (H,), weight, eps) + bias         norm="rms" (bias usually None)

    ``x`` is exactly :func:`sdkernels.drop_path_add` (same draws under one seed, same
    dtype rule, same bits, unless an fp64 weight, bias or ``out_dtype`` with narrower
    activations raises the math to fp64, when x is computed in fp64 and rounded once;
    with ``layer_scale`` each multiply and the add are rounded separately in fp32, as eager
    ``x + drop_path(branch * gamma)`` computes them in fp32).
    ``h`` is the norm of ``x`` *as stored* (after its rounding to x's dtype), statistics in
    fp32 (fp64 for fp64 inputs), rounded once: exactly the norm of the residual the next
    block reads.

    Args:
        residual: the residual stream, at least 2 dims, the last one normalised.
        branch: the branch output, residual's shape and device; its dtype may differ
            (autocast: fp32 residual, bf16 branch), each is read in its own dtype.
        p: drop probability in [0, 1].  ``p == 1``: ``x`` equals residual and branch gets
            zero gradients.
        weight, bias: the norm's affine parameters, shape ``(H,)``, any float dtype, or
            None.  Parameters owned by another module (a timm block's ``norm2``) work and
            get their gradients.
        eps: added to the variance (mean square for RMS), >= 0.
        norm: "layer" (LayerNorm) or "rms" (RMSNorm).
        training: False (or ``p == 0``): ``x = residual + branch`` (``residual + branch *
            layer_scale``, the product rounded to its own dtype as eager computes it), no
            random numbers consumed; ``h = norm(x)`` as above.
        mode, scale_by_keep, sample_dim, generator: as in :func:`sdkernels.drop_path_add`
            (``sample_dim`` may be any dim but the last: 0 for ``[B, N, H]``, 1 for seq-first
            ``[S, B, H]``).
        layer_scale: LayerScale's ``gamma``, shape ``(H,)``, any float dtype, or None; it joins
            x's dtype rule (``promote_types(residual, branch, layer_scale)``).
        out_dtype: h's dtype (default x's).  ``torch.bfloat16`` writes the half-width
            input the next bf16 matmul reads anyway (under autocast x is fp32).
        backend: "auto" (the compiled kernel for the device, else the reference),
            "reference", "cpu", "cuda" or "triton".

    Returns:
        ``(x, h)``: x of residual's shape in the promoted dtype (residual's memory layout
        when its last dim is contiguous), h of the same shape and strides in ``out_dtype``.

    Backward: gradients for residual, branch, weight, bias and layer_scale, with the
    gradient arriving on ``x`` (the residual stream continues) added in.  The parameter
    gradients are reduced from fixed per-chunk fp32 partials in a fixed order: the same
    seed gives the same bits.  Double backward works (through differentiable PyTorch ops).
    """
    if (type(residual) in _PLAIN and type(branch) in _PLAIN and _plain_param(weight, residual)
            and _plain_param(bias, residual) and layer_scale is None and generator is None and backend == "auto"
            and out_dtype is None and training and type(p) is float and 0.0 < p <= 1.0
            and (mode == "row" or mode == "batch") and (norm == "layer" or norm == "rms") and type(eps) is float
            and 0.0 <= eps < math.inf and type(sample_dim) is int and residual.dim() >= 2
            and -residual.dim() <= sample_dim < residual.dim() and sample_dim % residual.dim() != residual.dim() - 1
            and residual.dtype in FLOAT_DTYPES and branch.dtype in FLOAT_DTYPES and residual.shape == branch.shape
            and residual.device == branch.device):
        # Fast path (the full path's checks inline; anything else takes the full path, which names the
        # argument), drawing and applying as below.
        if _fast_on(residual, _FAST_ADD_NORM) and rng.DATA_PARALLEL is None and not _is_compiling():
            # the C++ op: one call draws and applies (csrc/composite/draw.cpp)
            return _ADD_NORM_DRAW(residual, branch, p, weight, bias, sample_dim, mode == "batch", scale_by_keep, eps,
                                  norm == "rms")
        dim = sample_dim % residual.dim()
        ddt, acc = drop_dtypes(residual.dtype, branch.dtype)
        keep = rng.draw(branch, dim, p, mode, None, ddt)
        be = ADD_NORM.auto(residual.device.type, residual.numel())
        out = be.ops["add_norm"](residual, branch, keep, weight, bias, None, dim, keep_scale(p, scale_by_keep, acc),
                                 eps, norm == "rms", None)
        return out[0], out[1]
    proxy = _fx.first_proxy(residual, branch, weight, bias, layer_scale)
    if proxy is not None:  # torch.fx tracing: one leaf node
        return _fx.record(proxy, drop_path_add_norm, (residual, branch, p, weight, bias, eps), dict(
            norm=norm, training=training, mode=mode, scale_by_keep=scale_by_keep, sample_dim=sample_dim,
            layer_scale=layer_scale, generator=generator, out_dtype=out_dtype, backend=backend))
    dim = checks.check_call(residual, "residual", p, mode, sample_dim, backend, generator)
    checks.check_branch(residual, branch)
    checks.check_norm(norm)
    checks.check_norm_input(residual, dim, sample_dim)
    H = residual.shape[-1]
    for t, name in ((weight, "weight"), (bias, "bias"), (layer_scale, "layer_scale")):
        checks.check_norm_param(t, name, H, residual.device)
    weight, bias, layer_scale = (rng.replicated_like(t, residual) for t in (weight, bias, layer_scale))
    checks.check_eps(eps)
    checks.check_out_dtype(out_dtype)
    be = ADD_NORM.pick(backend, residual.device, residual.numel())
    rms = norm == "rms"
    if not training or p == 0.0:
        if layer_scale is not None:
            branch = branch * layer_scale  # eager's rounding of the product
        keep = rng.replicated_like(torch.ones(1, dtype=draw_dtype(branch.dtype), device=residual.device), residual)
        out = be.ops["add_norm"](residual, branch, keep, weight, bias, None, dim, 1.0, float(eps), rms, out_dtype)
    else:
        # The draw and the multiplier of drop_path_add (with LayerScale: in the dtype of branch * gamma),
        # so x is drop_path_add's x bit for bit.
        ddt, acc = drop_dtypes(residual.dtype, branch.dtype, opt_dtype(layer_scale))
        keep = rng.draw(branch, dim, p, mode, generator, ddt)
        alpha = keep_scale(p, scale_by_keep, acc)
        out = be.ops["add_norm"](residual, branch, keep, weight, bias, layer_scale, dim, alpha, float(eps), rms, out_dtype)
    return out[0], out[1]


_warned_realised_rate = False


def kept_count(n: int, p: float) -> int:
    """Samples kept by count "fixed": ``floor(n * (1 - p) + 0.5)`` (round half up), at least 1 when ``p < 1``.

    ``p`` is taken as the decimal it is written as (a tiny epsilon absorbs
    binary rounding, so ``kept_count(5, 0.9) == 1``).
    """
    if p >= 1.0 or n == 0:
        return 0
    k = int(math.floor(n * (1.0 - p) + 0.5 + 1e-9))
    return min(n, max(1, k))


def _warn_realised_rate(n: int, p: float, k: int) -> None:
    global _warned_realised_rate
    if _warned_realised_rate:
        return
    if torch.compiler.is_compiling():
        return
    realised = 1.0 - k / n
    if abs(realised - p) > REALISED_RATE_WARN:
        _warned_realised_rate = True
        warnings.warn(
            f"sdkernels.drop_path_residual: count='fixed' keeps k={k} of n={n} samples, a realised drop rate "
            f"of {realised:.3f} for p={p} (|difference| > {REALISED_RATE_WARN}). Use count='bernoulli' for "
            f"timm's distribution, or a larger batch. (Warned once per process.)",
            UserWarning,
            stacklevel=3,
        )


try:
    from torch.fx.experimental.symbolic_shapes import guard_or_false as _guard_or_false
except ImportError:  # older torch
    _guard_or_false = None


def _known_zero(n) -> bool:
    """``n == 0`` for an int; for a symbolic size, only when that is known without a data-dependent guard
    (a sample count from ``x[mask]`` under ``torch.compile`` must not break the graph)."""
    if not _is_compiling() and type(n) is int:  # eager: a plain int (dynamo sees a traced size as an int too)
        return n == 0
    if _guard_or_false is not None:
        return _guard_or_false(n == 0)
    return type(n) is int and n == 0


def _call_branch(fn, xs: torch.Tensor) -> torch.Tensor:
    y = fn(xs)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"fn must return a torch.Tensor, got {type(y).__name__}")
    if y.shape != xs.shape:
        raise ValueError(
            f"fn must return its input's shape {tuple(xs.shape)} (a residual branch), got {tuple(y.shape)}"
        )
    return y


def drop_path_residual(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    p: float,
    *,
    training: bool = True,
    mode: str = "row",
    count: str = "fixed",
    scale_by_keep: bool = True,
    sample_dim: int = 0,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
    layer_scale: Optional[torch.Tensor] = None,
    channel_dim: int = -1,
) -> torch.Tensor:
    """``x + drop_path(fn(x))`` computing ``fn`` on the kept samples only.

    A stochastic-depth residual block that skips the branch's compute for
    dropped samples: the kept samples ``idx`` are gathered, ``fn`` runs once on
    them, and one fused pass writes ``out = x`` with
    ``out[idx[j]] += fn(x[idx])[j] * alpha`` (``sdkernels::scaled_index_add``;
    no atomics, dropped samples are a copy of ``x``).

    Args:
        x: the residual stream, ``ndim >= 1``, samples along ``sample_dim``.
        fn: the branch, called as ``fn(x_kept)``.  It must return its input's
            shape.  Its dtype may differ from x's as under autocast (fp32 ``x``,
            bf16 ``fn(x)``): the result is ``torch.promote_types`` of the two and
            the math is fp32 (the core op's mixed-dtype rule).
        p: drop probability in [0, 1].
        training: when False, or at ``p == 0``, returns ``x + fn(x)`` with ``fn``
            run on the whole input (no random numbers consumed).
        mode: "row" (per-sample decisions) or "batch" (one decision for all).
        count: for mode "row", how many samples are kept:

            * ``"fixed"``: exactly ``k = floor(n * (1 - p) + 0.5)`` (round half up;
              at least 1 when ``p < 1``; see :func:`kept_count`), chosen uniformly
              at random with ``torch.randperm`` on x's device, scaled by ``n / k``.
              No host synchronisation and static shapes: it works under
              ``torch.compile(fullgraph=True)`` and CUDA graphs when
              ``generator`` is None.  **The realised drop rate is ``1 - k/n``, not
              ``p``**: at ``n == 1`` nothing is ever dropped, at ``n = 8, p = 0.3``
              the rate is 0.25.  A ``UserWarning`` is issued once per process when
              the two differ by more than 0.1.
            * ``"bernoulli"``: each sample kept with probability ``1 - p`` (timm's
              distribution, scale ``1 / (1 - p)``), drawn as
              :func:`sdkernels.reference.draw_keep` does, so the same seed keeps the
              same samples as timm and :func:`sdkernels.drop_path_add`.  The kept
              count is needed on the host: **one device synchronisation per call**
              (``nonzero``), and a data-dependent shape under ``torch.compile``.

            Ignored for mode "batch" (but must be valid).
        scale_by_keep: scale the kept samples (by ``n / k``, ``1 / (1 - p)``), so
            ``E[out] = x + fn(x)`` for a branch that acts per sample.
        sample_dim: the dim that indexes samples (1 for seq-first ``[S, B, H]``).
        generator: optional ``torch.Generator`` for the draws (on x's device for
            mode "row"; for mode "batch" see below).  An explicit generator cannot
            be traced by ``torch.compile``.
        backend: "auto" (the compiled kernel for x's device, else the
            reference), "reference" (``index_select`` / ``index_add`` in plain
            torch), "cpu", "cuda" or "triton".
        layer_scale, channel_dim: LayerScale, as in
            :func:`sdkernels.drop_path_add`: ``x + drop_path(gamma * fn(x))``.
            Composed, not fused: the kept samples' ``fn`` output is multiplied
            by ``gamma`` (one pass over the k kept samples, in
            ``promote_types(fn(x), gamma)``), then added by the fused scaled
            index-add; in eval it is ``x + fn(x) * gamma_view``.

    Mode "batch": one decision for the whole batch, kept with probability
    ``1 - p``, drawn **on the host** from ``generator`` (the default CPU
    generator when None; pass a CPU generator — a CUDA one costs a device
    sync).  A kept batch returns ``x + fn(x) / (1 - p)`` (fused add).  **A dropped
    batch does not call fn and returns x itself** (the same tensor object, not a
    copy; its gradient flows straight to x, and its dtype is x's even when fn
    would have returned a wider one).  The decision is made in Python, so it
    is **frozen into a captured CUDA graph** (every replay repeats the capture's
    choice) and breaks a ``torch.compile`` graph.  Under
    ``DistributedDataParallel`` every rank must take the same decision: seed
    the generator (or torch's default CPU generator) alike on every rank.  A
    dropped batch leaves fn's parameters unused in that step, so DDP needs
    ``find_unused_parameters=True``.

    Calls and gradients: ``fn`` is called exactly once per call, on the kept
    samples (in eval or at ``p == 0`` on the whole input), never on an empty
    batch: when nothing is kept (``p == 1``, a dropped batch, an all-dropped
    bernoulli draw, or an ``x`` with no samples, in any mode and in eval too)
    fn is not called and ``x`` itself is returned (no random numbers drawn for
    an ``x`` with no samples; under ``torch.compile`` a sample count known
    only at run time, e.g. from ``x[mask]``, is not tested for zero in eval,
    so fn may then see an empty batch rather than the graph break).  Gradients
    reach x and fn's parameters exactly as in the full computation
    ``x + mask * fn(x) * alpha`` with the same kept set, provided fn acts on
    each sample independently.  **A branch whose output for one sample
    depends on the others differs**: BatchNorm in training mode normalises with
    the kept samples' statistics (and updates its running stats from them
    only), as does anything that mixes samples (batch-wise attention, MoE
    capacity limits).

    Returns:
        Tensor of x's shape, dtype ``promote_types(x.dtype, fn(x).dtype)`` (or
        ``x`` itself when nothing is kept).
    """
    proxy = _fx.first_proxy(x, layer_scale)
    if proxy is not None:  # torch.fx tracing: one leaf node, fn recorded as the submodule it is
        return _fx.record(proxy, drop_path_residual, (x,), dict(
            fn=fn, p=p, training=training, mode=mode, count=count, scale_by_keep=scale_by_keep,
            sample_dim=sample_dim, generator=generator, backend=backend, layer_scale=layer_scale,
            channel_dim=channel_dim), modules=("fn",))
    dim = checks.check_call(x, "x", p, mode, sample_dim, backend, generator)
    gamma, cd = None, -1
    if layer_scale is not None:
        cd = checks.check_layer_scale(layer_scale, x, channel_dim, dim)
        gamma = rng.replicated_like(layer_scale, x).reshape(-1)

    def branch(xs):  # fn, then LayerScale when given
        y = _call_branch(fn, xs)
        return y if gamma is None else y * reference.layer_scale_view(gamma, y.dim(), cd)

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    checks.check_count(count)
    if not isinstance(training, bool):
        training = bool(training)
    be = SKIP.pick(backend, x.device, x.numel())
    n = x.shape[dim]
    if _known_zero(n):  # no samples: fn is never called on an empty batch
        return x
    if not training or p == 0.0:
        return x + branch(x)
    if mode == "batch":
        if not rng.batch_decision(p, generator, like=x):
            return x
        scale = rng.replicated_like(torch.ones(1, dtype=torch.float32, device=x.device), x)
        y = _call_branch(fn, x)
        alpha = keep_scale(p, scale_by_keep, drop_dtypes(x.dtype, y.dtype, opt_dtype(gamma))[1])
        if gamma is not None:  # the fused LayerScale op of drop_path_add, with its multiplier
            return _same_backend(LAYER_SCALE, be.name).ops["residual_add_ls"](x, y, scale, gamma, dim, cd, alpha)
        return _same_backend(CORE, be.name).ops["residual_add"](x, y, scale, dim, alpha)
    if count == "fixed":
        k = kept_count(n, p)
        if k == 0:
            return x
        _warn_realised_rate(n, p, k)
        index = rng.fixed_subset(x, n, k, generator)
        alpha = n / k if scale_by_keep else 1.0
    else:
        keep = rng.draw(x, dim, p, "row", generator)
        dtensor = rng.is_dtensor(keep)
        index = (keep.to_local() if dtensor else keep).nonzero().squeeze(1)
        if index.numel() == 0:  # host sync
            return x
        if dtensor:  # the mask is replicated and agreed on: so is its index
            index = rng.replicated_agreed(index, keep)
        alpha = None  # 1/(1-p) as the math dtype holds it, once fn's output dtype is known
    if be.ops["split"] is not None and x.requires_grad and torch.is_grad_enabled():
        residual, xs = be.ops["split"].apply(x, index, dim)
    else:
        residual, xs = x, be.ops["gather"](x, index, dim)
    y = branch(xs)
    if alpha is None:
        alpha = keep_scale(p, scale_by_keep, drop_dtypes(x.dtype, y.dtype)[1])
    return be.ops["index_add"](residual, y, index, dim, alpha)


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
