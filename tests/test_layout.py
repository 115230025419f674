"""The shape every op family shares, and the lean host path.

- one backend-table class for every family, one auto rule;
- the public functions' fast paths give the full path's results bit for bit (same draws, same op) and,
  on a bad argument, the full path's error without consuming random numbers;
- ``draw="hf"`` keeps the samples Hugging Face transformers' models keep;
- the raw ops refuse a meta tensor mixed with CPU tensors (as ATen ops do) instead of returning
  uninitialised memory; the modules check their constructor arguments.
"""
import pytest
import torch

import sdkernels
from sdkernels import backends, nn as snn, ops, reference
from tests._tolerances import assert_close

HAS_CPU = "cpu" in sdkernels.available_backends()
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason="the C++ CPU kernels are not built")


def test_every_family_has_one_table_class_with_a_reference():
    assert set(backends.TABLES) == {"core", "layer_scale", "add_norm", "skip"}
    for fam in ops.FAMILIES:
        assert isinstance(fam.BACKENDS, backends.BackendTable)
        assert "reference" in fam.BACKENDS.available()
        assert fam.BACKENDS.auto("meta").name == "reference"  # no kernel for this device: the reference
        assert isinstance(fam.SHARDING, dict) and fam.SHARDING
    for family in backends.TABLES:
        assert sdkernels.available_backends(family) == backends.TABLES[family].available()
    with pytest.raises(ValueError, match="family must be one of"):
        sdkernels.available_backends("nope")


def test_backend_pick_errors_name_the_backend():
    table = backends.TABLES["core"]
    with pytest.raises(ValueError, match="'cuda' is not available|'cuda' runs on"):
        table.pick("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend name"):
        table.register("auto", None, True, residual_add=None, sample_scale=None)
    with pytest.raises(ValueError, match="lacks the ops"):
        table.register("reference", None, True, residual_add=None)


CASES = [  # shape, sample_dim, residual dtype, branch dtype, mode, p
    ((6, 5, 7), 0, torch.float32, torch.float32, "row", 0.3),
    ((6, 5, 7), 1, torch.float32, torch.bfloat16, "row", 0.5),
    ((6, 5, 7), -2, torch.bfloat16, torch.bfloat16, "row", 0.7),
    ((4, 3, 8), 0, torch.float64, torch.float32, "batch", 0.4),
    ((4, 3, 8), 0, torch.float16, torch.float16, "row", 1.0),
]


@needs_cpu
@pytest.mark.parametrize("shape,sd,rdt,bdt,mode,p", CASES)
def test_fast_path_is_the_full_path_bit_for_bit(shape, sd, rdt, bdt, mode, p):
    """backend="auto" with plain arguments takes the fast path; backend="cpu" the full path: same bits."""
    x = torch.randn(shape, dtype=rdt, requires_grad=True)
    f = torch.randn(shape, dtype=bdt, requires_grad=True)
    g = torch.randn(shape, dtype=torch.promote_types(rdt, bdt))
    outs, grads = [], []
    for backend in ("auto", "cpu"):
        torch.manual_seed(11)
        out = sdkernels.drop_path_add(x, f, p, mode=mode, sample_dim=sd, backend=backend)
        out.backward(g)
        outs.append(out.detach())
        grads.append((x.grad.clone(), f.grad.clone()))
        x.grad = f.grad = None
        torch.manual_seed(11)
        y = sdkernels.drop_path(f, p, mode=mode, sample_dim=sd, backend=backend)
        outs.append(y.detach())
    torch.manual_seed(11)
    expected = reference.drop_path_add(x.detach(), f.detach(), p, mode=mode, sample_dim=sd)
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert_close(outs[0], expected)


@needs_cpu
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_add_norm_fast_path_is_the_full_path(norm):
    x = torch.randn(4, 6, 32, requires_grad=True)
    f = torch.randn(4, 6, 32, requires_grad=True)
    w = torch.randn(32, requires_grad=True)
    b = torch.randn(32, requires_grad=True) if norm == "layer" else None
    res = []
    for backend in ("auto", "cpu"):
        torch.manual_seed(3)
        xo, h = sdkernels.drop_path_add_norm(x, f, 0.5, w, b, 1e-5, norm=norm, backend=backend)
        (xo.sum() + h.square().sum()).backward()
        res.append([xo.detach(), h.detach()] + [t.grad.clone() for t in (x, f, w)])
        for t in (x, f, w, b):
            if t is not None:
                t.grad = None
    for a, c in zip(*res):
        assert torch.equal(a, c)


