"""LayerScale fused into the ops (issue 13): ``residual + drop_path(gamma * branch)`` on every backend.

Against ``sdkernels.reference`` (forward, the three gradients, the ops one by
one), against eager timm ``LayerScale`` + ``drop_path`` + add and torchvision's
``CNBlock`` pattern under one seed (bit for bit in fp32), gradcheck, the saved
tensors, determinism, bad inputs, opcheck, torch.compile, torch.fx, the module
and the skip path.
"""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import sdkernels
from sdkernels import functional as F, reference as R
from sdkernels._ext import HAS_EXT
from _tolerances import assert_close, assert_close_reduction

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
#: gradcheck's fast mode (random projections): the interpreter run sets it, where every call is slow.
GRADCHECK_FAST = False


def _gradcheck(f, inputs):
    return gradcheck(f, inputs, fast_mode=GRADCHECK_FAST) and gradgradcheck(f, inputs, fast_mode=GRADCHECK_FAST)


def _gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def _rand(shape, dtype, seed, device, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _gamma(C, dtype, seed, device, shape=None):
    """Distinct per-channel values (a wrong channel index shows), none near zero."""
    g = torch.Generator().manual_seed(seed + 77)
    v = (0.5 + torch.rand(C, generator=g, dtype=torch.float64)) * torch.where(
        torch.rand(C, generator=g) < 0.5, -1.0, 1.0).double()
    v = v.to(device=device, dtype=dtype)
    return v if shape is None else v.reshape(shape)


# (name, shape, sample_dim, channel_dim, channels_last): the layouts, the row view's third
# case (channel dim outside the sample dim in memory) and a single channel.
LAYOUTS = [
    ("tokens", (6, 5, 24), 0, -1, False),
    ("channels_last", (4, 6, 5, 3), 0, 1, True),
    ("nchw", (4, 6, 5, 3), 0, 1, False),
    ("seq_first", (5, 4, 24), 1, -1, False),
    ("channel_outer", (6, 4, 5), 1, 0, False),
    ("one_channel", (4, 1, 7), 0, 1, False),
]


def _layout(name):
    return next(lay for lay in LAYOUTS if lay[0] == name)


def _inputs(layout, rdt, bdt, gdt, device, seed=1):
    _, shape, sd, cd, cl = layout
    r = _rand(shape, rdt, seed, device, cl)
    b = _rand(shape, bdt, seed + 1, device, cl)
    return r, b, _gamma(shape[cd], gdt, seed, device), sd, cd


def _be(backend):
    return F.LAYER_SCALE[backend]


def _grads_op(backend):
    if backend == "triton":
        return torch.ops.sdkernels.layer_scale_grads_triton.default
    return torch.ops.sdkernels.layer_scale_grads.default


# ---- forward against the reference ----------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay[0])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_forward_matches_reference(device_backend, layout, dtype, p):
    device, backend = device_backend
    r, b, g, sd, cd = _inputs(layout, dtype, dtype, dtype, device)
    kw = dict(sample_dim=sd, layer_scale=g, channel_dim=cd)
    out = sdkernels.drop_path_add(r, b, p, generator=_gen(3, device), backend=backend, **kw)
    exp = R.drop_path_add(r, b, p, generator=_gen(3, device), **kw)
    assert_close(out, exp)
    assert out.stride() == torch.empty_like(r).stride()
    y = sdkernels.drop_path(b, p, generator=_gen(4, device), backend=backend, **kw)
    assert_close(y, R.drop_path(b, p, generator=_gen(4, device), **kw))


# (residual, branch, gamma): autocast's fp32 gamma with a bf16 branch, a bf16 model's bf16 gamma, ...
MIXED = [
    (torch.float32, torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.bfloat16, torch.float32),
    (torch.float32, torch.float32, torch.bfloat16),
    (torch.float16, torch.bfloat16, torch.float32),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16, torch.bfloat16),
    (torch.float32, torch.float32, torch.float64),
    (torch.float64, torch.bfloat16, torch.float32),
]


@pytest.mark.parametrize("dts", MIXED, ids=str)
@pytest.mark.parametrize("layout", ["tokens", "seq_first", "nchw"])
def test_mixed_dtypes(device_backend, dts, layout):
    device, backend = device_backend
    r, b, g, sd, cd = _inputs(_layout(layout), *dts, device)
    kw = dict(sample_dim=sd, layer_scale=g, channel_dim=cd)
    out = sdkernels.drop_path_add(r, b, 0.5, generator=_gen(5, device), backend=backend, **kw)
    assert out.dtype == torch.promote_types(torch.promote_types(dts[0], dts[1]), dts[2])
    assert_close(out, R.drop_path_add(r, b, 0.5, generator=_gen(5, device), **kw))
    y = sdkernels.drop_path(b, 0.5, generator=_gen(6, device), backend=backend, **kw)
    assert y.dtype == torch.promote_types(dts[1], dts[2])
    assert_close(y, R.drop_path(b, 0.5, generator=_gen(6, device), **kw))


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_modes(device_backend, mode, scale_by_keep):
    device, backend = device_backend
    r, b, g, sd, cd = _inputs(_layout("tokens"), torch.float32, torch.float32, torch.float32, device)
    kw = dict(mode=mode, scale_by_keep=scale_by_keep, layer_scale=g, channel_dim=cd)
    for seed in range(4):
        out = sdkernels.drop_path_add(r, b, 0.5, generator=_gen(seed, device), backend=backend, **kw)
        assert torch.equal(out, R.drop_path_add(r, b, 0.5, generator=_gen(seed, device), **kw))


