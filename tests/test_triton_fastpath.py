"""The Triton backend's eager fast path (``sdkernels.ops.core.TRITON["residual_add"]`` ...) against its
registered ops.

In plain eager mode the "triton" backend skips the torch.library layers (see the
``sdkernels.ops.launch`` docstring); everywhere else it calls the ops.  These tests
check that both paths give identical outputs, gradients and errors, that the fast
path is really taken in eager mode, and that dispatch modes, ``torch.compile`` and
tensor subclasses still see the ops.  Run under the interpreter, in its own
process:  ``TRITON_INTERPRET=1 pytest -m triton_interpret``.
"""
import pytest

from _interpret import triton_ops_under_interpreter

pytestmark = pytest.mark.triton_interpret

T, K = triton_ops_under_interpreter()

import torch  # noqa: E402
from torch.autograd import gradcheck, gradgradcheck  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
import sdkernels  # noqa: E402
from sdkernels import functional  # noqa: E402
from sdkernels import reference as R  # noqa: E402
from sdkernels.ops import core as core_ops, launch  # noqa: E402

OP_ADD = torch.ops.sdkernels.scaled_residual_add_triton.default
OP_SCALE = torch.ops.sdkernels.sample_scale_triton.default
FAST_ADD = core_ops.TRITON["residual_add"]
FAST_SCALE = core_ops.TRITON["sample_scale"]

# (residual dtype, branch dtype): same dtype and autocast-style mixes.
DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64),
               (torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)]
SHAPES = [(6, 5, 33), (3, 4, 1100), (5, 1)]  # tile kernel, row kernel, inner == 1


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _keep(n, p, seed=0):
    """(scale, alpha) of a drop-path draw: p=0 all kept, p=1 all dropped."""
    return R.draw_keep(n, p, "row", "cpu", _gen(seed)), R.keep_scale(p, True)


def _leaf(t, requires_grad=True):
    return t.detach().clone().requires_grad_(requires_grad)


def _pair(shape, rdt, bdt, seed=1):
    g = _gen(seed)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(rdt)
    b = torch.randn(shape, generator=g, dtype=torch.float64).to(bdt)
    return r, b


