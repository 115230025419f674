"""The add + norm family: drop path + residual add + LayerNorm / RMSNorm, in one pass.

In a pre-norm transformer block the drop-path add is followed at once by a norm
of the same tensor (``x = x + drop_path(attn(norm1(x))); h = norm2(x)``).
:func:`drop_path_add_norm` does both in one pass: it adds, keeps ``x`` in
registers (CUDA, Triton) or a cache-resident row buffer (CPU) and normalises it,
returning the new residual ``x`` and its norm ``h``; the backward reads ``x``,
``grad_h`` and ``grad_x`` once.  A full read of the residual stream is saved at
every block, forward and backward.

The ops (schemas in ``csrc/ops/add_norm.cpp``; spec :func:`sdkernels.reference.add_norm` and
:func:`sdkernels.reference.add_norm_backward`)::

    sdkernels::add_norm(residual, branch, scale, weight?, bias?, gamma?, sample_dim, alpha, eps, rms,
                        out_dtype=None) -> (x, h, mean, rstd)
    sdkernels::add_norm_backward(grad_x?, grad_h, x, mean, rstd, scale, weight?, gamma?, branch?,
                                 sample_dim, alpha, rms, residual_dtype, branch_dtype,
                                 weight_dtype=None, bias_dtype=None)
        -> (grad_residual, grad_branch, grad_weight, grad_bias, grad_gamma)

Implementations: CPU C++ (``csrc/cpu/add_norm.cpp``), CUDA (``csrc/cuda/add_norm.cu``),
both with autograd in C++ (``csrc/autograd/add_norm.cpp``), and Triton
(``triton_kernels/add_norm.py``, registered here as ``sdkernels::add_norm_triton`` /
``sdkernels::add_norm_backward_triton`` with the Python autograd below).  The public
function is :func:`sdkernels.drop_path_add_norm`, the module :class:`sdkernels.nn.DropPathAddNorm`.

Autograd (both twins): the forward saves ``x`` (its own output, alive anyway as the
next block's input), mean and rstd (one fp32 value per row), the per-sample scale,
weight, bias and gamma, and ``branch`` only when gamma needs a gradient (eager
LayerScale keeps it for that too).  The backward is one ``add_norm_backward`` pass;
with ``create_graph`` (double backward) the gradients come from differentiable
PyTorch ops instead (:func:`sdkernels.reference.add_norm_backward`).
"""
import math
from typing import Optional  # no `from __future__ import annotations`: older torch infers schemas from real types

import torch

from .. import checks, reference
from .._ext import HAS_EXT, has_kernel
from ..backends import BackendTable
from ..dtypes import acc_dtype, add_norm_dtypes, opt_dtype

__all__ = ["x_like", "forward_alloc", "backward_alloc", "autograd_rules", "BACKENDS", "SHARDING",
           "TRITON_IMPORT_ERROR", "PROGRAMS_OVERRIDE"]

# ---- allocation rules (shared by the fake kernels and the Triton twin) -------------------------------------


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
    return acc_dtype(*[d for d in dtypes if d is not None])


def forward_alloc(residual, branch, weight, bias, gamma, rms, out_dtype):
    """(x, h, mean, rstd) allocated as the kernels allocate them."""
    xdt, _ = add_norm_dtypes(residual.dtype, branch.dtype, opt_dtype(gamma))
    hdt = xdt if out_dtype is None else out_dtype
    acc = _acc(residual.dtype, branch.dtype, xdt, hdt, opt_dtype(gamma), opt_dtype(weight), opt_dtype(bias))
    x = x_like(residual, xdt)
    rows = _rows(x)
    mean = torch.empty(0 if rms else rows, dtype=acc, device=x.device)
    rstd = torch.empty(rows, dtype=acc, device=x.device)
    return x, _like(x, hdt), mean, rstd