def test_gamma_shapes_that_broadcast_along_channel_dim(device_backend):
    device, backend = device_backend
    r, b, g, sd, cd = _inputs(_layout("channels_last"), torch.float32, torch.float32, torch.float32, device)
    C = g.numel()
    ref = R.drop_path_add(r, b, 0.3, generator=_gen(8, device), layer_scale=g, channel_dim=1)
    for shape in [(C,), (C, 1, 1), (1, C, 1, 1)]:
        out = sdkernels.drop_path_add(r, b, 0.3, generator=_gen(8, device), backend=backend,
                                      layer_scale=g.reshape(shape), channel_dim=1)
        assert torch.equal(out, ref), shape
        assert out.is_contiguous(memory_format=torch.channels_last)
    rt, bt, gt, _, _ = _inputs(_layout("tokens"), torch.float32, torch.float32, torch.float32, device)
    a = sdkernels.drop_path_add(rt, bt, 0.3, generator=_gen(8, device), backend=backend, layer_scale=gt.reshape(1, 1, -1))
    e = sdkernels.drop_path_add(rt, bt, 0.3, generator=_gen(8, device), backend=backend, layer_scale=gt)
    assert torch.equal(a, e)


# ---- against eager timm and torchvision, one seed ----------------------------------------------


def _timm():
    return pytest.importorskip("timm")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.021, 0.3 * 5 / 11])  # the last two: fp32(1/(1-p)) != timm's mask value
def test_vit_block_bitwise_eager_timm_fp32(device_backend, p):
    """``x + drop_path(ls(y))`` of a timm ViT block: the same bits in fp32 (forward), the same gradients within rounding."""
    timm = _timm()
    from timm.layers import DropPath, LayerScale

    device, backend = device_backend
    x = _rand((16, 7, 48), torch.float32, 1, device).requires_grad_()
    y = _rand((16, 7, 48), torch.float32, 2, device).requires_grad_()
    ls = LayerScale(48, init_values=1e-5).to(device)
    with torch.no_grad():
        ls.gamma.copy_(_gamma(48, torch.float32, 3, device))
    dp = DropPath(p).train()
    torch.manual_seed(11)
    eager = x + dp(ls(y))
    g_eager = torch.autograd.grad(eager, (x, y, ls.gamma), torch.ones_like(eager) * 0.5)
    torch.manual_seed(11)
    ours = sdkernels.drop_path_add(x, y, p, layer_scale=ls.gamma, backend=backend)
    g_ours = torch.autograd.grad(ours, (x, y, ls.gamma), torch.ones_like(ours) * 0.5)
    assert torch.equal(ours, eager)
    kept = (ours != x).any(-1).any(-1)
    assert 0 < kept.sum() or p > 0.4
    assert torch.equal(g_ours[0], g_eager[0])
    assert_close(g_ours[1], g_eager[1])
    assert_close(g_ours[2], g_eager[2], rtol=1e-5, atol=1e-5)
    assert timm is not None


def test_convnext_timm_and_torchvision_patterns_bitwise(device_backend):
    """timm ConvNeXt (``x.mul(gamma.reshape(1,-1,1,1))`` on channels_last, then drop_path + shortcut) and
    torchvision CNBlock (``layer_scale`` (C, 1, 1), StochasticDepth "row", ``result += input``)."""
    _timm()
    from timm.layers import DropPath
    from torchvision.ops import StochasticDepth

    device, backend = device_backend
    x = _rand((8, 12, 5, 5), torch.float32, 4, device, channels_last=True)
    y = _rand((8, 12, 5, 5), torch.float32, 5, device, channels_last=True)
    gamma = _gamma(12, torch.float32, 6, device)
    torch.manual_seed(3)
    eager = DropPath(0.25).train()(y.mul(gamma.reshape(1, -1, 1, 1))) + x
    torch.manual_seed(3)
    ours = sdkernels.drop_path_add(x, y, 0.25, layer_scale=gamma, channel_dim=1, backend=backend)
    assert torch.equal(ours, eager)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    layer_scale = gamma.reshape(12, 1, 1)
    torch.manual_seed(4)
    result = StochasticDepth(0.25, "row").train()(layer_scale * y)
    result += x
    torch.manual_seed(4)
    ours = sdkernels.drop_path_add(x, y, 0.25, layer_scale=layer_scale, channel_dim=1, backend=backend)
    assert torch.equal(ours, result)


