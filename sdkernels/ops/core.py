"""The core family: ``residual + drop_path(branch)`` and ``drop_path(x)``.

Ops (schemas in ``csrc/ops/core.cpp``, spec in :mod:`sdkernels.reference.core`)::

    sdkernels::scaled_residual_add(residual, branch, scale, sample_dim, alpha=1.0) -> Tensor
        out[s] = residual[s] + branch[s] * (scale[s] * alpha)   (scale[s] != 0; branch[s] unread otherwise)
    sdkernels::sample_scale(x, scale, sample_dim, alpha=1.0, dtype=None) -> Tensor
        out[s] = x[s] * (scale[s] * alpha), exact zeros where scale[s] == 0

Implementations: C++ CPU (``csrc/cpu/drop_path.cpp``), CUDA (``csrc/cuda/drop_path.cu``), both with
autograd in C++ (``csrc/autograd/core.cpp``: no Python per call), and the Triton twin
(``triton_kernels/drop_path.py``, registered below as ``sdkernels::*_triton``) with the same autograd
rules from Python (:func:`autograd_rules`).  Sections, as in every family file: allocation rules,
fake kernels, autograd rules, Triton twin, backends, sharding rules.
"""
from typing import Optional  # no `from __future__ import annotations`: older torch infers schemas from real types

import torch

from .. import checks, reference
from .._ext import HAS_EXT, has_kernel
from ..backends import BackendTable

__all__ = ["out_like", "sample_scale_out", "autograd_rules", "register_autograd", "BACKENDS", "SHARDING",
           "TRITON_IMPORT_ERROR"]

# ---- allocation rules (the C++ kernels allocate alike) -------------------------------------------------