def backward_alloc(x, residual_dtype, branch_dtype, gamma, branch, weight_dtype, bias_dtype):
    """(grad_residual, grad_branch, grad_weight, grad_bias, grad_gamma) allocated as the kernels allocate them."""
    H = x.shape[-1]
    like = x_like(x, x.dtype)

    def param(dt):
        return torch.empty(0 if dt is None else H, dtype=x.dtype if dt is None else dt, device=x.device)

    return (_like(like, residual_dtype), _like(like, branch_dtype), param(weight_dtype), param(bias_dtype),
            param(gamma.dtype if (branch is not None and gamma is not None) else None))


# ---- fake kernels --------------------------------------------------------------------------------------

if HAS_EXT:

    @torch.library.register_fake("sdkernels::add_norm")
    def _fake_add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype=None):
        checks.op_devices(residual, branch, scale, weight, bias, gamma)
        torch._check(residual.shape == branch.shape, lambda: "sdkernels: residual and branch must have the same shape")
        return forward_alloc(residual, branch, weight, bias, gamma, rms, out_dtype)

    @torch.library.register_fake("sdkernels::add_norm_backward")
    def _fake_add_norm_backward(grad_x, grad_h, x, mean, rstd, scale, weight, gamma, branch, sample_dim, alpha, rms,
                                residual_dtype, branch_dtype, weight_dtype=None, bias_dtype=None):
        checks.op_devices(x, grad_x, grad_h, mean, rstd, scale, weight, gamma, branch)
        return backward_alloc(x, residual_dtype, branch_dtype, gamma, branch, weight_dtype, bias_dtype)


# ---- autograd rules (the Python twin of csrc/autograd/add_norm.cpp) ------------------------------------


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


# ---- Triton twin ---------------------------------------------------------------------------------------

_ADD_NORM_SCHEMA = ("(Tensor residual, Tensor branch, Tensor scale, Tensor? weight, Tensor? bias, Tensor? gamma, "
                    "int sample_dim, float alpha, float eps, bool rms, ScalarType? out_dtype=None) "
                    "-> (Tensor, Tensor, Tensor, Tensor)")