def _same(a, b):
    assert type(a) is type(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
    assert torch.equal(a, b)


@pytest.fixture
def op_spy(monkeypatch):
    """Records every call the fast-path callables hand to the registered ops."""
    calls = []

    def spy(name, op):
        def f(*args, **kwargs):
            calls.append(name)
            return op(*args, **kwargs)

        return f

    monkeypatch.setattr(core_ops, "residual_add_op", spy("scaled_residual_add", OP_ADD))
    monkeypatch.setattr(core_ops, "sample_scale_op", spy("sample_scale", OP_SCALE))
    return calls


# ---- identical results ------------------------------------------------------------------------


def _fwd_bwd(add, r, b, scale, dim, alpha, go):
    r, b = _leaf(r), _leaf(b)
    out = add(r, b, scale, dim, alpha)
    gr, gb = torch.autograd.grad(out, (r, b), go)
    return out, gr, gb


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("rdt,bdt", DTYPE_PAIRS, ids=str)
@pytest.mark.parametrize("sample_dim", [0, -1])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_residual_add_fwd_bwd_identical(shape, rdt, bdt, sample_dim, p):
    r, b = _pair(shape, rdt, bdt)
    scale, alpha = _keep(shape[sample_dim], p)
    go = torch.randn(shape, generator=_gen(2)).to(torch.promote_types(rdt, bdt))
    # no grad: no autograd node either way
    _same(FAST_ADD(r, b, scale, sample_dim, alpha), OP_ADD(r, b, scale, sample_dim, alpha))
    assert FAST_ADD(r, b, scale, sample_dim, alpha).grad_fn is None
    fast = _fwd_bwd(FAST_ADD, r, b, scale, sample_dim, alpha, go)
    ref = _fwd_bwd(OP_ADD, r, b, scale, sample_dim, alpha, go)
    for a, e in zip(fast, ref):
        _same(a, e)
    assert fast[1].dtype == rdt and fast[2].dtype == bdt


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("out_dtype", [None, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_sample_scale_fwd_bwd_identical(dtype, out_dtype, sample_dim, p):
    x, _ = _pair((6, 5, 33), dtype, dtype)
    scale, alpha = _keep(x.shape[sample_dim], p)
    _same(FAST_SCALE(x, scale, sample_dim, alpha, out_dtype), OP_SCALE(x, scale, sample_dim, alpha, out_dtype))
    go = torch.randn(6, 5, 33, generator=_gen(2)).to(out_dtype or dtype)
    res = []
    for f in (FAST_SCALE, OP_SCALE):
        xl = _leaf(x)
        y = f(xl, scale, sample_dim, alpha, out_dtype)
        res.append((y, *torch.autograd.grad(y, xl, go)))
    for a, e in zip(*res):
        _same(a, e)
    assert res[0][1].dtype == dtype


def test_layouts_and_scales_identical():
    base = torch.randn(4, 6, 5, 7, generator=_gen(5))
    cases = [
        (base.to(memory_format=torch.channels_last), base * 3, 0),  # mixed formats
        (base.transpose(1, 3), (base * 2).transpose(1, 3), 1),
        (base[:, ::2], base[:, 1::2], 1),  # non-dense
        (base, base[:, :1].expand(4, 6, 5, 7), 0),  # expanded branch
    ]
    scales = [(torch.tensor([1.0, 0, 1, 1]), 4), (torch.tensor([1.0]), None), (torch.tensor(0.5, dtype=torch.float64), None)]
    for r, b, dim in cases:
        for scale, n in scales:
            if n is not None and n != r.shape[dim]:
                continue
            _same(FAST_ADD(r, b, scale, dim, 1.5), OP_ADD(r, b, scale, dim, 1.5))
            _same(FAST_SCALE(b, scale, dim, 1.5, None), OP_SCALE(b, scale, dim, 1.5, None))
            _same(FAST_SCALE(r, scale, dim, 1.5, torch.bfloat16), OP_SCALE(r, scale, dim, 1.5, torch.bfloat16))
    # an int alpha, converted as the schema's `float alpha` converts it
    r, b = base, base * 2
    _same(FAST_ADD(r, b, scales[0][0], 0, 2), OP_ADD(r, b, scales[0][0], 0, 2))


@pytest.mark.parametrize("rdt,bdt", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16)], ids=str)
@pytest.mark.parametrize("sample_dim", [0, 1])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_public_api_identical_to_op_path(replace_backend, rdt, bdt, sample_dim, p):
    r, b = _pair((6, 5, 40), rdt, bdt)
    go = torch.randn(6, 5, 40, generator=_gen(9)).to(torch.promote_types(rdt, bdt))

    def run():
        rl, bl = _leaf(r), _leaf(b)
        out = sdkernels.drop_path_add(rl, bl, p, sample_dim=sample_dim, generator=_gen(3), backend="triton")
        y = sdkernels.drop_path(out, p / 2, sample_dim=sample_dim, generator=_gen(4), backend="triton")
        return (out, y, *torch.autograd.grad(y, (rl, bl), go))

    fast = run()
    be = functional.CORE["triton"]
    replace_backend(functional.CORE, "triton", be.devices, True, residual_add=OP_ADD, sample_scale=OP_SCALE)
    ref = run()
    for a, e in zip(fast, ref):
        _same(a, e)


@pytest.mark.parametrize("rdt,bdt", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16)], ids=str)
def test_double_backward_identical(rdt, bdt):
    r, b = _pair((6, 5, 33), rdt, bdt)
    scale, alpha = _keep(6, 0.5)
    res = []
    for add in (FAST_ADD, OP_ADD):
        rl, bl = _leaf(r), _leaf(b)
        go = torch.randn(6, 5, 33, generator=_gen(2)).to(torch.promote_types(rdt, bdt)).requires_grad_()
        out = add(rl, bl, scale, 0, alpha)
        gr, gb = torch.autograd.grad(out, (rl, bl), go, create_graph=True)
        v = torch.randn(6, 5, 33, generator=_gen(3))
        (ggo,) = torch.autograd.grad((gb.float() * v).sum() + (gr.float() * v * 2).sum(), go)
        res.append((out, gr, gb, ggo))
    for a, e in zip(*res):
        _same(a.detach(), e.detach())


