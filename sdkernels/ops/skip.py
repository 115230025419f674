"""The skip-path family: skip the branch's compute for dropped samples (stochastic residual blocks).

Eager drop path computes the whole branch and then multiplies the dropped
samples by zero.  Here the branch runs on the kept samples only::

    idx  = kept sample indices along sample_dim      (k of the n samples)
    out  = x,  out[idx[j]] += fn(x[idx])[j] * alpha   (one fused pass, no atomics)

with ``alpha = n / k`` (count "fixed") or ``1 / (1 - p)`` (count "bernoulli")
under ``scale_by_keep``.  Public API: :func:`sdkernels.drop_path_residual` and
:class:`sdkernels.nn.StochasticResidual`.

The fused ops (schemas in ``csrc/ops/skip.cpp``, spec in :mod:`sdkernels.reference.skip`)::

    sdkernels::scaled_index_add(residual, src, index, sample_dim, alpha)
        out = residual (converted to promote_types(residual, src)),
        out.select(sample_dim, index[j]) += src.select(sample_dim, j) * alpha
    sdkernels::index_scale(grad, index, sample_dim, alpha, dtype=None)
        out.select(sample_dim, j) = grad.select(sample_dim, index[j]) * alpha

``index`` holds unique int64 sample indices.  Math is fp32 (fp64 when any
tensor is fp64), multiply and add rounded separately, result rounded once.
Output layouts: ``scaled_index_add`` allocates like ``empty_like(residual)``;
``index_scale`` allocates :func:`samples_like` (grad's dim order in memory,
with ``index.numel()`` samples).  Implementations: CPU C++
(``csrc/cpu/scaled_index_add.cpp``), CUDA (``csrc/cuda/scaled_index_add.cu``)
and Triton (``triton_kernels/scaled_index_add.py``, registered below as
``sdkernels::scaled_index_add_triton`` / ``sdkernels::index_scale_triton``).
Their autograd (in C++, ``csrc/autograd/skip.cpp``, for the C++ ops;
:func:`register_autograd` for the Triton pair) follows one rule: the backward saves only
``index``; ``grad_residual`` is ``grad_out`` itself (cast only if the dtypes
differ) and ``grad_src = index_scale(grad_out, index, sample_dim, alpha,
src.dtype)``; the backward of ``index_scale`` is ``scaled_index_add`` into
zeros, so double backward works too.  Index validation: the CPU kernels raise
on an out-of-range or repeated index; on CUDA they are checked by device-side
asserts (no host sync; fatal to the CUDA context, as torch's own indexing
asserts are); the Triton ops do not check them (the caller's responsibility:
drop_path_residual passes randperm / nonzero outputs only).
"""
from typing import Callable, Optional  # no `from __future__ import annotations`: older torch infers schemas

import torch

from .. import checks, reference
from .._ext import HAS_EXT, has_kernel
from ..backends import BackendTable
from . import core
from .core import op_callable

__all__ = ["samples_like", "index_scale_out", "register_autograd", "make_split", "gather_with", "BACKENDS",
           "SHARDING", "TRITON_IMPORT_ERROR"]

# ---- allocation rules ----------------------------------------------------------------------------------


def samples_like(like: torch.Tensor, sample_dim: int, k: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An empty dense tensor of ``like``'s sizes with ``k`` samples along ``sample_dim``.

    Its dims lie in memory in ``like``'s order (dims sorted by stride, largest
    first, ties by dim index), so a dense ``like`` seen as ``[outer, n, inner]``
    pairs with the result seen as ``[outer, k, inner]``.  The C++ kernels
    apply the same rule (``samples_like`` in ``csrc/cpu/scaled_index_add.cpp``).
    """
    nd = like.dim()
    st = like.stride()
    perm = sorted(range(nd), key=lambda d: -st[d])  # stable: ties keep dim order
    psizes = [k if d == sample_dim else like.shape[d] for d in perm]
    inv = [0] * nd
    for i, d in enumerate(perm):
        inv[d] = i
    return torch.empty(psizes, dtype=like.dtype if dtype is None else dtype, device=like.device).permute(inv)


def index_scale_out(grad: torch.Tensor, index: torch.Tensor, sample_dim: int, dtype) -> torch.Tensor:
    """``index_scale``'s output: :func:`samples_like` of grad with ``index.numel()`` samples."""
    dim = sample_dim % grad.dim()
    return samples_like(torch.empty_like(grad), dim, index.shape[0], grad.dtype if dtype is None else dtype)


