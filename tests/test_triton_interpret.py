"""The Triton backend on CPU tensors under the Triton interpreter, against sdkernels.reference.

Run in its own process:  ``TRITON_INTERPRET=1 pytest -m triton_interpret``
(``TRITON_INTERPRET`` is read when ``@triton.jit`` runs, so it must be set
before sdkernels imports Triton).  Shapes are small (the interpreter is slow)
but chosen to hit both kernel shapes, row tails, several blocks per row, a
tile spanning many rows, one sample, and ``inner == 1``.
"""
import math

import pytest

from _interpret import triton_ops_under_interpreter

pytestmark = pytest.mark.triton_interpret

T, K = triton_ops_under_interpreter()

import torch  # noqa: E402
from torch.autograd import gradcheck, gradgradcheck  # noqa: E402
import sdkernels  # noqa: E402
from sdkernels import reference as R  # noqa: E402
from sdkernels.ops import core as core_ops  # noqa: E402
from sdkernels.triton_kernels import common as KC  # noqa: E402
from _tolerances import assert_close  # noqa: E402

BE = "triton"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MIXED = [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float32, torch.float16),
         (torch.float16, torch.bfloat16), (torch.float64, torch.float32), (torch.float64, torch.bfloat16)]
# (shape, note): row kernel with a tail / several blocks per row, tile kernel, one sample, inner == 1.
SHAPES = [
    (1, 7),  # one sample: one row
    (5, 1),  # inner == 1 (n == numel)
    (6, 42, 13),  # tile kernel, odd row length 546
    (3, 2, 1100),  # row kernel, one block + tail
    (2, 9000),  # row kernel, several blocks per row
    (9, 3, 3),  # tiny rows
    (4, 1, 1, 1),  # size-1 dims
    (3000, 2),  # tile kernel over several programs, the last one partial
]

# Kernel choices: "auto" as shipped; "rows" forces the row kernel, "tiles" the tile kernel
# (wherever the tensor is more than one row); "small" shrinks the blocks so small shapes
# still span many programs per row / many rows per tile.
VARIANTS = {
    "auto": {},
    "rows": {"ROW_KERNEL_MIN_INNER": 100},  # not lower: one program per element is very slow here
    "tiles": {"ROW_KERNEL_MIN_INNER": 1 << 40},
    "small": {"MAX_BLOCK": 512, "_TILE": 256},  # _TILE: a peek, the tile size has no public name
}


@pytest.fixture(params=list(VARIANTS))
def variant(request, monkeypatch):
    for k, v in VARIANTS[request.param].items():
        monkeypatch.setattr(K, k, v)
        if hasattr(KC, k):  # MAX_BLOCK: row_block reads it in triton_kernels.common; the launch cache keys on K's
            monkeypatch.setattr(KC, k, v)
    if request.param == "small":
        assert K.launch_params(9000, 18000).block == 512 and K.launch_params(13, 13 * 64).block == 256
    return request.param


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _inputs(shape, rdt, bdt, seed=1):
    g = _gen(seed)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(rdt)
    b = torch.randn(shape, generator=g, dtype=torch.float64).to(bdt)
    return r, b


def _check(r, b, p, **kw):
    out = sdkernels.drop_path_add(r, b, p, generator=_gen(3), backend=BE, **kw)
    exp = R.drop_path_add(r, b, p, generator=_gen(3), **kw)
    assert_close(out, exp)
    assert out.stride() == torch.empty_like(r).stride()
    return out, exp


def test_backend_is_registered_for_cpu():
    assert "triton" in sdkernels.available_backends()
    be = sdkernels.functional.CORE["triton"]
    assert be.devices == frozenset({"cpu", "cuda"})
    # The backend calls the eager fast path (tests/test_triton_fastpath.py), which falls back to
    # the registered ops, TRITON["ops"] of the family.
    twin = core_ops.TRITON
    assert be.residual_add is twin["residual_add"] and be.sample_scale is twin["sample_scale"]
    assert twin["ops"] == (torch.ops.sdkernels.scaled_residual_add_triton.default,
                           torch.ops.sdkernels.sample_scale_triton.default)
    assert T.scaled_residual_add is torch.ops.sdkernels.scaled_residual_add_triton.default
    assert T.sample_scale is torch.ops.sdkernels.sample_scale_triton.default
    # "auto" keeps the C++ kernel on CPU.
    if "cpu" in sdkernels.available_backends():
        assert sdkernels.functional.CORE.auto("cpu", 1 << 30).name == "cpu"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_drop_path_add_matches_reference(shape, dtype, p):
    r, b = _inputs(shape, dtype, dtype)
    _check(r, b, p)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1, -1])
