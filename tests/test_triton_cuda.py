"""The Triton backend on a GPU: reference comparisons, opcheck, torch.compile, CUDA graphs, 64-bit offsets.

Skipped without a CUDA device (marker ``cuda``) and under ``TRITON_INTERPRET=1``
(whose kernels are the interpreter's; see tests/test_triton_interpret.py).
"""
import os

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1: the compiled Triton kernels are tested in a normal process", allow_module_level=True)
pytest.importorskip("triton", reason="Triton is not installed")

import sdkernels  # noqa: E402
from sdkernels import reference as R  # noqa: E402
from _interpret import triton_twins  # noqa: E402
from _tolerances import TOL, assert_close  # noqa: E402

T, _err = triton_twins()
if T is None:
    pytest.skip(f"the Triton backend does not import: {_err}", allow_module_level=True)

DEV = "cuda"
BE = "triton"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MIXED = [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float32, torch.float16),
         (torch.float16, torch.bfloat16), (torch.float64, torch.float32), (torch.float64, torch.bfloat16)]
SHAPES = [(1, 7), (5, 1), (6, 42, 123, 31), (3, 2, 5000), (9, 3, 3), (4, 1, 1, 1), (2, 70000), (3000, 2),
          (64, 197, 768)]


def _gen(seed):
    return torch.Generator(device=DEV).manual_seed(seed)


def _inputs(shape, rdt, bdt, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(device=DEV, dtype=rdt)
    b = torch.randn(shape, generator=g, dtype=torch.float64).to(device=DEV, dtype=bdt)
    return r, b


def _check(r, b, p, **kw):
    out = sdkernels.drop_path_add(r, b, p, generator=_gen(3), backend=BE, **kw)
    exp = R.drop_path_add(r, b, p, generator=_gen(3), **kw)
    assert_close(out, exp)
    assert out.stride() == torch.empty_like(r).stride()
    return out


def test_backend_available_and_auto_rule():
    assert "triton" in sdkernels.available_backends()
    core = sdkernels.functional.CORE
    small, big = core.auto("cuda", 8 * 16 * 64), core.auto("cuda", 256 * 197 * 1024)
    want = "cuda" if "cuda" in sdkernels.available_backends() else "triton"
    assert small.name == want and big.name == want


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
# p = 0 never reaches the kernels and p = 0.5 compiles nothing new: kept to the
# values that change the kernels' work, so the GPU check stays within its budget.
@pytest.mark.parametrize("p", [0.1, 1.0])
@pytest.mark.parametrize("sample_dim", [0, 1, -1])
def test_matches_reference(shape, dtype, p, sample_dim):
    r, b = _inputs(shape, dtype, dtype)
    _check(r, b, p, sample_dim=sample_dim)
    y = sdkernels.drop_path(b, p, sample_dim=sample_dim, generator=_gen(5), backend=BE)
    assert_close(y, R.drop_path(b, p, sample_dim=sample_dim, generator=_gen(5)))


@pytest.mark.parametrize("rdt,bdt", MIXED, ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1, -1])
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_mixed_dtypes_modes(rdt, bdt, sample_dim, mode, scale_by_keep):
    r, b = _inputs((8, 6, 1030), rdt, bdt)
    out = _check(r, b, 0.5, sample_dim=sample_dim, mode=mode, scale_by_keep=scale_by_keep)
    assert out.dtype == torch.promote_types(rdt, bdt)


def test_layouts():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(8, 6, 5, 70, generator=g).to(DEV)
    cases = [
        (base.to(memory_format=torch.channels_last), base.to(memory_format=torch.channels_last) * 2),
        (base.to(memory_format=torch.channels_last), base * 3),
        (base.transpose(1, 3), (base * 2).transpose(1, 3)),
        (base[:, ::2], base[:, 1::2]),
        (base, base[:, :1].expand(8, 6, 5, 70)),
        (torch.randn(8 * 6 * 5 * 70 + 1, device=DEV)[1:].view(8, 6, 5, 70), base),
        (torch.randn(197, 16, 768, device=DEV, dtype=torch.bfloat16), torch.randn(197, 16, 768, device=DEV)),
    ]
    for r, b in cases:
        for dim in (0, 1, -1):
            _check(r, b, 0.3, sample_dim=dim)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_in_dropped_rows(dtype):
    keep = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0], device=DEV)
    for shape, dim in (((8, 3, 37), 0), ((3, 8, 4100), 1), ((50, 8), 1)):
        r, b = _inputs(shape, dtype, dtype)
        idx = [slice(None)] * len(shape)
        idx[dim] = keep == 0
        b[tuple(idx)] = float("nan")
        out = T.scaled_residual_add(r, b, keep, dim, 1 / 0.7)
        assert not torch.isnan(out).any() and torch.equal(out[tuple(idx)], r[tuple(idx)])
        assert_close(out, R.scaled_residual_add(r, b, keep, dim, 1 / 0.7))
        y = T.sample_scale(b, keep, dim, 1 / 0.7, None)
        assert not torch.isnan(y).any() and (y[tuple(idx)] == 0).all()


