"""Skip the branch's compute for dropped samples: stochastic residual blocks.

Eager drop path computes the whole branch and then multiplies the dropped
samples by zero.  Here the branch runs on the kept samples only::

    idx  = kept sample indices along sample_dim      (k of the n samples)
    out  = x,  out[idx[j]] += fn(x[idx])[j] * alpha   (one fused pass, no atomics)

with ``alpha = n / k`` (count "fixed") or ``1 / (1 - p)`` (count "bernoulli")
under ``scale_by_keep``.  Public API: :func:`drop_path_residual` and
:class:`StochasticResidual` (also exported as ``sdkernels.drop_path_residual``
and ``sdkernels.nn.StochasticResidual``).

The fused ops (schemas in ``csrc/ops.cpp``)::

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
and Triton (``triton_kernels/scaled_index_add.py``, registered here as
``sdkernels::scaled_index_add_triton`` / ``sdkernels::index_scale_triton``).
This module registers their fake kernels; their autograd (in C++,
``csrc/autograd.cpp``, for the C++ ops; :func:`register_index_autograd` for
the Triton pair) follows one rule: the backward saves only
``index``; ``grad_residual`` is ``grad_out`` itself (cast only if the dtypes
differ) and ``grad_src = index_scale(grad_out, index, sample_dim, alpha,
src.dtype)``; the backward of ``index_scale`` is ``scaled_index_add`` into
zeros, so double backward works too.  Index validation: the CPU kernels raise
on an out-of-range or repeated index; on CUDA they are checked by device-side
asserts (no host sync; fatal to the CUDA context, as torch's own indexing
asserts are); the Triton ops do not check them (the caller's responsibility:
drop_path_residual passes randperm / nonzero outputs only).

In :func:`drop_path_residual` x is used twice (the residual, and the gather
that feeds fn); with the compiled backends both uses go through one
autograd node (``_SplitKept``) whose backward writes x's gradient in a single
``scaled_index_add(grad_out, grad_x_kept, index, dim, 1)`` pass instead of
zero-fill + scatter + sum.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Optional

import torch
from torch import nn

from . import _fx, functional, ops, reference, rng
from ._ext import HAS_EXT, has_kernel

__all__ = [
    "drop_path_residual",
    "StochasticResidual",
    "kept_count",
    "samples_like",
    "reference_scaled_index_add",
    "reference_index_scale",
    "register_index_autograd",
    "available_skip_backends",
    "COUNTS",
]

COUNTS = ("fixed", "bernoulli")
#: Warn (once per process) when count "fixed" realises a drop rate this far from p.
REALISED_RATE_WARN = 0.1


# ---------------------------------------------------------------------------
# Op helpers shared by the fake kernels, the Triton ops and the reference
# ---------------------------------------------------------------------------


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


def _index_scale_out(grad: torch.Tensor, index: torch.Tensor, sample_dim: int, dtype) -> torch.Tensor:
    dim = sample_dim % grad.dim()
    return samples_like(torch.empty_like(grad), dim, index.shape[0], grad.dtype if dtype is None else dtype)


def reference_scaled_index_add(
    residual: torch.Tensor, src: torch.Tensor, index: torch.Tensor, sample_dim: int, alpha: float
) -> torch.Tensor:
    """Plain-PyTorch ``scaled_index_add`` (``index_add`` in the math dtype, rounded once); differentiable."""
    out_dtype = torch.promote_types(residual.dtype, src.dtype)
    acc = reference.acc_dtype(residual.dtype, src.dtype)
    dim = sample_dim % residual.dim()
    scaled = src.to(acc) * torch.tensor(alpha, dtype=acc, device=src.device)
    return torch.index_add(residual.to(acc), dim, index, scaled).to(out_dtype)


def reference_index_scale(
    grad: torch.Tensor, index: torch.Tensor, sample_dim: int, alpha: float, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Plain-PyTorch ``index_scale`` (``index_select`` times alpha in the math dtype); differentiable."""
    out_dtype = grad.dtype if dtype is None else dtype
    acc = reference.acc_dtype(grad.dtype, out_dtype)
    dim = sample_dim % grad.dim()
    g = grad.index_select(dim, index).to(acc)
    return (g * torch.tensor(alpha, dtype=acc, device=grad.device)).to(out_dtype)


