"""Fused drop path + residual add + LayerNorm / RMSNorm (issue 14) against sdkernels.reference.

Every compiled backend of the op (CPU C++ here; CUDA C++ and Triton on a GPU, marked
``cuda``) is checked against ``F.layer_norm`` / ``F.rms_norm`` of the reference
drop-path add under one seed: ``x`` bit for bit against :func:`sdkernels.drop_path_add`,
``h`` and every gradient within one rounding of the output (tests/_tolerances.py), the
gradients against :func:`sdkernels.reference.add_norm_backward` computed in fp64.
The Triton kernels run on CPU in tests/test_add_norm_triton_interpret.py.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import sdkernels
from sdkernels import reference as R
from sdkernels._ext import HAS_EXT
from _tolerances import assert_close
from _add_norm_cases import _check_backward, _check_forward, _gen, _grads, _inputs, _ref, _run, _t

HAS_CUDA = torch.cuda.is_available()


def _backends():
    params = []
    if "cpu" in sdkernels.available_backends("add_norm"):
        params.append(pytest.param(("cpu", "cpu"), id="cpu-cpu"))
    for be in ("cuda", "triton"):
        marks = [pytest.mark.cuda, pytest.mark.skipif(not (HAS_CUDA and be in sdkernels.available_backends("add_norm")),
                                                      reason=f"needs a CUDA device and the {be} backend")]
        params.append(pytest.param(("cuda", be), id=f"cuda-{be}", marks=marks))
    return params


@pytest.fixture(params=_backends())
def dev_be(request):
    return request.param


FWD_DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
              (torch.float64, torch.float64), (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("rdt,bdt", FWD_DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_forward_matches_reference(dev_be, rdt, bdt, p, norm):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((6, 5, 192), rdt, bdt, device, affine=(True, norm == "layer"))
    x, h = _check_forward(device, backend, r, b, p, w, bias, norm=norm)
    assert x.dtype == torch.promote_types(rdt, bdt) and h.dtype == x.dtype
    if p == 1.0:
        assert torch.equal(x, r.to(x.dtype))


@pytest.mark.parametrize("H", [1, 3, 192, 768, 1000, 3000, 8192, 65536])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_row_lengths(dev_be, H, norm):
    device, backend = dev_be
    rows = max(2, min(24, 2**15 // H))
    r, b, w, bias, _ = _inputs((rows, 1, H), torch.bfloat16, torch.bfloat16, device, affine=(True, norm == "layer"))
    _check_forward(device, backend, r, b, 0.5, w, bias, norm=norm)
    r32, b16 = r.float(), b
    _check_forward(device, backend, r32, b16, 0.5, w, bias, norm=norm)


@pytest.mark.parametrize("affine", [(True, True), (True, False), (False, True), (False, False)], ids=str)
@pytest.mark.parametrize("pdt", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_weight_and_bias_optional_any_dtype(dev_be, affine, pdt):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((4, 3, 40), torch.float32, torch.bfloat16, device, affine=affine, pdt=pdt)
    x, h = _check_forward(device, backend, r, b, 0.5, w, bias)
    if affine == (False, False):
        assert_close(h, F.layer_norm(x, (40,), eps=1e-5))


@pytest.mark.parametrize("sample_dim", [0, 1, -2])
@pytest.mark.parametrize("mode", ["row", "batch"])
def test_sample_dims_and_modes(dev_be, sample_dim, mode):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((7, 5, 48), torch.float32, torch.float32, device)
    _check_forward(device, backend, r, b, 0.4, w, bias, sample_dim=sample_dim, mode=mode)
    r4, b4, _, _, _ = _inputs((3, 4, 5, 48), torch.float32, torch.float32, device)
    _check_forward(device, backend, r4, b4, 0.4, w, bias, sample_dim=2, mode=mode)


def test_h_is_the_norm_of_x_as_stored(dev_be):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((8, 3, 96), torch.bfloat16, torch.bfloat16, device)
    x, h = _run(device, backend, r, b, 0.2, w, bias)
    # the norm of the stored bf16 x, computed in fp32 and rounded once
    assert_close(h, F.layer_norm(x.float(), (96,), w, bias, 1e-5).to(torch.bfloat16))
    x, h = _run(device, backend, r, b, 0.2, w, None, norm="rms", eps=1e-6)
    assert_close(h, F.rms_norm(x.float(), (96,), w, 1e-6).to(torch.bfloat16))


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_out_dtype(dev_be, out_dtype):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((5, 6, 64), torch.float32, torch.bfloat16, device)
    x, h = _check_forward(device, backend, r, b, 0.3, w, bias, out_dtype=out_dtype)
    assert x.dtype == torch.float32 and h.dtype == out_dtype


def test_eval_and_p0_are_add_then_norm(dev_be):
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((5, 6, 64), torch.bfloat16, torch.bfloat16, device, gamma=True,
                                pdt=torch.bfloat16)
    for kw in (dict(training=False), dict(p=0.0)):
        p = kw.pop("p", 0.7)
        x, h = _run(device, backend, r, b, p, w, bias, **kw)
        assert torch.equal(x, r + b)
        assert_close(h, F.layer_norm(x.float(), (64,), w.float(), bias.float(), 1e-5).to(x.dtype))
        x, h = _run(device, backend, r, b, p, w, bias, layer_scale=gm, **kw)
        assert torch.equal(x, r + b * gm)  # the product rounded to bf16 first, as eager


def test_eval_consumes_no_random_numbers(dev_be):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((5, 6, 64), torch.float32, torch.float32, device)
    g = _gen(9, device)
    state = g.get_state()
    sdkernels.drop_path_add_norm(r, b, 0.5, w, bias, training=False, generator=g, backend=backend)
    assert torch.equal(g.get_state(), state)


def test_layer_scale_is_eager_timm_in_fp32(dev_be):
    # x = residual + drop_path(ls(branch)) exactly as timm computes it eagerly in fp32
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((16, 5, 64), torch.float32, torch.float32, device, gamma=True)
    for p in (0.1, 0.5):
        torch.manual_seed(11)
        x, h = sdkernels.drop_path_add_norm(r, b, p, w, bias, layer_scale=gm, backend=backend)
        torch.manual_seed(11)
        eager = r + R.timm_drop_path(b * gm, p, True)
        assert torch.equal(x, eager)
        assert_close(h, F.layer_norm(eager, (64,), w, bias, 1e-5))
        _check_forward(device, backend, r, b, p, w, bias, layer_scale=gm)


def test_layer_scale_dtype_rule(dev_be):
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((4, 3, 32), torch.bfloat16, torch.bfloat16, device, gamma=True, pdt=torch.float32)
    x, h = _check_forward(device, backend, r, b, 0.5, w, bias, layer_scale=gm)
    assert x.dtype == torch.float32  # an fp32 gamma promotes a bf16 branch, as under autocast


def test_dropped_branch_is_never_read(dev_be):
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((6, 4, 32), torch.float32, torch.float32, device, gamma=True)
    g = _gen(5, device)
    keep = R.draw_keep(6, 0.5, "row", device, g)
    assert 0 < keep.sum() < 6
    b[keep == 0] = float("nan")
    x, h = _run(device, backend, r, b, 0.5, w, bias, seed=5, layer_scale=gm)
    assert torch.isfinite(x).all() and torch.isfinite(h).all()
    assert torch.equal(x[keep == 0], r[keep == 0])


# ---- layouts ------------------------------------------------------------------------------------


def test_layouts(dev_be):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((6, 5, 40), torch.float32, torch.bfloat16, device)
    # seq-first [S, B, H] as a permuted dense view of [B, S, H]: x keeps the residual's layout
    rp, bp = r.transpose(0, 1), b.transpose(0, 1)
    x, h = _check_forward(device, backend, rp, bp, 0.5, w, bias, sample_dim=1)
    assert x.stride() == rp.stride() and h.stride() == rp.stride()
    # a last dim that is not contiguous: computed from a contiguous copy
    rt = r.transpose(1, 2).contiguous().transpose(1, 2)
    x, h = _check_forward(device, backend, rt, b, 0.5, w, bias)
    assert x.is_contiguous()
    # non-dense slices
    big_r, big_b, _, _, _ = _inputs((6, 5, 80), torch.float32, torch.bfloat16, device)
    _check_forward(device, backend, big_r[..., ::2], big_b[..., 40:], 0.5, w, bias)


@pytest.mark.parametrize("rdt,bdt,gdt,out_dtype", [
    (torch.float16, torch.bfloat16, None, None),  # fp16 + bf16 -> fp32 x
    (torch.bfloat16, torch.bfloat16, torch.float32, None),  # an fp32 gamma promotes x to fp32
    (torch.bfloat16, torch.bfloat16, None, torch.float16),
    (torch.float32, torch.float16, None, None),
], ids=str)
def test_other_dtype_combinations(dev_be, rdt, bdt, gdt, out_dtype):
    # (On CUDA these take the converted-inputs path of csrc/cuda/add_norm.cu.)
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((5, 3, 64), rdt, bdt, device, gamma=gdt is not None, pdt=gdt or torch.float32)
    x, h = _check_forward(device, backend, r, b, 0.5, w, bias, layer_scale=gm, out_dtype=out_dtype)
    _check_backward(device, backend, r, b, 0.5, w, bias, gm, out_dtype=out_dtype)


@pytest.mark.parametrize("H", [64, 1000])
def test_unaligned_rows(dev_be, H):
    # a storage offset of one element: no 16-byte vectors (CUDA takes the scalar path)
    device, backend = dev_be
    r0, b0, w, bias, gm = _inputs((4, 3, H), torch.bfloat16, torch.bfloat16, device, gamma=True)

    def shifted(t):
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=device)
        out = buf[1:].view(t.shape)
        out.copy_(t)
        return out

    r, b = shifted(r0), shifted(b0)
    assert r.data_ptr() % 16 != 0
    _check_forward(device, backend, r, b, 0.5, w, bias, layer_scale=gm)
    _check_backward(device, backend, r, b, 0.5, w, bias, gm)


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and "cuda" in sdkernels.available_backends("add_norm")), reason="needs the CUDA backend")
def test_cuda_kernel_refuses_fp64_parameters_with_fp32_activations():
    r, b, w, bias, _ = _inputs((4, 3, 32), torch.float32, torch.float32, "cuda", pdt=torch.float64)
    with pytest.raises(TypeError, match="float64 weight, bias or layer_scale only with float64 activations"):
        sdkernels.drop_path_add_norm(r, b, 0.5, w, bias, backend="cuda")
    _check_forward("cpu", "cpu", r.cpu(), b.cpu(), 0.5, w.cpu(), bias.cpu())  # the CPU kernel computes in fp64


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and {"cuda", "triton"} <= set(sdkernels.available_backends("add_norm"))),
                    reason="needs the CUDA and Triton backends")
@pytest.mark.parametrize("H", [768, 4096, 20000])
def test_cuda_and_triton_agree(H):
    r, b, w, bias, gm = _inputs((8, 4, H), torch.float32, torch.bfloat16, "cuda", gamma=True)
    xc, hc = _run("cuda", "cuda", r, b, 0.3, w, bias, layer_scale=gm)
    xt, ht = _run("cuda", "triton", r, b, 0.3, w, bias, layer_scale=gm)
    assert torch.equal(xc, xt)  # both multiply with mul.rn: the same bits
    assert_close(ht, hc)


def test_empty(dev_be):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((0, 5, 8), torch.float32, torch.float32, device)
    x, h = _run(device, backend, r.requires_grad_(), b.requires_grad_(), 0.5, w.requires_grad_(), bias)
    assert x.shape == (0, 5, 8) and h.shape == (0, 5, 8)
    gr, gw = torch.autograd.grad((x.sum() + h.sum()), (r, w))
    assert gr.shape == r.shape and torch.equal(gw, torch.zeros_like(w))


# ---- backward -----------------------------------------------------------------------------------


BWD_DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
              (torch.float64, torch.float64), (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("rdt,bdt", BWD_DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_backward_matches_reference(dev_be, rdt, bdt, p, norm):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((6, 5, 192), rdt, bdt, device, affine=(True, norm == "layer"))
    got = _check_backward(device, backend, r, b, p, w, bias, norm=norm)
    if p == 1.0:
        assert torch.equal(got[1], torch.zeros_like(b))


@pytest.mark.parametrize("H", [1, 3, 192, 1000, 3000, 8192, 65536])
def test_backward_row_lengths(dev_be, H):
    device, backend = dev_be
    rows = max(2, min(24, 2**15 // H))
    r, b, w, bias, gm = _inputs((rows, 1, H), torch.float32, torch.bfloat16, device, gamma=True)
    _check_backward(device, backend, r, b, 0.5, w, bias, gm)
    _check_backward(device, backend, r, b, 0.5, w, None, None, norm="rms")


@pytest.mark.parametrize("affine", [(True, True), (False, True), (False, False)], ids=str)
@pytest.mark.parametrize("with_gx", [True, False])
@pytest.mark.parametrize("gamma", [False, True])
def test_backward_options(dev_be, affine, with_gx, gamma):
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((5, 7, 96), torch.float32, torch.float32, device, affine=affine, gamma=gamma)
    _check_backward(device, backend, r, b, 0.4, w, bias, gm, with_gx=with_gx)


@pytest.mark.parametrize("sample_dim", [0, 1])
@pytest.mark.parametrize("out_dtype", [None, torch.bfloat16])
def test_backward_sample_dim_and_out_dtype(dev_be, sample_dim, out_dtype):
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((6, 5, 64), torch.float32, torch.bfloat16, device, gamma=True)
    _check_backward(device, backend, r, b, 0.5, w, bias, gm, sample_dim=sample_dim, out_dtype=out_dtype)


def test_backward_many_rows(dev_be):
    # More rows than chunks / programs: the partials of many rows each, summed in order.
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((64, 50, 64), torch.float32, torch.float32, device, gamma=True)
    _check_backward(device, backend, r, b, 0.3, w, bias, gm)


def test_only_h_used_and_only_x_used(dev_be):
    device, backend = dev_be
    r, b, w, bias, _ = _inputs((4, 3, 32), torch.float32, torch.float32, device)
    rl, bl, wl = r.requires_grad_(), b.requires_grad_(), w.requires_grad_()
    x, h = sdkernels.drop_path_add_norm(rl, bl, 0.0, wl, bias, backend=backend)
    gr, = torch.autograd.grad(x.sum(), (rl,))
    assert torch.equal(gr, torch.ones_like(r))
    x, h = sdkernels.drop_path_add_norm(rl, bl, 0.0, wl, bias, backend=backend)
    gr, gw = torch.autograd.grad(h.sum(), (rl, wl))
    xe = (r + b).detach().requires_grad_()
    we = w.detach().requires_grad_()
    ge, gwe = torch.autograd.grad(F.layer_norm(xe, (32,), we, bias, 1e-5).sum(), (xe, we))
    assert_close(gr, ge)
    assert_close(gw, gwe)


def test_parameters_owned_elsewhere_get_gradients(dev_be):
    # sdkernels.convert passes a timm block's own norm2.weight / bias / eps
    device, backend = dev_be
    ln = torch.nn.LayerNorm(48, eps=1e-6).to(device)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    r, b, _, _, _ = _inputs((4, 3, 48), torch.float32, torch.float32, device)
    x, h = sdkernels.drop_path_add_norm(r, b, 0.0, ln.weight, ln.bias, ln.eps, backend=backend)
    h.pow(2).sum().backward()
    gw, gb = ln.weight.grad.clone(), ln.bias.grad.clone()
    ln.zero_grad()
    ln(r + b).pow(2).sum().backward()
    assert_close(gw, ln.weight.grad)
    assert_close(gb, ln.bias.grad)


def test_deterministic(dev_be):
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((32, 40, 96), torch.float32, torch.bfloat16, device, gamma=True)
    g = _gen(7)
    gh = _t(r.shape, torch.float32, device, g)
    gx = _t(r.shape, torch.float32, device, g)
    runs = [_grads(device, backend, r, b, 0.3, w, bias, gm, gx, gh) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0])
    for i in runs[0][1]:
        assert torch.equal(runs[0][1][i], runs[1][1][i]), i


@pytest.mark.skipif("cpu" not in sdkernels.available_backends("add_norm"), reason="no CPU kernel")
def test_cpu_bits_do_not_depend_on_the_thread_count():
    r, b, w, bias, gm = _inputs((40, 33, 200), torch.float32, torch.bfloat16, "cpu", gamma=True)
    g = _gen(7)
    gh, gx = _t(r.shape, torch.float32, "cpu", g), _t(r.shape, torch.float32, "cpu", g)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            runs.append(_grads("cpu", "cpu", r, b, 0.3, w, bias, gm, gx, gh))
    finally:
        torch.set_num_threads(threads)
    for i in runs[0][1]:
        assert torch.equal(runs[0][1][i], runs[1][1][i]), i


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("sample_dim", [0, 1])
def test_gradcheck_and_gradgradcheck_fp64(dev_be, norm, sample_dim):
    device, backend = dev_be
    r, b, w, bias, gm = _inputs((3, 4, 6), torch.float64, torch.float64, device, gamma=True, pdt=torch.float64)
    ins = [t.requires_grad_() for t in (r, b, w, bias, gm)]

    def f(r, b, w, bias, gm):
        return sdkernels.drop_path_add_norm(r, b, 0.5, w, bias, norm=norm, sample_dim=sample_dim, layer_scale=gm,
                                            generator=_gen(4, device), backend=backend)

    assert gradcheck(f, ins)
    assert gradgradcheck(f, ins)


def test_reference_backward_spec_is_autograd_of_the_reference():
    r, b, w, bias, gm = _inputs((4, 3, 20), torch.float64, torch.float64, "cpu", gamma=True, pdt=torch.float64)
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    ins = [t.detach().requires_grad_() for t in (r, b, w, bias, gm)]
    x, h = R.add_norm(ins[0], ins[1], keep, ins[2], ins[3], ins[4], 0, 1.25, 1e-5, False)
    g = _gen(2)
    gx, gh = _t(r.shape, torch.float64, "cpu", g), _t(r.shape, torch.float64, "cpu", g)
    auto = torch.autograd.grad((x, h), ins, (gx, gh))
    spec = R.add_norm_backward(gx, gh, x.detach(), keep, w, bias, gm, b, 0, 1.25, 1e-5, False, r.dtype, b.dtype)
    for a, s in zip(auto, spec):
        assert_close(s, a)


# ---- arguments ----------------------------------------------------------------------------------

H = 16


def _args():
    r = torch.randn(2, 3, H)
    return r, torch.randn(2, 3, H), torch.randn(H)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(weight=torch.randn(H + 1)), ValueError, r"weight must have shape \(16,\)"),
    (dict(weight=torch.randn(1, H)), ValueError, "weight must have shape"),
    (dict(bias=torch.randn(4)), ValueError, "bias must have shape"),
    (dict(layer_scale=torch.randn(3)), ValueError, "layer_scale must have shape"),
    (dict(weight=torch.ones(H, dtype=torch.int64)), TypeError, "weight must be a floating-point"),
    (dict(norm="batch"), ValueError, "norm must be one of"),
    (dict(eps=-1.0), ValueError, "eps must be"),
    (dict(eps="1e-5"), TypeError, "eps must be a float"),
    (dict(out_dtype=torch.int32), TypeError, "out_dtype must be"),
    (dict(sample_dim=2), ValueError, "sample_dim must not be the normalized last dim"),
    (dict(sample_dim=-1), ValueError, "sample_dim must not be the normalized last dim"),
    (dict(sample_dim=3), IndexError, "out of range"),
    (dict(p=1.5), ValueError, "p \\(drop probability\\)"),
    (dict(mode="col"), ValueError, "mode must be one of"),
    (dict(backend="tpu"), ValueError, "backend must be one of"),
])
def test_bad_arguments(kwargs, exc, match):
    r, b, w = _args()
    call = dict(residual=r, branch=b, p=0.5, weight=w)
    call.update(kwargs)
    with pytest.raises(exc, match=match):
        sdkernels.drop_path_add_norm(**call)


def test_bad_tensors():
    r, b, w = _args()
    with pytest.raises(ValueError, match="residual and branch must have the same shape"):
        sdkernels.drop_path_add_norm(r, b[:, :2], 0.5, w)
    with pytest.raises(TypeError, match="branch must be a floating-point"):
        sdkernels.drop_path_add_norm(r, b.to(torch.int32), 0.5, w)
    with pytest.raises(TypeError, match="residual must be a floating-point"):
        sdkernels.drop_path_add_norm(r.to(torch.int64), b, 0.5, w)
    with pytest.raises(ValueError, match="at least 2 dims"):
        sdkernels.drop_path_add_norm(r[0, 0], b[0, 0], 0.5, w)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        sdkernels.drop_path_add_norm(r, b, 0.5, [1.0] * H)


@pytest.mark.skipif(not HAS_EXT, reason="compiled extension missing")
def test_op_level_errors_do_not_crash():
    r, b, w = _args()
    keep = torch.ones(2)
    op = torch.ops.sdkernels.add_norm.default
    with pytest.raises(ValueError, match="weight must have shape"):
        op(r, b, keep, torch.randn(3), None, None, 0, 1.0, 1e-5, False)
    with pytest.raises(ValueError, match="sample_dim must not be the normalized last dim"):
        op(r, b, keep, w, None, None, 2, 1.0, 1e-5, False)
    with pytest.raises(ValueError, match="scale must hold one value per sample"):
        op(r, b, torch.ones(5), w, None, None, 0, 1.0, 1e-5, False)
    with pytest.raises(TypeError, match="residual must be a floating-point"):
        op(r.int(), b, keep, w, None, None, 0, 1.0, 1e-5, False)
    x, h, mean, rstd = op(r, b, keep, w, None, None, 0, 1.0, 1e-5, False)
    bop = torch.ops.sdkernels.add_norm_backward.default
    with pytest.raises(ValueError, match="rstd must hold one value per row"):
        bop(None, h, x, mean, rstd[:3], keep, w, None, None, 0, 1.0, False, torch.float32, torch.float32)
    with pytest.raises(ValueError, match="without gamma"):
        bop(None, h, x, mean, rstd, keep, w, None, b, 0, 1.0, False, torch.float32, torch.float32)


# ---- torch.library, torch.compile, torch.fx ----------------------------------------------------


def _op_cases(device):
    for rdt, bdt in [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float64, torch.float64)]:
        for shape, dim in [((4, 3, 8), 0), ((4, 3, 8), 1), ((2, 3, 4, 8), 2)]:
            g = _gen(0)
            r = _t(shape, rdt, device, g).requires_grad_(rdt != torch.bfloat16)
            b = _t(shape, bdt, device, g).requires_grad_()
            w = _t((8,), torch.float32, device, g).requires_grad_()
            bias = _t((8,), torch.float32, device, g).requires_grad_()
            gm = _t((8,), torch.float32, device, g).requires_grad_()
            keep = (torch.rand(shape[dim], generator=g) > 0.5).to(device=device, dtype=R.draw_dtype(bdt))
            yield r, b, keep, w, bias, gm, dim


@pytest.mark.skipif(not HAS_EXT, reason="compiled extension missing")
def test_opcheck():
    for r, b, keep, w, bias, gm, dim in _op_cases("cpu"):
        for args in [(r, b, keep, w, bias, gm, dim, 1.25, 1e-5, False, None),
                     (r, b, keep, None, None, None, dim, 2.0, 1e-6, True, torch.bfloat16),
                     (r, b, keep, w, None, gm, dim, 1.0, 1e-5, True, None)]:
            torch.library.opcheck(torch.ops.sdkernels.add_norm.default, args)
        x, h, mean, rstd = torch.ops.sdkernels.add_norm(r, b, keep, w, bias, gm, dim, 1.25, 1e-5, False)
        gh = torch.randn_like(h)
        torch.library.opcheck(torch.ops.sdkernels.add_norm_backward.default,
                              (gh, gh, x.detach(), mean, rstd, keep, w.detach(), gm.detach(), b.detach(), dim, 1.25,
                               False, r.dtype, b.dtype, torch.float32, torch.float32))


@pytest.mark.skipif(not HAS_EXT, reason="compiled extension missing")
def test_fake_matches_real():
    from torch._subclasses.fake_tensor import FakeTensorMode

    for r, b, keep, w, bias, gm, dim in _op_cases("cpu"):
        flip = dim == 0 and r.dim() == 3  # a permuted dense layout: x keeps it
        rt = r.detach().transpose(0, 1) if flip else r.detach()
        bt = b.detach().transpose(0, 1) if flip else b.detach()
        d = 1 if flip else dim
        real = torch.ops.sdkernels.add_norm(rt, bt, keep, w, bias, gm, d, 1.0, 1e-5, False, torch.bfloat16)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake = torch.ops.sdkernels.add_norm(*(mode.from_tensor(t) for t in (rt, bt, keep, w, bias, gm)), d, 1.0,
                                                1e-5, False, torch.bfloat16)
        for a, f in zip(real, fake):
            assert a.shape == f.shape and a.stride() == f.stride() and a.dtype == f.dtype


class _Block(torch.nn.Module):
    """A pre-norm block's first half, as sdkernels.convert patches it."""

    def __init__(self, dim=32, p=0.5, norm="layer"):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, dim)
        self.fc2 = torch.nn.Linear(dim, dim)
        self.add_norm2 = sdkernels.nn.DropPathAddNorm(dim, p, norm=norm)

    def forward(self, x):
        x, h = self.add_norm2(x, self.fc1(x).relu())
        return x + self.fc2(h)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_compile_fullgraph_matches_eager_cpu(norm):
    torch._dynamo.reset()
    m = _Block(norm=norm)
    x = torch.randn(16, 8, 32, requires_grad=True)
    torch.manual_seed(123)
    eager = m(x)
    ge = torch.autograd.grad(eager.sum(), (x, m.fc1.weight, m.add_norm2.weight))
    cm = torch.compile(m, fullgraph=True)
    torch.manual_seed(123)
    comp = cm(x)
    gc = torch.autograd.grad(comp.sum(), (x, m.fc1.weight, m.add_norm2.weight))
    assert_close(comp, eager, rtol=1e-5, atol=1e-5)
    for a, e in zip(gc, ge):
        assert_close(a, e, rtol=1e-4, atol=1e-4)
    m.eval()
    assert not torch.allclose(eager, m(x))  # the mask mattered