def test_bf16_close_to_eager_timm(device_backend):
    """bf16 everywhere: eager rounds three times (ls, mask, add) where the fused op rounds once."""
    device, backend = device_backend
    x, y, g, _, _ = _inputs(_layout("tokens"), torch.bfloat16, torch.bfloat16, torch.bfloat16, device)
    torch.manual_seed(12)
    eager = R.timm_layer_scale_drop_path_add(x, y, g, 0.2)
    torch.manual_seed(12)
    ours = sdkernels.drop_path_add(x, y, 0.2, layer_scale=g, backend=backend)
    assert_close(ours.float(), eager.float(), rtol=3e-2, atol=2e-2)
    assert torch.equal(ours == x, eager == x)  # the same samples dropped


def test_eval_and_p_zero_are_the_eager_expression(device_backend):
    device, backend = device_backend
    for dts in [(torch.float32,) * 3, (torch.bfloat16,) * 3, (torch.float32, torch.bfloat16, torch.float32),
                (torch.float16, torch.float16, torch.float32)]:
        r, b, g, sd, cd = _inputs(_layout("nchw"), *dts, device)
        state = torch.get_rng_state()
        for kw in (dict(p=0.5, training=False), dict(p=0.0)):
            out = sdkernels.drop_path_add(r, b, backend=backend, layer_scale=g.reshape(-1, 1, 1), channel_dim=1, **kw)
            assert torch.equal(out, r + b * g.reshape(-1, 1, 1))  # bitwise eager
            y = sdkernels.drop_path(b, backend=backend, layer_scale=g, channel_dim=1, **kw)
            assert torch.equal(y, b * g.reshape(1, -1, 1, 1))  # gamma * x, not x
        assert torch.equal(torch.get_rng_state(), state), "no random numbers may be consumed"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_in_dropped_samples_stays_out(device_backend, dtype):
    device, backend = device_backend
    for name in ("tokens", "nchw", "seq_first", "channel_outer"):
        r, b, g, sd, cd = _inputs(_layout(name), dtype, dtype, torch.float32, device)
        n = r.shape[sd]
        keep = (torch.arange(n, device=device) % 3 != 1).float()
        idx = [slice(None)] * r.dim()
        idx[sd] = keep == 0
        b[tuple(idx)] = float("nan")
        be = _be(backend)
        out = be.residual_add_ls(r, b, keep, g, sd, cd, 1 / 0.7)
        assert not torch.isnan(out).any()
        assert torch.equal(out[tuple(idx)], r[tuple(idx)].to(out.dtype))
        assert_close(out, R.scaled_residual_add_ls(r, b, keep, g, sd, cd, 1 / 0.7))
        y = be.sample_scale_ls(b, keep, g, sd, cd, 1 / 0.7, None)
        assert not torch.isnan(y).any() and (y[tuple(idx)] == 0).all()
        go = _rand(r.shape, out.dtype, 9, device)
        gb, gg = _grads_op(backend)(go, b, keep, g, sd, cd, 1 / 0.7)
        assert not torch.isnan(gg).any() and not torch.isnan(gb).any(), name
        assert (gb[tuple(idx)] == 0).all()
        # through autograd too: the branch is saved for gamma's gradient
        gl = g.clone().requires_grad_()
        bl = b.clone().requires_grad_()
        o = be.residual_add_ls(r, bl, keep, gl, sd, cd, 1 / 0.7)
        ggl, gbl = torch.autograd.grad(o, (gl, bl), torch.ones_like(o))
        assert not torch.isnan(ggl).any() and not torch.isnan(gbl).any()


def test_p_one_gives_residual(device_backend):
    device, backend = device_backend
    r, b, g, sd, cd = _inputs(_layout("tokens"), torch.float32, torch.float32, torch.float32, device)
    b[0] = float("nan")
    g = g.requires_grad_()
    bl = b.clone().requires_grad_()
    out = sdkernels.drop_path_add(r, bl, 1.0, layer_scale=g, backend=backend)
    assert torch.equal(out, r)
    gb, gg = torch.autograd.grad(out.sum(), (bl, g))
    assert torch.equal(gb, torch.zeros_like(b)) and torch.equal(gg, torch.zeros_like(g))
    assert torch.equal(sdkernels.drop_path(b, 1.0, layer_scale=g, backend=backend), torch.zeros_like(b))


@pytest.mark.parametrize("shape", [(0, 5, 4), (3, 0, 4)], ids=str)
def test_zero_elements(device_backend, shape):
    device, backend = device_backend
    r = torch.randn(shape, device=device)
    g = torch.randn(4, device=device, requires_grad=True)
    b = r.clone().requires_grad_()
    out = sdkernels.drop_path_add(r, b, 0.5, layer_scale=g, backend=backend)
    assert out.shape == r.shape
    out.sum().backward()
    assert torch.equal(g.grad, torch.zeros_like(g))


# ---- backward --------------------------------------------------------------------------------