def register_index_autograd(scaled_index_add_op, index_scale_op) -> None:
    """Register autograd for a (scaled_index_add, index_scale)-shaped pair of ops.

    Both ops are linear in their tensor inputs; ``index`` is not differentiable.
    The backward saves only ``index``:

    * ``scaled_index_add``: ``grad_residual = grad_out`` (cast to residual's dtype
      only if it differs), ``grad_src = index_scale(grad_out, index, sample_dim, alpha, src.dtype)``;
    * ``index_scale``: ``grad_grad = scaled_index_add(zeros, grad_out, index, sample_dim, alpha)``
      in grad's shape and dtype.

    Ops may be given by name ("sdkernels::...") or as op objects.  The
    ``scaled_index_add`` rule is the core ``scaled_residual_add`` rule of
    :func:`sdkernels.ops.pair_autograd_rules` (same argument positions, ``index``
    saved where ``scale`` is) with ``index_scale`` as the src-gradient op.
    """
    call_add = ops._callable(scaled_index_add_op)
    call_scale = ops._callable(index_scale_op)
    setup_add, backward_add = ops.pair_autograd_rules(call_scale)[:2]

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


def _fake_checks(residual, src, index, sample_dim):
    nd = residual.dim()
    torch._check(src.dim() == nd, lambda: "sdkernels: src must have residual's number of dims")
    dim = sample_dim % nd
    for d in range(nd):
        if d != dim:
            torch._check(src.shape[d] == residual.shape[d], lambda: "sdkernels: src must match residual's shape except along sample_dim")
    torch._check(index.dim() == 1, lambda: "sdkernels: index must be 1-D")
    torch._check(src.shape[dim] == index.shape[0], lambda: "sdkernels: src must have index.numel() samples")


if HAS_EXT:

    @torch.library.register_fake("sdkernels::scaled_index_add")
    def _fake_scaled_index_add(residual, src, index, sample_dim, alpha):
        _fake_checks(residual, src, index, sample_dim)
        return torch.empty_like(residual, dtype=torch.promote_types(residual.dtype, src.dtype))

    @torch.library.register_fake("sdkernels::index_scale")
    def _fake_index_scale(grad, index, sample_dim, alpha, dtype=None):
        torch._check(index.dim() == 1, lambda: "sdkernels: index must be 1-D")
        return _index_scale_out(grad, index, sample_dim, dtype)

    # Their autograd is registered in C++ (csrc/autograd.cpp): the rules of
    # register_index_autograd without Python on the dispatch path.


# ---------------------------------------------------------------------------
# Triton ops (optional: import sdkernels works without triton)
# ---------------------------------------------------------------------------

_TRITON = None  # (scaled_index_add, index_scale, devices, available) once registered
TRITON_IMPORT_ERROR: Optional[BaseException] = None


