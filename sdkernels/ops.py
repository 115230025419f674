"""torch.library glue: fake kernels and autograd for the sdkernels ops.

The schemas live in ``csrc/ops.cpp``; the CPU and CUDA implementations in
``csrc/cpu`` and ``csrc/cuda``.  Here every op gets

* a fake (meta) kernel, so ``torch.compile`` and ``opcheck`` can trace it with
  the same output dtype and strides as the real kernel, and
* autograd: the backward saves only the per-sample scale vector (no
  activations), returns ``grad_out`` itself as the residual's gradient and
  one fused ``sample_scale`` pass for the branch's.  For the C++ ops it is
  registered in C++ (``csrc/autograd.cpp``, no Python per call); another
  backend that brings its own pair of ops (the Triton backend does) calls
  :func:`register_pair_autograd` to get the same rules from Python.
"""
from __future__ import annotations

import torch

from ._ext import HAS_EXT

__all__ = ["out_like", "pair_autograd_rules", "register_pair_autograd", "out_like_ls", "sample_scale_ls_out",
           "layer_scale_grads_out", "layer_scale_autograd_rules", "register_layer_scale_autograd"]


def out_like(residual: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """The output allocation rule of ``scaled_residual_add``: residual's layout, promoted dtype."""
    return torch.empty_like(residual, dtype=torch.promote_types(residual.dtype, branch.dtype))


def _sample_scale_out(x: torch.Tensor, dtype) -> torch.Tensor:
    return torch.empty_like(x, dtype=x.dtype if dtype is None else dtype)


def _callable(op):
    """An op given by name ("ns::name") as its default overload; anything else as is."""
    if isinstance(op, str):
        ns, name = op.split("::")
        return getattr(getattr(torch.ops, ns), name).default
    return op


def pair_autograd_rules(sample_scale_fn):
    """The autograd rules of a (scaled_residual_add, sample_scale) pair, given the sample_scale to call.

    Returns ``(setup_residual_add, backward_residual_add, setup_sample_scale,
    backward_sample_scale)`` in the ``torch.library.register_autograd`` form
    (``setup(ctx, inputs, output)``, ``backward(ctx, grad)``).  Both ops are
    linear in their tensor inputs, so their backwards are ``sample_scale_fn``
    again and double backward works.  ``scale`` is a mask, not differentiable;
    it is the only tensor saved.  Used by :func:`register_pair_autograd` and by
    the Triton backend's eager fast path (``sdkernels.triton_ops``); the
    first two also by the skip path's ``scaled_index_add`` (``index`` in
    ``scale``'s place, :func:`sdkernels.skip.register_index_autograd`).
    """

    def setup_residual_add(ctx, inputs, output):
        residual, branch, scale, sample_dim, alpha = inputs
        ctx.save_for_backward(scale)
        ctx.sample_dim = sample_dim
        ctx.alpha = alpha
        ctx.residual_dtype = residual.dtype
        ctx.branch_dtype = branch.dtype

    def backward_residual_add(ctx, grad):
        (scale,) = ctx.saved_tensors
        g_residual = g_branch = None
        if ctx.needs_input_grad[0]:
            g_residual = grad if grad.dtype == ctx.residual_dtype else grad.to(ctx.residual_dtype)
        if ctx.needs_input_grad[1]:
            g_branch = sample_scale_fn(grad, scale, ctx.sample_dim, ctx.alpha, ctx.branch_dtype)
        return g_residual, g_branch, None, None, None

    def setup_sample_scale(ctx, inputs, output):
        x, scale, sample_dim, alpha, _dtype = inputs
        ctx.save_for_backward(scale)
        ctx.sample_dim = sample_dim
        ctx.alpha = alpha
        ctx.x_dtype = x.dtype

    def backward_sample_scale(ctx, grad):
        (scale,) = ctx.saved_tensors
        g_x = None
        if ctx.needs_input_grad[0]:
            g_x = sample_scale_fn(grad, scale, ctx.sample_dim, ctx.alpha, ctx.x_dtype)
        return g_x, None, None, None, None

    return setup_residual_add, backward_residual_add, setup_sample_scale, backward_sample_scale


def register_pair_autograd(residual_add_op, sample_scale_op) -> None:
    """Register autograd for a (scaled_residual_add, sample_scale)-shaped pair of ops.

    ``residual_add_op(residual, branch, scale, sample_dim, alpha)`` and
    ``sample_scale_op(x, scale, sample_dim, alpha, dtype)``, with the rules of
    :func:`pair_autograd_rules`.  Ops may be given by name ("sdkernels::...")
    or as op objects.
    """
    setup_add, backward_add, setup_scale, backward_scale = pair_autograd_rules(_callable(sample_scale_op))
    torch.library.register_autograd(residual_add_op, backward_add, setup_context=setup_add)
    torch.library.register_autograd(sample_scale_op, backward_scale, setup_context=setup_scale)


if HAS_EXT:

    @torch.library.register_fake("sdkernels::scaled_residual_add")
    def _fake_scaled_residual_add(residual, branch, scale, sample_dim, alpha=1.0):
        torch._check(residual.shape == branch.shape, lambda: "residual and branch must have the same shape")
        return out_like(residual, branch)

    @torch.library.register_fake("sdkernels::sample_scale")
    def _fake_sample_scale(x, scale, sample_dim, alpha=1.0, dtype=None):
        return _sample_scale_out(x, dtype)

    # Autograd of these two is registered in C++ (csrc/autograd.cpp): same
    # rules as register_pair_autograd, without Python on the dispatch path.
    scaled_residual_add = torch.ops.sdkernels.scaled_residual_add.default
    sample_scale = torch.ops.sdkernels.sample_scale.default


# ---- LayerScale (issue 13) ---------------------------------------------------------------------


def out_like_ls(residual: torch.Tensor, branch: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """The output allocation rule of ``scaled_residual_add_ls``: residual's layout, promote(residual, branch, gamma)."""
    dt = torch.promote_types(torch.promote_types(residual.dtype, branch.dtype), gamma.dtype)
    return torch.empty_like(residual, dtype=dt)


def sample_scale_ls_out(x: torch.Tensor, gamma: torch.Tensor, dtype) -> torch.Tensor:
    """The output allocation rule of ``sample_scale_ls``: x's layout, ``dtype`` or promote(x, gamma)."""
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, gamma.dtype) if dtype is None else dtype)