@pytest.mark.parametrize("sample_dim", [0, 1, -1])
def test_gradcheck_gradgradcheck_fp64(sample_dim):
    r = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    n = r.shape[sample_dim]
    for scale in ((torch.arange(n) % 2 == 0).double(), torch.tensor([1.0]), torch.zeros(n)):
        assert gradcheck(lambda r, b: FAST_ADD(r, b, scale, sample_dim, 1 / 0.7), (r, b))
        assert gradgradcheck(lambda r, b: FAST_ADD(r, b, scale, sample_dim, 1 / 0.7), (r, b))
        assert gradcheck(lambda x: FAST_SCALE(x, scale, sample_dim, 1 / 0.7, None), (b,))
        assert gradgradcheck(lambda x: FAST_SCALE(x, scale, sample_dim, 1 / 0.7, None), (b,))


def test_requires_grad_and_grad_modes_match_the_op():
    r, b = _pair((4, 5), torch.float32, torch.float32)
    for rg, bg, sg in [(False, False, False), (True, False, False), (False, True, False), (False, False, True),
                       (True, True, True)]:
        scale = torch.tensor([1.0, 0, 1, 1], requires_grad=sg)
        for ctx in (torch.enable_grad, torch.no_grad, torch.inference_mode):
            with ctx():
                fast = FAST_ADD(_leaf(r, rg), _leaf(b, bg), scale, 0, 2.0)
                op = OP_ADD(_leaf(r, rg), _leaf(b, bg), scale, 0, 2.0)
                fs = FAST_SCALE(_leaf(b, bg), scale, 0, 2.0, None)
                os_ = OP_SCALE(_leaf(b, bg), scale, 0, 2.0, None)
            for a, e in ((fast, op), (fs, os_)):
                _same(a.detach(), e.detach())
                assert a.requires_grad == e.requires_grad
                assert (a.grad_fn is None) == (e.grad_fn is None)
                assert a.is_inference() == e.is_inference()
        if rg or bg or sg:
            for a, e in ((fast, op), (fs, os_)):
                if a.requires_grad:  # a None gradient for the scale, like the op's
                    ga = torch.autograd.grad(a.sum(), scale, allow_unused=True) if sg else None
                    ge = torch.autograd.grad(e.sum(), scale, allow_unused=True) if sg else None
                    assert ga == ge


def test_grad_residual_is_grad_out_itself():
    r, b = _leaf(torch.randn(4, 8)), _leaf(torch.randn(4, 8))
    out = FAST_ADD(r, b, torch.tensor([1.0, 0, 1, 0]), 0, 2.0)
    go = torch.randn_like(out)
    gr, _ = torch.autograd.grad(out, (r, b), go)
    assert gr is go or gr.data_ptr() == go.data_ptr()


# ---- errors ---------------------------------------------------------------------------------------


def _error_cases():
    r = torch.randn(4, 5)
    keep = torch.ones(4)
    yield FAST_ADD, OP_ADD, (r.int(), r, keep, 0, 1.0)
    yield FAST_ADD, OP_ADD, (r, r.to(torch.float8_e4m3fn), keep, 0, 1.0)
    yield FAST_ADD, OP_ADD, (r, torch.randn(4, 6), keep, 0, 1.0)
    yield FAST_ADD, OP_ADD, (r, r, keep, 2, 1.0)
    yield FAST_ADD, OP_ADD, (r, r, torch.ones(3), 0, 1.0)
    yield FAST_ADD, OP_ADD, (r, r, torch.ones(2, 2), 0, 1.0)
    yield FAST_ADD, OP_ADD, (r, r, torch.ones(4, dtype=torch.float16), 0, 1.0)
    yield FAST_ADD, OP_ADD, (r, r, keep, True, 1.0)  # the schema takes a bool as an int
    yield FAST_ADD, OP_ADD, (r, r, keep, 0.0, 1.0)  # schema errors
    yield FAST_ADD, OP_ADD, (r, r, keep, 0, "2")
    yield FAST_ADD, OP_ADD, (r, r, [1.0] * 4, 0, 1.0)
    yield FAST_ADD, OP_ADD, (r, None, keep, 0, 1.0)
    yield FAST_SCALE, OP_SCALE, (r, keep, 0, 1.0, torch.int32)
    yield FAST_SCALE, OP_SCALE, (r, keep, 0, 1.0, torch.float8_e5m2)
    yield FAST_SCALE, OP_SCALE, (r, keep, -3, 1.0, None)
    yield FAST_SCALE, OP_SCALE, (r, keep, 0, 1.0, "float32")
    yield FAST_SCALE, OP_SCALE, (r.long(), keep, 0, 1.0, None)
    yield FAST_SCALE, OP_SCALE, (torch.tensor(1.0), keep, 0, 1.0, None)