_BACKWARD_SCHEMA = ("(Tensor? grad_x, Tensor grad_h, Tensor x, Tensor mean, Tensor rstd, Tensor scale, "
                    "Tensor? weight, Tensor? gamma, Tensor? branch, int sample_dim, float alpha, bool rms, "
                    "ScalarType residual_dtype, ScalarType branch_dtype, ScalarType? weight_dtype=None, "
                    "ScalarType? bias_dtype=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


def _layout(x: torch.Tensor, dim: int, scale_numel: int):
    """(rows, H, n, inner) of the dense x (``plan_rows`` in ``csrc/common/add_norm_plan.h``)."""
    n = 1 if scale_numel == 1 else x.shape[dim]
    return _rows(x), x.shape[-1], n, (x.stride(dim) if n > 1 else 1)


#: Tests only: force the Triton backward's program count (e.g. more programs than rows).
PROGRAMS_OVERRIDE: Optional[int] = None
TRITON_IMPORT_ERROR: Optional[BaseException] = None
TRITON = None

try:
    from ..triton_kernels import add_norm as tk
    from . import launch
except Exception as _e:  # noqa: BLE001  (Triton missing or incompatible: no Triton backend)
    TRITON_IMPORT_ERROR = _e
else:

    def add_norm_triton(residual: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor,
                        weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                        sample_dim: int, alpha: float, eps: float, rms: bool,
                        out_dtype: Optional[torch.dtype] = None):
        checks.op_pair(residual, branch, "residual", "branch")
        launch.check_device(residual)
        dim = checks.op_norm_dims(residual, sample_dim)
        H = residual.shape[-1]
        sc = checks.op_scale(scale, residual.shape[dim], residual.device)
        w = checks.op_norm_param(weight, "weight", H, residual.device)
        b = checks.op_norm_param(bias, "bias", H, residual.device)
        g = checks.op_norm_param(gamma, "gamma", H, residual.device)
        if out_dtype is not None:
            checks.op_out_dtype(out_dtype, "out_dtype")
        if not (eps >= 0.0 and math.isfinite(eps)):
            raise ValueError(f"sdkernels: eps must be a finite number >= 0, got {eps}")
        if not math.isfinite(alpha):
            raise ValueError(f"sdkernels: alpha must be finite, got {alpha}")
        x, h, mean, rstd = forward_alloc(residual, branch, w, b, g, rms, out_dtype)
        if x.numel() == 0 or launch.skip_launch(x):
            if x.numel() == 0:
                mean.zero_()
                rstd.zero_()
            return x, h, mean, rstd
        r = launch.in_layout_of(residual, x)
        br = launch.in_layout_of(branch, x)
        tk.launch_forward(x, h, mean, rstd, r, br, sc, w, b, g, alpha, eps, rms, _layout(x, dim, sc.numel()),
                          rstd.dtype == torch.float64, wrap=launch.wrap)
        return x, h, mean, rstd

    def add_norm_backward_triton(grad_x: Optional[torch.Tensor], grad_h: torch.Tensor, x: torch.Tensor,
                                 mean: torch.Tensor, rstd: torch.Tensor, scale: torch.Tensor,
                                 weight: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                                 branch: Optional[torch.Tensor], sample_dim: int, alpha: float, rms: bool,
                                 residual_dtype: torch.dtype, branch_dtype: torch.dtype,
                                 weight_dtype: Optional[torch.dtype] = None,
                                 bias_dtype: Optional[torch.dtype] = None):
        checks.op_float(x, "x")
        checks.op_float(grad_h, "grad_h")
        launch.check_device(x)
        dim = checks.op_norm_dims(x, sample_dim)
        H = x.shape[-1]
        if grad_h.shape != x.shape or (grad_x is not None and grad_x.shape != x.shape):
            raise ValueError(f"sdkernels: grad_h and grad_x must have x's shape {tuple(x.shape)}")
        sc = checks.op_scale(scale, x.shape[dim], x.device)
        w = checks.op_norm_param(weight, "weight", H, x.device)
        g = checks.op_norm_param(gamma, "gamma", H, x.device)
        if not mean.is_floating_point() or not rstd.is_floating_point():
            raise TypeError(f"sdkernels: mean and rstd must be floating point, got {mean.dtype} and {rstd.dtype}")
        if branch is not None and g is None:
            raise ValueError("sdkernels: branch is given (for gamma's gradient) without gamma")
        outs = backward_alloc(x, residual_dtype, branch_dtype, g, branch, weight_dtype, bias_dtype)
        if x.numel() == 0 or launch.skip_launch(outs[0]):
            for p in outs[2:]:
                p.zero_()
            return outs
        g_res, g_br = outs[0], outs[1]
        xs = launch.in_layout_of(x, g_res)
        gh = launch.in_layout_of(grad_h, g_res)
        gx = None if grad_x is None else launch.in_layout_of(grad_x, g_res)
        br = None if branch is None else launch.in_layout_of(branch, g_res)
        layout = _layout(g_res, dim, sc.numel())
        lp = tk.backward_params(layout[0], H, x.device, programs=PROGRAMS_OVERRIDE)
        acc = rstd.dtype
        wanted = [p.numel() > 0 for p in outs[2:]]
        make = torch.zeros if lp.loop else torch.empty
        parts = [make((lp.grid, H), dtype=acc, device=x.device) if want else None for want in wanted]
        tk.launch_backward(g_res, g_br, parts, gx, gh, xs, mean, rstd, sc, w, g, br, alpha, rms, layout,
                           acc == torch.float64, lp, wrap=launch.wrap)
        for out, part in zip(outs[2:], parts):
            if part is not None:
                tk.launch_reduce_partials(out, part, wrap=launch.wrap)
        return outs

    add_norm_op = launch.register_op("sdkernels::add_norm_triton", add_norm_triton, _ADD_NORM_SCHEMA)
    add_norm_backward_op = launch.register_op("sdkernels::add_norm_backward_triton", add_norm_backward_triton,
                                              _BACKWARD_SCHEMA)
    _setup, _backward = autograd_rules(add_norm_backward_op)
    torch.library.register_autograd(add_norm_op, _backward, setup_context=_setup)
    TRITON = {"add_norm": add_norm_op, "ops": (add_norm_op, add_norm_backward_op)}


# ---- backends ------------------------------------------------------------------------------------------


def _reference_add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype=None):
    return reference.add_norm(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype)


