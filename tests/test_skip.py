"""Skip path: drop_path_residual / StochasticResidual and the scaled_index_add / index_scale ops.

Op results are compared with sdkernels.reference (scaled_residual_add of the
scattered src with a 0/1 mask; sample_scale of the gathered grad) and with the
plain-torch op references of sdkernels.reference.skip.  The block function is compared
with the full computation masked by the same kept set, read back from what fn
was called with (x is random, so every sample is identifiable).
"""
import copy
import math
import os
import warnings

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import sdkernels
from sdkernels import reference as R
from sdkernels import functional
from sdkernels.nn import StochasticResidual
from sdkernels.ops import skip as skip_ops
from sdkernels._ext import HAS_EXT
from _tolerances import TOL, assert_close

HAS_CUDA = torch.cuda.is_available()
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")]
INTERP = [pytest.mark.triton_interpret,
          pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (own process)")]


def _op_backends():
    params = []
    if HAS_EXT:
        params.append(pytest.param(("cpu", "sdkernels::scaled_index_add", "sdkernels::index_scale"), id="cpu"))
    params.append(pytest.param(("cuda", "sdkernels::scaled_index_add", "sdkernels::index_scale"), id="cuda", marks=CUDA))
    params.append(pytest.param(("cuda", "sdkernels::scaled_index_add_triton", "sdkernels::index_scale_triton"),
                               id="cuda-triton", marks=CUDA))
    return params


def _op(name):
    ns, n = name.split("::")
    return getattr(getattr(torch.ops, ns), n).default


def _block_backends():
    params = [pytest.param(("cpu", "reference"), id="cpu-reference")]
    if "cpu" in sdkernels.available_backends("skip"):
        params.append(pytest.param(("cpu", "cpu"), id="cpu-cpu"))
    params.append(pytest.param(("cuda", "cuda"), id="cuda-cuda", marks=CUDA))
    params.append(pytest.param(("cuda", "triton"), id="cuda-triton", marks=CUDA))
    params.append(pytest.param(("cuda", "reference"), id="cuda-reference", marks=CUDA))
    # The Triton skip ops on CPU tensors, in the interpreter's own process (pytest -m triton_interpret).
    params.append(pytest.param(("cpu", "triton"), id="cpu-triton-interpret", marks=INTERP))
    return params


DTYPE_PAIRS = [
    (torch.float32, torch.float32),
    (torch.float64, torch.float64),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.float32),
]

# (residual shape, sample_dim, channels_last)
SHAPES = [
    ((7, 3, 5), 0, False),
    ((4, 7, 5), 1, False),
    ((4, 3, 7), -1, False),
    ((5, 3, 4, 6), 0, True),
    ((6, 4, 3, 2), 1, True),
    ((1, 9), 0, False),
    ((8, 1030), 0, False),  # rows long enough for vector paths, odd length
]


