"""The skip path's Triton kernels under the Triton interpreter, on CPU tensors.

Run in their own process: ``TRITON_INTERPRET=1 python -m pytest -m triton_interpret``
(TRITON_INTERPRET is read when ``@triton.jit`` runs).  The Triton ops are
compared bit for bit with the C++ CPU ops and, through them, with
sdkernels.reference.
"""
import os

import pytest
import torch

pytestmark = [
    pytest.mark.triton_interpret,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (own process)"),
]

import sdkernels  # noqa: E402
from sdkernels import reference as R  # noqa: E402
from sdkernels.ops import skip as skip_ops  # noqa: E402
from sdkernels._ext import HAS_EXT  # noqa: E402
from _tolerances import assert_close  # noqa: E402


def _triton_ready():
    if "triton" not in sdkernels.available_backends("skip"):
        pytest.skip(f"Triton skip ops not registered: {skip_ops.TRITON_IMPORT_ERROR!r}")


def _inputs(shape, dim, cl, rdt, sdt, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    residual = torch.randn(shape, generator=g).to(rdt)
    sshape = list(shape)
    sshape[dim] = k
    src = torch.randn(sshape, generator=g).to(sdt)
    if cl:
        residual = residual.to(memory_format=torch.channels_last)
        src = src.to(memory_format=torch.channels_last)
    index = torch.randperm(shape[dim], generator=g)[:k]
    return residual, src, index


SHAPES = [((6, 3, 1030), 0, False), ((6, 3, 5), 1, False), ((4, 3, 7), -1, False), ((5, 3, 4, 6), 0, True),
          ((1, 9), 0, False), ((3, 2100), 1, False)]
DTYPES = [(torch.float32, torch.float32), (torch.float64, torch.float64), (torch.float16, torch.float16),
          (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("rdt,sdt", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim,cl", SHAPES, ids=str)
def test_triton_ops_match_reference(rdt, sdt, shape, dim, cl):
    _triton_ready()
    n = shape[dim]
    for k in sorted({0, 1, max(1, n // 2), n}):
        r, s, idx = _inputs(shape, dim, cl, rdt, sdt, k, seed=k)
        alpha = n / max(k, 1) + 0.1
        out = torch.ops.sdkernels.scaled_index_add_triton(r, s, idx, dim, alpha)
        full = torch.zeros(r.shape, dtype=s.dtype)
        full.index_copy_(dim % r.dim(), idx, s)
        mask = torch.zeros(n)
        mask[idx] = 1.0
        assert_close(out, R.scaled_residual_add(r, full, mask, dim, alpha))
        g = torch.ops.sdkernels.index_scale_triton(r, idx, dim, alpha, sdt)
        assert_close(g, R.sample_scale(r.index_select(dim, idx), torch.ones(k), dim, alpha, sdt))
        if HAS_EXT:  # same math, same rounding: bit for bit with the C++ ops, same layouts
            cpu = torch.ops.sdkernels.scaled_index_add(r, s, idx, dim, alpha)
            assert torch.equal(out, cpu) and out.stride() == cpu.stride()
            cg = torch.ops.sdkernels.index_scale(r, idx, dim, alpha, sdt)
            assert torch.equal(g, cg)
            assert all(sz == 1 or a == b for sz, a, b in zip(g.shape, g.stride(), cg.stride()))


def test_triton_opcheck_and_gradcheck():
    _triton_ready()
    from torch.autograd import gradcheck, gradgradcheck

    r, s, idx = _inputs((5, 3, 4), 1, False, torch.float64, torch.float64, 2)
    r.requires_grad_()
    s.requires_grad_()
    torch.library.opcheck(torch.ops.sdkernels.scaled_index_add_triton.default, (r, s, idx, 1, 1.5))
    torch.library.opcheck(torch.ops.sdkernels.index_scale_triton.default, (r, idx, 1, 1.5, None))
    f = lambda r, s: torch.ops.sdkernels.scaled_index_add_triton(r, s, idx, 1, 1.5)  # noqa: E731
    assert gradcheck(f, (r, s))
    assert gradgradcheck(f, (r, s))


@pytest.mark.parametrize("count", ["fixed", "bernoulli"])
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_drop_path_residual_triton_matches_reference(count, mode):
    _triton_ready()
    x = torch.randn(12, 5, 40, requires_grad=True)
    lin = torch.nn.Linear(40, 40)
    outs, grads = [], []
    for backend in ("triton", "reference"):
        x.grad = None
        lin.zero_grad()
        out = sdkernels.drop_path_residual(x, lin, 0.4, mode=mode, count=count, sample_dim=0,
                                           generator=torch.Generator().manual_seed(2), backend=backend)
        out.backward(torch.ones_like(out))
        outs.append(out.detach())
        wg = lin.weight.grad  # None after a dropped batch
        grads.append((x.grad.clone(), torch.zeros_like(lin.weight) if wg is None else wg.clone()))
    assert_close(outs[0], outs[1])
    assert_close(grads[0][0], grads[1][0])
    assert_close(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-5)