def _reduction_check(gg, go, b, keep, g, sd, cd, alpha):
    """gamma's gradient against the float64 reference, with the bound of assert_close_reduction."""
    d = torch.float64
    exp = R.layer_scale_grads(go.to(d), b.to(d), keep.to(d), g.to(d), sd, cd, alpha)[1]
    sumsq = R.layer_scale_grads(go.to(d) ** 2, b.to(d) ** 2, keep.to(d), g.to(d), sd, cd, alpha * alpha)[1]
    acc = R.acc_dtype(go.dtype, b.dtype, g.dtype)
    assert gg.dtype == g.dtype
    assert_close_reduction(gg, exp, sumsq, go.numel() // g.numel(), acc)


@pytest.mark.parametrize("dts", [(torch.float32,) * 3, (torch.bfloat16,) * 3, (torch.float64,) * 3,
                                 (torch.float32, torch.bfloat16, torch.float32),
                                 (torch.bfloat16, torch.bfloat16, torch.float32),
                                 (torch.float16, torch.float16, torch.float16)], ids=str)
@pytest.mark.parametrize("layout", [lay[0] for lay in LAYOUTS])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_backward_matches_reference(device_backend, dts, layout, p):
    device, backend = device_backend
    r, b, g, sd, cd = _inputs(_layout(layout), *dts, device)
    r, b, g = (t.requires_grad_() for t in (r, b, g))
    kw = dict(sample_dim=sd, layer_scale=g, channel_dim=cd)
    out = sdkernels.drop_path_add(r, b, p, generator=_gen(4, device), backend=backend, **kw)
    go = _rand(out.shape, out.dtype, 10, device)
    gr, gb, gg = torch.autograd.grad(out, (r, b, g), go)
    assert (gr.dtype, gb.dtype, gg.dtype) == dts and gg.shape == g.shape
    keep = R.draw_keep(r.shape[sd], p, "row", device, _gen(4, device), R.draw_dtype(torch.promote_types(dts[1], dts[2])))
    alpha = R.keep_scale(p, True, R.acc_dtype(*dts))
    assert_close(gr, go.to(dts[0]))
    assert_close(gb, R.sample_scale_ls(go, keep, g.detach(), sd, cd, alpha, dts[1]))
    _reduction_check(gg, go, b.detach(), keep, g.detach(), sd, cd, alpha)
    # drop_path alone: x's and gamma's gradients
    x = b.detach().clone().requires_grad_()
    y = sdkernels.drop_path(x, p, generator=_gen(5, device), backend=backend, **dict(kw, layer_scale=g))
    gy = _rand(y.shape, y.dtype, 11, device)
    gx, gg2 = torch.autograd.grad(y, (x, g), gy)
    keep = R.draw_keep(r.shape[sd], p, "row", device, _gen(5, device), R.draw_dtype(torch.promote_types(dts[1], dts[2])))
    alpha = R.keep_scale(p, True, R.acc_dtype(dts[1], dts[2]))
    assert_close(gx, R.sample_scale_ls(gy, keep, g.detach(), sd, cd, alpha, dts[1]))
    _reduction_check(gg2, gy, x.detach(), keep, g.detach(), sd, cd, alpha)


@pytest.mark.parametrize("C", [3, 7, 192, 3000])
@pytest.mark.parametrize("shape", ["rows1", "rows3", "nchw", "seq_first"])
def test_gamma_grad_few_rows_odd_channels(device_backend, C, shape):
    """Fewer rows than programs (every program must write its partials) and odd channel counts."""
    device, backend = device_backend
    shapes = {"rows1": ((1, 1, C), 0, -1), "rows3": ((3, 1, C), 0, -1), "nchw": ((2, C, 1, 3), 0, 1),
              "seq_first": ((1, 2, C), 1, -1)}
    sh, sd, cd = shapes[shape]
    for dtype in (torch.float32, torch.bfloat16):
        go = _rand(sh, dtype, 12, device)
        b = _rand(sh, dtype, 13, device)
        g = _gamma(C, torch.float32, 14, device)
        keep = torch.ones(sh[sd], device=device)
        keep[-1] = 0 if sh[sd] > 1 else 1
        b_nan = b.clone()
        if sh[sd] > 1:
            b_nan.select(sd, sh[sd] - 1).fill_(float("nan"))
        for _ in range(2):  # a reused allocation holding old partials must not leak in
            gb, gg = _grads_op(backend)(go, b_nan, keep, g, sd, cd, 1.25)
            assert_close(gb, R.sample_scale_ls(go, keep, g, sd, cd, 1.25, dtype))
            _reduction_check(gg, go, b, keep, g, sd, cd, 1.25)


def test_backward_saves_scale_gamma_and_branch_only_when_gamma_requires_grad(device_backend):
    device, backend = device_backend
    r, b, g, sd, cd = _inputs(_layout("tokens"), torch.float32, torch.float32, torch.float32, device)
    r.requires_grad_()
    b.requires_grad_()
    for gamma_grad in (True, False):
        gl = g.clone().requires_grad_(gamma_grad)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = sdkernels.drop_path_add(r, b, 0.5, layer_scale=gl, backend=backend)
        shapes = sorted(tuple(t.shape) for t in saved)
        want = [(6,), (24,)] + ([tuple(b.shape)] if gamma_grad else [])
        assert shapes == sorted(want), shapes
        if gamma_grad:
            assert any(t is b or t.data_ptr() == b.data_ptr() for t in saved), "the branch itself, not a copy"
        out.sum().backward()


def test_grad_residual_is_grad_out_itself(device_backend):
    device, backend = device_backend
    r, b, g, _, _ = _inputs(_layout("tokens"), torch.float32, torch.float32, torch.float32, device)
    r.requires_grad_()
    out = sdkernels.drop_path_add(r, b.requires_grad_(), 0.5, layer_scale=g.requires_grad_(), backend=backend)
    go = torch.randn_like(out)
    seen = {}
    r.register_hook(lambda t: seen.setdefault("r", t))
    out.backward(go)
    assert seen["r"].data_ptr() == go.data_ptr()


def test_deterministic_bits(device_backend):
    device, backend = device_backend
    r, b, g, sd, cd = _inputs(_layout("tokens"), torch.float32, torch.bfloat16, torch.float32, device)
    r = _rand((40, 33, 96), torch.float32, 1, device)
    b = _rand((40, 33, 96), torch.bfloat16, 2, device)
    g = _gamma(96, torch.float32, 3, device)
    go = _rand((40, 33, 96), torch.float32, 4, device)
    results = []
    threads = torch.get_num_threads()
    try:
        for nt in (threads, 1, threads):
            torch.set_num_threads(nt)
            rr, bb, gg = (t.clone().requires_grad_() for t in (r, b, g))
            out = sdkernels.drop_path_add(rr, bb, 0.3, layer_scale=gg, generator=_gen(11, device), backend=backend)
            results.append((out,) + torch.autograd.grad(out, (bb, gg), go))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, c) for a, c in zip(results[0], other)), "same seed, same bits, any thread count"


