"""The add + norm Triton kernels on CPU tensors under the Triton interpreter, against sdkernels.reference.

Run in its own process:  ``TRITON_INTERPRET=1 pytest -m triton_interpret``.  Small
shapes (the interpreter is slow) chosen to hit both kernel shapes: the register tile
(several rows per program, one row, row tails) and the loop path (rows walked in
column blocks; forced on short rows by lowering ``MAX_FUSED_N``), and the backward's
persistent programs: more tiles than programs, and fewer (programs with no rows must
still write their partial rows).
"""
import pytest

from _interpret import triton_ops_under_interpreter

pytestmark = pytest.mark.triton_interpret

T, _K = triton_ops_under_interpreter()

import torch  # noqa: E402
from torch.autograd import gradcheck, gradgradcheck  # noqa: E402

import sdkernels  # noqa: E402
from sdkernels.ops import add_norm as an_ops  # noqa: E402
from sdkernels.triton_kernels import add_norm as K  # noqa: E402
from _add_norm_cases import _check_backward, _check_forward, _gen, _grads, _inputs, _t  # noqa: E402

DEV, BE = "cpu", "triton"

# "auto": as shipped; "loop": every row takes the loop path, in column blocks of 64.
VARIANTS = {
    "auto": {},
    "loop": {"MAX_FUSED_N": 32, "MAX_FUSED_N_BWD": 32, "_LOOP_BLOCK": 64},
}


@pytest.fixture(params=list(VARIANTS))
def variant(request, monkeypatch):
    for k, v in VARIANTS[request.param].items():
        monkeypatch.setattr(K, k, v)
    K.forward_params.cache_clear()
    yield request.param
    K.forward_params.cache_clear()


@pytest.fixture
def programs(monkeypatch):
    def set_programs(n):
        monkeypatch.setattr(an_ops, "PROGRAMS_OVERRIDE", n)
    return set_programs


def test_backend_is_registered_for_cpu():
    assert "triton" in sdkernels.available_backends("add_norm")
    assert sdkernels.functional.ADD_NORM["triton"].devices == frozenset({"cuda", "cpu"})


DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
          (torch.float64, torch.float64), (torch.float32, torch.bfloat16)]


def _forward_and_backward(rdt, bdt, p, norm):
    r, b, w, bias, gm = _inputs((5, 3, 40), rdt, bdt, DEV, affine=(True, norm == "layer"), gamma=p == 0.5)
    x, h = _check_forward(DEV, BE, r, b, p, w, bias, norm=norm, layer_scale=gm)
    if gm is None:
        assert x.dtype == torch.promote_types(rdt, bdt)
    _check_backward(DEV, BE, r, b, p, w, bias, gm, norm=norm)


