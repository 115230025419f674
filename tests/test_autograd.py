"""Backward of the fused ops: values, dtypes, saved tensors, gradcheck, checkpointing."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.utils.checkpoint import checkpoint

import sdkernels
from sdkernels import reference as R
from _tolerances import assert_close


def _gen(seed, device):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("rdt,bdt", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                     (torch.float16, torch.float16), (torch.float64, torch.float64),
                                     (torch.float32, torch.bfloat16), (torch.float32, torch.float16)], ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1])
@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_backward_matches_reference(device_backend, rdt, bdt, sample_dim, p):
    device, backend = device_backend
    r = torch.randn(6, 5, 33, device=device, dtype=rdt, requires_grad=True)
    b = torch.randn(6, 5, 33, device=device, dtype=bdt, requires_grad=True)
    go = torch.randn(6, 5, 33, device=device, dtype=torch.promote_types(rdt, bdt))
    out = sdkernels.drop_path_add(r, b, p, sample_dim=sample_dim, generator=_gen(4, device), backend=backend)
    gr, gb = torch.autograd.grad(out, (r, b), go)
    r2, b2 = r.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    exp = R.drop_path_add(r2, b2, p, sample_dim=sample_dim, generator=_gen(4, device))
    er, eb = torch.autograd.grad(exp, (r2, b2), go)
    assert gr.dtype == rdt and gb.dtype == bdt
    assert_close(gr, er)
    assert_close(gb, eb)


def test_grad_residual_is_grad_out_itself(device_backend):
    device, backend = device_backend
    r = torch.randn(4, 8, device=device, requires_grad=True)
    b = torch.randn(4, 8, device=device, requires_grad=True)
    out = sdkernels.drop_path_add(r, b, 0.5, backend=backend)
    go = torch.randn_like(out)
    seen = {}
    r.register_hook(lambda g: seen.setdefault("r", g))
    out.backward(go)
    assert seen["r"] is go or seen["r"].data_ptr() == go.data_ptr(), "grad_residual must be grad_out, not a copy"


def test_p_one_branch_grad_is_zeros(device_backend):
    device, backend = device_backend
    r = torch.randn(4, 8, device=device, requires_grad=True)
    b = torch.randn(4, 8, device=device, requires_grad=True)
    out = sdkernels.drop_path_add(r, b, 1.0, backend=backend)
    assert torch.equal(out, r.detach())
    out.sum().backward()
    assert b.grad is not None and torch.equal(b.grad, torch.zeros_like(b))
    assert torch.equal(r.grad, torch.ones_like(r))
    x = torch.randn(4, 8, device=device, requires_grad=True)
    sdkernels.drop_path(x, 1.0, backend=backend).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_backward_saves_only_the_scale(device_backend):
    device, backend = device_backend
    n = 6
    r = torch.randn(n, 5, 7, device=device, requires_grad=True)
    b = torch.randn(n, 5, 7, device=device, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sdkernels.drop_path_add(r, b, 0.5, backend=backend)
        y = sdkernels.drop_path(b, 0.5, backend=backend)
    assert len(saved) == 2, f"expected only the two scale vectors, got {[tuple(t.shape) for t in saved]}"
    assert all(t.numel() == n for t in saved)
    (out.sum() + y.sum()).backward()


@pytest.mark.parametrize("sample_dim", [0, -1])
def test_gradcheck_and_gradgradcheck_fp64(device_backend, sample_dim):
    device, backend = device_backend
    be = sdkernels.functional.CORE[backend]
    r = torch.randn(5, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
    n = r.shape[sample_dim]
    keep = (torch.arange(n, device=device) % 2 == 0).float()

    def f(r, b):
        return be.residual_add(r, b, keep, sample_dim, 1.0 / 0.7)

    def g(x):
        return be.sample_scale(x, keep, sample_dim, 1.0 / 0.7, None)

    assert gradcheck(f, (r, b))
    assert gradgradcheck(f, (r, b))
    assert gradcheck(g, (b,))
    assert gradgradcheck(g, (b,))


def test_gradcheck_public_function_fixed_seed(device_backend):
    device, backend = device_backend
    r = torch.randn(6, 4, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 4, device=device, dtype=torch.float64, requires_grad=True)

    def f(r, b):
        return sdkernels.drop_path_add(r, b, 0.5, generator=_gen(7, device), backend=backend)

    assert gradcheck(f, (r, b))


def test_checkpoint_recomputes_the_same_mask(device_backend):
    device, backend = device_backend
    lin = torch.nn.Linear(16, 16).to(device)
    x = torch.randn(32, 16, device=device, requires_grad=True)

    def block(x):
        return sdkernels.drop_path_add(x, lin(x).relu(), 0.5, backend=backend)

    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.manual_seed(0)
    y1 = block(x)
    g1 = torch.autograd.grad(y1.sum(), (x, lin.weight))
    torch.manual_seed(0)
    if device == "cuda":
        torch.cuda.manual_seed(0)
    y2 = checkpoint(block, x, use_reentrant=False)
    g2 = torch.autograd.grad(y2.sum(), (x, lin.weight))
    assert torch.equal(y1, y2)
    assert torch.equal(g1[0], g2[0]) and torch.allclose(g1[1], g2[1])
    # some samples were dropped and some kept, so the mask mattered
    dropped = (y1 == x).all(dim=1)
    assert 0 < dropped.sum() < 32