@pytest.mark.parametrize("rdt,bdt", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                     (torch.float32, torch.bfloat16), (torch.float64, torch.float64)], ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1])
def test_backward_matches_reference(rdt, bdt, sample_dim):
    shape = (16, 8, 1100)
    r = torch.randn(shape, device=DEV, dtype=rdt, requires_grad=True)
    b = torch.randn(shape, device=DEV, dtype=bdt, requires_grad=True)
    go = torch.randn(shape, device=DEV, dtype=torch.promote_types(rdt, bdt))
    out = sdkernels.drop_path_add(r, b, 0.3, sample_dim=sample_dim, generator=_gen(4), backend=BE)
    gr, gb = torch.autograd.grad(out, (r, b), go)
    r2, b2 = r.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    er, eb = torch.autograd.grad(R.drop_path_add(r2, b2, 0.3, sample_dim=sample_dim, generator=_gen(4)), (r2, b2), go)
    assert gr.dtype == rdt and gb.dtype == bdt
    assert_close(gr, er)
    assert_close(gb, eb)


def test_gradcheck_fp64():
    r = torch.randn(4, 3, 5, device=DEV, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, 5, device=DEV, dtype=torch.float64, requires_grad=True)

    def f(r, b):
        return sdkernels.drop_path_add(r, b, 0.4, generator=_gen(7), backend=BE)

    assert torch.autograd.gradcheck(f, (r, b))
    assert torch.autograd.gradgradcheck(f, (r, b))


def test_opcheck():
    for rdt, bdt in [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float64, torch.float64)]:
        for shape, dim in [((4, 3, 5), 0), ((4, 3, 5), 1), ((4, 3, 5), -1), ((2, 3, 1100), 1)]:
            r = torch.randn(shape, device=DEV, dtype=rdt, requires_grad=True)
            b = torch.randn(shape, device=DEV, dtype=bdt, requires_grad=True)
            keep = (torch.arange(shape[dim], device=DEV) % 3 != 1).float()
            torch.library.opcheck(T.scaled_residual_add, (r, b, keep, dim, 1.25))
            torch.library.opcheck(T.sample_scale, (b, keep, dim, 1.25, None))
            torch.library.opcheck(T.sample_scale, (b, keep, dim, 2.0, torch.float32))


class _Block(torch.nn.Module):
    def __init__(self, dim=64, p=0.5):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, dim)
        self.fc2 = torch.nn.Linear(dim, dim)
        self.dp1 = sdkernels.nn.DropPathAdd(p, backend=BE)
        self.dp2 = sdkernels.nn.DropPathAdd(p, sample_dim=1, backend=BE)

    def forward(self, x):
        x = self.dp1(x, self.fc1(x).relu())
        return self.dp2(x, self.fc2(x))


def _dropped_or_kept(out, res, branch, scale, dim):
    """Per sample along dim: True where out == res + branch * scale, False where out == res.

    "Kept" compares with the reference's all-kept result (rounded to out's dtype) at out's
    dtype tolerance: a bf16 output is not within 1e-5 of the unrounded fp32 sum.
    """
    full = R.scaled_residual_add(res, branch, torch.ones(1, device=res.device), dim, scale)
    tol = TOL[out.dtype]
    o, r, e = (t.movedim(dim, 0).flatten(1).float() for t in (out, res.to(out.dtype), full))
    dropped = (o == r).all(dim=1)
    kept = torch.isclose(o, e, rtol=tol["rtol"], atol=tol["atol"]).all(dim=1)
    assert bool((dropped | kept).all()), "every sample is either dropped or kept"
    return kept & ~dropped