def _inputs(shape, dim, cl, rdt, sdt, k, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    residual = torch.randn(shape, generator=g).to(device=device, dtype=rdt)
    n = shape[dim]
    sshape = list(shape)
    sshape[dim] = k
    src = torch.randn(sshape, generator=g).to(device=device, dtype=sdt)
    if cl:
        residual = residual.to(memory_format=torch.channels_last)
        src = src.to(memory_format=torch.channels_last)
    index = torch.randperm(n, generator=g)[:k].to(device)
    return residual, src, index


def _expected_add(residual, src, index, dim, alpha):
    """reference.scaled_residual_add of src scattered to its rows, with a 0/1 mask of the indexed rows."""
    dim = dim % residual.dim()
    full = torch.zeros(residual.shape, dtype=src.dtype, device=src.device)
    full.index_copy_(dim, index, src)
    mask = torch.zeros(residual.shape[dim], dtype=torch.float32, device=residual.device)
    mask[index] = 1.0
    return R.scaled_residual_add(residual, full, mask, dim, alpha)


def _expected_scale(grad, index, dim, alpha, dtype):
    dim = dim % grad.dim()
    picked = grad.index_select(dim, index)
    ones = torch.ones(index.numel(), dtype=torch.float32, device=grad.device)
    return R.sample_scale(picked, ones, dim, alpha, dtype)


# ---------------------------------------------------------------------------
# Ops
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("rdt,sdt", DTYPE_PAIRS, ids=str)
@pytest.mark.parametrize("shape,dim,cl", SHAPES, ids=str)
def test_scaled_index_add_matches_reference(op_backend, rdt, sdt, shape, dim, cl):
    device, add_name, _ = op_backend
    op = _op(add_name)
    n = shape[dim]
    for k in sorted({0, 1, max(1, n // 2), n}):
        residual, src, index = _inputs(shape, dim, cl, rdt, sdt, k, device, seed=k)
        alpha = n / max(k, 1) + 0.1
        out = op(residual, src, index, dim, alpha)
        exp = _expected_add(residual, src, index, dim, alpha)
        assert out.dtype == torch.promote_types(rdt, sdt)
        assert out.shape == residual.shape
        if out.numel():
            # output layout: empty_like(residual)
            like = torch.empty_like(residual, dtype=out.dtype)
            assert all(s == 1 or a == b for s, a, b in zip(out.shape, out.stride(), like.stride()))
        assert_close(out, exp)
        assert_close(out, R.scaled_index_add(residual, src, index, dim, alpha))


@pytest.mark.parametrize("xdt,odt", [(torch.float32, None), (torch.float64, None), (torch.float16, None),
                                     (torch.bfloat16, None), (torch.float32, torch.bfloat16),
                                     (torch.bfloat16, torch.float32), (torch.float16, torch.float64)], ids=str)
@pytest.mark.parametrize("shape,dim,cl", SHAPES, ids=str)
def test_index_scale_matches_reference(op_backend, xdt, odt, shape, dim, cl):
    device, _, scale_name = op_backend
    op = _op(scale_name)
    n = shape[dim]
    for k in sorted({0, 1, max(1, n // 2), n}):
        grad, _, index = _inputs(shape, dim, cl, xdt, xdt, k, device, seed=10 + k)
        out = op(grad, index, dim, 0.75, odt)
        exp = _expected_scale(grad, index, dim, 0.75, odt)
        assert out.dtype == (xdt if odt is None else odt)
        assert_close(out, exp)
        assert_close(out, R.index_scale(grad, index, dim, 0.75, odt))
        like = skip_ops.samples_like(torch.empty_like(grad), dim % grad.dim(), k, out.dtype)
        assert all(s == 1 or a == b for s, a, b in zip(out.shape, out.stride(), like.stride()))


@pytest.fixture(params=_op_backends())
def op_backend(request):
    return request.param


def test_scaled_index_add_does_not_touch_inputs_and_handles_nan():
    r = torch.randn(5, 4)
    r[3, 1] = float("nan")
    s = torch.randn(2, 4)
    idx = torch.tensor([4, 0])
    r0, s0 = r.clone(), s.clone()
    out = torch.ops.sdkernels.scaled_index_add(r, s, idx, 0, 2.0)
    assert torch.equal(r.nan_to_num(), r0.nan_to_num()) and torch.equal(s, s0)
    assert out.data_ptr() != r.data_ptr()
    assert torch.isnan(out[3, 1]) and torch.equal(out[1], r[1])
    assert torch.equal(out[4], r[4] + s[0] * 2.0)


def test_non_dense_inputs():
    base = torch.randn(6, 10, 8)
    r = base[:, ::2]  # not dense
    s = torch.randn(8, 3, 6).permute(2, 1, 0)  # [6, 3, 8] in another layout
    idx = torch.tensor([4, 0, 2])
    out = torch.ops.sdkernels.scaled_index_add(r, s, idx, 1, 1.5)
    assert_close(out, _expected_add(r, s, idx, 1, 1.5))
    g = base.transpose(0, 2)[:, ::2]  # [8, 5, 6], not dense
    out = torch.ops.sdkernels.index_scale(g, idx, 1, 1.5, None)
    assert_close(out, _expected_scale(g, idx, 1, 1.5, None))


def _opcheck_cases(device):
    yield (torch.randn(6, 3, 5, device=device), torch.randn(3, 3, 5, device=device), torch.tensor([5, 0, 2], device=device), 0)
    yield (torch.randn(4, 6, 5, device=device, dtype=torch.float64), torch.randn(4, 2, 5, device=device, dtype=torch.float64),
           torch.tensor([1, 3], device=device), 1)
    yield (torch.randn(4, 3, 5, device=device), torch.randn(4, 3, 2, device=device, dtype=torch.bfloat16),
           torch.tensor([4, 1], device=device), -1)
    yield (torch.randn(5, 3, 4, 6, device=device).to(memory_format=torch.channels_last),
           torch.randn(2, 3, 4, 6, device=device).to(memory_format=torch.channels_last), torch.tensor([3, 1], device=device), 0)
    yield (torch.randn(5, 3, 4, 6, device=device).to(memory_format=torch.channels_last),
           torch.randn(5, 2, 4, 6, device=device), torch.tensor([0, 2], device=device), 1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_opcheck(device):
    if not HAS_EXT:
        pytest.skip("compiled extension missing")
    for r, s, idx, dim in _opcheck_cases(device):
        r.requires_grad_(r.dtype != torch.bfloat16)
        s.requires_grad_(True)
        torch.library.opcheck(torch.ops.sdkernels.scaled_index_add.default, (r, s, idx, dim, 1.25))
        torch.library.opcheck(torch.ops.sdkernels.index_scale.default, (r, idx, dim, 1.25, None))
        torch.library.opcheck(torch.ops.sdkernels.index_scale.default, (r, idx, dim, 0.5, torch.bfloat16))


@pytest.mark.parametrize("device,add_name,scale_name", [
    pytest.param("cpu", "sdkernels::scaled_index_add", "sdkernels::index_scale", id="cpu"),
    pytest.param("cuda", "sdkernels::scaled_index_add", "sdkernels::index_scale", id="cuda", marks=CUDA),
    pytest.param("cuda", "sdkernels::scaled_index_add_triton", "sdkernels::index_scale_triton", id="cuda-triton", marks=CUDA),
])
def test_gradcheck_gradgradcheck_fp64(device, add_name, scale_name):
    if not HAS_EXT:
        pytest.skip("compiled extension missing")
    add, scale = _op(add_name), _op(scale_name)
    for shape, dim in [((5, 3, 4), 0), ((3, 5, 4), 1), ((3, 4, 5), -1)]:
        r, s, idx = _inputs(shape, dim, False, torch.float64, torch.float64, 3, device)
        r.requires_grad_()
        s.requires_grad_()
        f = lambda r, s: add(r, s, idx, dim, 1.7)  # noqa: E731
        assert gradcheck(f, (r, s))
        assert gradgradcheck(f, (r, s))
        h = lambda r: scale(r, idx, dim, 1.7, None)  # noqa: E731
        assert gradcheck(h, (r,))
        assert gradgradcheck(h, (r,))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_index_scale_grad_keeps_layout(device):
    """index_scale's input gradient comes back in the input's layout (channels_last stays so)."""
    if not HAS_EXT:
        pytest.skip("compiled extension missing")
    idx = torch.tensor([4, 0, 2], device=device)
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(5, 4, 6, 7, device=device).to(memory_format=fmt).requires_grad_()
        y = torch.ops.sdkernels.index_scale(x, idx, 0, 1.5)
        (gx,) = torch.autograd.grad(y, x, torch.randn_like(y))
        assert gx.is_contiguous(memory_format=fmt) and gx.stride() == x.stride()
        want = torch.zeros_like(x)
        want[idx] = 1.5 * torch.ones_like(y)
        (g1,) = torch.autograd.grad(torch.ops.sdkernels.index_scale(x, idx, 0, 1.5), x, torch.ones_like(y))
        assert_close(g1, want, rtol=0, atol=0)


def test_index_scale_backward_under_dynamic_compile_does_not_recompile():
    """The backward's zeros take x's (symbolic) sample count: one graph for every batch size."""
    if not HAS_EXT:
        pytest.skip("compiled extension missing")
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")

    @torch.compile(backend=cnt, dynamic=True, fullgraph=True)
    def f(x, idx):
        return torch.ops.sdkernels.index_scale(x, idx, 0, 1.5).sum()

    for n in (7, 9, 12):
        x = torch.randn(n, 3, 4, requires_grad=True)
        idx = torch.tensor([n - 1, 0, 2])
        f(x, idx).backward()
        want = torch.zeros_like(x)
        want[idx] = 1.5
        assert_close(x.grad, want, rtol=0, atol=0)
    assert cnt.frame_count == 1
    torch._dynamo.reset()


def test_backward_saves_only_index_and_grad_residual_is_grad_out():
    r = torch.randn(6, 4, requires_grad=True)
    s = torch.randn(3, 4, requires_grad=True)
    idx = torch.tensor([1, 5, 2])
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = torch.ops.sdkernels.scaled_index_add(r, s, idx, 0, 2.0)
    assert len(saved) == 1 and saved[0] is idx
    go = torch.randn(6, 4)
    gr, gs = torch.autograd.grad(out, (r, s), go)
    assert gr.data_ptr() == go.data_ptr()
    assert_close(gs, go[idx] * 2.0)


def test_mixed_dtype_grads_take_input_dtypes():
    r = torch.randn(6, 4, requires_grad=True)
    s = torch.randn(3, 4, dtype=torch.bfloat16, requires_grad=True)
    idx = torch.tensor([1, 5, 2])
    out = torch.ops.sdkernels.scaled_index_add(r, s, idx, 0, 2.0)
    assert out.dtype == torch.float32
    gr, gs = torch.autograd.grad(out, (r, s), torch.randn(6, 4))
    assert gr.dtype == torch.float32 and gs.dtype == torch.bfloat16


def test_op_bad_inputs():
    if not HAS_EXT:
        pytest.skip("compiled extension missing")
    add, scale = torch.ops.sdkernels.scaled_index_add, torch.ops.sdkernels.index_scale
    r, s = torch.randn(5, 4), torch.randn(2, 4)
    with pytest.raises(TypeError, match="int64"):
        add(r, s, torch.tensor([0, 1], dtype=torch.int32), 0, 1.0)
    with pytest.raises(ValueError, match="1-D"):
        add(r, s, torch.tensor([[0, 1]]), 0, 1.0)
    with pytest.raises(IndexError, match="out of range"):
        add(r, s, torch.tensor([0, 5]), 0, 1.0)
    with pytest.raises(IndexError, match="out of range"):
        add(r, s, torch.tensor([-1, 2]), 0, 1.0)
    with pytest.raises(ValueError, match="unique"):
        add(r, s, torch.tensor([3, 3]), 0, 1.0)
    with pytest.raises(ValueError, match="samples"):
        add(r, s, torch.tensor([0, 1, 2]), 0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        add(r, torch.randn(2, 3), torch.tensor([0, 1]), 0, 1.0)
    with pytest.raises(ValueError, match="dims"):
        add(r, torch.randn(2, 4, 1), torch.tensor([0, 1]), 0, 1.0)
    with pytest.raises(TypeError, match="floating"):
        add(r, s.long(), torch.tensor([0, 1]), 0, 1.0)
    with pytest.raises(IndexError, match="sample_dim"):
        add(r, s, torch.tensor([0, 1]), 2, 1.0)
    with pytest.raises(ValueError, match="unique"):
        scale(r, torch.tensor([1, 1]), 0, 1.0, None)
    with pytest.raises(IndexError, match="out of range"):
        scale(r, torch.tensor([7]), 0, 1.0, None)
    with pytest.raises(TypeError, match="floating"):
        scale(r, torch.tensor([1]), 0, 1.0, torch.int32)


def test_samples_like_rule():
    x = torch.empty(2, 3, 4, 5).to(memory_format=torch.channels_last)
    y = skip_ops.samples_like(x, 0, 7)
    assert y.shape == (7, 3, 4, 5) and y.is_contiguous(memory_format=torch.channels_last)
    y = skip_ops.samples_like(torch.empty(9, 6, 8), 1, 2)
    assert y.shape == (9, 2, 8) and y.is_contiguous()
    z = torch.empty(6, 9, 8).transpose(0, 1)  # [9, 6, 8] with dim 1 outermost
    y = skip_ops.samples_like(z, 1, 2)
    assert y.shape == (9, 2, 8) and y.stride() == (8, 72, 1)


# ---------------------------------------------------------------------------
# drop_path_residual against the masked full computation
# ---------------------------------------------------------------------------


class Branch(torch.nn.Module):
    """Acts on each sample independently (so the masked full computation is the spec): tanh(z * w) + b."""

    def __init__(self, h, dtype, out_dtype=None, device="cpu"):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = torch.nn.Parameter(torch.randn(h, generator=g).to(device=device, dtype=dtype))
        self.b = torch.nn.Parameter(torch.randn(h, generator=g).to(device=device, dtype=dtype))
        self.out_dtype = out_dtype
        self.calls = []

    def forward(self, z):
        self.calls.append(z.detach().clone())
        y = torch.tanh(z * self.w) + self.b
        return y if self.out_dtype is None else y.to(self.out_dtype)


def _kept_from_call(x, z, dim):
    """Indices of x's samples that fn received, in call order (exact row match)."""
    xs = x.detach().movedim(dim, 0).flatten(1)
    zs = z.movedim(dim, 0).flatten(1)
    kept = []
    for row in zs:
        hits = (xs == row).all(dim=1).nonzero().flatten().tolist()
        assert len(hits) == 1, "fn received a row that is not one of x's samples"
        kept.append(hits[0])
    return kept


BLOCK_DTYPES = [
    (torch.float32, None),
    (torch.float64, None),
    (torch.float16, None),
    (torch.bfloat16, None),
    (torch.float32, torch.bfloat16),  # autocast-like: fp32 stream, bf16 branch output
]

# Gradient tolerances: x's gradient is a sum of two terms, each rounded once in
# a 16-bit dtype; parameter gradients are reductions over samples done over
# different row sets (subset vs. full with zeros).
GRAD_TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


@pytest.mark.parametrize("block_backend", _block_backends())
@pytest.mark.parametrize("xdt,odt", BLOCK_DTYPES, ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1])
@pytest.mark.parametrize("count", ["fixed", "bernoulli"])
def test_matches_masked_full_computation(block_backend, xdt, odt, sample_dim, count):
    device, backend = block_backend
    h = 8
    seen_partial = False
    for n in (1, 2, 3, 7, 64):
        for p in (0.0, 0.1, 0.5, 0.9, 1.0):
            shape = (n, 3, h) if sample_dim == 0 else (3, n, h)
            x = torch.randn(shape, generator=torch.Generator().manual_seed(n * 100 + int(p * 10))).to(device, xdt)
            x.requires_grad_()
            fn = Branch(h, xdt, odt, device)
            fn_ref = copy.deepcopy(fn)
            gen = torch.Generator(device=device).manual_seed(1000 + n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = sdkernels.drop_path_residual(x, fn, p, count=count, sample_dim=sample_dim, generator=gen,
                                                   backend=backend)
            out_dtype = torch.promote_types(xdt, odt or xdt)
            # fn: called at most once, never on an empty batch; on the whole input at p == 0
            assert len(fn.calls) <= 1
            if fn.calls:
                assert fn.calls[0].shape[sample_dim] > 0
            if p == 0.0:
                assert len(fn.calls) == 1 and torch.equal(fn.calls[0], x.detach())
            kept = _kept_from_call(x, fn.calls[0], sample_dim) if fn.calls else []
            k = len(kept)
            assert len(set(kept)) == k
            if count == "fixed":
                assert k == functional.kept_count(n, p) if p > 0 else k == n
            if k == 0:
                assert p > 0 and len(fn.calls) == 0
                assert out is x
            else:
                assert out.dtype == out_dtype
                seen_partial |= 0 < k < n
            if p == 0.0 or k == 0:
                alpha = 1.0
            elif count == "fixed":
                alpha = n / k
            else:
                alpha = 1.0 / (1.0 - p)
            # the reference: the whole branch, masked with the same kept set
            x2 = x.detach().clone().requires_grad_()
            mask = torch.zeros(n, dtype=torch.float32, device=device)
            mask[kept] = 1.0
            full = fn_ref(x2)
            exp = R.scaled_residual_add(x2, full, mask, sample_dim, alpha)
            if p == 0.0:
                assert_close(out, x.detach() + fn_ref(x.detach()).detach(), dtype=out_dtype)
            assert_close(out.detach(), exp.detach().to(out.dtype), dtype=out_dtype)
            go = torch.randn(exp.shape, generator=torch.Generator().manual_seed(5)).to(device, exp.dtype)
            exp.backward(go)
            out.backward(go.to(out.dtype))
            torch.testing.assert_close(x.grad, x2.grad, **GRAD_TOL[xdt])
            for pa, pb in ((fn.w, fn_ref.w), (fn.b, fn_ref.b)):
                if k == 0:
                    assert pa.grad is None and not pb.grad.any()
                else:
                    torch.testing.assert_close(pa.grad, pb.grad, **GRAD_TOL[xdt])
    assert seen_partial


@pytest.mark.parametrize("block_backend", _block_backends())
def test_block_gradcheck_gradgradcheck_fp64(block_backend):
    """x's gradient leaves through one fused node (backends with kernels): first and second derivatives."""
    device, backend = block_backend
    w = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)
    x = torch.randn(6, 2, 5, dtype=torch.float64, device=device, requires_grad=True)

    def f(x, w):
        gen = torch.Generator(device=device).manual_seed(4)  # the same kept set at every evaluation
        return sdkernels.drop_path_residual(x, lambda z: torch.sin(z * w) * z, 0.5, sample_dim=1, generator=gen,
                                            backend=backend)

    assert gradcheck(f, (x, w))
    assert gradgradcheck(f, (x, w))


def test_bernoulli_keeps_the_same_samples_as_drop_path_add():
    """count 'bernoulli' consumes the draw of reference.draw_keep: same seed, same kept set, same result."""
    for p in (0.2, 0.5, 0.8):
        x = torch.randn(32, 4, 6)
        fn = lambda z: torch.sin(z) * 3  # noqa: E731
        out = sdkernels.drop_path_residual(x, fn, p, count="bernoulli", generator=torch.Generator().manual_seed(3))
        exp = R.drop_path_add(x, fn(x), p, generator=torch.Generator().manual_seed(3))
        assert_close(out, exp)


def test_kept_count_table():
    # round half up of n * (1 - p), at least one kept when p < 1
    table = {(1, 0.5): 1, (1, 0.99): 1, (1, 1.0): 0, (2, 0.5): 1, (2, 0.75): 1, (3, 0.5): 2, (7, 0.5): 4,
             (5, 0.9): 1, (5, 0.3): 4, (10, 0.25): 8, (8, 0.3): 6, (64, 0.1): 58, (64, 0.9): 6, (64, 0.0): 64,
             (25, 0.34): 17, (4, 1.0): 0, (100, 0.995): 1}
    for (n, p), k in table.items():
        assert functional.kept_count(n, p) == k, (n, p)


def test_fixed_count_scale_and_call_shape():
    x = torch.randn(10, 5)
    calls = []

    def fn(z):
        calls.append(z.shape)
        return torch.ones_like(z)

    out = sdkernels.drop_path_residual(x, fn, 0.3)
    assert calls == [torch.Size([7, 5])]
    delta = out - x
    kept = delta[:, 0] != 0
    assert kept.sum() == 7
    assert torch.allclose(delta[kept], torch.full((7, 5), 10 / 7))
    assert torch.equal(delta[~kept], torch.zeros(3, 5))


def test_realised_rate_warns_once():
    functional._warned_realised_rate = False  # a peek: the warn-once flag has no public reset
    x = torch.randn(10, 4)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        sdkernels.drop_path_residual(x, torch.sin, 0.5)  # k = 5: realised 0.5, no warning
        assert not rec
        sdkernels.drop_path_residual(torch.randn(1, 4), torch.sin, 0.5)  # n = 1: nothing dropped
        assert len(rec) == 1 and "realised drop rate" in str(rec[0].message)
        sdkernels.drop_path_residual(torch.randn(2, 4), torch.sin, 0.25)  # realised 0.0
        assert len(rec) == 1
    functional._warned_realised_rate = False  # a peek: the warn-once flag has no public reset


def test_eval_and_p0_return_x_plus_fn_x():
    x = torch.randn(6, 5, dtype=torch.float32)
    lin = torch.nn.Linear(5, 5).to(torch.bfloat16)
    fn = lambda z: lin(z.to(torch.bfloat16))  # noqa: E731
    for kwargs in (dict(p=0.5, training=False), dict(p=0.0), dict(p=0.0, mode="batch")):
        p = kwargs.pop("p")
        out = sdkernels.drop_path_residual(x, fn, p, **kwargs)
        assert out.dtype == torch.float32
        assert torch.equal(out, x + fn(x))


def test_nothing_kept_returns_x_and_skips_fn():
    calls = []

    def fn(z):
        calls.append(z.shape)
        return z

    x = torch.randn(4, 3, requires_grad=True)
    assert sdkernels.drop_path_residual(x, fn, 1.0) is x
    assert sdkernels.drop_path_residual(x, fn, 1.0, count="bernoulli") is x
    assert sdkernels.drop_path_residual(x, fn, 1.0, mode="batch") is x
    assert calls == []


def test_mode_batch():
    x = torch.randn(5, 4)
    calls = []

    def fn(z):
        calls.append(z.shape)
        return torch.ones_like(z)

    g = torch.Generator().manual_seed(0)
    dropped = kept = 0
    for _ in range(40):
        out = sdkernels.drop_path_residual(x, fn, 0.5, mode="batch", generator=g)
        if out is x:
            dropped += 1
        else:
            kept += 1
            assert torch.equal(out, x + 2.0)
    assert dropped > 0 and kept > 0 and len(calls) == kept
    assert all(c == x.shape for c in calls)
    # the decision comes from the generator: seeded alike, decided alike
    seq = lambda s: [sdkernels.drop_path_residual(x, fn, 0.5, mode="batch",  # noqa: E731
                                                  generator=torch.Generator().manual_seed(s)) is x for _ in range(1)]
    assert seq(11) == seq(11)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    d1 = [sdkernels.drop_path_residual(x, fn, 0.5, mode="batch", generator=g1) is x for _ in range(20)]
    d2 = [sdkernels.drop_path_residual(x, fn, 0.5, mode="batch", generator=g2) is x for _ in range(20)]
    assert d1 == d2


def test_channels_last_layout_is_kept():
    x = torch.randn(6, 3, 4, 5).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    out = sdkernels.drop_path_residual(x, conv, 0.5)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_real_module_gradients_match_masked_full():
    """A Linear + GELU branch: gradients of x and of the parameters, sample_dim 1 (seq-first)."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16)).double()
    mlp_ref = copy.deepcopy(mlp)
    x = torch.randn(5, 12, 16, dtype=torch.float64, requires_grad=True)
    seen = []
    fn = lambda z: (seen.append(z.detach().clone()), mlp(z))[1]  # noqa: E731
    out = sdkernels.drop_path_residual(x, fn, 0.4, sample_dim=1)
    kept = _kept_from_call(x, seen[0], 1)
    mask = torch.zeros(12, dtype=torch.float32)
    mask[kept] = 1
    x2 = x.detach().clone().requires_grad_()
    exp = R.scaled_residual_add(x2, mlp_ref(x2), mask, 1, 12 / len(kept))
    assert_close(out, exp)
    go = torch.randn_like(out)
    out.backward(go)
    exp.backward(go)
    assert_close(x.grad, x2.grad)
    for a, b in zip(mlp.parameters(), mlp_ref.parameters()):
        assert_close(a.grad, b.grad)


# ---------------------------------------------------------------------------
# Statistics (fixed generators: deterministic; bounds are >= 5 sigma from the
# truth and far from the value a wrong scale or rate would give)
# ---------------------------------------------------------------------------


def _coefficients(n, p, count, trials, seed, mode="row"):
    """Per-sample branch coefficient (kept * alpha) of each call: x = 0, fn = ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 2)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the realised-rate warning of n = 3
        for _ in range(trials):
            out = sdkernels.drop_path_residual(x, torch.ones_like, p, count=count, mode=mode, generator=g)
            rows.append(out[:, 0].clone())
    return torch.stack(rows).double()


def test_fixed_count_kept_frequency_is_uniform():
    n, p, trials = 3, 0.5, 3000
    c = _coefficients(n, p, "fixed", trials, seed=1)
    kept = c != 0
    assert (kept.sum(1) == 2).all()  # k = floor(1.5 + 0.5) = 2 every call
    freq = kept.double().mean(0)
    sigma = math.sqrt((2 / 3) * (1 / 3) / trials)  # 0.0086
    assert ((freq - 2 / 3).abs() < 5 * sigma).all(), freq


def test_unbiased_fixed_count_n3_p05():
    # E[out] = x + fn(x) needs scale n/k = 1.5; 1/(1-p) = 2 would give a mean coefficient of 4/3.
    n, p, trials = 3, 0.5, 3000
    c = _coefficients(n, p, "fixed", trials, seed=2)
    assert set(torch.unique(c).tolist()) == {0.0, 1.5}
    mean = c.mean(0)
    sigma = math.sqrt(1.5 ** 2 * (2 / 3) * (1 / 3) / trials)  # 0.0129
    assert ((mean - 1.0).abs() < 5 * sigma).all(), mean
    assert 5 * sigma < abs(4 / 3 - 1.0) / 2


def test_bernoulli_kept_fraction_and_unbiasedness():
    n, p, trials = 64, 0.3, 300
    c = _coefficients(n, p, "bernoulli", trials, seed=3)
    kept = (c != 0).double()
    frac = kept.mean().item()
    sigma = math.sqrt(0.7 * 0.3 / (n * trials))  # 0.0033
    assert abs(frac - 0.7) < 5 * sigma, frac
    assert set(torch.unique(c).tolist()) <= {0.0, torch.tensor(1 / 0.7, dtype=torch.float32).item()}
    # unbiasedness at n = 3, p = 0.5: coefficient 2 * keep, mean 1 (n/k would give 7/8 on average)
    c3 = _coefficients(3, 0.5, "bernoulli", 4000, seed=4)
    mean = c3.mean(0)
    sigma = math.sqrt(4 * 0.25 / 4000)  # 0.0158
    assert ((mean - 1.0).abs() < 5 * sigma).all(), mean
    assert 5 * sigma < abs(7 / 8 - 1.0)


def test_batch_mode_rate_and_unbiasedness():
    n, p, trials = 4, 0.3, 2000
    c = _coefficients(n, p, "fixed", trials, seed=5, mode="batch")
    kept = (c[:, 0] != 0).double()
    assert ((c != 0).double() == kept[:, None]).all()  # one decision for the whole batch
    sigma = math.sqrt(0.7 * 0.3 / trials)  # 0.0102
    assert abs(kept.mean().item() - 0.7) < 5 * sigma
    assert abs(c.mean().item() - 1.0) < 5 * sigma / 0.7


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------


def test_compile_fullgraph_eval_with_data_dependent_sample_count():
    """The no-samples check must not guard on a data-dependent size: x[mask] then the block in eval compiles."""
    torch._dynamo.reset()
    lin = torch.nn.Linear(8, 8)

    def f(x, m):
        y = x[m]
        return sdkernels.drop_path_residual(y, lin, 0.1, training=False)

    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        cf = torch.compile(f, fullgraph=True)
        x = torch.randn(6, 8)
        for m in (torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool), torch.zeros(6, dtype=torch.bool)):
            out = cf(x, m)
            torch.testing.assert_close(out, x[m] + lin(x[m]))


def test_compile_fullgraph_fixed_count():
    torch._dynamo.reset()
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.GELU())
    block = StochasticResidual(mlp, 0.5)

    def f(x):
        return block(x)

    x = torch.randn(8, 4, 16, requires_grad=True)
    torch.manual_seed(42)
    eager = f(x)
    ge = torch.autograd.grad(eager.sum(), (x, mlp[0].weight))
    cf = torch.compile(f, fullgraph=True)
    torch.manual_seed(42)
    comp = cf(x)
    gc = torch.autograd.grad(comp.sum(), (x, mlp[0].weight))
    # on CPU the compiled randperm draws as eager does
    assert_close(comp, eager, rtol=1e-5, atol=1e-5)
    assert_close(gc[0], ge[0], rtol=1e-5, atol=1e-5)
    assert_close(gc[1], ge[1], rtol=1e-4, atol=1e-4)
    # exactly k = 4 samples carry the branch
    block.eval()
    changed = (comp.detach() - x.detach()).flatten(1).abs().sum(1) != 0
    assert changed.sum() == 4


# ---------------------------------------------------------------------------
# API, module, bad inputs
# ---------------------------------------------------------------------------


def test_exports():
    from sdkernels import skip as shim

    assert sdkernels.drop_path_residual is functional.drop_path_residual is shim.drop_path_residual
    assert sdkernels.nn.StochasticResidual is shim.StochasticResidual
    assert "drop_path_residual" in sdkernels.__all__ and "StochasticResidual" in sdkernels.nn.__all__


def test_module_matches_function_and_eval():
    mlp = torch.nn.Linear(6, 6)
    block = sdkernels.nn.StochasticResidual(mlp, 0.5, count="bernoulli", generator=torch.Generator().manual_seed(9))
    assert dict(block.named_parameters()).keys() == {"branch.weight", "branch.bias"}
    assert "count='bernoulli'" in repr(block)
    x = torch.randn(16, 6)
    out = block(x)
    exp = sdkernels.drop_path_residual(x, mlp, 0.5, count="bernoulli", generator=torch.Generator().manual_seed(9))
    assert torch.equal(out, exp)
    block.eval()
    assert torch.equal(block(x), x + mlp(x))


@pytest.mark.parametrize("sample_dim", [0, 1])
def test_no_samples_never_calls_fn(sample_dim):
    """An x with no samples returns x itself in every mode, count and in eval: fn never sees an empty batch."""
    shape = (0, 3, 5) if sample_dim == 0 else (3, 0, 5)
    x = torch.randn(shape, requires_grad=True)
    calls = []

    def fn(z):
        calls.append(z.shape)
        return z * 2

    state = torch.random.get_rng_state()
    for kw in (dict(), dict(count="bernoulli"), dict(mode="batch"), dict(training=False), dict(p=0.0)):
        args = dict(p=0.5, sample_dim=sample_dim)
        args.update(kw)
        p = args.pop("p")
        assert sdkernels.drop_path_residual(x, fn, p, **args) is x, kw
    assert calls == []
    assert torch.equal(torch.random.get_rng_state(), state)  # no draw either
    block = StochasticResidual(fn, 0.5, sample_dim=sample_dim)
    assert block(x) is x and block.eval()(x) is x and calls == []


def test_bad_inputs():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="shape"):
        sdkernels.drop_path_residual(x, lambda z: z[:, :2], 0.5)
    with pytest.raises(ValueError, match="shape"):
        sdkernels.drop_path_residual(x, lambda z: z.sum(0), 0.5, training=False)
    with pytest.raises(ValueError, match="shape"):
        sdkernels.drop_path_residual(x, lambda z: z[:1], 0.5, mode="batch",
                                     generator=torch.Generator().manual_seed(1))
    with pytest.raises(TypeError, match="Tensor"):
        sdkernels.drop_path_residual(x, lambda z: 1.0, 0.5)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p"):
            sdkernels.drop_path_residual(x, torch.sin, p)
    with pytest.raises(TypeError):
        sdkernels.drop_path_residual(x, torch.sin, "0.5")
    with pytest.raises(ValueError, match="count"):
        sdkernels.drop_path_residual(x, torch.sin, 0.5, count="poisson")
    with pytest.raises(ValueError, match="mode"):
        sdkernels.drop_path_residual(x, torch.sin, 0.5, mode="col")
    with pytest.raises(ValueError, match="backend"):
        sdkernels.drop_path_residual(x, torch.sin, 0.5, backend="tpu")
    with pytest.raises(TypeError, match="callable"):
        sdkernels.drop_path_residual(x, 3, 0.5)
    with pytest.raises(TypeError):
        sdkernels.drop_path_residual(x.numpy(), torch.sin, 0.5)
    with pytest.raises(IndexError):
        sdkernels.drop_path_residual(x, torch.sin, 0.5, sample_dim=2)
    with pytest.raises(ValueError):
        StochasticResidual(torch.nn.Identity(), 1.2)
    with pytest.raises(ValueError):
        StochasticResidual(torch.nn.Identity(), 0.2, count="all")
    with pytest.raises(ValueError):
        StochasticResidual(torch.nn.Identity(), 0.2, mode="rows")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="not available"):
            sdkernels.drop_path_residual(x, torch.sin, 0.5, backend="cuda")


# ---------------------------------------------------------------------------
# CUDA (skipped without a device)
# ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("add_name,scale_name", [("sdkernels::scaled_index_add", "sdkernels::index_scale"),
                                                 ("sdkernels::scaled_index_add_triton", "sdkernels::index_scale_triton")])
def test_cuda_ops_match_cpu_bitwise(add_name, scale_name):
    add, scale = _op(add_name), _op(scale_name)
    for rdt, sdt in DTYPE_PAIRS:
        for shape, dim, cl in SHAPES + [((64, 197, 768), 0, False), ((197, 64, 768), 1, False),
                                        ((16, 64, 56, 56), 0, True), ((3, 5, 1001), 1, False)]:
            n = shape[dim]
            k = max(1, (3 * n) // 4)
            r, s, idx = _inputs(shape, dim, cl, rdt, sdt, k, "cpu")
            out = add(r.cuda(), s.cuda(), idx.cuda(), dim, n / k)
            # the GPU may fuse the multiply-add (one rounding less): equal up to the dtype's tolerance
            assert_close(out.cpu(), torch.ops.sdkernels.scaled_index_add(r, s, idx, dim, n / k))
            g = scale(r.cuda(), idx.cuda(), dim, n / k, sdt)
            assert torch.equal(g.cpu(), torch.ops.sdkernels.index_scale(r, idx, dim, n / k, sdt))
            assert g.stride() == torch.ops.sdkernels.index_scale(r, idx, dim, n / k, sdt).stride() or g.numel() == 0


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_misaligned_views():
    base = torch.randn(9 * 1024 + 3, device="cuda")
    r = base[1:1 + 8 * 1024].view(8, 1024)  # 4-byte offset: not 16-byte aligned
    s = base[2:2 + 3 * 1024].view(3, 1024)
    idx = torch.tensor([7, 0, 3], device="cuda")
    for name in ("scaled_index_add", "scaled_index_add_triton"):
        out = getattr(torch.ops.sdkernels, name)(r, s, idx, 0, 1.25)
        assert_close(out.cpu(), torch.ops.sdkernels.scaled_index_add(r.cpu(), s.cpu(), idx.cpu(), 0, 1.25))
    # one output row read from an odd offset: grad row 3 of rows of 1001 elements
    g = torch.randn(6, 1001, device="cuda")
    for name in ("index_scale", "index_scale_triton"):
        out = getattr(torch.ops.sdkernels, name)(g, torch.tensor([3], device="cuda"), 0, 0.5, None)
        assert torch.equal(out.cpu(), g[3:4].cpu() * 0.5)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_compile_fullgraph_and_bf16_block():
    torch._dynamo.reset()
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()).cuda()
    block = StochasticResidual(mlp, 0.25)
    x = torch.randn(64, 8, 64, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = torch.compile(block, fullgraph=True)(x)
    assert out.dtype == torch.float32
    changed = (out.detach() - x.detach()).flatten(1).abs().sum(1) != 0
    assert changed.sum() == 48  # k = 64 * 0.75
    out.sum().backward()
    assert mlp[0].weight.grad is not None and x.grad is not None


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_compile_reduce_overhead_draws_fresh_subsets():
    """torch.compile(mode="reduce-overhead") (Inductor's CUDA graphs, what takes a launch-bound step's host
    time away): every training call keeps k fresh samples, matches the masked full computation for them,
    and trains fn."""
    torch._dynamo.reset()
    lin = torch.nn.Linear(32, 32).cuda()
    block = StochasticResidual(lin, 0.5)
    step = torch.compile(block, mode="reduce-overhead", fullgraph=True)
    torch._dynamo.utils.counters.clear()
    x = torch.randn(16, 4, 32, device="cuda")
    sets = set()
    for _ in range(6):
        out = step(x).detach().clone()  # a CUDA-graph output is overwritten by the next replay
        changed = (out - x).flatten(1).abs().sum(1) != 0
        kept = changed.nonzero().flatten()
        assert kept.numel() == 8  # k = 16 * 0.5
        sets.add(tuple(kept.tolist()))
        exp = x.clone()
        exp[kept] += lin(x[kept]).detach() * 2.0  # alpha = n / k
        torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-5)
    assert len(sets) > 1, "every call kept the same samples"
    skips = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]
    assert skips == 0, f"Inductor ran the block without CUDA graphs ({skips} skip(s); its log says why)"
    xg = x.clone().requires_grad_()
    step(xg).sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all() and xg.grad is not None


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_capture_fixed_count(backend):
    """count 'fixed' has static shapes and no host sync: it captures, and every replay draws anew."""
    if backend not in sdkernels.available_backends("skip"):
        pytest.skip(f"{backend} backend not available")
    lin = torch.nn.Linear(32, 32).cuda()
    x = torch.randn(16, 4, 32, device="cuda")
    fn = lambda z: lin(z)  # noqa: E731
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(3):  # warm up outside the graph
            sdkernels.drop_path_residual(x, fn, 0.5, backend=backend)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = sdkernels.drop_path_residual(x, fn, 0.5, backend=backend)
    sets = set()
    for _ in range(6):
        graph.replay()
        torch.cuda.synchronize()
        changed = ((out - x).flatten(1).abs().sum(1) != 0).nonzero().flatten().tolist()
        assert len(changed) == 8
        sets.add(tuple(changed))
    assert len(sets) > 1, "every replay kept the same samples"


