"""Fused drop path + residual add + LayerNorm / RMSNorm (issue 14): the op family.

In a pre-norm transformer block the drop-path add is followed at once by a norm
of the same tensor (``x = x + drop_path(attn(norm1(x))); h = norm2(x)``).
:func:`drop_path_add_norm` does both in one pass: it adds, keeps ``x`` in
registers (CUDA, Triton) or a cache-resident row buffer (CPU) and normalises it,
returning the new residual ``x`` and its norm ``h``; the backward reads ``x``,
``grad_h`` and ``grad_x`` once.  A full read of the residual stream is saved at
every block, forward and backward.

The ops (schemas in ``csrc/ops.cpp``; spec :func:`sdkernels.reference.add_norm` and
:func:`sdkernels.reference.add_norm_backward`)::

    sdkernels::add_norm(residual, branch, scale, weight?, bias?, gamma?, sample_dim, alpha, eps, rms,
                        out_dtype=None) -> (x, h, mean, rstd)
    sdkernels::add_norm_backward(grad_x?, grad_h, x, mean, rstd, scale, weight?, gamma?, branch?,
                                 sample_dim, alpha, rms, residual_dtype, branch_dtype,
                                 weight_dtype=None, bias_dtype=None)
        -> (grad_residual, grad_branch, grad_weight, grad_bias, grad_gamma)

Implementations: CPU C++ (``csrc/cpu/add_norm.cpp``), CUDA (``csrc/cuda/add_norm.cu``),
both with autograd in C++ (``csrc/autograd.cpp``), and Triton
(``triton_kernels/add_norm.py``, registered here as ``sdkernels::add_norm_triton`` /
``sdkernels::add_norm_backward_triton`` with the Python autograd below).  This module
holds their fake kernels, the Triton registration, the backend table and the public
function; :class:`sdkernels.nn.DropPathAddNorm` is the module.

Autograd (both twins): the forward saves ``x`` (its own output, alive anyway as the
next block's input), mean and rstd (one fp32 value per row), the per-sample scale,
weight, bias and gamma, and ``branch`` only when gamma needs a gradient (eager
LayerScale keeps it for that too).  The backward is one ``add_norm_backward`` pass;
with ``create_graph`` (double backward) the gradients come from differentiable
PyTorch ops instead (:func:`sdkernels.reference.add_norm_backward`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Optional, Tuple

import torch

from . import _fx, functional, reference, rng
from ._ext import HAS_EXT, has_kernel

__all__ = ["drop_path_add_norm", "available_add_norm_backends", "NORMS", "x_like"]

NORMS = reference.NORMS


# ---------------------------------------------------------------------------
# Allocation rules shared by the fake kernels and the Triton ops
# ---------------------------------------------------------------------------


def x_like(residual: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x's allocation (``norm_out_like`` in ``csrc/common/add_norm_plan.h``): residual's layout when its
    last dim stays contiguous, else contiguous."""
    x = torch.empty_like(residual, dtype=dtype)
    if x.dim() >= 1 and x.shape[-1] > 1 and x.stride(-1) != 1:
        x = torch.empty(residual.shape, dtype=dtype, device=residual.device)
    return x


def _like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_strided(x.shape, x.stride(), dtype=dtype, device=x.device)


def _rows(x: torch.Tensor) -> int:
    H = x.shape[-1]
    return 0 if H == 0 else x.numel() // H


def _acc(*dtypes) -> torch.dtype:
    return reference.acc_dtype(*[d for d in dtypes if d is not None])


def _opt_dtype(t):
    return None if t is None else t.dtype


def _forward_alloc(residual, branch, weight, bias, gamma, rms, out_dtype):
    """(x, h, mean, rstd) allocated as the kernels allocate them."""
    xdt, _ = reference.add_norm_dtypes(residual.dtype, branch.dtype, _opt_dtype(gamma))
    hdt = xdt if out_dtype is None else out_dtype
    acc = _acc(residual.dtype, branch.dtype, xdt, hdt, _opt_dtype(gamma), _opt_dtype(weight), _opt_dtype(bias))
    x = x_like(residual, xdt)
    rows = _rows(x)
    mean = torch.empty(0 if rms else rows, dtype=acc, device=x.device)
    rstd = torch.empty(rows, dtype=acc, device=x.device)
    return x, _like(x, hdt), mean, rstd


