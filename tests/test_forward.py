"""Forward results of every backend against sdkernels.reference."""
import math

import pytest
import torch

import sdkernels
from sdkernels import reference as R
from _tolerances import assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
MIXED = [(torch.float32, torch.bfloat16), (torch.float32, torch.float16), (torch.bfloat16, torch.float32),
         (torch.float16, torch.bfloat16), (torch.float64, torch.float32)]
SHAPES = [(1, 7), (5, 1), (6, 42, 12, 31), (3, 2, 5000), (9, 3, 3), (4, 1, 1, 1), (2, 70000)]


def _gen(seed=0, device="cpu"):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _inputs(shape, rdt, bdt, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=rdt)
    b = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=bdt)
    return r, b


def _check_fn(device, backend, r, b, p, **kw):
    out = sdkernels.drop_path_add(r, b, p, generator=_gen(3, device), backend=backend, **kw)
    exp = R.drop_path_add(r, b, p, generator=_gen(3, device), **kw)
    assert_close(out, exp)
    return out, exp


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_drop_path_add_matches_reference(device_backend, shape, dtype, p):
    device, backend = device_backend
    r, b = _inputs(shape, dtype, dtype, device)
    out, _ = _check_fn(device, backend, r, b, p)
    assert out.shape == r.shape and out.device == r.device


@pytest.mark.parametrize("rdt,bdt", MIXED, ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1, -1])
def test_mixed_dtypes(device_backend, rdt, bdt, sample_dim):
    device, backend = device_backend
    r, b = _inputs((4, 6, 33), rdt, bdt, device)
    out, exp = _check_fn(device, backend, r, b, 0.5, sample_dim=sample_dim)
    assert out.dtype == torch.result_type(r, b)


@pytest.mark.parametrize("sample_dim", [0, 1, 2, 3, -1, -3])
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_sample_dim_modes(device_backend, sample_dim, mode, scale_by_keep):
    device, backend = device_backend
    r, b = _inputs((5, 4, 6, 7), torch.float32, torch.float32, device)
    _check_fn(device, backend, r, b, 0.5, sample_dim=sample_dim, mode=mode, scale_by_keep=scale_by_keep)


def _layouts(device):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4, 6, 5, 7, generator=g).to(device)
    yield "contiguous", base, base.clone()
    yield "channels_last", base.to(memory_format=torch.channels_last), base.to(memory_format=torch.channels_last) * 2
    yield "mixed_formats", base.to(memory_format=torch.channels_last), base * 3
    yield "transposed", base.transpose(1, 3), (base * 2).transpose(1, 3)
    yield "sliced", base[:, ::2], base[:, 1::2]
    yield "expanded_branch", base, base[:, :1].expand(4, 6, 5, 7)
    yield "seq_first", torch.randn(9, 4, 33, generator=g).to(device), torch.randn(9, 4, 33, generator=g).to(device)
    odd = torch.randn(4 * 6 * 5 * 7, generator=g).to(device).as_strided((4, 1, 6, 5, 7), (210, 999, 35, 7, 1))
    yield "size1_dim_odd_stride", odd, torch.randn(4, 1, 6, 5, 7, generator=g).to(device)
    yield "offset", torch.randn(4 * 6 * 5 * 7 + 1, generator=g).to(device)[1:].view(4, 6, 5, 7), base


@pytest.mark.parametrize("sample_dim", [0, 1])
def test_layouts(device_backend, sample_dim):
    device, backend = device_backend
    for name, r, b in _layouts(device):
        out, exp = _check_fn(device, backend, r, b, 0.5, sample_dim=sample_dim)
        ref_layout = torch.empty_like(r)
        assert out.stride() == ref_layout.stride(), name