def out_like(residual: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """``scaled_residual_add``'s output: residual's layout, promoted dtype."""
    return torch.empty_like(residual, dtype=torch.promote_types(residual.dtype, branch.dtype))


def sample_scale_out(x: torch.Tensor, dtype) -> torch.Tensor:
    """``sample_scale``'s output: x's layout, ``dtype`` (default x's)."""
    return torch.empty_like(x, dtype=x.dtype if dtype is None else dtype)


# ---- fake kernels --------------------------------------------------------------------------------------

if HAS_EXT:

    @torch.library.register_fake("sdkernels::scaled_residual_add")
    def _fake_scaled_residual_add(residual, branch, scale, sample_dim, alpha=1.0):
        checks.op_devices(residual, branch, scale)
        torch._check(residual.shape == branch.shape, lambda: "residual and branch must have the same shape")
        return out_like(residual, branch)

    @torch.library.register_fake("sdkernels::sample_scale")
    def _fake_sample_scale(x, scale, sample_dim, alpha=1.0, dtype=None):
        checks.op_devices(x, scale)
        return sample_scale_out(x, dtype)


# ---- autograd rules (the Python twin of csrc/autograd/core.cpp) ----------------------------------------


def autograd_rules(sample_scale_fn):
    """The autograd rules of a (scaled_residual_add, sample_scale) pair, given the sample_scale to call.

    Returns ``(setup_residual_add, backward_residual_add, setup_sample_scale,
    backward_sample_scale)`` in the ``torch.library.register_autograd`` form.  Both ops are linear
    in their tensor inputs, so their backwards are ``sample_scale_fn`` again and double backward
    works.  ``scale`` is a mask, not differentiable; it is the only tensor saved.  The skip path's
    ``scaled_index_add`` takes the first two (``index`` in ``scale``'s place).
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


def register_autograd(residual_add_op, sample_scale_op) -> None:
    """Register :func:`autograd_rules` for a (scaled_residual_add, sample_scale)-shaped pair of ops.

    ``residual_add_op(residual, branch, scale, sample_dim, alpha)`` and
    ``sample_scale_op(x, scale, sample_dim, alpha, dtype)``, given by name ("sdkernels::...") or as
    op objects.
    """
    setup_add, backward_add, setup_scale, backward_scale = autograd_rules(op_callable(sample_scale_op))
    torch.library.register_autograd(residual_add_op, backward_add, setup_context=setup_add)
    torch.library.register_autograd(sample_scale_op, backward_scale, setup_context=setup_scale)


def op_callable(op):
    """An op given by name ("ns::name") as its default overload; anything else as is."""
    if isinstance(op, str):
        ns, name = op.split("::")
        return getattr(getattr(torch.ops, ns), name).default
    return op


# ---- Triton twin ---------------------------------------------------------------------------------------

_RESIDUAL_ADD_SCHEMA = "(Tensor residual, Tensor branch, Tensor scale, int sample_dim, float alpha=1.0) -> Tensor"
_SAMPLE_SCALE_SCHEMA = "(Tensor x, Tensor scale, int sample_dim, float alpha=1.0, ScalarType? dtype=None) -> Tensor"
TRITON_IMPORT_ERROR: Optional[BaseException] = None
TRITON = None  # {"residual_add": ..., "sample_scale": ...} eager entry points once registered

try:
    from ..triton_kernels import drop_path as _tk
    from . import launch
except Exception as _e:  # noqa: BLE001  (Triton missing or incompatible: no Triton backend)
    TRITON_IMPORT_ERROR = _e
else:

    def residual_add_impl(residual, branch, scale, sample_dim, alpha, wrap):
        """The body of ``scaled_residual_add_triton``; ``wrap`` is ``launch.wrap`` in the op, identity in the
        fast path."""
        checks.op_pair(residual, branch, "residual", "branch")
        launch.check_device(residual)
        dim = checks.op_sample_dim(sample_dim, residual.dim())
        sc = checks.op_scale(scale, residual.shape[dim], residual.device)
        out = out_like(residual, branch)
        if out.numel() == 0 or launch.skip_launch(out):
            return out
        r = launch.in_layout_of(residual, out)
        b = launch.in_layout_of(branch, out)
        n, inner = _tk.plan(out, dim, sc.numel())
        with launch.launch_device(out):
            _tk.launch_scaled_residual_add(out, r, b, sc, alpha, n, inner, wrap=wrap)
        return out

    def sample_scale_impl(x, scale, sample_dim, alpha, dtype, wrap):
        """The body of ``sample_scale_triton``; ``wrap`` as in :func:`residual_add_impl`."""
        checks.op_float(x, "x")
        out_dtype = x.dtype if dtype is None else dtype
        checks.op_out_dtype(out_dtype)
        launch.check_device(x)
        dim = checks.op_sample_dim(sample_dim, x.dim())
        sc = checks.op_scale(scale, x.shape[dim], x.device)
        out = torch.empty_like(x, dtype=out_dtype)
        if out.numel() == 0 or launch.skip_launch(out):
            return out
        xs = launch.in_layout_of(x, out)
        n, inner = _tk.plan(out, dim, sc.numel())
        with launch.launch_device(out):
            _tk.launch_sample_scale(out, xs, sc, alpha, n, inner, wrap=wrap)
        return out

    # The functions registered as the ops (their annotations give the schema on torch < 2.7).
    def scaled_residual_add_triton(
        residual: torch.Tensor, branch: torch.Tensor, scale: torch.Tensor, sample_dim: int, alpha: float = 1.0
    ) -> torch.Tensor:
        return residual_add_impl(residual, branch, scale, sample_dim, alpha, launch.wrap)

    def sample_scale_triton(
        x: torch.Tensor, scale: torch.Tensor, sample_dim: int, alpha: float = 1.0, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        return sample_scale_impl(x, scale, sample_dim, alpha, dtype, launch.wrap)

    residual_add_op = launch.register_op("sdkernels::scaled_residual_add_triton", scaled_residual_add_triton,
                                         _RESIDUAL_ADD_SCHEMA)
    sample_scale_op = launch.register_op("sdkernels::sample_scale_triton", sample_scale_triton, _SAMPLE_SCALE_SCHEMA)
    register_autograd(residual_add_op, sample_scale_op)

    # Eager fast path: the ops' bodies under autograd.Functions with the rules above (the backward
    # calls the fast-path sample_scale again: double backward works).
    def eager_sample_scale(x, scale, sample_dim, alpha=1.0, dtype=None):
        """``sample_scale_triton`` without torch.library in plain eager mode; the op otherwise."""
        if (type(sample_dim) is int and type(alpha) in launch.NUMBERS
                and (dtype is None or type(dtype) is torch.dtype) and launch.is_eager(x, scale)):
            args = (x, scale, sample_dim, float(alpha), dtype)
            if launch.needs_grad(x, scale):
                return _SampleScaleFn.apply(*args)
            return sample_scale_impl(*args, launch.unwrapped)
        return sample_scale_op(x, scale, sample_dim, alpha, dtype)

    def eager_residual_add(residual, branch, scale, sample_dim, alpha=1.0):
        """``scaled_residual_add_triton`` without torch.library in plain eager mode; the op otherwise."""
        if type(sample_dim) is int and type(alpha) in launch.NUMBERS and launch.is_eager(residual, branch, scale):
            args = (residual, branch, scale, sample_dim, float(alpha))
            if launch.needs_grad(residual, branch, scale):
                return _ResidualAddFn.apply(*args)
            return residual_add_impl(*args, launch.unwrapped)
        return residual_add_op(residual, branch, scale, sample_dim, alpha)

    _RULES = autograd_rules(eager_sample_scale)
    _ResidualAddFn = launch.fast_function("ResidualAddFn", residual_add_impl, _RULES[0], _RULES[1], __name__)
    _SampleScaleFn = launch.fast_function("SampleScaleFn", sample_scale_impl, _RULES[2], _RULES[3], __name__)
    TRITON = {"residual_add": eager_residual_add, "sample_scale": eager_sample_scale,
              "ops": (residual_add_op, sample_scale_op)}


# ---- backends ------------------------------------------------------------------------------------------

#: The core family's backends: ops ``residual_add(residual, branch, scale, sample_dim, alpha)`` and
#: ``sample_scale(x, scale, sample_dim, alpha, dtype)`` (the schemas above).
BACKENDS = BackendTable("core", ("residual_add", "sample_scale"))
BACKENDS.register("reference", None, True, residual_add=reference.scaled_residual_add,
                  sample_scale=reference.sample_scale)
if has_kernel("scaled_residual_add", "CPU"):
    BACKENDS.register("cpu", {"cpu"}, True, residual_add=torch.ops.sdkernels.scaled_residual_add.default,
                      sample_scale=torch.ops.sdkernels.sample_scale.default)
if has_kernel("scaled_residual_add", "CUDA"):
    BACKENDS.register("cuda", {"cuda"}, torch.cuda.is_available(),
                      residual_add=torch.ops.sdkernels.scaled_residual_add.default,
                      sample_scale=torch.ops.sdkernels.sample_scale.default)
if TRITON is not None:
    BACKENDS.register("triton", launch.DEVICES, launch.AVAILABLE, residual_add=TRITON["residual_add"],
                      sample_scale=TRITON["sample_scale"])


# ---- sharding rules (DTensor; see sdkernels.distributed) -----------------------------------------------


def _residual_add_rule(residual, branch, scale, sample_dim, alpha=1.0):
    from ..distributed import sample_op_rules

    return sample_op_rules(residual, scale, sample_dim, 2, (True, True), True)


def _sample_scale_rule(x, scale, sample_dim, alpha=1.0, dtype=None):
    from ..distributed import sample_op_rules

    return sample_op_rules(x, scale, sample_dim, 3, (True,), True)


#: op name (in the ``sdkernels`` namespace) -> its sharding rule, C++ op and Triton twin alike.
SHARDING = {
    "scaled_residual_add": _residual_add_rule,
    "scaled_residual_add_triton": _residual_add_rule,
    "sample_scale": _sample_scale_rule,
    "sample_scale_triton": _sample_scale_rule,
}
