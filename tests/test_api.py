"""Public API: modules, RNG compatibility with timm, schedules, bad inputs, backends."""
import pytest
import torch

import sdkernels
from sdkernels import reference as R
from sdkernels.nn import DropPath, DropPathAdd, StochasticDepth
from _tolerances import assert_close


# ---- RNG: the same seed keeps the same samples as timm's drop_path ----------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_same_kept_samples_as_timm(dtype, p):
    x = torch.randn(64, 3, 5).to(dtype)
    torch.manual_seed(2024)
    timm = R.timm_drop_path(x, p, training=True)
    torch.manual_seed(2024)
    ours = sdkernels.drop_path(x, p)
    timm_kept = (timm.flatten(1) != 0).any(1)
    ours_kept = (ours.flatten(1) != 0).any(1)
    assert 0 < ours_kept.sum() < 64
    assert torch.equal(timm_kept, ours_kept)
    # values: ours rounds x * (1/(1-p)) once; timm multiplies by a mask already rounded to the dtype
    assert_close(ours.float(), timm.float(), rtol=1e-2 if dtype != torch.float32 else 1e-6, atol=1e-3)


def test_generator_reproducible_and_independent_of_global_rng():
    x = torch.randn(50, 4)
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    a = sdkernels.drop_path(x, 0.5, generator=g1)
    torch.manual_seed(1)
    b = sdkernels.drop_path(x, 0.5, generator=g2)
    assert torch.equal(a, b)


# ---- drop_path_rates ---------------------------------------------------------

def test_drop_path_rates():
    rates = sdkernels.drop_path_rates(0.1, 12)
    assert len(rates) == 12 and rates[0] == 0.0 and abs(rates[-1] - 0.1) < 1e-7
    assert all(abs((b - a) - 0.1 / 11) < 1e-7 for a, b in zip(rates, rates[1:]))
    assert sdkernels.drop_path_rates(0.3, 1) == [0.0]
    assert sdkernels.drop_path_rates(0.3, 0) == []
    with pytest.raises(ValueError, match="rate"):
        sdkernels.drop_path_rates(1.5, 4)
    with pytest.raises(TypeError, match="depth"):
        sdkernels.drop_path_rates(0.1, 2.5)


# ---- modules -------------------------------------------------------------------

def test_droppath_module_train_eval():
    m = DropPath(0.5)
    assert "drop_prob=0.500" in repr(m)
    x = torch.randn(32, 6)
    m.eval()
    assert m(x) is x
    m.train()
    torch.manual_seed(3)
    y = m(x)
    torch.manual_seed(3)
    assert torch.equal(y, R.drop_path(x, 0.5))
    assert DropPath()(x) is x  # default drop_prob 0
    m2 = DropPath(0.5, scale_by_keep=False)
    torch.manual_seed(4)
    y2 = m2(x)
    assert ((y2 == 0) | (y2 == x)).all()


def test_stochastic_depth_module():
    m = StochasticDepth(0.3, "row")
    assert repr(m) == "StochasticDepth(p=0.3, mode=row)"
    x = torch.randn(40, 2, 3)
    torch.manual_seed(1)
    y = m(x)
    torch.manual_seed(1)
    assert torch.equal(y, R.drop_path(x, 0.3))
    mb = StochasticDepth(0.5, "batch")
    yb = mb(x)
    assert torch.equal(yb, torch.zeros_like(x)) or torch.allclose(yb, 2 * x)
    m.eval()
    assert m(x) is x
    with pytest.raises(ValueError, match=r"drop probability has to be between 0 and 1, but got 1.5"):
        StochasticDepth(1.5, "row")
    with pytest.raises(ValueError, match=r"mode has to be either 'batch' or 'row', but got rows"):
        StochasticDepth(0.5, "rows")


def test_drop_path_add_module():
    m = DropPathAdd(0.5, sample_dim=1)
    r, b = torch.randn(7, 30, 4), torch.randn(7, 30, 4)
    torch.manual_seed(8)
    out = m(r, b)
    torch.manual_seed(8)
    assert_close(out, R.drop_path_add(r, b, 0.5, sample_dim=1))
    m.eval()
    assert torch.equal(m(r, b), r + b)
    with pytest.raises(ValueError, match="p"):
        DropPathAdd(2.0)
    with pytest.raises(ValueError, match="mode"):
        DropPathAdd(0.1, mode="sample")


# ---- backends --------------------------------------------------------------------

def test_available_backends():
    avail = sdkernels.available_backends()
    assert avail[0] == "reference"
    assert "cpu" in avail, "the C++ CPU kernels must be built (pip install --no-build-isolation -e .)"
    assert ("cuda" in avail) == (torch.cuda.is_available() and sdkernels._ext.has_kernel("scaled_residual_add", "CUDA"))