def layer_scale_grads_out(grad: torch.Tensor, branch: torch.Tensor, gamma: torch.Tensor):
    """The outputs of ``layer_scale_grads``: grad_branch like grad in branch's dtype, grad_gamma like gamma."""
    return torch.empty_like(grad, dtype=branch.dtype), torch.empty_like(gamma)


def layer_scale_autograd_rules(sample_scale_ls_fn, layer_scale_grads_fn):
    """The autograd rules of the LayerScale ops, given the ``sample_scale_ls`` and ``layer_scale_grads`` to call.

    Returns ``{op: (setup_context, backward)}`` for ``"residual_add"``,
    ``"sample_scale"`` and ``"grads"``, in the ``torch.library.register_autograd``
    form.  The forward ops save ``scale``, ``gamma`` and, only when gamma
    requires grad, the branch (``x``); ``grad_residual`` is ``grad_out`` itself;
    with gamma requiring grad one ``layer_scale_grads`` pass gives the branch's
    and gamma's gradients, else one ``sample_scale_ls`` pass the branch's.
    ``layer_scale_grads`` is linear in ``grad`` and in ``branch``: its backward
    is made of the same two ops, so double backward works.  The C++ ops have
    the same rules in C++ (``csrc/autograd.cpp``).
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


def register_layer_scale_autograd(residual_add_ls_op, sample_scale_ls_op, layer_scale_grads_op) -> None:
    """Register :func:`layer_scale_autograd_rules` for a (residual_add_ls, sample_scale_ls, grads) triple of ops."""
    rules = layer_scale_autograd_rules(_callable(sample_scale_ls_op), _callable(layer_scale_grads_op))
    for op, key in ((residual_add_ls_op, "residual_add"), (sample_scale_ls_op, "sample_scale"),
                    (layer_scale_grads_op, "grads")):
        setup, backward = rules[key]
        torch.library.register_autograd(op, backward, setup_context=setup)


if HAS_EXT:

    def _fake_ls_checks(x, gamma, sample_dim, channel_dim):
        nd = x.dim()
        torch._check(-nd <= channel_dim < nd, lambda: "sdkernels: channel_dim is out of range")
        torch._check(sample_dim % nd != channel_dim % nd, lambda: "sdkernels: channel_dim must differ from sample_dim")
        torch._check(gamma.dim() == 1 and gamma.shape[0] == x.shape[channel_dim % nd],
                     lambda: "sdkernels: gamma must be 1-D with one value per channel")

    @torch.library.register_fake("sdkernels::scaled_residual_add_ls")
    def _fake_scaled_residual_add_ls(residual, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
        torch._check(residual.shape == branch.shape, lambda: "residual and branch must have the same shape")
        _fake_ls_checks(residual, gamma, sample_dim, channel_dim)
        return out_like_ls(residual, branch, gamma)

    @torch.library.register_fake("sdkernels::sample_scale_ls")
    def _fake_sample_scale_ls(x, scale, gamma, sample_dim, channel_dim, alpha=1.0, dtype=None):
        _fake_ls_checks(x, gamma, sample_dim, channel_dim)
        return sample_scale_ls_out(x, gamma, dtype)

    @torch.library.register_fake("sdkernels::layer_scale_grads")
    def _fake_layer_scale_grads(grad, branch, scale, gamma, sample_dim, channel_dim, alpha=1.0):
        torch._check(grad.shape == branch.shape, lambda: "grad and branch must have the same shape")
        _fake_ls_checks(grad, gamma, sample_dim, channel_dim)
        return layer_scale_grads_out(grad, branch, gamma)

    # Autograd of the three is registered in C++ (csrc/autograd.cpp): the rules of
    # layer_scale_autograd_rules without Python on the dispatch path.
    scaled_residual_add_ls = torch.ops.sdkernels.scaled_residual_add_ls.default
    sample_scale_ls = torch.ops.sdkernels.sample_scale_ls.default
    layer_scale_grads = torch.ops.sdkernels.layer_scale_grads.default