def _backward_alloc(x, residual_dtype, branch_dtype, gamma, branch, weight_dtype, bias_dtype):
    H = x.shape[-1]
    like = x_like(x, x.dtype)

    def param(dt):
        return torch.empty(0 if dt is None else H, dtype=x.dtype if dt is None else dt, device=x.device)

    return (_like(like, residual_dtype), _like(like, branch_dtype), param(weight_dtype), param(bias_dtype),
            param(gamma.dtype if (branch is not None and gamma is not None) else None))


if HAS_EXT:

    @torch.library.register_fake("sdkernels::add_norm")
    def _fake_add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype=None):
        torch._check(residual.shape == branch.shape, lambda: "sdkernels: residual and branch must have the same shape")
        return _forward_alloc(residual, branch, weight, bias, gamma, rms, out_dtype)

    @torch.library.register_fake("sdkernels::add_norm_backward")
    def _fake_add_norm_backward(grad_x, grad_h, x, mean, rstd, scale, weight, gamma, branch, sample_dim, alpha, rms,
                                residual_dtype, branch_dtype, weight_dtype=None, bias_dtype=None):
        return _backward_alloc(x, residual_dtype, branch_dtype, gamma, branch, weight_dtype, bias_dtype)


# ---------------------------------------------------------------------------
# Autograd rules (the Triton twin's; the C++ ops have the same in csrc/autograd.cpp)
# ---------------------------------------------------------------------------


def autograd_rules(backward_op):
    """``(setup_context, backward)`` of an add_norm-shaped op whose backward op is ``backward_op``.

    Used by the Triton ops (and by any later backend bringing its own pair); the C++
    ops keep the same rule in C++ (``csrc/autograd.cpp``) to stay off Python.
    """

    def setup_context(ctx, inputs, output):
        residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, _out_dtype = inputs
        x, _h, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)  # an unused x or h: None (handled below), not plain zeros for a DTensor
        gamma_grad = gamma is not None and gamma.requires_grad
        ctx.save_for_backward(x, mean, rstd, scale, weight, bias, gamma, branch if gamma_grad else None)
        ctx.sample_dim = sample_dim % residual.dim()
        ctx.alpha, ctx.eps, ctx.rms = alpha, eps, rms
        ctx.residual_dtype, ctx.branch_dtype = residual.dtype, branch.dtype

    def backward(ctx, gx, gh, _gmean, _grstd):
        x, mean, rstd, scale, weight, bias, gamma, branch = ctx.saved_tensors
        need = ctx.needs_input_grad
        want_w = need[3] and weight is not None
        want_b = need[4] and bias is not None
        want_g = need[5] and branch is not None
        if gx is None and gh is None:
            return (None,) * 11
        if gh is None:
            gh = torch.zeros_like(x)  # h unused: its norm term vanishes
        if torch.is_grad_enabled():  # create_graph: differentiable PyTorch ops (double backward)
            g = reference.add_norm_backward(gx, gh, x, scale, weight, bias, gamma, branch if want_g else None,
                                            ctx.sample_dim, ctx.alpha, ctx.eps, ctx.rms, ctx.residual_dtype,
                                            ctx.branch_dtype, acc=rstd.dtype)
        else:
            g = backward_op(gx, gh, x, mean, rstd, scale, weight, gamma, branch if want_g else None, ctx.sample_dim,
                            ctx.alpha, ctx.rms, ctx.residual_dtype, ctx.branch_dtype,
                            weight.dtype if want_w else None, bias.dtype if want_b else None)
        g_res, g_branch, g_w, g_b, g_g = g
        return (g_res if need[0] else None, g_branch if need[1] else None, None,
                g_w if want_w else None, g_b if want_b else None, g_g if want_g else None,
                None, None, None, None, None)

    return setup_context, backward


# ---------------------------------------------------------------------------
# Triton ops (optional: import sdkernels works without triton)
# ---------------------------------------------------------------------------