# ---- gradcheck --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["tokens", "nchw", "seq_first", "channel_outer"])
def test_gradcheck_gradgradcheck_fp64_ops(device_backend, layout):
    device, backend = device_backend
    be = _be(backend)
    grads = _grads_op(backend)
    _, shape, sd, cd, _ = _layout(layout)
    shape = tuple(min(s, 3) for s in shape)
    r, b, go = (_rand(shape, torch.float64, s, device).requires_grad_() for s in (1, 2, 3))
    g = _gamma(shape[cd], torch.float64, 4, device).requires_grad_()
    keep = (torch.arange(shape[sd], device=device) % 2 == 0).double()
    a = 1 / 0.7
    assert _gradcheck(lambda r, b, g: be.residual_add_ls(r, b, keep, g, sd, cd, a), (r, b, g))
    assert _gradcheck(lambda b, g: be.sample_scale_ls(b, keep, g, sd, cd, a, None), (b, g))
    assert _gradcheck(lambda go, b, g: grads(go, b, keep, g, sd, cd, a), (go, b, g))


def test_gradcheck_public_functions_fixed_seed(device_backend):
    device, backend = device_backend
    r, b = (_rand((6, 3, 4), torch.float64, s, device).requires_grad_() for s in (1, 2))
    g = _gamma(4, torch.float64, 3, device).requires_grad_()

    def f(r, b, g):
        return sdkernels.drop_path_add(r, b, 0.5, generator=_gen(7, device), backend=backend, layer_scale=g)

    def h(b, g):
        return sdkernels.drop_path(b, 0.5, generator=_gen(7, device), backend=backend, layer_scale=g)

    assert _gradcheck(f, (r, b, g))
    assert _gradcheck(h, (b, g))


# ---- bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma,kw,exc,match", [
    (torch.ones(5), {}, ValueError, "one value per channel"),
    (torch.ones(3, 1), {}, ValueError, "one value per channel"),
    (torch.ones(()), {}, ValueError, "one value per channel"),
    (torch.ones(4, 1, 1), dict(channel_dim=1), ValueError, "one value per channel"),
    (torch.ones(4), dict(channel_dim=0), ValueError, "must differ from sample_dim"),
    (torch.ones(4), dict(channel_dim=-3), ValueError, "must differ from sample_dim"),
    (torch.ones(4), dict(channel_dim=3), IndexError, "channel_dim"),
    (torch.ones(4), dict(channel_dim=1.0), TypeError, "channel_dim"),
    (torch.ones(4, dtype=torch.int64), {}, TypeError, "layer_scale must be a floating-point"),
    (torch.ones(4, dtype=torch.bool), {}, TypeError, "layer_scale must be a floating-point"),
    ([1.0] * 4, {}, TypeError, "layer_scale must be a torch.Tensor"),
    (torch.ones(4, device="meta"), {}, ValueError, "meta"),
])
def test_bad_layer_scale(gamma, kw, exc, match):
    r, b = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    state = torch.get_rng_state()
    with pytest.raises(exc, match=match):
        sdkernels.drop_path_add(r, b, 0.1, layer_scale=gamma, **kw)
    with pytest.raises(exc, match=match):
        sdkernels.drop_path(b, 0.1, layer_scale=gamma, **kw)
    with pytest.raises(exc, match=match):
        sdkernels.drop_path_residual(b, torch.nn.Identity(), 0.1, layer_scale=gamma, **kw)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.skipif(not HAS_EXT, reason="compiled extension missing")
