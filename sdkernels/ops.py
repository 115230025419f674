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

__all__ = ["out_like", "pair_autograd_rules", "register_pair_autograd"]


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