# ---- fake kernels --------------------------------------------------------------------------------------

def _fake_checks(residual, src, index, sample_dim):
    nd = residual.dim()
    torch._check(src.dim() == nd, lambda: "sdkernels: src must have residual's number of dims")
    dim = sample_dim % nd
    for d in range(nd):
        if d != dim:
            torch._check(src.shape[d] == residual.shape[d],
                         lambda: "sdkernels: src must match residual's shape except along sample_dim")
    torch._check(index.dim() == 1, lambda: "sdkernels: index must be 1-D")
    torch._check(src.shape[dim] == index.shape[0], lambda: "sdkernels: src must have index.numel() samples")


if HAS_EXT:

    @torch.library.register_fake("sdkernels::scaled_index_add")
    def _fake_scaled_index_add(residual, src, index, sample_dim, alpha):
        checks.op_devices(residual, src, index)
        _fake_checks(residual, src, index, sample_dim)
        return torch.empty_like(residual, dtype=torch.promote_types(residual.dtype, src.dtype))

    @torch.library.register_fake("sdkernels::index_scale")
    def _fake_index_scale(grad, index, sample_dim, alpha, dtype=None):
        checks.op_devices(grad, index)
        torch._check(index.dim() == 1, lambda: "sdkernels: index must be 1-D")
        return index_scale_out(grad, index, sample_dim, dtype)

    # Their autograd is registered in C++ (csrc/autograd/skip.cpp): the rules of
    # register_autograd without Python on the dispatch path.


# ---- autograd rules (the Python twin of csrc/autograd/skip.cpp) ----------------------------------------


