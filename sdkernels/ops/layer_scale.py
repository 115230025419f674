"""The LayerScale family: ``residual + drop_path(branch * gamma)`` (DeiT III, CaiT, EVA, BEiT, ConvNeXt).

Ops (schemas in ``csrc/ops/layer_scale.cpp``, spec in :mod:`sdkernels.reference.layer_scale`)::

    sdkernels::scaled_residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0)
        out = residual + (branch * gamma[c]) * (scale[s] * alpha)   kept samples (branch unread otherwise)
    sdkernels::sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, alpha=1.0, dtype=None)
        out = (x * gamma[c]) * (scale[s] * alpha), exact zeros for dropped samples
    sdkernels::layer_scale_grads(grad, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0)
        -> (grad_branch, grad_gamma), one pass, deterministic (fixed partials)

Implementations: C++ CPU (``csrc/cpu/layer_scale.cpp``), CUDA (``csrc/cuda/layer_scale.cu``), both with
autograd in C++ (``csrc/autograd/layer_scale.cpp``), and the Triton twin (``triton_kernels/layer_scale.py``)
with the same rules from Python (:func:`autograd_rules`).
"""
from typing import Optional, Tuple  # no `from __future__ import annotations`: older torch infers schemas

import torch

from .. import checks, reference
from .._ext import HAS_EXT, has_kernel
from ..backends import BackendTable
from ..dtypes import acc_dtype
from .core import op_callable

__all__ = ["out_like", "sample_scale_out", "grads_out", "autograd_rules", "register_autograd", "BACKENDS",
           "SHARDING", "TRITON_IMPORT_ERROR"]

# ---- allocation rules ----------------------------------------------------------------------------------