def test_compile_fullgraph_sees_the_triton_kernels():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()

    def f(r, b):
        return sdkernels.drop_path_add(r, b, 0.5, backend=BE)

    r, b = _inputs((64, 16, 256), torch.float32, torch.float32)
    cf = torch.compile(f, fullgraph=True)
    out, code = run_and_get_code(cf, r, b)
    src = "\n".join(code)
    assert "_residual_add_rows_kernel" in src, "the Triton kernel must be visible to Inductor"
    kept = _dropped_or_kept(out, r, b, 2.0, 0)
    assert 0 < int(kept.sum()) < 64


def test_compile_fullgraph_module_forward_backward():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = _Block().to(DEV)
    cm = torch.compile(m, fullgraph=True)
    x = torch.randn(32, 8, 64, device=DEV, requires_grad=True)
    y = cm(x)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # eval: no drop, plain adds, equal to eager
    m.eval()
    with torch.no_grad():
        assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)


def test_cuda_graph_replay_draws_fresh_masks():
    r, b = _inputs((64, 4, 1024), torch.bfloat16, torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up: compile the kernels before capture
        for _ in range(2):
            sdkernels.drop_path_add(r, b, 0.5, backend=BE)
            sdkernels.drop_path(b, 0.5, backend=BE)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sdkernels.drop_path_add(r, b, 0.5, backend=BE)
        y = sdkernels.drop_path(b, 0.5, backend=BE)
    masks = []
    for _ in range(8):
        graph.replay()
        torch.cuda.synchronize()
        kept = _dropped_or_kept(out, r, b, 2.0, 0)
        kept_y = _dropped_or_kept(y, torch.zeros_like(b), b, 2.0, 0)
        masks.append((tuple(kept.tolist()), tuple(kept_y.tolist())))
    assert len(set(masks)) == len(masks), "each replay must draw a new mask"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_a_gpu_that_is_not_current():
    # Triton launches on the current device: the ops must switch to the tensors' GPU.
    r, b = _inputs((4, 3, 1100), torch.float32, torch.bfloat16)
    r, b = r.to("cuda:1"), b.to("cuda:1")
    keep = torch.tensor([1.0, 0, 1, 1], device="cuda:1")
    with torch.cuda.device(0):
        out = T.scaled_residual_add(r, b, keep, 0, 1.25)
        y = T.sample_scale(b, keep, 0, 1.25, None)
        bt = b.movedim(0, -1).contiguous()  # sample dim last: inner = 1, the tile kernel
        t = T.sample_scale(bt, keep, -1, 1.25, torch.float32)
    assert out.device == y.device == t.device == torch.device("cuda:1")
    assert_close(out, R.scaled_residual_add(r, b, keep, 0, 1.25))
    assert_close(y, R.sample_scale(b, keep, 0, 1.25))
    assert_close(t, R.sample_scale(bt, keep, -1, 1.25, torch.float32))


def test_64bit_offsets():
    # More than 2**31 elements: row offsets (row kernel) and row ids (tile kernel) overflow int32.
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GB of free GPU memory")
    n = 2**30 + 64
    x = torch.ones(2, n, device=DEV, dtype=torch.bfloat16)
    keep = torch.tensor([0.0, 1.0], device=DEV)
    y = T.sample_scale(x, keep, 0, 2.0, None)  # row kernel, offsets up to 2**31 + 127
    assert bool((y[0] == 0).all()) and bool((y[1] == 2).all())
    del y
    out = T.scaled_residual_add(x, x, keep, 0, 2.0)
    assert bool((out[0] == 1).all()) and bool((out[1] == 3).all())
    del out
    xt = x.view(n, 2)  # sample_dim=1: inner = 1, 2**31 + 128 rows in the tile kernel
    y = T.sample_scale(xt, keep, 1, 2.0, None)
    assert bool((y[:, 0] == 0).all()) and bool((y[:, 1] == 2).all())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", [None, torch.float32, torch.bfloat16], ids=str)
def test_sample_scale_bitwise(dtype, out_dtype):
    # One multiply in the math type and one round-to-nearest-even: bit for bit the reference.
    x, _ = _inputs((6, 5, 1029), dtype, dtype)
    for keep in (torch.tensor([1.0, 0, 1, 1, 0, 1], device=DEV), torch.tensor([1.0], device=DEV),
                 torch.tensor([0.5, 1, 0, 2, 1, 1], dtype=torch.float64, device=DEV)):
        for dim in (0, 1):
            k = keep if keep.numel() == 1 or dim == 0 else keep[:5]
            assert torch.equal(T.sample_scale(x, k, dim, 1 / 0.9, out_dtype), R.sample_scale(x, k, dim, 1 / 0.9, out_dtype))