# ---------------------------------------------------------------------------
# Triton, ahead of time (no GPU needed): the kernels compile for sm_80 / sm_90
# with 128-bit accesses, and the triton_ops trace into their kernels
# ---------------------------------------------------------------------------


def _triton_kernels_module():
    pytest.importorskip("triton", reason="Triton is not installed")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"this Triton has no ASTSource/GPUTarget API: {e}")
    from sdkernels.triton_kernels import scaled_index_add as K

    if K.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 builds interpreter kernels: no AOT compile")
    return K


def _aot_ptx(K, name, dtypes, arch, consts, acc64=False, num_warps=8):
    from _aot import PTR, aot_ptx

    ptrs = {arg: PTR[dt] for arg, dt in dtypes.items()}
    ptrs.update({arg: "*i64" for arg in K.KERNELS[name].arg_names if arg in ("inv_ptr", "idx_ptr")})
    # aligned tensors and a row length divisible by 16, as the runtime specialises them
    return aot_ptx(name, K.KERNELS[name], ptrs, arch, dict(consts, ACC64=acc64), num_warps=num_warps,
                   divisible=("inner",))


def _tensor_ptrs(K, name):
    return [a for a in K.KERNELS[name].arg_names if a.endswith("_ptr") and a not in ("inv_ptr", "idx_ptr")]


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dt", ["fp32", "bf16"])
@pytest.mark.parametrize("name", ["scaled_index_add_rows", "index_scale_rows"])
def test_triton_row_kernels_use_128bit_accesses(name, dt, arch):
    import re

    K = _triton_kernels_module()
    ptx = _aot_ptx(K, name, {a: dt for a in _tensor_ptrs(K, name)}, arch, dict(BLOCK=4096))
    assert "ld.global.v4" in ptx and "st.global.v4" in ptx
    assert "ld.global.v2" not in ptx and not re.search(r"ld\.global(\.[a-z]+)*\.b16", ptx)
    if name == "scaled_index_add_rows":  # a row not in index skips src: a branch sits between the loads
        lines = ptx.splitlines()
        bra = next(i for i, l in enumerate(lines) if re.search(r"@%p\d+ bra", l))
        assert sum("ld.global.v4" in l for l in lines[:bra]) > 0 and sum("ld.global.v4" in l for l in lines[bra:]) > 0


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_triton_kernels_address_with_64bit_offsets(dt):
    """Every vector of addresses in every skip-path kernel is built from int64 offsets (TTIR)."""
    K = _triton_kernels_module()
    from _aot import PTR, aot_asm, tensor_offset_types

    for name, kern in K.KERNELS.items():
        ptrs = {arg: PTR[dt] for arg in _tensor_ptrs(K, name)}
        ptrs.update({arg: "*i64" for arg in kern.arg_names if arg in ("inv_ptr", "idx_ptr")})
        consts = dict(BLOCK=4096) if name.endswith("rows") else dict(ROWS=64, COLS=64)
        ttir = aot_asm(name, kern, ptrs, 90, dict(consts, ACC64=False), divisible=("inner",))["ttir"]
        assert tensor_offset_types(ttir) == {"i64"}, f"{name}: offsets {tensor_offset_types(ttir)}"


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_every_kernel_compiles(arch):
    K = _triton_kernels_module()
    combos = [("fp32", "fp32", "fp32", False), ("bf16", "bf16", "bf16", False), ("fp16", "fp16", "fp16", False),
              ("fp64", "fp64", "fp64", True), ("fp32", "fp32", "bf16", False), ("fp32", "bf16", "fp16", False),
              ("bf16", "fp64", None, True)]
    configs = {"rows": [dict(BLOCK=4096), dict(BLOCK=256)], "tiles": [dict(ROWS=4096, COLS=1), dict(ROWS=64, COLS=64)]}
    for name in K.KERNELS:
        ptrs = _tensor_ptrs(K, name)
        for out, a, b, acc64 in combos:
            if (len(ptrs) == 3) == (b is None):
                continue
            for consts in configs["rows" if name.endswith("rows") else "tiles"]:
                ptx = _aot_ptx(K, name, dict(zip(ptrs, [out, a, b])), arch, consts, acc64=acc64, num_warps=4)
                assert ".entry" in ptx