TRITON_IMPORT_ERROR: Optional[BaseException] = None
_TRITON = None  # (add_norm op, devices, available) once registered

_ADD_NORM_SCHEMA = ("(Tensor residual, Tensor branch, Tensor scale, Tensor? weight, Tensor? bias, Tensor? gamma, "
                    "int sample_dim, float alpha, float eps, bool rms, ScalarType? out_dtype=None) "
                    "-> (Tensor, Tensor, Tensor, Tensor)")
_BACKWARD_SCHEMA = ("(Tensor? grad_x, Tensor grad_h, Tensor x, Tensor mean, Tensor rstd, Tensor scale, "
                    "Tensor? weight, Tensor? gamma, Tensor? branch, int sample_dim, float alpha, bool rms, "
                    "ScalarType residual_dtype, ScalarType branch_dtype, ScalarType? weight_dtype=None, "
                    "ScalarType? bias_dtype=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


def _check_param(t, name, H, device):
    if t is None:
        return None
    if not t.is_floating_point():
        raise TypeError(f"sdkernels: {name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != H:
        raise ValueError(f"sdkernels: {name} must have shape ({H},) (the normalized last dim), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"sdkernels: {name} is on {t.device} but the inputs are on {device}")
    return t.contiguous()


def _check_dims(t: torch.Tensor, sample_dim: int, wrap_dim) -> int:
    if t.dim() < 2:
        raise ValueError(f"sdkernels: add_norm needs at least 2 dims (samples, ..., the normalized last dim), "
                         f"got {t.dim()}")
    dim = wrap_dim(sample_dim, t.dim())
    if dim == t.dim() - 1:
        raise ValueError(f"sdkernels: sample_dim must not be the normalized last dim ({sample_dim} of {t.dim()} dims)")
    return dim


def _layout(x: torch.Tensor, dim: int, scale_numel: int):
    """(rows, H, n, inner) of the dense x (``plan_rows`` in ``csrc/common/add_norm_plan.h``)."""
    n = 1 if scale_numel == 1 else x.shape[dim]
    return _rows(x), x.shape[-1], n, (x.stride(dim) if n > 1 else 1)


def _register_triton():
    from .triton_kernels import add_norm as tk
    from .triton_ops import AVAILABLE as available, DEVICES as devices
    from .triton_ops import _check_device, _check_float, _checked_scale, _in_layout_of, _skip_launch, _wrap
    from .triton_ops import _wrap_dim

    def add_norm_triton(residual: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor,
                        weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                        sample_dim: int, alpha: float, eps: float, rms: bool,
                        out_dtype: Optional[torch.dtype] = None):
        _check_float(residual, "residual")
        _check_float(branch, "branch")
        if residual.shape != branch.shape:
            raise ValueError(f"sdkernels: residual and branch must have the same shape, got {tuple(residual.shape)} "
                             f"and {tuple(branch.shape)}")
        if residual.device != branch.device:
            raise ValueError(f"sdkernels: residual is on {residual.device} but branch is on {branch.device}")
        _check_device(residual)
        dim = _check_dims(residual, sample_dim, _wrap_dim)
        H = residual.shape[-1]
        sc = _checked_scale(scale, residual.shape[dim], residual.device)
        w = _check_param(weight, "weight", H, residual.device)
        b = _check_param(bias, "bias", H, residual.device)
        g = _check_param(gamma, "gamma", H, residual.device)
        if out_dtype is not None and not out_dtype.is_floating_point:
            raise TypeError(f"sdkernels: out_dtype must be a floating-point dtype, got {out_dtype}")
        x, h, mean, rstd = _forward_alloc(residual, branch, w, b, g, rms, out_dtype)
        if x.numel() == 0 or _skip_launch(x):
            if x.numel() == 0:
                mean.zero_()
                rstd.zero_()
            return x, h, mean, rstd
        r = _in_layout_of(residual, x)
        br = _in_layout_of(branch, x)
        tk.launch_forward(x, h, mean, rstd, r, br, sc, w, b, g, alpha, eps, rms, _layout(x, dim, sc.numel()),
                          rstd.dtype == torch.float64, wrap=_wrap)
        return x, h, mean, rstd

    def add_norm_backward_triton(grad_x: Optional[torch.Tensor], grad_h: torch.Tensor, x: torch.Tensor,
                                 mean: torch.Tensor, rstd: torch.Tensor, scale: torch.Tensor,
                                 weight: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                                 branch: Optional[torch.Tensor], sample_dim: int, alpha: float, rms: bool,
                                 residual_dtype: torch.dtype, branch_dtype: torch.dtype,
                                 weight_dtype: Optional[torch.dtype] = None,
                                 bias_dtype: Optional[torch.dtype] = None):
        _check_float(x, "x")
        _check_float(grad_h, "grad_h")
        _check_device(x)
        dim = _check_dims(x, sample_dim, _wrap_dim)
        H = x.shape[-1]
        if grad_h.shape != x.shape or (grad_x is not None and grad_x.shape != x.shape):
            raise ValueError(f"sdkernels: grad_h and grad_x must have x's shape {tuple(x.shape)}")
        sc = _checked_scale(scale, x.shape[dim], x.device)
        w = _check_param(weight, "weight", H, x.device)
        g = _check_param(gamma, "gamma", H, x.device)
        if branch is not None and g is None:
            raise ValueError("sdkernels: branch is given (for gamma's gradient) without gamma")
        outs = _backward_alloc(x, residual_dtype, branch_dtype, g, branch, weight_dtype, bias_dtype)
        if x.numel() == 0 or _skip_launch(outs[0]):
            for p in outs[2:]:
                p.zero_()
            return outs
        g_res, g_br = outs[0], outs[1]
        xs = _in_layout_of(x, g_res)
        gh = _in_layout_of(grad_h, g_res)
        gx = None if grad_x is None else _in_layout_of(grad_x, g_res)
        br = None if branch is None else _in_layout_of(branch, g_res)
        layout = _layout(g_res, dim, sc.numel())
        lp = tk.backward_params(layout[0], H, x.device, programs=_PROGRAMS_OVERRIDE)
        acc = rstd.dtype
        wanted = [p.numel() > 0 for p in outs[2:]]
        make = torch.zeros if lp.loop else torch.empty
        parts = [make((lp.grid, H), dtype=acc, device=x.device) if want else None for want in wanted]
        tk.launch_backward(g_res, g_br, parts, gx, gh, xs, mean, rstd, sc, w, g, br, alpha, rms, layout,
                           acc == torch.float64, lp, wrap=_wrap)
        for out, part in zip(outs[2:], parts):
            if part is not None:
                tk.launch_reduce_partials(out, part, wrap=_wrap)
        return outs

    ops = {}
    for name, fn, schema in (("sdkernels::add_norm_triton", add_norm_triton, _ADD_NORM_SCHEMA),
                             ("sdkernels::add_norm_backward_triton", add_norm_backward_triton, _BACKWARD_SCHEMA)):
        if tk.INTERPRET:
            op = torch.library.custom_op(name, fn, mutates_args=(), schema=schema)
            op.register_fake(fn)
        else:
            try:
                torch.library.triton_op(name, fn, mutates_args=(), schema=schema)
            except TypeError:  # torch < 2.7: no schema argument; inferred from the annotations
                torch.library.triton_op(name, fn, mutates_args=())
        ops[name] = getattr(torch.ops.sdkernels, name.split("::")[1]).default
    setup, backward = autograd_rules(ops["sdkernels::add_norm_backward_triton"])
    torch.library.register_autograd("sdkernels::add_norm_triton", backward, setup_context=setup)
    return ops["sdkernels::add_norm_triton"], devices, available


#: Tests only: force the Triton backward's program count (e.g. more programs than rows).
_PROGRAMS_OVERRIDE: Optional[int] = None

try:
    _TRITON = _register_triton()
except Exception as _e:  # noqa: BLE001  (Triton missing or incompatible: no Triton backend)
    TRITON_IMPORT_ERROR = _e
    _TRITON = None


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AddNormBackend:
    """One way to run the op: ``add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps,
    rms, out_dtype) -> (x, h, ...)`` (the schema's arguments; extra outputs ignored)."""

    name: str
    add_norm: Callable
    devices: Optional[FrozenSet[str]]
    available: bool


def _reference_add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype=None):
    return reference.add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype)


_BACKENDS: Dict[str, AddNormBackend] = {
    "reference": AddNormBackend("reference", _reference_add_norm, None, True),
}
if has_kernel("add_norm", "CPU"):
    _BACKENDS["cpu"] = AddNormBackend("cpu", torch.ops.sdkernels.add_norm.default, frozenset({"cpu"}), True)
if has_kernel("add_norm", "CUDA"):
    _BACKENDS["cuda"] = AddNormBackend("cuda", torch.ops.sdkernels.add_norm.default, frozenset({"cuda"}),
                                       torch.cuda.is_available())
if _TRITON is not None:
    _BACKENDS["triton"] = AddNormBackend("triton", _TRITON[0], _TRITON[1], _TRITON[2])


def available_add_norm_backends() -> Tuple[str, ...]:
    """Names of the add + norm backends usable in this process, e.g. ``("reference", "cpu")``."""
    return functional.available_in(_BACKENDS)


# ---------------------------------------------------------------------------
# The public function
# ---------------------------------------------------------------------------


def _check_param_arg(t, name: str, H: int, device) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.dtype not in functional.FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != H:
        raise ValueError(f"{name} must have shape ({H},) (the normalized last dim of the residual), "
                         f"got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on the residual's device {device}, got {t.device}")


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
    with ``layer_scale`` each multiply and the add are rounded separately in fp32, as eager ``x + drop_path(branch * gamma)`` computes them in fp32).
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
    proxy = _fx.first_proxy(residual, branch, weight, bias, layer_scale)
    if proxy is not None:  # torch.fx tracing: one leaf node
        return _fx.record(proxy, drop_path_add_norm, (residual, branch, p, weight, bias, eps), dict(
            norm=norm, training=training, mode=mode, scale_by_keep=scale_by_keep, sample_dim=sample_dim,
            layer_scale=layer_scale, generator=generator, out_dtype=out_dtype, backend=backend))
    dim = functional._check_common(residual, "residual", p, mode, sample_dim, backend, generator)
    functional._check_branch(residual, branch)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if residual.dim() < 2:
        raise ValueError(f"residual must have at least 2 dims (samples, ..., the normalized last dim), "
                         f"got shape {tuple(residual.shape)}")
    if dim == residual.dim() - 1:
        raise ValueError(f"sample_dim must not be the normalized last dim, got sample_dim={sample_dim} "
                         f"for {residual.dim()} dims")
    H = residual.shape[-1]
    for t, name in ((weight, "weight"), (bias, "bias"), (layer_scale, "layer_scale")):
        _check_param_arg(t, name, H, residual.device)
    weight, bias, layer_scale = (rng.replicated_like(t, residual) for t in (weight, bias, layer_scale))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if out_dtype is not None and out_dtype not in functional.FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be None or a floating-point dtype (float16, bfloat16, float32 or "
                        f"float64), got {out_dtype}")
    be = functional.pick_backend(backend, residual.device, residual.numel(), _BACKENDS)
    rms = norm == "rms"
    if not training or p == 0.0:
        if layer_scale is not None:
            branch = branch * layer_scale  # eager's rounding of the product
        keep = torch.ones(1, dtype=reference.draw_dtype(branch.dtype), device=residual.device)
        if rng.is_dtensor(residual):
            keep = rng._replicated_agreed(keep, residual)
        out = be.add_norm(residual, branch, keep, weight, bias, None, dim, 1.0, float(eps), rms, out_dtype)
    else:
        # The draw and the multiplier of drop_path_add (with LayerScale: in the dtype of branch * gamma),
        # so x is drop_path_add's x bit for bit.
        ddt, acc = reference.drop_dtypes(residual.dtype, branch.dtype, reference._opt_dtype(layer_scale))
        keep = functional._draw(branch, dim, p, mode, generator, ddt)
        alpha = reference.keep_scale(p, scale_by_keep, acc)
        out = be.add_norm(residual, branch, keep, weight, bias, layer_scale, dim, alpha, float(eps), rms, out_dtype)
    return out[0], out[1]