@pytest.mark.parametrize("rdt,bdt", DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_forward_and_backward(rdt, bdt, p, norm):
    _forward_and_backward(rdt, bdt, p, norm)


@pytest.mark.parametrize("rdt,bdt", [DTYPES[0], DTYPES[1], DTYPES[4]], ids=str)
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_forward_and_backward_loop_path(monkeypatch, rdt, bdt, norm):
    for k, v in VARIANTS["loop"].items():
        monkeypatch.setattr(K, k, v)
    K.forward_params.cache_clear()
    try:
        _forward_and_backward(rdt, bdt, 0.5, norm)
    finally:
        K.forward_params.cache_clear()


@pytest.mark.parametrize("H", [1, 3, 192, 768, 1000, 3000, 8192, 65536])
def test_row_lengths(H):
    rows = 2 if H >= 3000 else 5
    r, b, w, bias, gm = _inputs((rows, 1, H), torch.float32, torch.bfloat16, DEV, gamma=True)
    _check_forward(DEV, BE, r, b, 0.5, w, bias)
    _check_backward(DEV, BE, r, b, 0.5, w, bias, gm)


@pytest.mark.parametrize("n_programs", [1, 2, 7, 40])
def test_backward_programs_more_or_fewer_than_rows(variant, programs, n_programs):
    # 6 rows of 40: 1 or 2 programs take several tiles each; 7 and 40 leave programs without rows,
    # whose zero partial rows must still be written (flash-attention once returned garbage here).
    programs(n_programs)
    r, b, w, bias, gm = _inputs((6, 1, 40), torch.float32, torch.float32, DEV, gamma=True)
    _check_backward(DEV, BE, r, b, 0.5, w, bias, gm)
    _check_backward(DEV, BE, r, b, 0.5, w, None, None, norm="rms")


@pytest.mark.parametrize("sample_dim", [0, 1])
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_sample_dims_modes_out_dtype(variant, sample_dim, mode):
    r, b, w, bias, gm = _inputs((4, 5, 24), torch.float32, torch.bfloat16, DEV, gamma=True)
    _check_forward(DEV, BE, r, b, 0.5, w, bias, sample_dim=sample_dim, mode=mode, out_dtype=torch.bfloat16)
    _check_backward(DEV, BE, r, b, 0.5, w, bias, gm, sample_dim=sample_dim, mode=mode, out_dtype=torch.bfloat16)


def test_layouts_and_no_weights():
    r, b, w, bias, _ = _inputs((6, 5, 40), torch.float32, torch.float32, DEV)
    rp, bp = r.transpose(0, 1), b.transpose(0, 1)
    x, h = _check_forward(DEV, BE, rp, bp, 0.5, w, bias, sample_dim=1)
    assert x.stride() == rp.stride() and h.stride() == rp.stride()
    _check_forward(DEV, BE, r.transpose(1, 2).contiguous().transpose(1, 2), b, 0.5, None, None)
    _check_backward(DEV, BE, rp, bp, 0.5, None, None, sample_dim=1)


def test_dropped_branch_is_never_read(variant):
    r, b, w, bias, gm = _inputs((6, 4, 32), torch.float32, torch.float32, DEV, gamma=True)
    from sdkernels import reference as R

    keep = R.draw_keep(6, 0.5, "row", DEV, _gen(5))
    assert 0 < keep.sum() < 6
    b[keep == 0] = float("nan")
    x, h = sdkernels.drop_path_add_norm(r, b, 0.5, w, bias, layer_scale=gm, generator=_gen(5), backend=BE)
    assert torch.isfinite(x).all() and torch.isfinite(h).all()


def test_deterministic(programs):
    programs(3)
    r, b, w, bias, gm = _inputs((12, 5, 48), torch.float32, torch.bfloat16, DEV, gamma=True)
    g = _gen(7)
    gh, gx = _t(r.shape, torch.float32, DEV, g), _t(r.shape, torch.float32, DEV, g)
    runs = [_grads(DEV, BE, r, b, 0.3, w, bias, gm, gx, gh) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    for i in runs[0][1]:
        assert torch.equal(runs[0][1][i], runs[1][1][i]), i


def _fp64_case(norm):
    r, b, w, bias, gm = _inputs((2, 2, 4), torch.float64, torch.float64, DEV, gamma=True, pdt=torch.float64)
    ins = [t.requires_grad_() for t in (r, b, w, bias, gm)]

    def f(r, b, w, bias, gm):
        return sdkernels.drop_path_add_norm(r, b, 0.5, w, bias, norm=norm, layer_scale=gm, generator=_gen(4),
                                            backend=BE)

    return f, ins


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_gradcheck_fp64(variant, norm):
    f, ins = _fp64_case(norm)
    keep = sdkernels.reference.draw_keep(2, 0.5, "row", DEV, _gen(4), torch.float64)
    assert keep.sum() == 1  # one sample kept, one dropped
    assert gradcheck(f, ins)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_gradgradcheck_fp64(norm):
    f, ins = _fp64_case(norm)
    assert gradgradcheck(f, ins)


def test_opcheck_triton_ops_on_cpu():
    op = torch.ops.sdkernels.add_norm_triton.default
    bop = torch.ops.sdkernels.add_norm_backward_triton.default
    g = _gen(0)
    r = _t((4, 3, 8), torch.float32, DEV, g).requires_grad_()
    b = _t((4, 3, 8), torch.bfloat16, DEV, g).requires_grad_()
    w, bias, gm = (_t((8,), torch.float32, DEV, g).requires_grad_() for _ in range(3))
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0])
    torch.library.opcheck(op, (r, b, keep, w, bias, gm, 0, 1.25, 1e-5, False, None))
    torch.library.opcheck(op, (r, b, keep, None, None, None, 0, 1.0, 1e-6, True, torch.bfloat16))
    x, h, mean, rstd = op(r, b, keep, w, bias, gm, 0, 1.25, 1e-5, False)
    gh = torch.randn_like(h)
    torch.library.opcheck(bop, (gh, gh, x.detach(), mean, rstd, keep, w.detach(), gm.detach(), b.detach(), 0, 1.25,
                                False, r.dtype, b.dtype, torch.float32, torch.float32))


def test_errors_match_the_cpp_op():
    r, b = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    keep = torch.ones(2)
    op = torch.ops.sdkernels.add_norm_triton.default
    with pytest.raises(ValueError, match="weight must have shape"):
        op(r, b, keep, torch.randn(3), None, None, 0, 1.0, 1e-5, False)
    with pytest.raises(ValueError, match="sample_dim must not be the normalized last dim"):
        op(r, b, keep, None, None, None, 2, 1.0, 1e-5, False)
    with pytest.raises(ValueError, match="scale must hold one value per sample"):
        op(r, b, torch.ones(5), None, None, None, 0, 1.0, 1e-5, False)
    with pytest.raises(TypeError, match="residual must be a float16"):
        op(r.int(), b, keep, None, None, None, 0, 1.0, 1e-5, False)