def test_triton_ops_trace_into_their_kernels_on_fake_cuda():
    """The triton_op bodies (not run on this machine otherwise) trace on fake CUDA tensors."""
    import logging

    K = _triton_kernels_module()
    if skip_ops.TRITON is None:
        pytest.skip(f"Triton skip ops not registered: {skip_ops.TRITON_IMPORT_ERROR!r}")
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    add, scale = skip_ops.TRITON["scaled_index_add"], skip_ops.TRITON["index_scale"]

    def f(r, s, idx):
        return add(r, s, idx, 1, 1 / 0.75), scale(r, idx, 1, 1 / 0.75, torch.bfloat16)

    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)
    with FakeTensorMode():
        r = torch.empty(197, 8, 1024, device="cuda")
        s = torch.empty(197, 6, 1024, dtype=torch.bfloat16, device="cuda")
        idx = torch.empty(6, dtype=torch.int64, device="cuda")
        gm = make_fx(dispatch_functionalize(f))(r, s, idx)
        o1, o2 = f(r, s, idx)
        assert o1.shape == r.shape and o1.dtype == torch.float32
        assert o2.shape == (197, 6, 1024) and o2.dtype == torch.bfloat16
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and "triton_kernel_wrapper" in str(n.target)]
    names = [getattr(k, "fn", k).fn.__name__ for k in (kernel_side_table.get_kernel(n.kwargs["kernel_idx"]) for n in calls)]
    assert names == ["_sia_rows_kernel", "_is_rows_kernel"]
    kw = calls[0].kwargs["kwargs"]
    assert (kw["inner"], kw["n"], kw["k"], kw["BLOCK"]) == (1024, 8, 6, 1024)
    assert not any("copy" in str(n.target) for n in gm.graph.nodes if "index_copy" not in str(n.target))