def _register_triton():
    from .triton_kernels import scaled_index_add as tk
    # The core Triton ops' devices, launch wrapper, sample-dim check, and their "allocate,
    # launch nothing" on fake tensors under the interpreter (where an op's fake kernel is its body).
    from .triton_ops import AVAILABLE as available, DEVICES as devices
    from .triton_ops import _skip_launch as skip_launch, _wrap as wrap, _wrap_dim as wrap_dim

    interpret = tk.INTERPRET

    def check(t, name):
        if not t.is_floating_point():
            raise TypeError(f"sdkernels: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device.type not in devices:
            raise ValueError(f"sdkernels: the Triton ops run on CUDA tensors (CPU under TRITON_INTERPRET=1), got {t.device}")

    def check_index(index, n, device):
        if index.dtype != torch.int64:
            raise TypeError(f"sdkernels: index must be int64, got {index.dtype}")
        if index.dim() != 1:
            raise ValueError(f"sdkernels: index must be 1-D, got shape {tuple(index.shape)}")
        if index.device != device:
            raise ValueError(f"sdkernels: index is on {index.device} but the tensors are on {device}")

    def scaled_index_add_triton(
        residual: torch.Tensor, src: torch.Tensor, index: torch.Tensor, sample_dim: int, alpha: float
    ) -> torch.Tensor:
        check(residual, "residual")
        check(src, "src")
        if residual.device != src.device:
            raise ValueError(f"sdkernels: residual is on {residual.device} but src is on {src.device}")
        dim = wrap_dim(sample_dim, residual.dim())
        if src.dim() != residual.dim() or any(
            d != dim and src.shape[d] != residual.shape[d] for d in range(residual.dim())
        ):
            raise ValueError(
                f"sdkernels: src must match residual's shape except along sample_dim {dim}, "
                f"got {tuple(src.shape)} and {tuple(residual.shape)}"
            )
        check_index(index, residual.shape[dim], residual.device)
        if src.shape[dim] != index.shape[0]:
            raise ValueError(f"sdkernels: src has {src.shape[dim]} samples but index has {index.shape[0]} entries")
        out = torch.empty_like(residual, dtype=torch.promote_types(residual.dtype, src.dtype))
        if out.numel() == 0 or skip_launch(out):
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
        tk.launch_scaled_index_add(out, r, s, inv, alpha, n, inner, k, wrap=wrap)
        return out

    def index_scale_triton(
        grad: torch.Tensor, index: torch.Tensor, sample_dim: int, alpha: float, dtype: Optional[torch.dtype] = None
    ) -> torch.Tensor:
        check(grad, "grad")
        out_dtype = grad.dtype if dtype is None else dtype
        if not out_dtype.is_floating_point:
            raise TypeError(f"sdkernels: dtype must be a floating-point type, got {out_dtype}")
        dim = wrap_dim(sample_dim, grad.dim())
        check_index(index, grad.shape[dim], grad.device)
        base = torch.empty_like(grad)
        out = samples_like(base, dim, index.shape[0], out_dtype)
        if out.numel() == 0 or skip_launch(out):
            return out
        n, inner = tk.plan(base, dim)
        g = tk.in_layout(grad, base)
        tk.launch_index_scale(out, g, index.contiguous(), alpha, n, inner, index.shape[0], wrap=wrap)
        return out

    add_schema = "(Tensor residual, Tensor src, Tensor index, int sample_dim, float alpha) -> Tensor"
    scale_schema = "(Tensor grad, Tensor index, int sample_dim, float alpha, ScalarType? dtype=None) -> Tensor"
    for name, fn, schema in (
        ("sdkernels::scaled_index_add_triton", scaled_index_add_triton, add_schema),
        ("sdkernels::index_scale_triton", index_scale_triton, scale_schema),
    ):
        if interpret:
            op = torch.library.custom_op(name, fn, mutates_args=(), schema=schema)
            op.register_fake(fn)
        else:
            try:
                torch.library.triton_op(name, fn, mutates_args=(), schema=schema)
            except TypeError:  # older torch: no schema argument; inferred from the annotations
                torch.library.triton_op(name, fn, mutates_args=())
    register_index_autograd("sdkernels::scaled_index_add_triton", "sdkernels::index_scale_triton")
    return (
        torch.ops.sdkernels.scaled_index_add_triton.default,
        torch.ops.sdkernels.index_scale_triton.default,
        devices,
        available,
    )


try:
    _TRITON = _register_triton()
except Exception as _e:  # noqa: BLE001  (Triton missing or incompatible: no Triton backend)
    TRITON_IMPORT_ERROR = _e
    _TRITON = None


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------


def _gather_select(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    return x.index_select(dim, index)


def _gather_with(index_scale_op) -> Callable:
    """Gather through an index_scale op at alpha 1 (an exact copy).

    Unlike ``index_select`` (contiguous output), it keeps x's memory layout
    (channels_last stays channels_last, so fn's output and the final
    ``scaled_index_add`` need no layout copies), and its backward is the same
    backend's ``scaled_index_add``.
    """

    def gather(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
        return index_scale_op(x, index, dim, 1.0, None)

    return gather


def _make_split(index_scale_op, scaled_index_add_op, name: str):
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
        "forward": staticmethod(forward), "backward": staticmethod(backward), "__doc__": _make_split.__doc__,
        "__module__": __name__,
    })


@dataclass(frozen=True)
class SkipBackend:
    """One way to run the skip path's ops.

    ``index_add(residual, src, index, sample_dim, alpha)`` follows the
    ``scaled_index_add`` schema; ``gather(x, index, sample_dim)`` returns the
    kept samples; ``split`` (or None) is an autograd.Function returning
    ``(x, gather(x))`` with x's gradient fused into one pass (used when x
    requires grad).
    """

    name: str
    index_add: Callable
    gather: Callable
    devices: Optional[FrozenSet[str]]
    available: bool
    split: Optional[type] = None


_SKIP_BACKENDS: Dict[str, SkipBackend] = {
    "reference": SkipBackend("reference", reference_scaled_index_add, _gather_select, None, True)
}
if HAS_EXT:
    _SplitKept = _make_split(torch.ops.sdkernels.index_scale.default, torch.ops.sdkernels.scaled_index_add.default,
                             "_SplitKept")
if has_kernel("scaled_index_add", "CPU") and has_kernel("index_scale", "CPU"):
    _SKIP_BACKENDS["cpu"] = SkipBackend(
        "cpu", torch.ops.sdkernels.scaled_index_add.default, _gather_with(torch.ops.sdkernels.index_scale.default),
        frozenset({"cpu"}), True, _SplitKept,
    )
if has_kernel("scaled_index_add", "CUDA") and has_kernel("index_scale", "CUDA"):
    _SKIP_BACKENDS["cuda"] = SkipBackend(
        "cuda", torch.ops.sdkernels.scaled_index_add.default, _gather_with(torch.ops.sdkernels.index_scale.default),
        frozenset({"cuda"}), torch.cuda.is_available(), _SplitKept,
    )
if _TRITON is not None:
    _SplitKeptTriton = _make_split(_TRITON[1], _TRITON[0], "_SplitKeptTriton")
    _SKIP_BACKENDS["triton"] = SkipBackend(
        "triton", _TRITON[0], _gather_with(_TRITON[1]), _TRITON[2], _TRITON[3], _SplitKeptTriton
    )


def available_skip_backends():
    """Names of the skip-path backends usable in this process, e.g. ``("reference", "cpu")``."""
    return functional.available_in(_SKIP_BACKENDS)


def _core_backend(name: str) -> functional.Backend:
    be = functional._BACKENDS.get(name)
    if be is None or not be.available:
        be = functional._BACKENDS["reference"]
    return be


# ---------------------------------------------------------------------------
# The public function and module
# ---------------------------------------------------------------------------

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
        layer_scale, channel_dim: LayerScale (issue 13), as in
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
    dim = functional._check_common(x, "x", p, mode, sample_dim, backend, generator)
    gamma, cd = None, -1
    if layer_scale is not None:
        gamma, cd = functional._check_layer_scale(layer_scale, x, channel_dim, dim)

    def branch(xs):  # fn, then LayerScale when given
        y = _call_branch(fn, xs)
        return y if gamma is None else y * reference.layer_scale_view(gamma, y.dim(), cd)

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}, got {count!r}")
    if not isinstance(training, bool):
        training = bool(training)
    be = functional.pick_backend(backend, x.device, x.numel(), _SKIP_BACKENDS)
    n = x.shape[dim]
    if _known_zero(n):  # no samples: fn is never called on an empty batch
        return x
    if not training or p == 0.0:
        return x + branch(x)
    if mode == "batch":
        if not rng.batch_decision(p, generator, like=x):
            return x
        scale = torch.ones(1, dtype=torch.float32, device=x.device)
        if rng.is_dtensor(x):
            scale = rng._replicated_agreed(scale, x)
        y = _call_branch(fn, x)
        acc = reference.drop_dtypes(x.dtype, y.dtype, None if gamma is None else gamma.dtype)[1]
        alpha = reference.keep_scale(p, scale_by_keep, acc)
        if gamma is not None:  # the fused LayerScale op of drop_path_add, with its multiplier
            return functional._ls_backend(_core_backend(be.name)).residual_add_ls(x, y, scale, gamma, dim, cd, alpha)
        return _core_backend(be.name).residual_add(x, y, scale, dim, alpha)
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
            index = rng._replicated_agreed(index, keep)
        alpha = None  # 1/(1-p) as the math dtype holds it, once fn's output dtype is known
    if be.split is not None and x.requires_grad and torch.is_grad_enabled():
        residual, xs = be.split.apply(x, index, dim)
    else:
        residual, xs = x, be.gather(x, index, dim)
    y = branch(xs)
    if alpha is None:
        alpha = reference.keep_scale(p, scale_by_keep, reference.drop_dtypes(x.dtype, y.dtype)[1])
    return be.index_add(residual, y, index, dim, alpha)


