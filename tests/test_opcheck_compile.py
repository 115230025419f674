"""torch.library registration: opcheck, fake strides, torch.compile without graph breaks."""
import pytest
import torch

import sdkernels
from sdkernels import reference as R
from sdkernels._ext import HAS_EXT
from _tolerances import assert_close

pytestmark = pytest.mark.skipif(not HAS_EXT, reason="compiled extension missing")

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])]


def _cases(device):
    for rdt, bdt in [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float64, torch.float64),
                     (torch.bfloat16, torch.bfloat16)]:
        for shape, dim in [((4, 3, 5), 0), ((4, 3, 5), 1), ((4, 3, 5), -1), ((2, 3, 4, 5), 0)]:
            r = torch.randn(shape, device=device, dtype=rdt, requires_grad=rdt != torch.bfloat16)
            b = torch.randn(shape, device=device, dtype=bdt, requires_grad=True)
            keep = (torch.rand(shape[dim], device=device) > 0.5).float()
            yield r, b, keep, dim
    r = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    yield r, torch.randn(2, 3, 4, 5, device=device), torch.tensor([1.0, 0.0], device=device), 0


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for r, b, keep, dim in _cases(device):
        torch.library.opcheck(torch.ops.sdkernels.scaled_residual_add.default, (r, b, keep, dim, 1.25))
        torch.library.opcheck(torch.ops.sdkernels.sample_scale.default, (b, keep, dim, 1.25, None))
        torch.library.opcheck(torch.ops.sdkernels.sample_scale.default, (b, keep, dim, 2.0, torch.float32))


@pytest.mark.parametrize("device", DEVICES)
def test_fake_strides_match_real(device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    for r, b, keep, dim in _cases(device):
        real = torch.ops.sdkernels.scaled_residual_add(r, b, keep, dim, 1.0)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = torch.ops.sdkernels.scaled_residual_add(mode.from_tensor(r), mode.from_tensor(b), mode.from_tensor(keep), dim, 1.0)
        assert fake.stride() == real.stride() and fake.dtype == real.dtype and fake.shape == real.shape


class Block(torch.nn.Module):
    def __init__(self, dim=32, p=0.5):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, dim)
        self.fc2 = torch.nn.Linear(dim, dim)
        self.dp1 = sdkernels.nn.DropPathAdd(p)
        self.dp2 = sdkernels.nn.DropPathAdd(p, mode="batch")

    def forward(self, x):
        x = self.dp1(x, self.fc1(x).relu())
        return self.dp2(x, self.fc2(x))


def test_compile_fullgraph_matches_eager_cpu():
    torch._dynamo.reset()
    m = Block()
    x = torch.randn(16, 8, 32, requires_grad=True)
    torch.manual_seed(123)
    eager = m(x)
    ge = torch.autograd.grad(eager.sum(), (x, m.fc1.weight))
    cm = torch.compile(m, fullgraph=True)
    torch.manual_seed(123)
    comp = cm(x)
    gc = torch.autograd.grad(comp.sum(), (x, m.fc1.weight))
    assert_close(comp, eager, rtol=1e-5, atol=1e-5)
    assert_close(gc[0], ge[0], rtol=1e-5, atol=1e-5)
    assert_close(gc[1], ge[1], rtol=1e-4, atol=1e-4)
    # the mask mattered: some samples differ from the no-drop result
    m.eval()
    assert not torch.allclose(eager, m(x))


def test_compile_fullgraph_drop_path_function():
    torch._dynamo.reset()

    def f(x, r):
        return sdkernels.drop_path_add(r, sdkernels.drop_path(x, 0.3), 0.2, sample_dim=1)

    x = torch.randn(5, 12, 7)
    r = torch.randn(5, 12, 7)
    torch.manual_seed(5)
    eager = f(x, r)
    torch.manual_seed(5)
    comp = torch.compile(f, fullgraph=True)(x, r)
    assert_close(comp, eager)


def test_generator_under_compile_is_a_graph_break():
    """Documented behaviour: an explicit generator cannot be traced by dynamo."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)

    def f(r, b):
        return sdkernels.drop_path_add(r, b, 0.5, generator=g)

    r, b = torch.randn(8, 4), torch.randn(8, 4)
    with pytest.raises(Exception):
        torch.compile(f, fullgraph=True)(r, b)
    # without fullgraph, dynamo falls back to eager for the draw and the result is the eager one
    torch._dynamo.reset()
    g.manual_seed(1)
    eager = f(r, b)
    g.manual_seed(1)
    assert_close(torch.compile(f)(r, b), eager)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compile_fullgraph_cuda_kept_count_and_scale():
    # On CUDA, inductor draws with its own RNG: check the kept count and the scale instead of bits.
    torch._dynamo.reset()

    def f(r, b):
        return sdkernels.drop_path_add(r, b, 0.25)

    n = 4096
    r = torch.zeros(n, 8, device="cuda")
    b = torch.ones(n, 8, device="cuda")
    out = torch.compile(f, fullgraph=True)(r, b)
    vals = out[:, 0]
    kept_value = torch.tensor(1 / 0.75, dtype=torch.float32).item()  # fp32 output
    assert set(torch.unique(vals).tolist()) <= {0.0, kept_value}
    frac = (vals != 0).float().mean().item()
    assert abs(frac - 0.75) < 6 * (0.25 * 0.75 / n) ** 0.5