def test_block_suite_smoke():
    """benchmarks/blocks.py produces well-formed rows (tiny batch, one p, one timed step)."""
    blocks = pytest.importorskip("benchmarks.blocks")
    from benchmarks import report

    rows = blocks.run_block_suite("cpu", torch.float32, batch=2, ps=[0.5], repeats=1)
    assert {(r["op"], r["provider"]) for r in rows} == {(b, p) for b in blocks.BLOCKS for p in blocks.BLOCK_PROVIDERS}
    for r in rows:
        assert r["status"] == "ok", r.get("note")
        assert all(k in r for k in report.REQUIRED) and r["time_ms"] > 0 and r["batch"] == 2
    skip = [r for r in rows if r["provider"] == "skip"]
    assert all(r["kept"] == 1 and r["goal_ratio"] == pytest.approx(0.65) for r in skip)


def test_block_suite_profile_counts():
    """--profile counts each provider's ATen calls per step: the skip path's extra ops (randperm, the fused
    gather/scatter allocations) are there, eager's bernoulli_/div_/mul are not, and CUDA-only columns stay empty."""
    blocks = pytest.importorskip("benchmarks.blocks")
    rows = blocks.run_block_suite("cpu", torch.float32, batch=2, ps=[0.5], repeats=1, blocks=["resnet_bottleneck"],
                                  profile=True)
    by = {r["provider"]: r for r in rows}
    for r in rows:
        assert r["status"] == "ok", r.get("note")
        assert r["ops_per_step"] > 10 and r["launches_per_step"] is None and r["gpu_busy_ms"] is None
        assert r["syncs_per_step"] is None and r["top_kernels"] is None
        assert r["top_ops"].count("us") == blocks.TOP_N and "aten::" in r["top_ops"]
        assert r["ops_per_step"] == int(r["ops_per_step"])  # the same count every step
    # One residual: eager adds bernoulli_ + div_ + mul (+ mul, add in the backward) over fused's one op each way.
    assert by["fused"]["ops_per_step"] < by["eager"]["ops_per_step"]
    with pytest.raises(ValueError, match="profile runs with timer 'wall' only"):
        blocks.run_block_suite("cuda", batch=2, ps=[0.5], repeats=1, timer="graph", profile=True)