#: The add + norm family's backends: op ``add_norm(residual, branch, scale, weight, bias, gamma, sample_dim,
#: alpha, eps, rms, out_dtype) -> (x, h, ...)`` (the schema's arguments; extra outputs ignored).
BACKENDS = BackendTable("add_norm", ("add_norm",))
BACKENDS.register("reference", None, True, add_norm=_reference_add_norm)
if has_kernel("add_norm", "CPU"):
    BACKENDS.register("cpu", {"cpu"}, True, add_norm=torch.ops.sdkernels.add_norm.default)
if has_kernel("add_norm", "CUDA"):
    BACKENDS.register("cuda", {"cuda"}, torch.cuda.is_available(), add_norm=torch.ops.sdkernels.add_norm.default)
if TRITON is not None:
    BACKENDS.register("triton", launch.DEVICES, launch.AVAILABLE, add_norm=TRITON["add_norm"])


# ---- sharding rules ------------------------------------------------------------------------------------
# The normalised last dim is never sharded ---------------------------------
# x, h, mean and rstd follow the rows; mean and rstd hold one value per row (in memory order), so the
# rows may be split along the leading dim only (Shard(0): the batch of [B, N, H], or the sequence of
# seq-first [S, B, H] as sequence parallelism shards it); a middle dim of a 3-d tensor is redistributed.
# The norm is not linear: no Partial (DTensor reduces a Partial input first, so x and h see the sum).
# The backward's weight, bias and gamma gradients are sums over rows: Partial under Shard(0).
# RMSNorm returns an empty ``mean``: it stays replicated.  Known limit: mean and rstd are 1-D (one value
# per row), so for a 3-d x whose leading dim does not split evenly over the mesh (e.g. 197 tokens on 2
# ranks) their Shard(0) metadata does not match the rows each rank holds; the values are right as long as
# they are not redistributed (the backward takes the same Shard(0) rule), but full_tensor() of them is not.

def _add_norm_rule(residual, branch, scale, weight, bias, gamma, sample_dim, alpha, eps, rms, out_dtype=None):
    from ..distributed import placements, wrap_dim

    R, S, _ = placements()
    nd = residual.ndim
    opt = [None if t is None else R for t in (weight, bias, gamma)]
    tail = [None] * 5
    rules = [([R] * 4, [R, R, R] + opt + tail)]
    if nd >= 2:
        sd = wrap_dim(sample_dim, nd)
        scale_p = S(0) if (sd == 0 and scale.shape[0] > 1) else R
        # RMSNorm's mean is an empty placeholder: replicated (an empty dim cannot be sharded)
        rules.append(([S(0), S(0), R if rms else S(0), S(0)], [S(0), S(0), scale_p] + opt + tail))
    return rules


def _add_norm_backward_rule(grad_x, grad_h, x, mean, rstd, scale, weight, gamma, branch, sample_dim, alpha, rms,
                       residual_dtype, branch_dtype, weight_dtype=None, bias_dtype=None):
    from ..distributed import placements, wrap_dim

    R, S, P = placements()
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
        sd = wrap_dim(sample_dim, nd)
        rules.append(placements(S(0), P, S(0) if (sd == 0 and scale.shape[0] > 1) else R))
    return rules


SHARDING = {
    "add_norm": _add_norm_rule,
    "add_norm_triton": _add_norm_rule,
    "add_norm_backward": _add_norm_backward_rule,
    "add_norm_backward_triton": _add_norm_backward_rule,
}