@pytest.mark.parametrize("call", [
    lambda x, f: sdkernels.drop_path_add(x, f[:, :2], 0.5),
    lambda x, f: sdkernels.drop_path_add(x, f.to(torch.int32), 0.5),
    lambda x, f: sdkernels.drop_path_add(x, f, 0.5, sample_dim=3),
    lambda x, f: sdkernels.drop_path_add(x, f, float("nan")),
    lambda x, f: sdkernels.drop_path(x.to(torch.int64), 0.5),
    lambda x, f: sdkernels.drop_path_add_norm(x, f, 0.5, torch.ones(3)),
    lambda x, f: sdkernels.drop_path_add_norm(x, f, 0.5, None, eps=-1.0),
    lambda x, f: sdkernels.drop_path_add_norm(x, f, 0.5, None, sample_dim=-1),
])
def test_fast_path_errors_are_the_full_paths_and_draw_nothing(call):
    x, f = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    state = torch.get_rng_state()
    with pytest.raises((TypeError, ValueError, IndexError)):
        call(x, f)
    assert torch.equal(torch.get_rng_state(), state), "a rejected call consumed random numbers"


def _hf_drop_path(x, p):
    """Hugging Face transformers' drop path algorithm (as its models' modelling files write it)."""
    keep = 1 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = keep + torch.rand(shape, dtype=x.dtype, device=x.device)
    mask.floor_()
    return x.div(keep) * mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_draw_hf_keeps_the_samples_hugging_face_keeps(dtype):
    x = torch.randn(64, 3, 5, dtype=dtype)
    f = torch.randn(64, 3, 5, dtype=dtype)
    torch.manual_seed(5)
    eager = x + _hf_drop_path(f, 0.3)
    torch.manual_seed(5)
    ours = sdkernels.drop_path_add(x, f, 0.3, draw="hf")
    torch.manual_seed(5)
    ref = reference.drop_path_add(x, f, 0.3, draw="hf")
    kept_eager = (eager != x).flatten(1).any(1)
    kept_ours = (ours != x).flatten(1).any(1)
    assert torch.equal(kept_eager, kept_ours) and 0 < int(kept_ours.sum()) < 64
    assert_close(ours, ref)
    # Hugging Face rounds three times in the input's dtype (x / keep, * mask, + residual), sdkernels once
    # (a multiply by 1 / keep in fp32): they agree to within those roundings.
    eps = torch.finfo(dtype).eps
    bound = 3 * eps * (x.float().abs() + f.float().abs() / 0.7)
    assert bool(((ours.float() - eager.float()).abs() <= bound).all())
    torch.manual_seed(5)
    y = sdkernels.drop_path(f, 0.3, draw="hf")
    assert torch.equal((y != 0).flatten(1).any(1), kept_eager)


def test_draw_hf_with_transformers_own_function():
    mod = pytest.importorskip("transformers.models.dinov2.modeling_dinov2")
    hf = getattr(mod, "drop_path", None)
    if hf is None:
        pytest.skip("this transformers has no module-level drop_path in its DINOv2 file")
    x, f = torch.randn(32, 4, 8), torch.randn(32, 4, 8)
    torch.manual_seed(9)
    eager = x + hf(f, 0.25, True)
    torch.manual_seed(9)
    ours = sdkernels.drop_path_add(x, f, 0.25, draw="hf")
    assert_close(ours, eager)


def test_draw_rule_is_checked():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="draw must be one of"):
        sdkernels.drop_path_add(x, x, 0.5, draw="torch")


@needs_cpu
@pytest.mark.parametrize("op,args", [
    ("scaled_residual_add", lambda c, m: (c, m, torch.ones(4), 0, 1.0)),
    ("sample_scale", lambda c, m: (c, m.new_ones(4), 0, 1.0)),
    ("scaled_residual_add_ls", lambda c, m: (c, m, torch.ones(4), torch.ones(5), 0, -1, 1.0)),
    ("sample_scale_ls", lambda c, m: (c, m.new_ones(4), torch.ones(5), 0, -1, 1.0)),
    ("layer_scale_grads", lambda c, m: (c, m, torch.ones(4), torch.ones(5), 0, -1, 1.0)),
    ("add_norm", lambda c, m: (c, m, torch.ones(4), None, None, None, 0, 1.0, 1e-5, False)),
    ("add_norm", lambda c, m: (c, c, torch.ones(4), m.new_ones(5), None, None, 0, 1.0, 1e-5, False)),
    ("add_norm_backward", lambda c, m: (None, c, c, torch.ones(12), m.new_ones(12), torch.ones(4), None, None, None,
                                        0, 1.0, False, torch.float32, torch.float32)),
])
def test_raw_ops_refuse_a_meta_tensor_beside_cpu_ones(op, args):
    c = torch.randn(4, 3, 5)
    m = torch.empty(4, 3, 5, device="meta")
    with pytest.raises(RuntimeError, match="not on the expected device"):
        getattr(torch.ops.sdkernels, op).default(*args(c, m))


def test_drop_path_add_norm_module_checks_its_arguments():
    with pytest.raises(TypeError, match="normalized_shape"):
        snn.DropPathAddNorm(8.0)
    with pytest.raises(ValueError, match="eps must be"):
        snn.DropPathAddNorm(8, eps=-1.0)
    with pytest.raises(TypeError, match="dtype must be"):
        snn.DropPathAddNorm(8, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="torch.jit.script cannot compile"):
        torch.jit.script(snn.DropPathAddNorm(8))
    assert snn.DropPathAddNorm(torch.Size([8])).normalized_shape == (8,)
