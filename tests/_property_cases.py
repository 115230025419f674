"""Property-based cases (hypothesis) of every public function against sdkernels.reference.

Shared by tests/test_properties.py (the C++ CPU backend) and
tests/test_properties_triton_interpret.py (the Triton backend under
``TRITON_INTERPRET=1``).  A case is a plain description (shapes, layouts,
dtypes, dims, p, mode, ...) drawn by the strategies below; the tensors are
built from it inside the check, so a falsifying example prints readably.

Draws: both sides are seeded alike before each call (``torch.manual_seed``, or
the same ``generator`` seed where a shared case helper takes one), so the
kernels and the reference keep the same samples.  Forward results are compared
with the reference in the tensors' own dtypes (tolerances of
tests/_tolerances.py); gradients with the spec's autograd in float64 for the
same keep mask and multiplier, each rounded once to its input's dtype, parameter
gradients (sums over rows) with :func:`_tolerances.assert_close_sum`.  In eval
(or at ``p == 0``) the functions are documented to be the eager expressions the
reference writes, so there results and gradients must be equal bit for bit.
"""
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import sdkernels
from sdkernels import reference as R
from _add_norm_cases import _expected_grads, _gen, _grads
from _tolerances import ACC_EPS, assert_close, assert_close_sum
from test_skip import GRAD_TOL, Branch, kept_from_call

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: Sizes of a dim: odd ones (a 6x42x123 block scaled down), 1 and 0.
SIZES = (6, 5, 7, 3, 13, 2, 1, 42)
LAYOUTS = ("contiguous", "permuted", "channels_last", "step", "expanded", "offset")