def test_kernel_variants(variant, shape, dtype, sample_dim):
    if sample_dim == 1 and len(shape) < 2:
        pytest.skip("1-d")
    r, b = _inputs(shape, dtype, dtype)
    _check(r, b, 0.5, sample_dim=sample_dim)
    y = sdkernels.drop_path(b, 0.5, sample_dim=sample_dim, generator=_gen(5), backend=BE)
    assert_close(y, R.drop_path(b, 0.5, sample_dim=sample_dim, generator=_gen(5)))


@pytest.mark.parametrize("rdt,bdt", MIXED, ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1, -1])
def test_mixed_dtypes(rdt, bdt, sample_dim):
    r, b = _inputs((4, 6, 33), rdt, bdt)
    out, _ = _check(r, b, 0.5, sample_dim=sample_dim)
    assert out.dtype == torch.promote_types(rdt, bdt)


@pytest.mark.parametrize("sample_dim", [0, 1, 2, 3, -1, -3])
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_sample_dim_modes(sample_dim, mode, scale_by_keep):
    r, b = _inputs((5, 4, 6, 7), torch.float32, torch.float32)
    for p in (0.1, 0.5):
        _check(r, b, p, sample_dim=sample_dim, mode=mode, scale_by_keep=scale_by_keep)
        y = sdkernels.drop_path(b, p, sample_dim=sample_dim, mode=mode, scale_by_keep=scale_by_keep,
                                generator=_gen(2), backend=BE)
        assert_close(y, R.drop_path(b, p, sample_dim=sample_dim, mode=mode, scale_by_keep=scale_by_keep,
                                    generator=_gen(2)))


def _layouts():
    g = _gen(5)
    base = torch.randn(4, 6, 5, 7, generator=g)
    yield "contiguous", base, base.clone()
    yield "channels_last", base.to(memory_format=torch.channels_last), base.to(memory_format=torch.channels_last) * 2
    yield "mixed_formats", base.to(memory_format=torch.channels_last), base * 3
    yield "transposed", base.transpose(1, 3), (base * 2).transpose(1, 3)
    yield "sliced", base[:, ::2], base[:, 1::2]
    yield "expanded_branch", base, base[:, :1].expand(4, 6, 5, 7)
    yield "seq_first", torch.randn(9, 4, 33, generator=g), torch.randn(9, 4, 33, generator=g)
    yield "seq_first_long", torch.randn(3, 4, 1100, generator=g), torch.randn(3, 4, 1100, generator=g)
    yield "offset", torch.randn(4 * 6 * 5 * 7 + 1, generator=g)[1:].view(4, 6, 5, 7), base
    yield "size1_strides", base[:, :1], base[:, 2:3]