def test_output_keeps_channels_last(device_backend):
    device, backend = device_backend
    r = torch.randn(4, 3, 5, 6, device=device).to(memory_format=torch.channels_last)
    out = sdkernels.drop_path_add(r, torch.randn_like(r), 0.3, backend=backend)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_in_dropped_branch_never_reaches_output(device_backend, dtype):
    device, backend = device_backend
    r, b = _inputs((8, 3, 37), dtype, dtype, device)
    keep = torch.tensor([1.0, 0, 1, 0, 0, 1, 1, 0], device=device)
    b[keep == 0] = float("nan")
    b[1, 0, 0] = float("inf")
    ops = sdkernels.functional.CORE[backend]
    out = ops.residual_add(r, b, keep, 0, 1 / 0.7)
    assert not torch.isnan(out).any()
    assert torch.equal(out[keep == 0], r[keep == 0])
    assert_close(out, R.scaled_residual_add(r, b, keep, 0, 1 / 0.7))
    y = ops.sample_scale(b, keep, 0, 1 / 0.7, None)
    assert not torch.isnan(y).any() and (y[keep == 0] == 0).all()
    assert_close(y, R.sample_scale(b, keep, 0, 1 / 0.7))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", [None, torch.float32, torch.bfloat16], ids=str)
def test_sample_scale_op(device_backend, dtype, out_dtype):
    device, backend = device_backend
    x, _ = _inputs((6, 5, 129), dtype, dtype, device)
    for keep in (torch.tensor([1.0, 0, 1, 1, 0, 1], device=device), torch.tensor([1.0], device=device),
                 torch.tensor([0.0], dtype=torch.float64, device=device)):
        y = sdkernels.functional.CORE[backend].sample_scale(x, keep, 0, 1.25, out_dtype)
        assert_close(y, R.sample_scale(x, keep, 0, 1.25, out_dtype))


def test_drop_path_matches_reference_and_timm(device_backend):
    device, backend = device_backend
    for dtype in DTYPES:
        x, _ = _inputs((16, 3, 40), dtype, dtype, device)
        y = sdkernels.drop_path(x, 0.4, generator=_gen(9, device), backend=backend)
        assert_close(y, R.drop_path(x, 0.4, generator=_gen(9, device)))


def test_p_one_gives_residual(device_backend):
    device, backend = device_backend
    r, b = _inputs((6, 10), torch.float32, torch.float32, device)
    b[0] = float("nan")
    out = sdkernels.drop_path_add(r, b, 1.0, backend=backend)
    assert torch.equal(out, r)
    y = sdkernels.drop_path(b, 1.0, backend=backend)
    assert torch.equal(y, torch.zeros_like(b))


def test_eval_and_p_zero_are_plain_add(device_backend):
    device, backend = device_backend
    r, b = _inputs((6, 10), torch.float32, torch.bfloat16, device)
    state = torch.get_rng_state()
    for kw in (dict(p=0.5, training=False), dict(p=0.0)):
        out = sdkernels.drop_path_add(r, b, backend=backend, **kw)
        assert torch.equal(out, r + b)
        assert sdkernels.drop_path(b, backend=backend, **kw) is b
    assert torch.equal(torch.get_rng_state(), state), "no random numbers may be consumed"


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,)], ids=str)
def test_zero_elements(device_backend, shape):
    device, backend = device_backend
    r = torch.randn(shape, device=device)
    out = sdkernels.drop_path_add(r, r.clone(), 0.5, backend=backend)
    assert out.shape == r.shape
    assert sdkernels.drop_path(r, 0.5, backend=backend).shape == r.shape


def test_deterministic_bits(device_backend):
    device, backend = device_backend
    r, b = _inputs((32, 7, 129), torch.bfloat16, torch.float32, device)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        outs = [sdkernels.drop_path_add(r, b, 0.3, generator=_gen(11, device), backend=backend) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(prev)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_kept_fraction_statistics(device_backend):
    device, backend = device_backend
    n, p = 20000, 0.3
    x = torch.ones(n, 2, device=device)
    y = sdkernels.drop_path(x, p, generator=_gen(1, device), backend=backend)
    kept = (y[:, 0] != 0).double().mean().item()
    # sd of the kept fraction = sqrt(p(1-p)/n) = 0.0032: 6 sd bound.
    assert abs(kept - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p), device=device))
    # batch mode: all or nothing
    yb = sdkernels.drop_path(x, 0.5, mode="batch", generator=_gen(2, device), backend=backend)
    assert (yb == 0).all() or (yb == 2).all()


def test_large_rows_multithreaded(device_backend):
    # Several parallel chunks, chunk boundaries inside rows, odd row length.
    device, backend = device_backend
    r, b = _inputs((3, 100003), torch.bfloat16, torch.float32, device)
    _check_fn(device, backend, r, b, 0.5)
    r, b = _inputs((40000, 3), torch.float32, torch.float32, device)
    _check_fn(device, backend, r, b, 0.5)