def test_op_level_errors_do_not_crash():
    ops = torch.ops.sdkernels
    r, keep, g = torch.randn(3, 5, 4), torch.ones(3), torch.ones(4)
    with pytest.raises(ValueError, match="gamma must be 1-D"):
        ops.scaled_residual_add_ls(r, r, keep, torch.ones(5), 0, -1, 1.0)
    with pytest.raises(ValueError, match="gamma must be 1-D"):
        ops.sample_scale_ls(r, keep, torch.ones(4, 1), 0, -1, 1.0, None)
    with pytest.raises(ValueError, match="must differ from sample_dim"):
        ops.layer_scale_grads(r, r, keep, torch.ones(3), 0, 0, 1.0)
    with pytest.raises(IndexError, match="channel_dim"):
        ops.scaled_residual_add_ls(r, r, keep, g, 0, 5, 1.0)
    with pytest.raises(TypeError, match="gamma must be a floating-point"):
        ops.scaled_residual_add_ls(r, r, keep, g.long(), 0, -1, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        ops.layer_scale_grads(r, r[:, :4], keep, g, 0, -1, 1.0)
    with pytest.raises(ValueError, match="scale"):
        ops.sample_scale_ls(r, torch.ones(2), g, 0, -1, 1.0, None)


# ---- torch.library / torch.compile / torch.fx ---------------------------------------------------


def _op_cases(device):
    for name, dts in [("tokens", (torch.float32,) * 3), ("tokens", (torch.bfloat16, torch.bfloat16, torch.float32)),
                      ("tokens", (torch.float64,) * 3), ("channels_last", (torch.float32,) * 3),
                      ("nchw", (torch.float32, torch.float32, torch.bfloat16)), ("seq_first", (torch.float32,) * 3),
                      ("channel_outer", (torch.float32,) * 3)]:
        r, b, g, sd, cd = _inputs(_layout(name), *dts, device)
        keep = (torch.arange(r.shape[sd], device=device) % 3 != 1).float()
        yield (r.requires_grad_(dts[0] != torch.bfloat16), b.requires_grad_(), g.requires_grad_(), keep, sd, cd)


@pytest.mark.skipif(not HAS_EXT, reason="compiled extension missing")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
def test_opcheck(device):
    ops = torch.ops.sdkernels
    for r, b, g, keep, sd, cd in _op_cases(device):
        torch.library.opcheck(ops.scaled_residual_add_ls.default, (r, b, keep, g, sd, cd, 1.25))
        torch.library.opcheck(ops.sample_scale_ls.default, (b, keep, g, sd, cd, 1.25, None))
        torch.library.opcheck(ops.sample_scale_ls.default, (b, keep, g, sd, cd, 2.0, torch.float32))
        go = torch.randn_like(r, dtype=torch.promote_types(r.dtype, g.dtype)).requires_grad_()
        torch.library.opcheck(ops.layer_scale_grads.default, (go, b, keep, g, sd, cd, 1.25))


@pytest.mark.skipif(not HAS_EXT, reason="compiled extension missing")
def test_fake_outputs_match_real():
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = torch.ops.sdkernels
    for r, b, g, keep, sd, cd in _op_cases("cpu"):
        go = torch.randn_like(r, dtype=torch.promote_types(r.dtype, g.dtype))
        calls = [(ops.scaled_residual_add_ls, (r, b, keep, g, sd, cd, 1.0)),
                 (ops.sample_scale_ls, (b, keep, g, sd, cd, 1.0, None)),
                 (ops.layer_scale_grads, (go, b, keep, g, sd, cd, 1.0))]
        for op, args in calls:
            real = op(*args)
            with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
            for x, y in zip(real if isinstance(real, tuple) else (real,), fake if isinstance(fake, tuple) else (fake,)):
                assert (x.shape, x.stride(), x.dtype) == (y.shape, y.stride(), y.dtype)


class _LsBlock(torch.nn.Module):
    def __init__(self, dim=32, p=0.5):
        super().__init__()
        self.fc = torch.nn.Linear(dim, dim)
        self.dp = sdkernels.nn.DropPathAdd(p, layer_scale_dim=dim, init_values=0.1)
        self.gamma2 = torch.nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x):
        x = self.dp(x, self.fc(x).relu())
        return x + sdkernels.drop_path(self.fc(x), 0.25, layer_scale=self.gamma2)