@pytest.mark.parametrize("sample_dim", [0, 1, -1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layouts(sample_dim, dtype):
    for name, r, b in _layouts():
        out, _ = _check(r.to(dtype), b.to(dtype), 0.5, sample_dim=sample_dim)
        if name.startswith("channels_last") or name == "mixed_formats":
            assert out.is_contiguous(memory_format=torch.channels_last), name


def test_seq_first_takes_the_fast_path_without_copies(monkeypatch):
    # [S, B, H] with sample_dim=1: inner = H, n = B; the inputs reach the kernel as they are.
    r, b = _inputs((5, 4, 1100), torch.float32, torch.float32)
    seen = []
    real = K.launch_scaled_residual_add

    def spy(out, residual, branch, scale, alpha, n, inner, wrap=None):
        seen.append((residual.data_ptr(), branch.data_ptr(), n, inner))
        return real(out, residual, branch, scale, alpha, n, inner, wrap)

    monkeypatch.setattr(K, "launch_scaled_residual_add", spy)
    _check(r, b, 0.5, sample_dim=1)
    assert seen == [(r.data_ptr(), b.data_ptr(), 4, 1100)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_in_dropped_rows_never_reaches_output(variant, dtype):
    keep = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0])
    for shape, dim in (((8, 3, 37), 0), ((3, 8, 1100), 1), ((5, 8), 1)):
        r, b = _inputs(shape, dtype, dtype)
        idx = [slice(None)] * len(shape)
        idx[dim] = keep == 0
        b[tuple(idx)] = float("nan")
        out = T.scaled_residual_add(r, b, keep, dim, 1 / 0.7)
        assert not torch.isnan(out).any()
        assert torch.equal(out[tuple(idx)], r[tuple(idx)])
        assert_close(out, R.scaled_residual_add(r, b, keep, dim, 1 / 0.7))
        y = T.sample_scale(b, keep, dim, 1 / 0.7, None)
        assert not torch.isnan(y).any() and (y[tuple(idx)] == 0).all()
        assert_close(y, R.sample_scale(b, keep, dim, 1 / 0.7))


def test_nan_in_kept_rows_propagates():
    r, b = _inputs((4, 40), torch.float32, torch.float32)
    b[0, 3] = float("nan")
    b[2, 5] = float("inf")
    keep = torch.tensor([1.0, 1, 1, 0])
    out = T.scaled_residual_add(r, b, keep, 0, 2.0)
    assert torch.isnan(out[0, 3]) and torch.isinf(out[2, 5])
    assert_close(out, R.scaled_residual_add(r, b, keep, 0, 2.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", [None, torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_sample_scale_op(dtype, out_dtype):
    x, _ = _inputs((6, 5, 129), dtype, dtype)
    for keep in (torch.tensor([1.0, 0, 1, 1, 0, 1]), torch.tensor([1.0]), torch.tensor([0.0], dtype=torch.float64),
                 torch.tensor([0.5, 1, 0, 2, 1, 1], dtype=torch.float64)):
        y = T.sample_scale(x, keep, 0, 1.25, out_dtype)
        exp = R.sample_scale(x, keep, 0, 1.25, out_dtype)
        # One multiply in the math type, one round-to-nearest-even: bit for bit the reference
        # (catches a truncating conversion, which the one-rounding tolerance would let through).
        assert torch.equal(y, exp)


def test_conversions_round_to_nearest_even():
    x = torch.randn(4, 1000, dtype=torch.float64) * 100
    keep = torch.ones(4)
    for src in (torch.float64, torch.float32):
        for dst in (torch.bfloat16, torch.float16, torch.float32):
            if dst == src:
                continue
            xs = x.to(src)
            assert torch.equal(T.sample_scale(xs, keep, 0, 1.0, dst), xs.to(dst)), (src, dst)
            # dropped rows of the residual: copied, then converted exactly as torch does
            r = xs.to(dst)
            assert torch.equal(T.scaled_residual_add(r, xs, torch.zeros(4), 0, 1.0), r.to(torch.promote_types(dst, src)))


def test_fp64_multiplier_is_exact():
    # alpha = 1/(1 - p) is not an fp32 number: fp64 math must use the double, fp32 math its fp32 rounding.
    x = torch.randn(4, 300, dtype=torch.float64)
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    for alpha in (1 / 0.9, 1 / 0.7, 1 / 3, 1e-20 / 3, 3e30 / 7):
        assert torch.equal(T.sample_scale(x, keep, 0, alpha, None), R.sample_scale(x, keep, 0, alpha))
        r = torch.randn(4, 300, dtype=torch.float64)
        assert_close(T.scaled_residual_add(r, x, keep, 0, alpha), R.scaled_residual_add(r, x, keep, 0, alpha))
        x32 = x.float()
        assert torch.equal(T.sample_scale(x32, keep, 0, alpha, None), R.sample_scale(x32, keep, 0, alpha))


def test_split_alpha():
    import struct

    for a in (1.0, 1 / 0.9, 1 / 0.7, -1 / 3, 2.0 ** -60 / 3, 1e30 / 7, 0.0):
        hi, mid, lo = K.split_alpha(a)
        assert hi == struct.unpack("f", struct.pack("f", a))[0]
        for v in (hi, mid, lo):
            assert struct.unpack("f", struct.pack("f", v))[0] == v
        assert hi + mid + lo == a
    assert K.split_alpha(float("inf")) == (float("inf"), 0.0, 0.0)
    assert K.split_alpha(1e300)[0] == float("inf")
    # Splits are cached, but -0.0 (equal to 0.0 as a key) keeps its sign after 0.0 was split, and back.
    for a in (0.0, -0.0, 0.0):
        assert math.copysign(1.0, K.split_alpha(a)[0]) == math.copysign(1.0, a)
    assert math.isnan(K.split_alpha(float("nan"))[0])


def test_scale_numel_one_and_fp64_scale():
    r, b = _inputs((6, 4, 9), torch.bfloat16, torch.float32)
    for keep in (torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor(1.0, dtype=torch.float64),
                 torch.tensor([1.0, 0, 0, 1], dtype=torch.float64)):
        for dim in (0, 1, 2) if keep.numel() == 1 else (1,):
            assert_close(T.scaled_residual_add(r, b, keep, dim, 1.5), R.scaled_residual_add(r, b, keep, dim, 1.5))


def test_p_one_gives_residual_and_zeros():
    r, b = _inputs((6, 10), torch.float32, torch.float32)
    b[0] = float("nan")
    assert torch.equal(sdkernels.drop_path_add(r, b, 1.0, backend=BE), r)
    assert torch.equal(sdkernels.drop_path(b, 1.0, backend=BE), torch.zeros_like(b))


def test_eval_and_p_zero_are_plain_add():
    r, b = _inputs((6, 10), torch.float32, torch.bfloat16)
    for kw in (dict(p=0.5, training=False), dict(p=0.0)):
        assert torch.equal(sdkernels.drop_path_add(r, b, backend=BE, **kw), r + b)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,)], ids=str)