dtypes = st.sampled_from(DTYPES)
# Hypothesis favours the first of the choices and small values: the common case comes first, so most
# examples train with 0 < p < 1 on non-empty tensors, the edges (p 0 or 1, eval, empty dims) now and then.
probabilities = st.one_of(st.floats(0.05, 0.95), st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
trainings = st.sampled_from([True, True, True, False])
modes = st.sampled_from(["row", "row", "row", "batch"])
seeds = st.integers(0, 2**31 - 1)


# ---- strategies ---------------------------------------------------------------------------------


@st.composite
def shapes(draw, min_dims=1, max_dims=4, max_numel=1024, zero=True, min_last=0):
    """A shape of ``min_dims``..``max_dims`` dims from SIZES (0 now and then), at most ``max_numel`` elements."""
    nd = draw(st.integers(min_dims, max_dims))
    shape, numel = [], 1
    for d in range(nd):
        lo = min_last if d == nd - 1 else 0
        fits = [s for s in SIZES if s * numel <= max_numel and s >= lo]
        size = draw(st.sampled_from(fits)) if fits else 1
        if zero and lo == 0 and draw(st.sampled_from([False] * 15 + [True])):
            size = 0
        shape.append(size)
        numel *= max(size, 1)
    return tuple(shape)


@st.composite
def layouts(draw, shape, no_expand=()):
    """How a tensor of ``shape`` lies in memory: (kind, arg) of :data:`LAYOUTS`.

    ``permuted``: a dense tensor in another dim order (transposes); ``channels_last``
    (4 dims); ``step``: every other element of a dim (a slice with step 2);
    ``expanded``: a size-1 dim broadcast (stride 0; not along ``no_expand``, dims
    given wrapped); ``offset``: a view at storage offset 1.
    """
    nd = len(shape)
    kinds = ["contiguous", "permuted", "step", "offset"]
    if nd == 4:
        kinds.append("channels_last")
    expandable = [d for d in range(nd) if shape[d] > 1 and d not in no_expand]
    if expandable:
        kinds.append("expanded")
    kind = draw(st.sampled_from(kinds))
    if kind == "permuted":
        return kind, tuple(draw(st.permutations(range(nd))))
    if kind == "step":
        return kind, draw(st.integers(0, nd - 1))
    if kind == "expanded":
        return kind, draw(st.sampled_from(expandable))
    return kind, None


def make(shape, dtype, layout, seed, scale=1.0, offset=0.0, sample_offsets=None):
    """A tensor of ``shape`` and ``dtype`` laid out as ``layout``, random normal values (fp64, then rounded).

    Memory a view skips (the gaps of ``step``, the element before ``offset``) holds NaN, so a
    kernel reading it shows.  ``sample_offsets=(dim, step)`` adds ``step * i`` to sample ``i``
    along ``dim``, so every sample is distinguishable (the skip path's kept set is read back
    from what fn received).
    """
    kind, arg = layout
    g = torch.Generator().manual_seed(seed)
    vshape = list(shape)
    if kind == "expanded":
        vshape[arg] = 1
    v = torch.randn(vshape, generator=g, dtype=torch.float64) * scale + offset
    if sample_offsets is not None:
        dim, step = sample_offsets
        view = [1] * len(shape)
        view[dim] = vshape[dim]
        v = v + step * torch.arange(vshape[dim], dtype=torch.float64).reshape(view)
    v = v.to(dtype)
    if kind == "contiguous":
        return v
    if kind == "permuted":
        perm = arg
        inv = [perm.index(d) for d in range(len(shape))]
        return v.permute(perm).contiguous().permute(inv)
    if kind == "channels_last":
        return v.contiguous(memory_format=torch.channels_last)
    if kind == "step":
        big = list(shape)
        big[arg] *= 2
        buf = torch.full(big, float("nan"), dtype=dtype).movedim(arg, 0)
        buf[::2] = v.movedim(arg, 0)
        return buf[::2].movedim(0, arg)
    if kind == "expanded":
        return v.expand(shape)
    if kind == "offset":
        buf = torch.full([v.numel() + 1], float("nan"), dtype=dtype)
        buf[1:] = v.reshape(-1)
        return buf[1:].view(shape)
    raise AssertionError(kind)


def _cases(draw, shape, sample_dim, channel_dim=None, no_expand_residual=()):
    """The draws every family shares: dtypes, layouts, p, mode, scale_by_keep, training, seeds."""
    nd = len(shape)
    return dict(
        shape=shape, sample_dim=sample_dim, channel_dim=channel_dim,
        rdt=draw(dtypes), bdt=draw(dtypes),
        rlay=draw(layouts(shape, no_expand=no_expand_residual)), blay=draw(layouts(shape)),
        p=draw(probabilities), mode=draw(modes),
        scale_by_keep=draw(st.booleans()), training=draw(trainings),
        seed=draw(seeds), nd=nd)


@st.composite
def drop_path_cases(draw, max_numel=1024, layer_scale=None):
    """Cases of drop_path_add and drop_path: any shape with >= 1 dim, any sample and channel dim."""
    use_ls = draw(st.booleans()) if layer_scale is None else layer_scale
    shape = draw(shapes(min_dims=2 if use_ls else 1, max_numel=max_numel))
    nd = len(shape)
    sd = draw(st.integers(-nd, nd - 1))
    cd = None
    if use_ls:
        cd = draw(st.sampled_from([d for d in range(-nd, nd) if d % nd != sd % nd]))
    case = _cases(draw, shape, sd, cd)
    if use_ls:
        C = shape[cd]
        case.update(gdt=draw(dtypes), glay=draw(layouts((C,))),
                    gshape=draw(st.sampled_from(["1d", "broadcast"])))
    return case


@st.composite
def add_norm_cases(draw, max_numel=1024):
    """Cases of drop_path_add_norm: >= 2 dims, the last one (H >= 1) normalised, sample dim any other."""
    shape = draw(shapes(min_dims=2, max_dims=4, max_numel=max_numel, min_last=1))
    nd = len(shape)
    sd = draw(st.sampled_from([d for d in range(-nd, nd) if d % nd != nd - 1]))
    # a residual broadcast along the normalised dim has constant rows: their norm is rounding noise / sqrt(eps)
    case = _cases(draw, shape, sd, no_expand_residual=(nd - 1,))
    H = shape[-1]
    for name in ("weight", "bias", "layer_scale"):
        case[name] = (draw(dtypes), draw(layouts((H,)))) if draw(st.booleans()) else None
    case.update(norm=draw(st.sampled_from(["layer", "rms"])), eps=draw(st.sampled_from([1e-5, 1e-6, 0.1])),
                out_dtype=draw(st.one_of(st.none(), dtypes)), with_gx=draw(st.booleans()))
    return case


@st.composite
def residual_cases(draw, max_numel=1024):
    """Cases of drop_path_residual: counts "fixed" and "bernoulli", modes "row" and "batch"."""
    shape = draw(shapes(min_dims=1, max_dims=4, max_numel=max_numel))
    nd = len(shape)
    sd = draw(st.integers(-nd, nd - 1))
    # rows stay distinguishable: no expand along the sample dim
    case = _cases(draw, shape, sd, no_expand_residual=(sd % nd,))
    case.update(count=draw(st.sampled_from(["fixed", "bernoulli"])), odt=draw(st.one_of(st.none(), dtypes)))
    return case


# ---- helpers -------------------------------------------------------------------------------------


def _leaf(t):
    return t.detach().requires_grad_()


def _significant_strides(t):
    return tuple(s for n, s in zip(t.shape, t.stride()) if n > 1)


def _keep_and_alpha(case, n, ddt, acc):
    """The keep mask and multiplier the functions draw under ``torch.manual_seed(case["seed"])``."""
    torch.manual_seed(case["seed"])
    keep = R.draw_keep(n, case["p"], case["mode"], "cpu", None, ddt)
    return keep, R.keep_scale(case["p"], case["scale_by_keep"], acc)


def _spec_grads(fn, inputs, go):
    """Gradients of the spec ``fn`` run on float64 copies of ``inputs``, each rounded to its input's dtype."""
    ins64 = [t.detach().double().requires_grad_() for t in inputs]
    out = fn(*ins64)
    got = torch.autograd.grad(out, ins64, go.double(), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g.to(t.dtype) for g, t in zip(got, inputs)]


def _channel_norm(terms64, cd):
    """2-norm per channel (dim ``cd``) of the terms a per-channel gradient sums."""
    t = terms64.movedim(cd, 0)
    return t.reshape(t.shape[0], t[0].numel() if t.shape[0] else 0).norm(dim=1)


def _inputs(case):
    shape, seed = case["shape"], case["seed"]
    r = make(shape, case["rdt"], case["rlay"], seed + 1)
    b = make(shape, case["bdt"], case["blay"], seed + 2)
    gamma = None
    if case.get("gdt") is not None:
        nd, cd = case["nd"], case["channel_dim"]
        C = shape[cd]
        # distinct values around 0.8 (a wrong channel index shows)
        gamma = make((C,), case["gdt"], case["glay"], seed + 3, scale=0.3, offset=0.8)
        if case["gshape"] == "broadcast":  # (C, 1, ..) broadcasting along channel_dim only
            gamma = gamma.reshape([C] + [1] * (nd - 1 - cd % nd))
    return r, b, gamma


# ---- drop_path_add / drop_path (with and without LayerScale) -------------------------------------


def check_drop_path_add(case, backend):
    r, b, gamma = _inputs(case)
    p, sd, cd = case["p"], case["sample_dim"], case["channel_dim"]
    kw = dict(training=case["training"], mode=case["mode"], scale_by_keep=case["scale_by_keep"], sample_dim=sd)
    if gamma is not None:
        kw.update(layer_scale=gamma, channel_dim=cd)
    leaves = [_leaf(t) for t in (r, b, gamma) if t is not None]
    torch.manual_seed(case["seed"])
    out = sdkernels.drop_path_add(leaves[0], leaves[1], p, backend=backend,
                                  **dict(kw, layer_scale=leaves[2] if gamma is not None else None))
    ref_leaves = [_leaf(t) for t in leaves]
    torch.manual_seed(case["seed"])
    exp = R.drop_path_add(ref_leaves[0], ref_leaves[1], p,
                          **dict(kw, layer_scale=ref_leaves[2] if gamma is not None else None))
    assert out.shape == r.shape and out.dtype == exp.dtype
    go = make(out.shape, out.dtype, ("contiguous", None), case["seed"] + 4)
    got = torch.autograd.grad(out, leaves, go)
    if not case["training"] or p == 0.0:  # the eager expression itself: same bits, same gradients
        assert torch.equal(out, exp)
        for g, e in zip(got, torch.autograd.grad(exp, ref_leaves, go)):
            assert torch.equal(g, e)
        return
    assert_close(out, exp)
    if r.numel():  # the output is laid out as empty_like(residual)
        assert _significant_strides(out) == _significant_strides(torch.empty_like(r, dtype=out.dtype))
    n = r.shape[sd]
    if gamma is None:
        keep, alpha = _keep_and_alpha(case, n, *R.drop_dtypes(r.dtype, b.dtype))
        exp_g = _spec_grads(lambda r_, b_: R.scaled_residual_add(r_, b_, keep, sd, alpha), [r, b], go)
    else:
        keep, alpha = _keep_and_alpha(case, n, *R.drop_dtypes(r.dtype, b.dtype, gamma.dtype))
        exp_g = _spec_grads(lambda r_, b_, g_: R.scaled_residual_add_ls(r_, b_, keep, g_.reshape(-1), sd, cd, alpha),
                            [r, b, gamma], go)
        terms = _terms_ls(go, b, keep, alpha, sd, cd)
        assert got[2].shape == gamma.shape and got[2].dtype == gamma.dtype
        assert_close_sum(got[2].reshape(-1), exp_g[2].reshape(-1), _channel_norm(terms, cd))
    assert got[0].dtype == r.dtype and got[1].dtype == b.dtype
    assert_close(got[0], exp_g[0])
    assert_close(got[1], exp_g[1])


def _terms_ls(go, b, keep, alpha, sd, cd):
    """The terms gamma's gradient sums, ``(grad_out * m[s]) * branch`` on kept samples, in float64."""
    nd = b.dim()
    view = [1] * nd
    view[sd % nd] = -1
    m = (keep.double() * alpha).expand(b.shape[sd]).reshape(view)
    return torch.where(m != 0, go.double() * m * b.double(), torch.zeros((), dtype=torch.float64))


def check_drop_path(case, backend):
    _, x, gamma = _inputs(case)
    p, sd, cd = case["p"], case["sample_dim"], case["channel_dim"]
    kw = dict(training=case["training"], mode=case["mode"], scale_by_keep=case["scale_by_keep"], sample_dim=sd)
    if gamma is not None:
        kw.update(channel_dim=cd)
    leaves = [_leaf(t) for t in (x, gamma) if t is not None]
    torch.manual_seed(case["seed"])
    out = sdkernels.drop_path(leaves[0], p, backend=backend, layer_scale=leaves[1] if gamma is not None else None, **kw)
    ref_leaves = [_leaf(t) for t in leaves]
    torch.manual_seed(case["seed"])
    exp = R.drop_path(ref_leaves[0], p, layer_scale=ref_leaves[1] if gamma is not None else None, **kw)
    assert out.shape == x.shape and out.dtype == exp.dtype
    if not case["training"] or p == 0.0:
        if gamma is None:
            assert out is leaves[0], "eval / p == 0 returns x itself"
            return
        assert torch.equal(out, exp)
        go = make(out.shape, out.dtype, ("contiguous", None), case["seed"] + 4)
        for g, e in zip(torch.autograd.grad(out, leaves, go), torch.autograd.grad(exp, ref_leaves, go)):
            assert torch.equal(g, e)
        return
    assert_close(out, exp)
    if x.numel():
        assert _significant_strides(out) == _significant_strides(torch.empty_like(x, dtype=out.dtype))
    go = make(out.shape, out.dtype, ("contiguous", None), case["seed"] + 4)
    got = torch.autograd.grad(out, leaves, go)
    n = x.shape[sd]
    if gamma is None:
        keep, alpha = _keep_and_alpha(case, n, R.draw_dtype(x.dtype), R.acc_dtype(x.dtype))
        exp_g = _spec_grads(lambda x_: R.sample_scale(x_, keep, sd, alpha), [x], go)
    else:
        keep, alpha = _keep_and_alpha(case, n, *R.drop_dtypes(x.dtype, x.dtype, gamma.dtype))
        exp_g = _spec_grads(lambda x_, g_: R.sample_scale_ls(x_, keep, g_.reshape(-1), sd, cd, alpha),
                            [x, gamma], go)
        assert got[1].shape == gamma.shape and got[1].dtype == gamma.dtype
        assert_close_sum(got[1].reshape(-1), exp_g[1].reshape(-1), _channel_norm(_terms_ls(go, x, keep, alpha, sd, cd), cd))
    assert got[0].dtype == x.dtype
    assert_close(got[0], exp_g[0])


# ---- drop_path_add_norm ---------------------------------------------------------------------------


def _norm_inputs(case):
    r, b, _ = _inputs(dict(case, gdt=None))
    H = case["shape"][-1]
    params = []
    for i, name in enumerate(("weight", "bias", "layer_scale")):
        spec = case[name]
        params.append(None if spec is None else make((H,), spec[0], spec[1], case["seed"] + 10 + i, 0.5,
                                                     0.0 if name == "bias" else 1.0))
    return (r, b, *params)


def _norm_slack(x, gh, w, eps, rms, acc):
    """What rounding in the math dtype ``acc`` may add to the norm's results, by condition (float64 tensors).

    The mean of a LayerNorm row is off by a few units of ``acc`` at the scale of
    ``max |x|``; centred and scaled, that error grows by ``cond = 1 + max |x| * rstd``
    (a row whose spread is small next to its values, or next to sqrt(eps), is
    ill-conditioned: any fp32 LayerNorm, eager's too, loses digits there; RMSNorm
    has no such cancellation).  Returns ``(e_xhat, e_dx)``: per element, the slack
    of ``xhat = (x - mean) * rstd`` and of ``dx = rstd * (dy - mean(dy) - xhat *
    mean(dy * xhat))`` (``dy = grad_h * weight``), 8 units of ``acc`` times the
    first-order error terms.
    """
    u = 2.0**-53 if acc == torch.float64 else 2.0**-24
    xa = x.double()
    xhat, rstd = R.norm_stats(xa, eps, rms, torch.float64)
    cond = 1.0 if rms else 1.0 + xa.abs().amax(-1, keepdim=True) * rstd
    dy = gh.double() if w is None else gh.double() * w.double()
    e_xhat = 8 * u * cond * (1 + xhat.abs())
    big_xhat = xhat.abs().amax(-1, keepdim=True)
    e_dx = 8 * u * cond * rstd * dy.abs().amax(-1, keepdim=True) * (1 + big_xhat) ** 2
    return e_xhat, e_dx.expand(x.shape)


def _rows_sum(t):
    """Per-column sums over every row (all dims but the last), float64."""
    return t.reshape(-1, t.shape[-1]).sum(0)


def check_drop_path_add_norm(case, backend):
    r, b, w, bias, gm = _norm_inputs(case)
    p, sd = case["p"], case["sample_dim"]
    rms = case["norm"] == "rms"
    kw = dict(norm=case["norm"], eps=case["eps"], mode=case["mode"], scale_by_keep=case["scale_by_keep"],
              sample_dim=sd, out_dtype=case["out_dtype"], training=case["training"])
    x, h = sdkernels.drop_path_add_norm(r, b, p, w, bias, layer_scale=gm, generator=_gen(3), backend=backend, **kw)
    ex, eh = R.drop_path_add_norm(r, b, p, w, bias, layer_scale=gm, generator=_gen(3), **kw)
    assert x.dtype == ex.dtype and h.dtype == eh.dtype and x.shape == h.shape == r.shape
    dts = [t.dtype for t in (w, bias, gm) if t is not None] + [case["out_dtype"] or x.dtype]
    acc = R.acc_dtype(r.dtype, b.dtype, *dts)
    # x in the op's math dtype (fp64 with fp64 parameters or out_dtype), rounded once: the reference's bits
    assert torch.equal(x, ex), "x is the reference's x bit for bit"
    gh = make(r.shape, h.dtype, ("contiguous", None), case["seed"] + 5)
    e_xhat, e_dx = _norm_slack(x, gh, w, case["eps"], rms, acc)
    # h = xhat * weight + bias: kernel and reference each within e_xhat * |weight| of the exact value
    e_h = 2 * e_xhat * (1.0 if w is None else w.double().abs())
    assert_close_sum(h, eh, e_h / (8 * ACC_EPS[h.dtype]))
    if h.numel():
        assert _significant_strides(h) == _significant_strides(x)
    gx = make(r.shape, x.dtype, ("contiguous", None), case["seed"] + 6) if case["with_gx"] else None
    train = case["training"] and p != 0.0
    grad_kw = {k: kw[k] for k in ("norm", "eps", "mode", "scale_by_keep", "sample_dim", "out_dtype", "training")}
    if not train and gm is not None:
        # eval: x = residual + branch * layer_scale, the product rounded as eager rounds it, then the norm
        # of that x: the same bits and gradients as the function given the product as its branch.
        leaves = [_leaf(t) if t is not None else None for t in (r, b, w, bias, gm)]
        outs = sdkernels.drop_path_add_norm(leaves[0], leaves[1], p, leaves[2], leaves[3], layer_scale=leaves[4],
                                            backend=backend, **kw)
        leaves2 = [_leaf(t) if t is not None else None for t in (r, b, w, bias, gm)]
        outs2 = sdkernels.drop_path_add_norm(leaves2[0], leaves2[1] * leaves2[4], p, leaves2[2], leaves2[3],
                                             backend=backend, **kw)
        gos = [gh] + ([gx] if gx is not None else [])
        got = torch.autograd.grad(list(outs[::-1][:len(gos)]), [t for t in leaves if t is not None], gos)
        got2 = torch.autograd.grad(list(outs2[::-1][:len(gos)]), [t for t in leaves2 if t is not None], gos)
        assert torch.equal(outs[0], outs2[0]) and torch.equal(outs[1], outs2[1])
        for g, e in zip(got, got2):
            assert torch.equal(g, e)
        # and the norm of that x against the reference: the case without layer_scale
        b, gm = (b * gm).detach(), None
    x, got = _grads("cpu", backend, r, b, p, w, bias, gm, gx, gh, **grad_kw)
    p_eff = p if train else 0.0
    exp, norms = _expected_grads("cpu", x, r, b, p_eff, w, bias, gm, gx, gh, norm=case["norm"], sample_dim=sd,
                                 mode=case["mode"], eps=case["eps"], scale_by_keep=case["scale_by_keep"])
    # the largest multiplier of a kept sample: alpha (keep is 0 or 1)
    alpha = R.keep_scale(p_eff, case["scale_by_keep"], R.drop_dtypes(r.dtype, b.dtype, None if gm is None else gm.dtype)[1])
    g_abs = 1.0 if gm is None else gm.double().abs()
    slack = {0: e_dx, 1: e_dx * alpha * g_abs, 2: _rows_sum(gh.double().abs() * e_xhat), 3: 0.0,
             4: _rows_sum(e_dx * alpha * b.double().abs())}
    for i, t in got.items():
        e = exp[i]
        assert t.dtype == e.dtype, i
        extra = slack[i] / (8 * ACC_EPS[e.dtype])
        # parameter gradients (i >= 2) are sums over rows: their rounding grows with the terms' norm
        assert_close_sum(t, e, norms[i] + extra if i >= 2 else extra)


def check_add_norm_x_with_fp64_parameters(param, backend):
    """The minimal case hypothesis once found (6x6 fp32, p = 0.25, fp64 weight): x is computed in fp64 and
    rounded once, by the kernels and the reference alike."""
    g = torch.Generator().manual_seed(0)
    r, b = (torch.randn(6, 6, generator=g) for _ in range(2))
    kw = {"weight": torch.ones(6, dtype=torch.float64)} if param == "weight" else {"weight": None}
    if param == "bias":
        kw["bias"] = torch.zeros(6, dtype=torch.float64)
    if param == "out_dtype":
        kw["out_dtype"] = torch.float64
    x, _ = sdkernels.drop_path_add_norm(r, b, 0.25, generator=_gen(3), backend=backend, **kw)
    ex, _ = R.drop_path_add_norm(r, b, 0.25, generator=_gen(3), **kw)
    assert x.dtype == ex.dtype == torch.float32
    assert torch.equal(x, ex)


# ---- drop_path_residual: against the masked full computation -------------------------------------


def check_drop_path_residual(case, backend):
    shape, sd, p = case["shape"], case["sample_dim"], case["p"]
    nd = case["nd"]
    dim = sd % nd
    xdt, odt = case["rdt"], case["odt"]
    # fn acts on each sample alone (the masked full computation is then the spec): per-channel
    # parameters along the last dim, or one scalar pair when the samples lie along it
    h = 1 if dim == nd - 1 or shape[-1] == 0 else shape[-1]
    # samples offset by 3 apart: fn's input tells which samples were kept (bf16 rows of one element collide)
    x = make(shape, xdt, case["rlay"], case["seed"] + 1, sample_offsets=(dim, 3.0)).requires_grad_()
    n = shape[dim]
    rows = x.numel() // n if n else 0
    if rows:  # (rounded to 16 bits, two samples may still collide: then the kept set cannot be read back)
        assume(len({tuple(v.tolist()) for v in x.detach().movedim(dim, 0).reshape(n, rows)}) == n)
    fn = Branch(h, xdt, odt)
    fn_ref = Branch(h, xdt, odt)
    kw = dict(training=case["training"], mode=case["mode"], count=case["count"],
              scale_by_keep=case["scale_by_keep"], sample_dim=sd)
    torch.manual_seed(case["seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # count "fixed"'s realised-rate warning
        out = sdkernels.drop_path_residual(x, fn, p, backend=backend, **kw)
    assert len(fn.calls) <= 1, "fn is called at most once"
    if fn.calls:
        assert fn.calls[0].shape[dim] > 0, "fn is never called on an empty batch"
    if not fn.calls:
        assert out is x, "nothing kept: x itself"
        kept = []
    elif rows == 0:  # samples of no elements: nothing to tell them apart by
        kept = list(range(fn.calls[0].shape[dim]))
    else:  # (a 1-dim x: samples of one element each)
        kept = kept_from_call(x, fn.calls[0], dim) if nd > 1 else kept_from_call(x[:, None], fn.calls[0][:, None], 0)
    k = len(kept)
    assert len(set(kept)) == k
    train = case["training"] and p != 0.0
    if not train:
        assert n == 0 or k == n
    elif case["mode"] == "batch":
        assert k in (0, n)
    elif case["count"] == "fixed":  # k = n (1 - p) rounded half up, at least 1 while p < 1
        rate_k = n * (1 - p)
        if p == 1.0 or n == 0:
            assert k == 0
        else:
            assert 1 <= k <= n and (abs(k - rate_k) <= 0.5 + 1e-6 or (k == 1 and rate_k < 1)), (k, n, p)
    out_dtype = torch.promote_types(xdt, odt or xdt)
    if k == 0:
        return
    assert out.dtype == out_dtype and out.shape == x.shape
    if not train:
        alpha = 1.0
    elif case["mode"] == "row" and case["count"] == "fixed":
        alpha = n / k if case["scale_by_keep"] else 1.0
    else:
        alpha = R.keep_scale(p, case["scale_by_keep"], R.acc_dtype(xdt, odt or xdt))
    x2 = x.detach().clone().requires_grad_()
    mask = torch.zeros(n, dtype=torch.float32)
    mask[kept] = 1.0
    exp = R.scaled_residual_add(x2, fn_ref(x2), mask, dim, alpha)
    assert_close(out.detach(), exp.detach(), dtype=out_dtype)
    go = make(shape, out_dtype, ("contiguous", None), case["seed"] + 7)
    exp.backward(go)
    out.backward(go)
    torch.testing.assert_close(x.grad, x2.grad, **GRAD_TOL[xdt])
    for pa, pb in ((fn.w, fn_ref.w), (fn.b, fn_ref.b)):
        torch.testing.assert_close(pa.grad, pb.grad, **GRAD_TOL[xdt])


# ---- the tests, for a backend ---------------------------------------------------------------------


def property_tests(backend, max_numel, max_examples):
    """The property tests of ``backend`` (tensors of at most ``max_numel`` elements, ``max_examples`` each),
    by name, for a test module's namespace: ``globals().update(property_tests(...))``."""
    examples = settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                        suppress_health_check=[HealthCheck.too_slow])

    @examples
    @given(case=drop_path_cases(max_numel, layer_scale=False))
    def test_drop_path_add(case):
        check_drop_path_add(case, backend)

    @examples
    @given(case=drop_path_cases(max_numel, layer_scale=True))
    def test_drop_path_add_layer_scale(case):
        check_drop_path_add(case, backend)

    @examples
    @given(case=drop_path_cases(max_numel))
    def test_drop_path(case):
        check_drop_path(case, backend)

    @examples
    @given(case=add_norm_cases(max_numel))
    def test_drop_path_add_norm(case):
        check_drop_path_add_norm(case, backend)

    @examples
    @given(case=residual_cases(max_numel))
    def test_drop_path_residual(case):
        check_drop_path_residual(case, backend)

    @pytest.mark.parametrize("param", ["weight", "bias", "out_dtype"])
    def test_add_norm_x_with_fp64_parameters(param):
        check_add_norm_x_with_fp64_parameters(param, backend)

    return {f.__name__: f for f in (test_drop_path_add, test_drop_path_add_layer_scale, test_drop_path,
                                    test_drop_path_add_norm, test_drop_path_residual,
                                    test_add_norm_x_with_fp64_parameters)}