def test_compile_fullgraph_matches_eager_cpu():
    torch._dynamo.reset()
    m = _LsBlock()
    x = torch.randn(16, 8, 32, requires_grad=True)
    torch.manual_seed(123)
    eager = m(x)
    ge = torch.autograd.grad(eager.sum(), (x, m.dp.gamma, m.gamma2, m.fc.weight))
    cm = torch.compile(m, fullgraph=True)
    torch.manual_seed(123)
    comp = cm(x)
    gc = torch.autograd.grad(comp.sum(), (x, m.dp.gamma, m.gamma2, m.fc.weight))
    assert_close(comp, eager, rtol=1e-5, atol=1e-5)
    for a, e in zip(gc, ge):
        assert_close(a, e, rtol=1e-4, atol=1e-4)
    m.eval()
    assert not torch.allclose(eager, m(x))


def test_fx_records_layer_scale_and_channel_dim():
    m = _LsBlock().train()
    gm = torch.fx.symbolic_trace(m)
    leaves = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (F.drop_path_add, F.drop_path)]
    assert len(leaves) == 2
    for n in leaves:
        assert "layer_scale" in n.kwargs and "channel_dim" in n.kwargs
        assert n.kwargs["layer_scale"].op == "get_attr"
    x = torch.randn(8, 4, 32)
    torch.manual_seed(0)
    expect = m(x)
    torch.manual_seed(0)
    assert torch.equal(gm(x), expect)


# ---- the module and the skip path ----------------------------------------------------------------


def test_drop_path_add_module_owns_gamma():
    m = sdkernels.nn.DropPathAdd(0.2, layer_scale_dim=8)
    assert isinstance(m.gamma, torch.nn.Parameter) and torch.equal(m.gamma.detach(), torch.full((8,), 1e-5))
    assert list(m.state_dict()) == ["gamma"]
    assert "layer_scale_dim=8" in repr(m)
    assert list(sdkernels.nn.DropPathAdd(0.2).state_dict()) == [] and sdkernels.nn.DropPathAdd(0.2).gamma is None
    m = sdkernels.nn.DropPathAdd(0.2, layer_scale_dim=6, init_values=0.5, channel_dim=1)
    r, b = torch.randn(4, 6, 3, 3), torch.randn(4, 6, 3, 3)
    torch.manual_seed(1)
    out = m(r, b)
    torch.manual_seed(1)
    assert torch.equal(out, R.drop_path_add(r, b, 0.2, layer_scale=m.gamma.detach(), channel_dim=1))
    out.sum().backward()
    assert m.gamma.grad is not None and m.gamma.grad.shape == (6,)
    with pytest.raises(ValueError, match="layer_scale_dim"):
        sdkernels.nn.DropPathAdd(0.1, layer_scale_dim=0)