def test_zero_elements(shape):
    r = torch.randn(shape)
    assert sdkernels.drop_path_add(r, r.clone(), 0.5, backend=BE).shape == r.shape
    assert sdkernels.drop_path(r, 0.5, backend=BE).shape == r.shape


def test_errors_match_the_cpp_op():
    r = torch.randn(4, 5)
    keep = torch.ones(4)
    cases = [
        (TypeError, "scaled_residual_add", (r.int(), r, keep, 0, 1.0)),
        (ValueError, "scaled_residual_add", (r, torch.randn(4, 6), keep, 0, 1.0)),
        (IndexError, "scaled_residual_add", (r, r, keep, 2, 1.0)),
        (ValueError, "scaled_residual_add", (r, r, torch.ones(3), 0, 1.0)),
        (TypeError, "scaled_residual_add", (r, r, torch.ones(4, dtype=torch.float16), 0, 1.0)),
        (TypeError, "sample_scale", (r, keep, 0, 1.0, torch.int32)),
        (IndexError, "sample_scale", (r, keep, -3, 1.0, None)),
    ]
    has_cpp = sdkernels._ext.has_kernel("scaled_residual_add", "CPU")
    for exc, name, args in cases:
        with pytest.raises(exc):
            getattr(T, name)(*args)
        if has_cpp:
            with pytest.raises(exc):
                getattr(torch.ops.sdkernels, name)(*args)
    with pytest.raises(TypeError):  # no fp8 kernels
        T.scaled_residual_add(r.to(torch.float8_e4m3fn), r, keep, 0, 1.0)
    with pytest.raises(TypeError):
        T.sample_scale(r, keep, 0, 1.0, torch.float8_e5m2)


# ---- backward ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rdt,bdt", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                     (torch.float16, torch.float16), (torch.float64, torch.float64),
                                     (torch.float32, torch.bfloat16), (torch.float64, torch.bfloat16)], ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1, -1])
@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_backward_matches_reference(rdt, bdt, sample_dim, p):
    shape = (6, 5, 33)
    r = torch.randn(shape, dtype=rdt, requires_grad=True)
    b = torch.randn(shape, dtype=bdt, requires_grad=True)
    go = torch.randn(shape, dtype=torch.promote_types(rdt, bdt))
    out = sdkernels.drop_path_add(r, b, p, sample_dim=sample_dim, generator=_gen(4), backend=BE)
    gr, gb = torch.autograd.grad(out, (r, b), go)
    r2, b2 = r.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    exp = R.drop_path_add(r2, b2, p, sample_dim=sample_dim, generator=_gen(4))
    er, eb = torch.autograd.grad(exp, (r2, b2), go)
    assert gr.dtype == rdt and gb.dtype == bdt
    assert_close(gr, er)
    assert_close(gb, eb)
    x = b.detach().clone().requires_grad_()
    gx, = torch.autograd.grad(sdkernels.drop_path(x, p, sample_dim=sample_dim, generator=_gen(6), backend=BE), x, go.to(bdt))
    x2 = x.detach().clone().requires_grad_()
    ex, = torch.autograd.grad(R.drop_path(x2, p, sample_dim=sample_dim, generator=_gen(6)), x2, go.to(bdt))
    assert_close(gx, ex)