class StochasticResidual(_fx.NotScriptable, nn.Module):
    """``forward(x) = x + drop_path(branch(x))`` with ``branch`` run on the kept samples only.

    A residual block with stochastic depth that saves the dropped samples'
    compute (DINOv2-style subset residual, fused).  Wrap each residual
    branch: ``x = StochasticResidual(nn.Sequential(norm, attn), p)(x)``.
    See :func:`drop_path_residual` for every argument and caveat: the realised
    drop rate of count "fixed" is ``1 - k/n`` (warned once when it differs
    from ``p`` by more than 0.1), count "bernoulli" costs one host sync per
    call, mode "batch" returns ``x`` itself for a dropped batch, freezes its
    decision into a captured CUDA graph and needs
    ``find_unused_parameters=True`` under DDP (with ranks seeded alike), and a
    branch with BatchNorm in training mode sees only the kept samples.

    In eval mode (or ``p == 0``) ``forward(x) = x + branch(x)``.

    Args:
        branch: the residual branch (any callable module returning x's shape).
        p: drop probability in [0, 1].
        mode, count, scale_by_keep, sample_dim, generator, backend: as in
            :func:`drop_path_residual`.
    """

    def __init__(
        self,
        branch: nn.Module,
        p: float = 0.0,
        mode: str = "row",
        count: str = "fixed",
        scale_by_keep: bool = True,
        sample_dim: int = 0,
        generator: Optional[torch.Generator] = None,
        backend: str = "auto",
    ):
        super().__init__()
        functional._check_module_rate_and_mode(p, mode)
        if count not in COUNTS:
            raise ValueError(f"count must be one of {COUNTS}, got {count!r}")
        functional.check_backend_name(backend)
        self.branch = branch
        self.p = p
        self.mode = mode
        self.count = count
        self.scale_by_keep = scale_by_keep
        self.sample_dim = sample_dim
        self.generator = generator
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path_residual(
            x, self.branch, self.p, training=self.training, mode=self.mode, count=self.count,
            scale_by_keep=self.scale_by_keep, sample_dim=self.sample_dim, generator=self.generator,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, mode={self.mode!r}, count={self.count!r}, scale_by_keep={self.scale_by_keep}, "
            f"sample_dim={self.sample_dim}"
        )