def register_autograd(scaled_index_add_op, index_scale_op) -> None:
    """Register autograd for a (scaled_index_add, index_scale)-shaped pair of ops.

    Both ops are linear in their tensor inputs; ``index`` is not differentiable.
    The backward saves only ``index``:

    * ``scaled_index_add``: ``grad_residual = grad_out`` (cast to residual's dtype
      only if it differs), ``grad_src = index_scale(grad_out, index, sample_dim, alpha, src.dtype)``;
    * ``index_scale``: ``grad_grad = scaled_index_add(zeros, grad_out, index, sample_dim, alpha)``
      in grad's shape and dtype.

    Ops may be given by name ("sdkernels::...") or as op objects.  The
    ``scaled_index_add`` rule is the core ``scaled_residual_add`` rule of
    :func:`sdkernels.ops.core.autograd_rules` (same argument positions, ``index``
    saved where ``scale`` is) with ``index_scale`` as the src-gradient op.
    """
    call_add = op_callable(scaled_index_add_op)
    call_scale = op_callable(index_scale_op)
    setup_add, backward_add = core.autograd_rules(call_scale)[:2]

    def setup_scale(ctx, inputs, output):
        grad, index, sample_dim, alpha, _dtype = inputs
        ctx.save_for_backward(index)
        ctx.sample_dim = sample_dim
        ctx.alpha = alpha
        ctx.grad_dtype = grad.dtype
        ctx.grad_shape = grad.shape
        ctx.channels_last = (
            grad.dim() == 4 and not grad.is_contiguous() and grad.is_contiguous(memory_format=torch.channels_last)
        )

    def backward_scale(ctx, g):
        (index,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        zeros = torch.empty(ctx.grad_shape, dtype=ctx.grad_dtype, device=g.device, memory_format=fmt).zero_()
        g_in = call_add(zeros, g, index, ctx.sample_dim, ctx.alpha)
        if g_in.dtype != ctx.grad_dtype:
            g_in = g_in.to(ctx.grad_dtype)
        return g_in, None, None, None, None

    torch.library.register_autograd(scaled_index_add_op, backward_add, setup_context=setup_add)
    torch.library.register_autograd(index_scale_op, backward_scale, setup_context=setup_scale)


# ---- Triton twin ---------------------------------------------------------------------------------------

TRITON_IMPORT_ERROR: Optional[BaseException] = None
TRITON = None

try:
    from ..triton_kernels import scaled_index_add as tk
    from . import launch
except Exception as _e:  # noqa: BLE001  (Triton missing or incompatible: no Triton backend)
    TRITON_IMPORT_ERROR = _e
else:

    def _check(t, name):
        if not t.is_floating_point():
            raise TypeError(f"sdkernels: {name} must be a floating-point tensor, got {t.dtype}")
        launch.check_device(t)

    def scaled_index_add_triton(
        residual: torch.Tensor, src: torch.Tensor, index: torch.Tensor, sample_dim: int, alpha: float
    ) -> torch.Tensor:
        _check(residual, "residual")
        _check(src, "src")
        if residual.device != src.device:
            raise ValueError(f"sdkernels: residual is on {residual.device} but src is on {src.device}")
        dim = checks.op_sample_dim(sample_dim, residual.dim())
        if src.dim() != residual.dim() or any(
            d != dim and src.shape[d] != residual.shape[d] for d in range(residual.dim())
        ):
            raise ValueError(
                f"sdkernels: src must match residual's shape except along sample_dim {dim}, "
                f"got {tuple(src.shape)} and {tuple(residual.shape)}"
            )
        checks.op_index(index, residual.device)
        if src.shape[dim] != index.shape[0]:
            raise ValueError(f"sdkernels: src has {src.shape[dim]} samples but index has {index.shape[0]} entries")
        out = torch.empty_like(residual, dtype=torch.promote_types(residual.dtype, src.dtype))
        if out.numel() == 0 or launch.skip_launch(out):
            return out
        k = index.shape[0]
        if k == 0:
            out.copy_(residual)
            return out
        n, inner = tk.plan(out, dim)
        r = tk.in_layout(residual, out)
        s = tk.in_layout(src, samples_like(out, dim, k))
        # The inverse map sample -> j (-1: not indexed), built on the device.
        inv = torch.full((out.shape[dim],), -1, dtype=torch.int64, device=out.device)
        inv.index_copy_(0, index, torch.arange(k, dtype=torch.int64, device=out.device))
        tk.launch_scaled_index_add(out, r, s, inv, alpha, n, inner, k, wrap=launch.wrap)
        return out

    def index_scale_triton(
        grad: torch.Tensor, index: torch.Tensor, sample_dim: int, alpha: float, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        _check(grad, "grad")
        out_dtype = grad.dtype if dtype is None else dtype
        if not out_dtype.is_floating_point:
            raise TypeError(f"sdkernels: dtype must be a floating-point type, got {out_dtype}")
        dim = checks.op_sample_dim(sample_dim, grad.dim())
        checks.op_index(index, grad.device)
        base = torch.empty_like(grad)
        out = samples_like(base, dim, index.shape[0], out_dtype)
        if out.numel() == 0 or launch.skip_launch(out):
            return out
        n, inner = tk.plan(base, dim)
        g = tk.in_layout(grad, base)
        tk.launch_index_scale(out, g, index.contiguous(), alpha, n, inner, index.shape[0], wrap=launch.wrap)
        return out

    _ADD_SCHEMA = "(Tensor residual, Tensor src, Tensor index, int sample_dim, float alpha) -> Tensor"
    _SCALE_SCHEMA = "(Tensor grad, Tensor index, int sample_dim, float alpha, ScalarType? dtype=None) -> Tensor"
    _add_op = launch.register_op("sdkernels::scaled_index_add_triton", scaled_index_add_triton, _ADD_SCHEMA)
    _scale_op = launch.register_op("sdkernels::index_scale_triton", index_scale_triton, _SCALE_SCHEMA)
    register_autograd(_add_op, _scale_op)
    TRITON = {"scaled_index_add": _add_op, "index_scale": _scale_op, "ops": (_add_op, _scale_op)}


# ---- backends ------------------------------------------------------------------------------------------


def _gather_select(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return x.index_select(dim, index)


def gather_with(index_scale_op) -> Callable:
    """Gather through an index_scale op at alpha 1 (an exact copy).

    Unlike ``index_select`` (contiguous output), it keeps x's memory layout
    (channels_last stays channels_last, so fn's output and the final
    ``scaled_index_add`` need no layout copies), and its backward is the same
    backend's ``scaled_index_add``.
    """

    def gather(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
        return index_scale_op(x, index, dim, 1.0, None)

    return gather


def make_split(index_scale_op, scaled_index_add_op, name: str):
    """An autograd.Function ``(x, index, dim) -> (x, x[index])`` whose backward is one fused pass.

    x reaches the block twice, as the residual and through the gather.  Left to
    autograd, its gradient would be ``grad_out + scatter(grad_xs)``: a zero-filled
    tensor, a scatter into it and a sum, three passes with two fresh
    allocations.  Here both uses leave through one node, whose backward gets
    both gradients at once and writes ``scaled_index_add(grad_out, grad_xs,
    index, dim, 1.0)``: one pass.  The forward returns x as a view (no copy).
    Double backward works: the backward is made of differentiable ops.
    """

    def forward(ctx, x, index, dim):
        ctx.save_for_backward(index)
        ctx.dim = dim
        ctx.x_dtype = x.dtype
        return x.view_as(x), index_scale_op(x, index, dim, 1.0, None)

    def backward(ctx, g_pass, g_xs):
        (index,) = ctx.saved_tensors
        gx = scaled_index_add_op(g_pass, g_xs, index, ctx.dim, 1.0)
        if gx.dtype != ctx.x_dtype:
            gx = gx.to(ctx.x_dtype)
        return gx, None, None

    return type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward), "__doc__": make_split.__doc__,
        "__module__": __name__,
    })


#: The skip path's backends: ops ``index_add(residual, src, index, sample_dim, alpha)`` (the
#: ``scaled_index_add`` schema), ``gather(x, index, sample_dim)`` (the kept samples) and ``split`` (None, or
#: an autograd.Function returning ``(x, gather(x))`` with x's gradient fused into one pass, used when x
#: requires grad).
BACKENDS = BackendTable("skip", ("index_add", "gather", "split"))
BACKENDS.register("reference", None, True, index_add=reference.scaled_index_add, gather=_gather_select, split=None)
if HAS_EXT:
    SplitKept = make_split(torch.ops.sdkernels.index_scale.default, torch.ops.sdkernels.scaled_index_add.default,
                           "SplitKept")
if has_kernel("scaled_index_add", "CPU") and has_kernel("index_scale", "CPU"):
    BACKENDS.register("cpu", {"cpu"}, True, index_add=torch.ops.sdkernels.scaled_index_add.default,
                      gather=gather_with(torch.ops.sdkernels.index_scale.default), split=SplitKept)
if has_kernel("scaled_index_add", "CUDA") and has_kernel("index_scale", "CUDA"):
    BACKENDS.register("cuda", {"cuda"}, torch.cuda.is_available(),
                      index_add=torch.ops.sdkernels.scaled_index_add.default,
                      gather=gather_with(torch.ops.sdkernels.index_scale.default), split=SplitKept)
if TRITON is not None:
    SplitKeptTriton = make_split(TRITON["index_scale"], TRITON["scaled_index_add"], "SplitKeptTriton")
    BACKENDS.register("triton", launch.DEVICES, launch.AVAILABLE, index_add=TRITON["scaled_index_add"],
                      gather=gather_with(TRITON["index_scale"]), split=SplitKeptTriton)


# ---- sharding rules ------------------------------------------------------------------------------------
# Not Shard(sample_dim): index holds global sample indices, so a shard of the samples would need its
# own, local indices.


def _scaled_index_add_rule(residual, src, index, sample_dim, alpha):
    from ..distributed import sample_op_rules

    return sample_op_rules(residual, index, sample_dim, 2, (True, True), False)


def _index_scale_rule(grad, index, sample_dim, alpha, dtype=None):
    from ..distributed import sample_op_rules

    return sample_op_rules(grad, index, sample_dim, 3, (True,), False)


SHARDING = {
    "scaled_index_add": _scaled_index_add_rule,
    "scaled_index_add_triton": _scaled_index_add_rule,
    "index_scale": _index_scale_rule,
    "index_scale_triton": _index_scale_rule,
}