def test_grad_residual_is_grad_out_itself():
    r = torch.randn(4, 8, requires_grad=True)
    b = torch.randn(4, 8, requires_grad=True)
    out = sdkernels.drop_path_add(r, b, 0.5, backend=BE)
    go = torch.randn_like(out)
    seen = {}
    r.register_hook(lambda g: seen.setdefault("r", g))
    out.backward(go)
    assert seen["r"].data_ptr() == go.data_ptr()


def test_backward_of_a_non_contiguous_grad():
    r = torch.randn(3, 4, 1100, requires_grad=True)
    b = torch.randn(3, 4, 1100, requires_grad=True)
    out = sdkernels.drop_path_add(r, b, 0.5, sample_dim=1, generator=_gen(8), backend=BE)
    out.sum().backward()  # grad_out is an expanded (stride 0) tensor
    keep = R.draw_keep(4, 0.5, "row", "cpu", _gen(8))
    exp = (keep * 2).view(1, 4, 1).expand(3, 4, 1100)
    assert_close(b.grad, exp.contiguous())


@pytest.mark.parametrize("sample_dim", [0, 1])
def test_gradcheck_fp64_public_functions(sample_dim):
    r = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)

    def f(r, b):  # a fixed mask: a fresh generator with one seed on every call
        return sdkernels.drop_path_add(r, b, 0.4, sample_dim=sample_dim, generator=_gen(7), backend=BE)

    def g(b):
        return sdkernels.drop_path(b, 0.4, sample_dim=sample_dim, generator=_gen(7), backend=BE)

    assert gradcheck(f, (r, b))
    assert gradgradcheck(f, (r, b))
    assert gradcheck(g, (b,))
    assert gradgradcheck(g, (b,))


def test_gradcheck_fp64_ops_with_fixed_scale():
    r = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert gradcheck(lambda r, b: T.scaled_residual_add(r, b, keep, 1, 1 / 0.75), (r, b))
    assert gradgradcheck(lambda r, b: T.scaled_residual_add(r, b, keep, 1, 1 / 0.75), (r, b))
    assert gradcheck(lambda b: T.sample_scale(b, keep, 1, 1 / 0.75, None), (b,))


# ---- torch.library / torch.compile ------------------------------------------------------------


def _op_cases():
    yield (4, 3, 5), 0, torch.float32, torch.float32
    yield (4, 3, 5), 1, torch.float32, torch.bfloat16
    yield (4, 3, 5), -1, torch.float64, torch.float64
    yield (2, 3, 1100), 1, torch.bfloat16, torch.bfloat16


def test_opcheck_triton_ops_on_cpu():
    for shape, dim, rdt, bdt in _op_cases():
        r = torch.randn(shape, dtype=rdt, requires_grad=rdt != torch.bfloat16)
        b = torch.randn(shape, dtype=bdt, requires_grad=True)
        keep = (torch.arange(shape[dim]) % 3 != 1).float()
        torch.library.opcheck(T.scaled_residual_add, (r, b, keep, dim, 1.25))
        torch.library.opcheck(T.sample_scale, (b, keep, dim, 1.25, None))
        torch.library.opcheck(T.sample_scale, (b, keep, dim, 2.0, torch.float32))
    cl = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    torch.library.opcheck(T.scaled_residual_add, (cl, torch.randn(2, 3, 4, 5), torch.tensor([1.0, 0.0]), 0, 1.0))


def test_compile_fullgraph_on_cpu_under_interpreter():
    # Interpreted kernels cannot be lowered by Inductor: under TRITON_INTERPRET=1 the ops are
    # opaque custom ops, so this checks the trace (no graph break), fake kernels and autograd;
    # the compiled-kernel path is tests/test_triton_cuda.py's.
    torch._dynamo.reset()

    def f(r, b):
        y = sdkernels.drop_path_add(r, b, 0.5, backend=BE, sample_dim=1)
        return sdkernels.drop_path(y, 0.25, backend=BE) * 2

    r = torch.randn(8, 4, 40, requires_grad=True)
    b = torch.randn(8, 4, 40, requires_grad=True)
    cf = torch.compile(f, fullgraph=True)
    torch.manual_seed(11)
    out = cf(r, b)
    go = torch.randn_like(out)
    g = torch.autograd.grad(out, (r, b), go)
    torch.manual_seed(11)
    r2, b2 = r.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    exp = R.drop_path(R.drop_path_add(r2, b2, 0.5, sample_dim=1), 0.25) * 2
    ge = torch.autograd.grad(exp, (r2, b2), go)
    assert_close(out, exp)
    assert_close(g[0], ge[0])
    assert_close(g[1], ge[1])