@pytest.mark.parametrize("count", ["fixed", "bernoulli"])
def test_skip_path_with_layer_scale(device_backend, count):
    device, backend = device_backend
    if backend not in sdkernels.available_backends("skip"):
        pytest.skip(f"no skip-path backend {backend}")
    lin = torch.nn.Linear(12, 12).to(device)
    x = _rand((10, 3, 12), torch.float32, 1, device).requires_grad_()
    g = _gamma(12, torch.float32, 2, device).requires_grad_()
    torch.manual_seed(5)
    out = sdkernels.drop_path_residual(x, lin, 0.4, count=count, layer_scale=g, backend=backend)
    kept = (out != x).flatten(1).any(1)
    assert 0 < kept.sum() < 10
    y = lin(x) * g
    n, k = 10, int(kept.sum())
    alpha = n / k if count == "fixed" else 1 / 0.6
    exp = x + torch.where(kept[:, None, None], y * alpha, torch.zeros(()))
    assert_close(out, exp, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(out.square().sum(), (x, g))
    g2 = torch.autograd.grad(exp.square().sum(), (x, g))
    for a, e in zip(g1, g2):
        assert_close(a, e, rtol=1e-4, atol=1e-4)
    ev = sdkernels.drop_path_residual(x, lin, 0.4, training=False, layer_scale=g, backend=backend)
    assert torch.equal(ev, x + lin(x) * g)


# ---- CUDA and Triton on a GPU (skipped here) ----------------------------------------------------

_CUDA_LS = HAS_EXT and sdkernels._ext.has_kernel("scaled_residual_add_ls", "CUDA")


def _gpu_backends():
    return [b for b in ("cuda", "triton") if b in sdkernels.available_backends()]


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and _CUDA_LS), reason="needs a CUDA device and the CUDA kernels")
@pytest.mark.parametrize("shape,sd,cd,cl", [((64, 197, 768), 0, -1, False), ((8, 96, 56, 56), 0, 1, True),
                                            ((8, 96, 56, 56), 0, 1, False), ((256, 8, 1024), 1, -1, False),
                                            ((3, 7, 49), 1, 0, False), ((2, 1, 3000), 0, -1, False)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("offset", [0, 1])
def test_gpu_model_shapes_bitwise_and_misaligned(shape, sd, cd, cl, dtype, offset):
    """fp32 results equal the reference bit for bit (mul.rn/add.rn, no FMA); odd storage offsets take the
    scalar paths; gamma's gradient over many programs and row groups."""
    n = 1
    for s in shape:
        n *= s

    def make(seed):
        t = _rand((n + offset,), dtype, seed, "cuda")[offset:].view(shape)
        return t.contiguous(memory_format=torch.channels_last) if cl and offset == 0 else t

    r, b, go = make(1), make(2), make(3)
    g = _gamma(shape[cd], torch.float32, 4, "cuda")
    keep = (torch.arange(shape[sd], device="cuda") % 4 != 1).float()
    for backend in _gpu_backends():
        be = _be(backend)
        out = be.residual_add_ls(r, b, keep, g, sd, cd, 1 / 0.9)
        exp = R.scaled_residual_add_ls(r, b, keep, g, sd, cd, 1 / 0.9)
        gb, gg = _grads_op(backend)(go.to(out.dtype), b, keep, g, sd, cd, 1 / 0.9)
        if dtype == torch.float32:
            assert torch.equal(out, exp), backend
            assert torch.equal(gb, R.sample_scale_ls(go, keep, g, sd, cd, 1 / 0.9, dtype)), backend
        else:
            assert_close(out, exp)
            assert_close(gb, R.sample_scale_ls(go.to(out.dtype), keep, g, sd, cd, 1 / 0.9, dtype))
        _reduction_check(gg, go.to(out.dtype), b, keep, g, sd, cd, 1 / 0.9)
        again = _grads_op(backend)(go.to(out.dtype), b, keep, g, sd, cd, 1 / 0.9)[1]
        assert torch.equal(again, gg), "deterministic"



# Mangled-name fragments of the CUDA LayerScale kernels whose vector paths must be 128-bit.
LS_VECTOR_KERNELS = {
    "add fp32": "residual_add_ls_kernelIffffLi4E",
    "add bf16": "residual_add_ls_kernelIN3c108BFloat16ES3_S3_fLi8E",
    "scale bf16": "sample_scale_ls_kernelIN3c108BFloat16ES3_fLi8E",
    "grads cols fp32": "ls_grads_cols_kernelIfffLi4E",
    "grads rows bf16": "ls_grads_rows_kernelIN3c108BFloat16ES3_fLi8E",
}


def test_cuda_layer_scale_kernels_use_128_bit_accesses():
    """Read from the SASS of a CUDA build (no GPU needed): LDG.E.128 / STG.E.128 in the vector paths."""
    import subprocess

    if not _CUDA_LS:
        pytest.skip("the extension was built without CUDA kernels")
    from test_cuda_kernels import _cuobjdump

    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found")
    from sdkernels import _C

    res = subprocess.run([tool, "-sass", _C.__file__], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 or "Function :" not in res.stdout:
        pytest.skip(f"cuobjdump could not read SASS: {res.stderr.strip()[:200]}")
    funcs = res.stdout.split("Function : ")[1:]
    for what, frag in LS_VECTOR_KERNELS.items():
        bodies = [f for f in funcs if frag in f.split("\n", 1)[0]]
        assert bodies, f"kernel {what} ({frag}) not found"
        for body in bodies:
            assert "LDG.E.128" in body and "STG.E.128" in body, what
            assert "FFMA" not in body or what.startswith("grads"), f"{what}: a multiply-add was fused"


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and "triton" in sdkernels.available_backends()),
                    reason="needs a CUDA device and Triton")
def test_triton_ops_on_cuda_opcheck_and_compile():
    """The compiled Triton twins: opcheck, and torch.compile(fullgraph) of fwd+bwd (a fixed mask: on CUDA
    inductor draws its own random numbers) against eager, bit for bit in fp32."""
    from _interpret import triton_twins

    T, _ = triton_twins()
    for r, b, g, keep, sd, cd in _op_cases("cuda"):
        torch.library.opcheck(T.scaled_residual_add_ls, (r, b, keep, g, sd, cd, 1.25))
        torch.library.opcheck(T.sample_scale_ls, (b, keep, g, sd, cd, 1.25, None))
        go = torch.randn_like(r, dtype=torch.promote_types(r.dtype, g.dtype)).requires_grad_()
        torch.library.opcheck(T.layer_scale_grads, (go, b, keep, g, sd, cd, 1.25))
    torch._dynamo.reset()
    r, b, g, sd, cd = _inputs(_layout("tokens"), torch.float32, torch.float32, torch.float32, "cuda")
    r, b, g = (t.requires_grad_() for t in (r, b, g))
    keep = (torch.arange(r.shape[sd], device="cuda") % 3 != 1).float()

    def f(r, b, g):
        return T.scaled_residual_add_ls(r, b, keep, g, sd, cd, 1 / 0.9)

    eager = f(r, b, g)
    comp = torch.compile(f, fullgraph=True)(r, b, g)
    assert torch.equal(comp, eager)
    go = torch.randn_like(eager)
    got, want = torch.autograd.grad(comp, (r, b, g), go), torch.autograd.grad(eager, (r, b, g), go)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert_close(got[2], want[2], rtol=1e-5, atol=1e-5)  # inductor may sum the partials in its own order