def test_block_suite_profile_counts_custom_ops_once():
    """A custom op is one operator call: the ATen calls inside it (allocation, casts) are its own work."""
    blocks = pytest.importorskip("benchmarks.blocks")
    r, b = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    sc = torch.tensor([1.0, 0.0, 1.0, 1.0])
    counts = blocks._profile(lambda: torch.ops.sdkernels.scaled_residual_add(r, b, sc, 0, 2.0), "cpu", steps=2)
    assert counts["ops_per_step"] == 1
    counts = blocks._profile(lambda: (r + b).mul_(2.0), "cpu", steps=2)
    assert counts["ops_per_step"] == 2
    assert blocks._is_op("aten::add") and blocks._is_op("sdkernels::index_scale")
    for name in ("autograd::engine::evaluate_function: AddBackward0", "torch::autograd::AccumulateGrad",
                 "AddBackward0", "cudaLaunchKernel", "profiler::_record_function_enter"):
        assert not blocks._is_op(name), name


def test_block_suite_profile_sync_count():
    """syncs_per_step counts blocking CUDA runtime calls made during the steps, not the closing syncs."""
    blocks = pytest.importorskip("benchmarks.blocks")
    from types import SimpleNamespace as NS

    from torch.autograd import DeviceType

    def ev(name, start, end, device=DeviceType.CPU, parent=None):
        return NS(name=name, device_type=device, cpu_parent=parent,
                  time_range=NS(start=start, end=end, elapsed_us=lambda: end - start))

    events = [
        ev(blocks._STEPS, 0, 50),
        ev("aten::add", 0, 10), ev("cudaLaunchKernel", 2, 4), ev("add_kernel", 5, 9, DeviceType.CUDA),
        ev("aten::item", 20, 30), ev("cudaStreamSynchronize", 22, 28),  # .item(): one sync
        ev("cudaMemcpyAsync", 31, 32), ev("cudaMemcpy", 33, 40),  # a blocking copy: one sync
        ev("cudaEventSynchronize", 41, 42),
        ev("cudaDeviceSynchronize", 101, 199),  # _profile's closing sync: not counted
        ev("cudaDeviceSynchronize", 201, 220),  # the profiler's own on exit: not counted
    ]
    counts = blocks._count_events(events, 2, "cuda")
    assert counts["syncs_per_step"] == 1.5  # three over two steps
    assert counts["launches_per_step"] == 0.5 and counts["gpu_busy_ms"] == pytest.approx(0.002)
    assert counts["ops_per_step"] == 1.0  # aten::add and aten::item over two steps
    assert counts["top_ops"] == "aten::add 5.0us; aten::item 5.0us"  # a tie: by name
    assert counts["top_kernels"] == "add_kernel 2.0us"
    assert blocks._top({"k" * 80: 10.0, "b": 30.0, "c": 1.0}, 2, n=2) == "b 15.0us; " + "k" * 60 + " 5.0us"
    assert blocks._count_events(events, 2, "cpu")["syncs_per_step"] is None
    for name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"):
        assert blocks._is_host_sync(name), name
    for name in ("cudaMemcpyAsync", "cudaLaunchKernel", "cudaStreamWaitEvent", "aten::_local_scalar_dense"):
        assert not blocks._is_host_sync(name), name