def test_fx_records_one_leaf():
    m = _Block()
    gm = torch.fx.symbolic_trace(m)
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is sdkernels.drop_path_add_norm]
    assert len(calls) == 1
    assert calls[0].kwargs["norm"] == "layer" and calls[0].kwargs["training"] is True
    x = torch.randn(4, 3, 32)
    torch.manual_seed(1)
    a = gm(x)
    torch.manual_seed(1)
    assert torch.equal(a, m(x))


# ---- the module -------------------------------------------------------------------------------


def test_module_loads_layernorm_and_rmsnorm_state():
    ln = torch.nn.LayerNorm(24, eps=1e-6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    m = sdkernels.nn.DropPathAddNorm(24, 0.2, eps=1e-6)
    m.load_state_dict(ln.state_dict())
    m.eval()
    r, b = torch.randn(3, 5, 24), torch.randn(3, 5, 24)
    x, h = m(r, b)
    assert torch.equal(x, r + b)
    assert_close(h, ln(r + b))
    rn = torch.nn.RMSNorm(24, eps=1e-6)
    with torch.no_grad():
        rn.weight.normal_()
    mr = sdkernels.nn.DropPathAddNorm(24, 0.2, eps=1e-6, norm="rms").eval()
    mr.load_state_dict(rn.state_dict())
    assert mr.bias is None
    assert_close(mr(r, b)[1], rn(r + b))
    assert "norm='rms'" in repr(mr)


def test_module_arguments():
    with pytest.raises(ValueError, match="norm must be one of"):
        sdkernels.nn.DropPathAddNorm(8, norm="group")
    with pytest.raises(ValueError, match="p \\(drop probability\\)"):
        sdkernels.nn.DropPathAddNorm(8, 1.5)
    with pytest.raises(ValueError, match="normalized_shape"):
        sdkernels.nn.DropPathAddNorm((8, 8))
    with pytest.raises(ValueError, match="bias=True needs elementwise_affine"):
        sdkernels.nn.DropPathAddNorm(8, elementwise_affine=False, bias=True)
    m = sdkernels.nn.DropPathAddNorm(8, elementwise_affine=False)
    assert m.weight is None and m.bias is None and len(list(m.parameters())) == 0
    m = sdkernels.nn.DropPathAddNorm(8, dtype=torch.float64)
    assert m.weight.dtype == torch.float64


def test_module_train_step_matches_eager_timm_block():
    # DropPathAddNorm in a block = eager x + drop_path(branch); norm(x), same seed, same gradients.
    torch.manual_seed(0)
    m = _Block(dim=24, p=0.3)
    x = torch.randn(12, 5, 24, requires_grad=True)
    torch.manual_seed(5)
    out = m(x)
    g = torch.autograd.grad(out.sum(), (x, m.fc1.weight, m.add_norm2.weight, m.add_norm2.bias))
    torch.manual_seed(5)
    xe = x + R.timm_drop_path(m.fc1(x).relu(), 0.3, True)
    oute = xe + m.fc2(F.layer_norm(xe, (24,), m.add_norm2.weight, m.add_norm2.bias, 1e-5))
    ge = torch.autograd.grad(oute.sum(), (x, m.fc1.weight, m.add_norm2.weight, m.add_norm2.bias))
    assert_close(out, oute)
    for a, e in zip(g, ge):
        assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_reference_backend_is_the_spec():
    r, b, w, bias, _ = _inputs((4, 3, 20), torch.float32, torch.float32, "cpu")
    x, h = sdkernels.drop_path_add_norm(r, b, 0.5, w, bias, generator=_gen(3), backend="reference")
    ex, eh = _ref("cpu", r, b, 0.5, w, bias)
    assert torch.equal(x, ex) and torch.equal(h, eh)
    assert math.isclose(float(F.layer_norm(x, (20,), w, bias, 1e-5).sum()), float(h.sum()), rel_tol=1e-5)