def out_like(residual: torch.Tensor, branch: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``scaled_residual_add_ls``'s output: residual's layout, promote(residual, branch, gamma)."""
    dt = torch.promote_types(torch.promote_types(residual.dtype, branch.dtype), gamma.dtype)
    return torch.empty_like(residual, dtype=dt)


def sample_scale_out(x: torch.Tensor, gamma: torch.Tensor, dtype) -> torch.Tensor:
    """``sample_scale_ls``'s output: x's layout, ``dtype`` or promote(x, gamma)."""
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, gamma.dtype) if dtype is None else dtype)


def grads_out(grad: torch.Tensor, branch: torch.Tensor, gamma: torch.Tensor):
    """``layer_scale_grads``'s outputs: grad_branch like grad in branch's dtype, grad_gamma like gamma."""
    return torch.empty_like(grad, dtype=branch.dtype), torch.empty_like(gamma)


# ---- fake kernels --------------------------------------------------------------------------------------

if HAS_EXT:

    def _fake_checks(x, gamma, sample_dim, channel_dim):
        nd = x.dim()
        torch._check(-nd <= channel_dim < nd, lambda: "sdkernels: channel_dim is out of range")
        torch._check(sample_dim % nd != channel_dim % nd, lambda: "sdkernels: channel_dim must differ from sample_dim")
        torch._check(gamma.dim() == 1 and gamma.shape[0] == x.shape[channel_dim % nd],
                     lambda: "sdkernels: gamma must be 1-D with one value per channel")

    @torch.library.register_fake("sdkernels::scaled_residual_add_ls")
    def _fake_scaled_residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
        checks.op_devices(residual, branch, scale, gamma)
        torch._check(residual.shape == branch.shape, lambda: "residual and branch must have the same shape")
        _fake_checks(residual, gamma, sample_dim, channel_dim)
        return out_like(residual, branch, gamma)

    @torch.library.register_fake("sdkernels::sample_scale_ls")
    def _fake_sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, alpha=1.0, dtype=None):
        checks.op_devices(x, scale, gamma)
        _fake_checks(x, gamma, sample_dim, channel_dim)
        return sample_scale_out(x, gamma, dtype)

    @torch.library.register_fake("sdkernels::layer_scale_grads")
    def _fake_layer_scale_grads(grad, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
        checks.op_devices(grad, branch, scale, gamma)
        torch._check(grad.shape == branch.shape, lambda: "grad and branch must have the same shape")
        _fake_checks(grad, gamma, sample_dim, channel_dim)
        return grads_out(grad, branch, gamma)


# ---- autograd rules (the Python twin of csrc/autograd/layer_scale.cpp) ---------------------------------


def autograd_rules(sample_scale_ls_fn, layer_scale_grads_fn):
    """The autograd rules of the LayerScale ops, given the ``sample_scale_ls`` and ``layer_scale_grads`` to call.

    Returns ``{op: (setup_context, backward)}`` for ``"residual_add"``, ``"sample_scale"`` and
    ``"grads"``, in the ``torch.library.register_autograd`` form.  The forward ops save ``scale``,
    ``gamma`` and, only when gamma requires grad, the branch (``x``); ``grad_residual`` is
    ``grad_out`` itself; with gamma requiring grad one ``layer_scale_grads`` pass gives the branch's
    and gamma's gradients, else one ``sample_scale_ls`` pass the branch's.  ``layer_scale_grads`` is
    linear in ``grad`` and in ``branch``: its backward is made of the same two ops, so double
    backward works.
    """

    def save(ctx, branch, scale, gamma, sample_dim, channel_dim, alpha):
        ctx.save_for_backward(scale, gamma, branch if gamma.requires_grad else None)
        ctx.sample_dim, ctx.channel_dim, ctx.alpha = sample_dim, channel_dim, alpha
        ctx.branch_dtype = branch.dtype

    def branch_and_gamma(ctx, grad, need_b, need_g):
        scale, gamma, branch = ctx.saved_tensors
        args = (scale, gamma, ctx.sample_dim, ctx.channel_dim, ctx.alpha)
        if need_g:
            gb, gg = layer_scale_grads_fn(grad, branch, *args)
            return (gb if need_b else None), gg
        if need_b:
            return sample_scale_ls_fn(grad, *args, ctx.branch_dtype), None
        return None, None

    def setup_add(ctx, inputs, output):
        residual, branch, scale, gamma, sample_dim, channel_dim, alpha = inputs
        save(ctx, branch, scale, gamma, sample_dim, channel_dim, alpha)
        ctx.residual_dtype = residual.dtype

    def backward_add(ctx, grad):
        g_r = None
        if ctx.needs_input_grad[0]:
            g_r = grad if grad.dtype == ctx.residual_dtype else grad.to(ctx.residual_dtype)
        g_b, g_g = branch_and_gamma(ctx, grad, ctx.needs_input_grad[1], ctx.needs_input_grad[3])
        return g_r, g_b, None, g_g, None, None, None

    def setup_scale(ctx, inputs, output):
        x, scale, gamma, sample_dim, channel_dim, alpha, _dtype = inputs
        save(ctx, x, scale, gamma, sample_dim, channel_dim, alpha)

    def backward_scale(ctx, grad):
        g_x, g_g = branch_and_gamma(ctx, grad, ctx.needs_input_grad[0], ctx.needs_input_grad[2])
        return g_x, None, g_g, None, None, None, None

    def setup_grads(ctx, inputs, output):
        grad, branch, scale, gamma, sample_dim, channel_dim, alpha = inputs
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None (not plain zeros for a DTensor)
        ctx.save_for_backward(grad, branch, scale, gamma)
        ctx.sample_dim, ctx.channel_dim, ctx.alpha = sample_dim, channel_dim, alpha

    def backward_grads(ctx, g_gb, g_gg):
        grad, branch, scale, gamma = ctx.saved_tensors
        dims = (ctx.sample_dim, ctx.channel_dim, ctx.alpha)
        d_grad = d_branch = d_gamma = None
        if ctx.needs_input_grad[0]:
            if g_gb is not None:
                d_grad = sample_scale_ls_fn(g_gb, scale, gamma, *dims, grad.dtype)
            if g_gg is not None:
                t = sample_scale_ls_fn(branch, scale, g_gg, *dims, grad.dtype)
                d_grad = t if d_grad is None else d_grad + t
        if ctx.needs_input_grad[1] and g_gg is not None:
            d_branch = sample_scale_ls_fn(grad, scale, g_gg, *dims, branch.dtype)
        if ctx.needs_input_grad[3] and g_gb is not None:
            d_gamma = layer_scale_grads_fn(g_gb, grad, scale, gamma, *dims)[1]
        return d_grad, d_branch, None, d_gamma, None, None, None

    return {"residual_add": (setup_add, backward_add), "sample_scale": (setup_scale, backward_scale),
            "grads": (setup_grads, backward_grads)}


def register_autograd(residual_add_ls_op, sample_scale_ls_op, layer_scale_grads_op) -> None:
    """Register :func:`autograd_rules` for a (residual_add_ls, sample_scale_ls, grads) triple of ops."""
    rules = autograd_rules(op_callable(sample_scale_ls_op), op_callable(layer_scale_grads_op))
    for op, key in ((residual_add_ls_op, "residual_add"), (sample_scale_ls_op, "sample_scale"),
                    (layer_scale_grads_op, "grads")):
        setup, backward = rules[key]
        torch.library.register_autograd(op, backward, setup_context=setup)


# ---- Triton twin ---------------------------------------------------------------------------------------

_RESIDUAL_ADD_LS_SCHEMA = ("(Tensor residual, Tensor branch, Tensor scale, Tensor gamma, int sample_dim, "
                           "int channel_dim, float alpha=1.0) -> Tensor")
_SAMPLE_SCALE_LS_SCHEMA = ("(Tensor x, Tensor scale, Tensor gamma, int sample_dim, int channel_dim, "
                           "float alpha=1.0, ScalarType? dtype=None) -> Tensor")
_LAYER_SCALE_GRADS_SCHEMA = ("(Tensor grad, Tensor branch, Tensor scale, Tensor gamma, int sample_dim, "
                             "int channel_dim, float alpha=1.0) -> (Tensor, Tensor)")
TRITON_IMPORT_ERROR: Optional[BaseException] = None
TRITON = None

try:
    from ..triton_kernels import layer_scale as _tk
    from . import launch
except Exception as _e:  # noqa: BLE001  (Triton missing or incompatible: no Triton backend)
    TRITON_IMPORT_ERROR = _e
else:

    def _ls_dims(x: torch.Tensor, scale, sample_dim: int, channel_dim: int):
        launch.check_device(x)
        dim = checks.op_sample_dim(sample_dim, x.dim())
        cd = checks.op_channel_dim(channel_dim, x.dim(), dim)
        return dim, cd, checks.op_scale(scale, x.shape[dim], x.device)

    def residual_add_ls_impl(residual, branch, scale, gamma, sample_dim, channel_dim, alpha, wrap):
        checks.op_pair(residual, branch, "residual", "branch")
        dim, cd, sc = _ls_dims(residual, scale, sample_dim, channel_dim)
        out = out_like(residual, branch, gamma)
        g = checks.op_gamma(gamma, residual.shape[cd], residual.device, acc_dtype(out.dtype))
        if out.numel() == 0 or launch.skip_launch(out):
            return out
        v = _tk.ls_view(out, dim, cd, sc.numel())
        with launch.launch_device(out):
            _tk.launch_residual_add_ls(out, launch.in_layout_of(residual, out), launch.in_layout_of(branch, out), sc,
                                       g, alpha, v, wrap=wrap)
        return out

    def sample_scale_ls_impl(x, scale, gamma, sample_dim, channel_dim, alpha, dtype, wrap):
        checks.op_float(x, "x")
        out_dtype = torch.promote_types(x.dtype, gamma.dtype) if dtype is None else dtype
        checks.op_out_dtype(out_dtype)
        dim, cd, sc = _ls_dims(x, scale, sample_dim, channel_dim)
        g = checks.op_gamma(gamma, x.shape[cd], x.device, acc_dtype(x.dtype, out_dtype, gamma.dtype))
        out = torch.empty_like(x, dtype=out_dtype)
        if out.numel() == 0 or launch.skip_launch(out):
            return out
        v = _tk.ls_view(out, dim, cd, sc.numel())
        with launch.launch_device(out):  # an fp64 gamma makes the math fp64 (ACC64) whatever x's dtype
            _tk.launch_sample_scale_ls(out, launch.in_layout_of(x, out), sc, g, alpha, v, wrap=wrap)
        return out

    def layer_scale_grads_impl(grad, branch, scale, gamma, sample_dim, channel_dim, alpha, wrap):
        checks.op_pair(grad, branch, "grad", "branch")
        dim, cd, sc = _ls_dims(grad, scale, sample_dim, channel_dim)
        acc = acc_dtype(grad.dtype, branch.dtype, gamma.dtype)
        g = checks.op_gamma(gamma, grad.shape[cd], grad.device, acc)
        gb, gg = grads_out(grad, branch, gamma)
        if gb.numel() == 0:
            return gb, gg.zero_()
        if launch.skip_launch(gb):
            return gb, gg
        v = _tk.ls_view(gb, dim, cd, sc.numel())
        partials = torch.empty(_tk.partials_numel(v), dtype=acc, device=gb.device)
        with launch.launch_device(gb):
            outer = _tk.launch_layer_scale_grads(gb, launch.in_layout_of(grad, gb), launch.in_layout_of(branch, gb),
                                                 sc, g, partials, alpha, v, wrap=wrap)
        # One sum of the fixed partials, in a fixed order (torch's reductions use no atomics).
        gg.copy_(partials[: outer * v.C * v.c_div].view(outer, v.C, v.c_div).sum(dim=(0, 2)))
        return gb, gg

    def scaled_residual_add_ls_triton(
        residual: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor, gamma: torch.Tensor, sample_dim: int,
        channel_dim: int, alpha: float = 1.0,
    ) -> torch.Tensor:
        return residual_add_ls_impl(residual, branch, scale, gamma, sample_dim, channel_dim, alpha, launch.wrap)

    def sample_scale_ls_triton(
        x: torch.Tensor, scale: torch.Tensor, gamma: torch.Tensor, sample_dim: int, channel_dim: int,
        alpha: float = 1.0, dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        return sample_scale_ls_impl(x, scale, gamma, sample_dim, channel_dim, alpha, dtype, launch.wrap)

    def layer_scale_grads_triton(
        grad: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor, gamma: torch.Tensor, sample_dim: int,
        channel_dim: int, alpha: float = 1.0,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return layer_scale_grads_impl(grad, branch, scale, gamma, sample_dim, channel_dim, alpha, launch.wrap)

    residual_add_ls_op = launch.register_op("sdkernels::scaled_residual_add_ls_triton", scaled_residual_add_ls_triton,
                                            _RESIDUAL_ADD_LS_SCHEMA)
    sample_scale_ls_op = launch.register_op("sdkernels::sample_scale_ls_triton", sample_scale_ls_triton,
                                            _SAMPLE_SCALE_LS_SCHEMA)
    layer_scale_grads_op = launch.register_op("sdkernels::layer_scale_grads_triton", layer_scale_grads_triton,
                                              _LAYER_SCALE_GRADS_SCHEMA)
    register_autograd(residual_add_ls_op, sample_scale_ls_op, layer_scale_grads_op)

    def _fast(tensors, ints, alpha) -> bool:
        return all(type(i) is int for i in ints) and type(alpha) in launch.NUMBERS and launch.is_eager(*tensors)

    def eager_residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
        """``scaled_residual_add_ls_triton`` without torch.library in plain eager mode; the op otherwise."""
        if _fast((residual, branch, scale, gamma), (sample_dim, channel_dim), alpha):
            args = (residual, branch, scale, gamma, sample_dim, channel_dim, float(alpha))
            if launch.needs_grad(residual, branch, gamma):
                return _ResidualAddLsFn.apply(*args)
            return residual_add_ls_impl(*args, launch.unwrapped)
        return residual_add_ls_op(residual, branch, scale, gamma, sample_dim, channel_dim, alpha)

    def eager_sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, alpha=1.0, dtype=None):
        """``sample_scale_ls_triton`` without torch.library in plain eager mode; the op otherwise."""
        if (dtype is None or type(dtype) is torch.dtype) and _fast((x, scale, gamma), (sample_dim, channel_dim), alpha):
            args = (x, scale, gamma, sample_dim, channel_dim, float(alpha), dtype)
            if launch.needs_grad(x, gamma):
                return _SampleScaleLsFn.apply(*args)
            return sample_scale_ls_impl(*args, launch.unwrapped)
        return sample_scale_ls_op(x, scale, gamma, sample_dim, channel_dim, alpha, dtype)

    def eager_layer_scale_grads(grad, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
        """``layer_scale_grads_triton`` without torch.library in plain eager mode; the op otherwise."""
        if _fast((grad, branch, scale, gamma), (sample_dim, channel_dim), alpha):
            args = (grad, branch, scale, gamma, sample_dim, channel_dim, float(alpha))
            if launch.needs_grad(grad, branch, gamma):
                return _LayerScaleGradsFn.apply(*args)
            return layer_scale_grads_impl(*args, launch.unwrapped)
        return layer_scale_grads_op(grad, branch, scale, gamma, sample_dim, channel_dim, alpha)

    _RULES = autograd_rules(eager_sample_scale_ls, eager_layer_scale_grads)
    _ResidualAddLsFn = launch.fast_function("ResidualAddLsFn", residual_add_ls_impl, *_RULES["residual_add"],
                                            module=__name__)
    _SampleScaleLsFn = launch.fast_function("SampleScaleLsFn", sample_scale_ls_impl, *_RULES["sample_scale"],
                                            module=__name__)
    _LayerScaleGradsFn = launch.fast_function("LayerScaleGradsFn", layer_scale_grads_impl, *_RULES["grads"],
                                              module=__name__)
    TRITON = {"residual_add_ls": eager_residual_add_ls, "sample_scale_ls": eager_sample_scale_ls,
              "layer_scale_grads": eager_layer_scale_grads,
              "ops": (residual_add_ls_op, sample_scale_ls_op, layer_scale_grads_op)}


# ---- backends ------------------------------------------------------------------------------------------

#: The LayerScale family's backends: ops ``residual_add_ls`` and ``sample_scale_ls`` (the schemas above).
BACKENDS = BackendTable("layer_scale", ("residual_add_ls", "sample_scale_ls"))
BACKENDS.register("reference", None, True, residual_add_ls=reference.scaled_residual_add_ls,
                  sample_scale_ls=reference.sample_scale_ls)
if has_kernel("scaled_residual_add_ls", "CPU"):
    BACKENDS.register("cpu", {"cpu"}, True, residual_add_ls=torch.ops.sdkernels.scaled_residual_add_ls.default,
                      sample_scale_ls=torch.ops.sdkernels.sample_scale_ls.default)
if has_kernel("scaled_residual_add_ls", "CUDA"):
    BACKENDS.register("cuda", {"cuda"}, torch.cuda.is_available(),
                      residual_add_ls=torch.ops.sdkernels.scaled_residual_add_ls.default,
                      sample_scale_ls=torch.ops.sdkernels.sample_scale_ls.default)
if TRITON is not None:
    BACKENDS.register("triton", launch.DEVICES, launch.AVAILABLE, residual_add_ls=TRITON["residual_add_ls"],
                      sample_scale_ls=TRITON["sample_scale_ls"])


# ---- sharding rules ------------------------------------------------------------------------------------
# Shard(channel_dim) shards gamma alike (Shard(0)); gamma's gradient, a sum over every dim but the channel,
# is Partial when another dim is sharded.


def _ls_rules(x, scale, sample_dim, channel_dim, n_act: int, n_extra: int, grads: bool, linear: bool):
    from ..distributed import placements, wrap_dim

    R, S, P = placements()
    nd = x.ndim
    sd, cd = wrap_dim(sample_dim, nd), wrap_dim(channel_dim, nd)
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


def _residual_add_ls_rule(residual, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
    return _ls_rules(residual, scale, sample_dim, channel_dim, 2, 3, False, True)


def _sample_scale_ls_rule(x, scale, gamma, sample_dim, channel_dim, alpha=1.0, dtype=None):
    return _ls_rules(x, scale, sample_dim, channel_dim, 1, 4, False, True)


def _layer_scale_grads_rule(grad, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
    # (grad_branch, grad_gamma): both linear in grad alone, so a Partial grad with branch replicated
    # gives Partial outputs; any sharding of grad and branch together as above.
    from ..distributed import placements

    R, _, P = placements()
    return _ls_rules(grad, scale, sample_dim, channel_dim, 2, 3, True, False) + [([P, P], [P, R, R, R, None, None, None])]


SHARDING = {
    "scaled_residual_add_ls": _residual_add_ls_rule,
    "scaled_residual_add_ls_triton": _residual_add_ls_rule,
    "sample_scale_ls": _sample_scale_ls_rule,
    "sample_scale_ls_triton": _sample_scale_ls_rule,
    "layer_scale_grads": _layer_scale_grads_rule,
    "layer_scale_grads_triton": _layer_scale_grads_rule,
}