def test_auto_uses_compiled_cpu_kernel(replace_backend):
    calls = []
    table = sdkernels.functional.CORE
    be = table["cpu"]
    replace_backend(table, "cpu", be.devices, True, residual_add=lambda *a: calls.append(1) or be.residual_add(*a),
                    sample_scale=be.sample_scale)
    sdkernels.drop_path_add(torch.randn(4, 4), torch.randn(4, 4), 0.5)
    assert calls == [1]


# ---- bad inputs: raised before any work, naming the argument ------------------------

R0, B0 = torch.randn(4, 5), torch.randn(4, 5)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(p=-0.1), ValueError, "p "),
    (dict(p=1.1), ValueError, "p "),
    (dict(p=float("nan")), ValueError, "p "),
    (dict(p="0.1"), TypeError, "p must"),
    (dict(p=0.1, mode="rows"), ValueError, "mode"),
    (dict(p=0.1, backend="gpu"), ValueError, "backend"),
    (dict(p=0.1, sample_dim=2), IndexError, "sample_dim"),
    (dict(p=0.1, sample_dim=-3), IndexError, "sample_dim"),
    (dict(p=0.1, sample_dim=1.0), TypeError, "sample_dim"),
    (dict(p=0.1, generator=3), TypeError, "generator"),
])
def test_bad_arguments(kwargs, exc, match):
    state = torch.get_rng_state()
    p = kwargs.pop("p")
    with pytest.raises(exc, match=match):
        sdkernels.drop_path_add(R0, B0, p, **kwargs)
    with pytest.raises(exc, match=match):
        sdkernels.drop_path(B0, p, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)


def test_bad_tensors():
    with pytest.raises(ValueError, match="same shape"):
        sdkernels.drop_path_add(R0, torch.randn(4, 6), 0.1)
    with pytest.raises(ValueError, match="0-dim"):
        sdkernels.drop_path_add(torch.tensor(1.0), torch.tensor(2.0), 0.1)
    with pytest.raises(ValueError, match="0-dim"):
        sdkernels.drop_path(torch.tensor(1.0), 0.1)
    with pytest.raises(TypeError, match="residual must be a floating-point"):
        sdkernels.drop_path_add(torch.ones(4, 5, dtype=torch.int64), B0, 0.1)
    with pytest.raises(TypeError, match="branch must be a floating-point"):
        sdkernels.drop_path_add(R0, torch.ones(4, 5, dtype=torch.complex64), 0.1)
    with pytest.raises(TypeError, match="branch must be a floating-point"):
        sdkernels.drop_path_add(R0, B0.to(torch.float8_e4m3fn), 0.1)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        sdkernels.drop_path(torch.ones(4, 5, dtype=torch.int32), 0.1)
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        sdkernels.drop_path_add([1.0], B0, 0.1)
    with pytest.raises(TypeError, match="branch must be a torch.Tensor"):
        sdkernels.drop_path_add(R0, 1.0, 0.1)
    with pytest.raises(ValueError, match="meta"):
        sdkernels.drop_path_add(R0, B0.to("meta"), 0.1)


@pytest.mark.skipif("cuda" in sdkernels.available_backends(), reason="cuda backend present")
def test_unavailable_backend_is_a_clear_error():
    with pytest.raises(ValueError, match=r"backend 'cuda' is not available here for core; available backends"):
        sdkernels.drop_path_add(R0, B0, 0.1, backend="cuda")


def test_op_level_errors_do_not_crash():
    op = torch.ops.sdkernels.scaled_residual_add
    with pytest.raises(ValueError, match="same shape"):
        op(R0, torch.randn(5, 4), torch.ones(4), 0, 1.0)
    with pytest.raises(ValueError, match="one value per sample"):
        op(R0, B0, torch.ones(3), 0, 1.0)
    with pytest.raises(TypeError, match="scale must be float32 or float64"):
        op(R0, B0, torch.ones(4, dtype=torch.int64), 0, 1.0)
    with pytest.raises(IndexError, match="sample_dim"):
        op(R0, B0, torch.ones(4), 5, 1.0)
    with pytest.raises(IndexError, match="0-dim"):
        op(torch.tensor(1.0), torch.tensor(1.0), torch.ones(1), 0, 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        op(R0.long(), B0, torch.ones(4), 0, 1.0)
    with pytest.raises(TypeError, match="floating-point"):
        op(R0, B0.to(torch.float8_e5m2), torch.ones(4), 0, 1.0)
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        torch.ops.sdkernels.sample_scale(B0, torch.ones(4), 0, 1.0, torch.int32)