def _raised(f, args):
    with pytest.raises(Exception) as info:
        f(*args)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_errors_identical(requires_grad):
    for fast, op, args in _error_cases():
        if requires_grad:
            args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                         and a.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2) else a for a in args)
        assert _raised(fast, args) == _raised(op, args), args


# ---- when the fast path is taken ----------------------------------------------------------------


def test_eager_takes_the_fast_path(op_spy):
    r, b = _pair((6, 5, 33), torch.float32, torch.bfloat16)
    scale, alpha = _keep(6, 0.5)
    FAST_ADD(r, b, scale, 0, alpha)
    FAST_SCALE(b, scale, 0, alpha, torch.float32)
    rl, bl = _leaf(r), _leaf(b)
    out = sdkernels.drop_path_add(rl, bl, 0.5, generator=_gen(1), backend="triton")
    y = sdkernels.drop_path(out, 0.5, generator=_gen(2), backend="triton")
    assert type(out.grad_fn).__name__ == "ResidualAddFnBackward"
    assert type(y.grad_fn).__name__ == "SampleScaleFnBackward"
    go = torch.randn_like(y).requires_grad_()
    gr, gb = torch.autograd.grad(y, (rl, bl), go, create_graph=True)
    assert type(gb.grad_fn).__name__ == "SampleScaleFnBackward"
    torch.autograd.grad(gb.float().sum() + gr.sum(), go)
    assert op_spy == []
    # nothing requires grad (or grad mode is off): no autograd.Function either
    def no_function(*args):
        raise AssertionError("autograd.Function applied without any input requiring grad")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.autograd.Function, "apply", classmethod(no_function))
        with pytest.raises(AssertionError, match="autograd.Function applied"):  # the patch reaches the fast path
            FAST_ADD(rl, bl, scale, 0, alpha)
        with pytest.raises(AssertionError, match="autograd.Function applied"):
            FAST_SCALE(bl, scale, 0, alpha, None)
        FAST_ADD(r, b, scale, 0, alpha)
        FAST_SCALE(b, scale, 0, alpha, None)
        with torch.no_grad():
            FAST_ADD(rl, bl, scale, 0, alpha)
            FAST_SCALE(bl, scale, 0, alpha, None)
    assert op_spy == []
    # parameters are plain tensors too
    w = torch.nn.Parameter(torch.randn(6, 5, 33))
    assert type(FAST_ADD(r, w, scale, 0, alpha).grad_fn).__name__ == "ResidualAddFnBackward"
    assert op_spy == []


def test_torch_without_the_probes_takes_the_op(op_spy, monkeypatch):
    """On a torch lacking one of _eager's probes (older or newer internals) every call goes to the op."""
    monkeypatch.setattr(launch, "_PROBES_OK", False)  # a peek: no public switch
    r, b = _pair((6, 5, 33), torch.float32, torch.float32)
    scale, alpha = _keep(6, 0.5)
    want = OP_ADD(r, b, scale, 0, alpha)
    _same(FAST_ADD(r, b, scale, 0, alpha), want)
    FAST_SCALE(b, scale, 0, alpha, None)
    assert op_spy == ["scaled_residual_add", "sample_scale"]


def test_op_path_gradfn_name():
    # The spies above tell the paths apart by these names: make sure the op's differs.
    r, b = _leaf(torch.randn(4, 3)), _leaf(torch.randn(4, 3))
    assert "scaled_residual_add_triton" in type(OP_ADD(r, b, torch.ones(4), 0, 1.0).grad_fn).__name__


def test_fake_tensor_mode_takes_the_op(op_spy):
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    r = torch.randn(4, 6, 5, 7).to(memory_format=torch.channels_last)
    b = torch.randn(4, 6, 5, 7, dtype=torch.bfloat16)
    keep = torch.tensor([1.0, 0, 1, 1])
    with FakeTensorMode() as mode:
        fr, fb, fk = mode.from_tensor(r), mode.from_tensor(b), mode.from_tensor(keep)
        out = FAST_ADD(fr, fb, fk, 0, 2.0)
        y = FAST_SCALE(fb, fk, 0, 2.0, torch.float32)
    assert op_spy == ["scaled_residual_add", "sample_scale"]
    assert isinstance(out, FakeTensor) and isinstance(y, FakeTensor)
    exp = OP_ADD(r, b, keep, 0, 2.0)
    assert out.dtype == exp.dtype and out.stride() == exp.stride()
    assert y.dtype == torch.float32