def test_block_suite_timer_checks():
    blocks = pytest.importorskip("benchmarks.blocks")
    with pytest.raises(ValueError, match="timer must be one of"):
        blocks.run_block_suite("cpu", batch=2, ps=[0.5], repeats=1, timer="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            blocks.run_block_suite("cpu", batch=2, ps=[0.5], repeats=1, timer="graph")
    with pytest.raises(ValueError, match="graph-safe"):
        blocks.run_block_suite("cuda", batch=2, ps=[0.5], repeats=1, timer="graph", providers=["eager", "skip-bernoulli"])
    assert blocks._timer_name({"timer": "cuda_graph_replay x5, wall_clock_sync"}) == "graph"
    assert blocks._timer_name({"timer": "wall_clock_sync (providers interleaved)"}) == "wall"
    assert blocks._timer_name({}) == "wall"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_block_suite_graph_timer_cuda():
    """The CUDA-graph timer captures every graph-safe provider's fwd+bwd step and replays it."""
    blocks = pytest.importorskip("benchmarks.blocks")
    rows = blocks.run_block_suite("cuda", torch.bfloat16, batch=4, ps=[0.5], repeats=2, timer="graph",
                                  blocks=["resnet_bottleneck"])
    assert [r["provider"] for r in rows] == list(blocks.BLOCK_PROVIDERS)
    for r in rows:
        assert r["status"] == "ok", r.get("note")
        assert r["timer"].startswith("cuda_graph") and r["time_ms"] > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_block_suite_profile_cuda():
    """On CUDA --profile counts kernel launches and their device time per step."""
    blocks = pytest.importorskip("benchmarks.blocks")
    rows = blocks.run_block_suite("cuda", torch.bfloat16, batch=4, ps=[0.5], repeats=2, blocks=["resnet_bottleneck"],
                                  profile=True, providers=blocks.ALL_PROVIDERS)
    for r in rows:
        assert r["status"] == "ok", r.get("note")
        assert r["launches_per_step"] >= 10 and r["ops_per_step"] >= 10
        assert 0 < r["gpu_busy_ms"] < 2 * r["time_ms"]  # one stream: kernels cannot outlast the step by much
        # No host sync in a graph-safe step; count "bernoulli" reads its kept count on the host.
        if r["provider"] == "skip-bernoulli":
            assert r["syncs_per_step"] >= 1, r["syncs_per_step"]
        else:
            assert r["syncs_per_step"] == 0, (r["provider"], r["syncs_per_step"])
        assert r["top_kernels"].count("us") == blocks.TOP_N


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graphed_skip_step_matches_eager_with_same_subset():
    """A replayed graph of the skip path computes what eager computes for the subset it drew.

    Replays draw fresh subsets; with the RNG state reset before a replay and
    before an eager step, both keep the same samples and their gradients agree.
    """
    blocks = pytest.importorskip("benchmarks.blocks")
    torch.manual_seed(0)
    m = blocks.Bottleneck(0.5, channels=16, width=4).cuda().train().to(memory_format=torch.channels_last)
    m.impl = "skip"
    x = torch.randn(6, 16, 8, 8, device="cuda").to(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn_like(x)
    replay, keep = blocks._graphed_step(m, x, g, None, "skip")
    grads = []
    for _ in range(2):
        torch.cuda.manual_seed(123)
        replay()
        torch.cuda.synchronize()
        grads.append(x.grad.clone())
    # Same seed, same subset.  Loose tolerances: cuDNN's backward need not be bitwise reproducible.
    loose = dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(grads[0], grads[1], **loose)
    torch.cuda.manual_seed(124)
    replay()
    torch.cuda.synchronize()
    assert not torch.allclose(x.grad, grads[0])  # a fresh subset
    # An eager step from the same seed keeps the same subset and gives the same gradient.
    m.zero_grad(set_to_none=True)
    x.grad = None
    torch.cuda.manual_seed(123)
    m(x).backward(g)
    torch.testing.assert_close(x.grad, grads[0], **loose)
    del keep


def test_import_without_triton():
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None\n"
            "import sdkernels, torch\n"
            "from sdkernels.ops import skip\n"
            "assert 'triton' not in sdkernels.available_backends('skip') and skip.TRITON_IMPORT_ERROR is not None\n"
            "x = torch.randn(4, 3)\n"
            "assert sdkernels.drop_path_residual(x, torch.sin, 0.5).shape == x.shape\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
