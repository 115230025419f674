"""No host synchronisation on the hot paths (CUDA only, skipped here).

A device sync in a training step serialises the host and the GPU: the step
then costs their sum instead of the larger of the two.  The fused ops and the
skip path's count "fixed" promise none (the draw stays on the device, the
shapes are static).  ``torch.cuda.set_sync_debug_mode("error")`` turns the
syncs that go through c10's sync check (``.item()``, ``.cpu()``, ``nonzero``,
blocking copies, stream synchronisation) into a RuntimeError, here over a
forward and a backward.  It does not see ``torch.cuda.synchronize()`` or
``Event.synchronize()``; the block suite's ``--profile`` counts every blocking
CUDA runtime call (``syncs_per_step``, checked in tests/test_skip.py).  The
positive control (count "bernoulli", which needs its kept count on the host)
shows the mode is really on.
"""
import contextlib
import os

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1: CUDA paths are tested in a normal process", allow_module_level=True)

import sdkernels  # noqa: E402
from sdkernels.nn import StochasticResidual  # noqa: E402

DEV = "cuda"


def _core_backends():
    return [b for b in ("cuda", "triton") if b in sdkernels.available_backends()]


def _skip_backends():
    return [b for b in ("cuda", "triton") if b in sdkernels.available_backends("skip")]


@contextlib.contextmanager
def _sync_is_error():
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(prev)


def _fwd_bwd_without_sync(make_out, *leaves):
    """Warm up once (lazy init, allocator), then one forward+backward with syncs as errors."""
    for attempt in range(2):
        for t in leaves:
            t.grad = None
        ctx = _sync_is_error() if attempt == 1 else contextlib.nullcontext()
        with ctx:
            out = make_out()
            out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    for t in leaves:
        assert t.grad is not None and torch.isfinite(t.grad).all()
    return out


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16)], ids=str)
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_drop_path_add_and_drop_path(dtypes, mode):
    backends = _core_backends()
    assert backends, "no compiled CUDA backend"
    for be in backends:
        r = torch.randn(8, 16, 64, device=DEV, dtype=dtypes[0], requires_grad=True)
        b = torch.randn(8, 16, 64, device=DEV, dtype=dtypes[1], requires_grad=True)
        _fwd_bwd_without_sync(lambda: sdkernels.drop_path_add(r, b, 0.3, mode=mode, backend=be), r, b)
        _fwd_bwd_without_sync(lambda: sdkernels.drop_path(b, 0.3, mode=mode, backend=be), b)
        # seq-first [S, B, H], the modules as users call them
        x = torch.randn(16, 8, 64, device=DEV, dtype=dtypes[1], requires_grad=True)
        mod = sdkernels.nn.DropPathAdd(0.3, mode=mode, sample_dim=1, backend=be)
        _fwd_bwd_without_sync(lambda: mod(x, x * 2), x)
    dp = sdkernels.nn.DropPath(0.3)
    x = torch.randn(8, 16, 64, device=DEV, requires_grad=True)
    _fwd_bwd_without_sync(lambda: dp(x), x)


@pytest.mark.parametrize("sample_dim", [0, 1])
def test_skip_path_fixed_count(sample_dim):
    backends = _skip_backends()
    assert backends, "no compiled CUDA skip backend"
    lin = torch.nn.Linear(64, 64).to(DEV)
    for be in backends:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(12, 10, 64, device=DEV, requires_grad=True)

            def step():
                with torch.autocast(DEV, dtype=dtype, enabled=dtype != torch.float32):
                    return sdkernels.drop_path_residual(x, lin, 0.5, count="fixed", sample_dim=sample_dim,
                                                        backend=be)

            out = _fwd_bwd_without_sync(step, x, lin.weight)
            assert out.shape == x.shape
            block = StochasticResidual(lin, 0.5, sample_dim=sample_dim, backend=be)
            _fwd_bwd_without_sync(lambda: block(x), x, lin.weight)


def test_skip_path_batch_mode_with_a_cpu_generator():
    """Mode "batch" draws on the host from a CPU generator: no device sync for either decision."""
    lin = torch.nn.Linear(32, 32).to(DEV)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 32, device=DEV, requires_grad=True)
    for _ in range(6):  # p = 0.5: both decisions come up with probability 1 - 2**-5
        _fwd_bwd_without_sync(lambda: sdkernels.drop_path_residual(x, lin, 0.5, mode="batch", generator=g), x)


def test_bernoulli_count_syncs_positive_control():
    """count "bernoulli" reads its kept count on the host: the debug mode must catch that sync."""
    lin = torch.nn.Linear(32, 32).to(DEV)
    x = torch.randn(8, 32, device=DEV)
    sdkernels.drop_path_residual(x, lin, 0.5, count="bernoulli")  # warm-up
    torch.cuda.synchronize()
    with _sync_is_error(), pytest.raises(RuntimeError, match="(?i)synchroniz"):
        sdkernels.drop_path_residual(x, lin, 0.5, count="bernoulli")