class _SeenOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


class _SeenFunctions(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_dispatch_and_function_modes_see_the_op(op_spy):
    r, b = _pair((6, 5, 33), torch.float32, torch.float32)
    scale, alpha = _keep(6, 0.5)
    for mode_cls in (_SeenOps, _SeenFunctions):
        op_spy.clear()
        with mode_cls() as mode:
            out = FAST_ADD(r, b, scale, 0, alpha)
            y = FAST_SCALE(b, scale, 0, alpha, None)
        assert op_spy == ["scaled_residual_add", "sample_scale"]
        assert OP_ADD in mode.seen and OP_SCALE in mode.seen
        _same(out, OP_ADD(r, b, scale, 0, alpha))
        _same(y, OP_SCALE(b, scale, 0, alpha, None))
    # the backward of a fast-path node run under a mode calls the op too
    rl, bl = _leaf(r), _leaf(b)
    out = FAST_ADD(rl, bl, scale, 0, alpha)
    op_spy.clear()
    with _SeenOps() as mode:
        gr, gb = torch.autograd.grad(out, (rl, bl), torch.ones_like(out))
    assert op_spy == ["sample_scale"] and OP_SCALE in mode.seen
    _same(gb, OP_SCALE(torch.ones_like(out), scale, 0, alpha, torch.float32))


def test_subclasses_functorch_and_forward_ad_take_the_op(op_spy):
    class Sub(torch.Tensor):
        pass

    r, b = _pair((4, 3), torch.float32, torch.float32)
    keep = torch.tensor([1.0, 0, 1, 1])
    out = FAST_ADD(r.as_subclass(Sub), b, keep, 0, 2.0)
    assert type(out) is type(OP_ADD(r.as_subclass(Sub), b, keep, 0, 2.0))
    assert op_spy == ["scaled_residual_add"]

    op_spy.clear()
    with pytest.warns(UserWarning, match="batching rule"):  # the op's own vmap fallback
        out = torch.func.vmap(lambda x: FAST_SCALE(x, keep, 0, 2.0, None))(torch.stack([r, b]))
    assert op_spy and set(op_spy) == {"sample_scale"}
    _same(out[1], OP_SCALE(b, keep, 0, 2.0, None))

    import torch.autograd.forward_ad as fwAD

    op_spy.clear()
    with fwAD.dual_level():
        FAST_ADD(fwAD.make_dual(r, torch.ones_like(r)), b, keep, 0, 2.0)
    assert op_spy == ["scaled_residual_add"]


def test_torch_compile_sees_the_ops():
    torch._dynamo.reset()
    targets = []

    def backend(gm, example_inputs):
        targets.extend(n.target for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    def f(r, b, keep):
        y = FAST_ADD(r, b, keep, 1, 2.0)
        return FAST_SCALE(y, keep, 1, 0.5, torch.bfloat16)

    r, b = _pair((3, 4, 40), torch.float32, torch.float32)
    keep = torch.tensor([1.0, 0, 1, 1])
    out = torch.compile(f, backend=backend, fullgraph=True)(r, b, keep)
    assert OP_ADD in targets and OP_SCALE in targets
    _same(out, f(r, b, keep))
    torch._dynamo.reset()


# ---- saved tensors --------------------------------------------------------------------------------


@pytest.mark.parametrize("rdt,bdt", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16)], ids=str)
def test_saves_only_the_scale(rdt, bdt):
    r, b = _pair((6, 5, 33), rdt, bdt)
    scale, alpha = _keep(6, 0.5)
    for add, ss in ((FAST_ADD, FAST_SCALE), (OP_ADD, OP_SCALE)):
        saved = []

        def pack(t):
            saved.append(t)
            return t

        rl, bl = _leaf(r), _leaf(b)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = add(rl, bl, scale, 0, alpha)
            y = ss(out, scale, 0, alpha, None)
        assert len(saved) == 2 and all(t is scale for t in saved), [tuple(t.shape) for t in saved]
        y.sum().backward()
