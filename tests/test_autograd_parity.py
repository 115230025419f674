"""The two copies of every autograd rule agree: C++ (``csrc/autograd``) and Python (``sdkernels.ops.<family>``).

The C++ ops carry their autograd in C++; the Triton twins register the same rules from Python
(``register_autograd`` / ``autograd_rules`` of each family file).  The Triton kernels need a GPU
or the interpreter, so to compare the rules on a CPU this module defines a test-only library,
``sdk_parity``, with one op per C++ op of the four families (same schema), whose implementation is the
C++ CPU kernel itself (called below the autograd key) and whose fake is the C++ op's fake; the
family's Python rules are registered on these ops, their backward ops being ``sdk_parity`` ops
too.  Both sides then run the same kernels, so the forward, the gradients (``torch.autograd.grad``
with a random ``grad_out``) and the double backward (``create_graph=True``, then the gradients of
those gradients with respect to the inputs and ``grad_out``) must be equal bit for bit, with the
same dtypes, strides and the same gradients left undefined.  The double backward of the core,
LayerScale and skip-path ops runs through their own ops again; add + norm's runs through
differentiable PyTorch ops: :func:`sdkernels.reference.add_norm_backward` in Python, its
transcription into ATen ops in C++.
"""
import pytest
import torch

import sdkernels
from sdkernels.dtypes import keep_scale
from sdkernels.ops import add_norm as add_norm_family
from sdkernels.ops import core as core_family
from sdkernels.ops import layer_scale as layer_scale_family
from sdkernels.ops import skip as skip_family

FAMILIES = ("core", "layer_scale", "add_norm", "skip")
if not all("cpu" in sdkernels.available_backends(f) for f in FAMILIES):
    pytest.skip("the C++ CPU kernels are not built", allow_module_level=True)

# ---- the test library: sdk_parity::<op> = the C++ CPU kernel under the Python rules ------------

#: op name -> schema, as csrc/ops.cpp defines it.
SCHEMAS = {
    "scaled_residual_add": "scaled_residual_add(Tensor residual, Tensor branch, Tensor scale, int sample_dim, "
                           "float alpha=1.0) -> Tensor",
    "sample_scale": "sample_scale(Tensor x, Tensor scale, int sample_dim, float alpha=1.0, "
                    "ScalarType? dtype=None) -> Tensor",
    "scaled_residual_add_ls": "scaled_residual_add_ls(Tensor residual, Tensor branch, Tensor scale, Tensor gamma, "
                              "int sample_dim, int channel_dim, float alpha=1.0) -> Tensor",
    "sample_scale_ls": "sample_scale_ls(Tensor x, Tensor scale, Tensor gamma, int sample_dim, int channel_dim, "
                       "float alpha=1.0, ScalarType? dtype=None) -> Tensor",
    "layer_scale_grads": "layer_scale_grads(Tensor grad, Tensor branch, Tensor scale, Tensor gamma, int sample_dim, "
                         "int channel_dim, float alpha=1.0) -> (Tensor, Tensor)",
    "add_norm": "add_norm(Tensor residual, Tensor branch, Tensor scale, Tensor? weight, Tensor? bias, "
                "Tensor? gamma, int sample_dim, float alpha, float eps, bool rms, ScalarType? out_dtype=None) "
                "-> (Tensor, Tensor, Tensor, Tensor)",
    "add_norm_backward": "add_norm_backward(Tensor? grad_x, Tensor grad_h, Tensor x, Tensor mean, Tensor rstd, "
                         "Tensor scale, Tensor? weight, Tensor? gamma, Tensor? branch, int sample_dim, float alpha, "
                         "bool rms, ScalarType residual_dtype, ScalarType branch_dtype, "
                         "ScalarType? weight_dtype=None, ScalarType? bias_dtype=None) "
                         "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "scaled_index_add": "scaled_index_add(Tensor residual, Tensor src, Tensor index, int sample_dim, "
                        "float alpha) -> Tensor",
    "index_scale": "index_scale(Tensor grad, Tensor index, int sample_dim, float alpha, "
                   "ScalarType? dtype=None) -> Tensor",
}

LIB = torch.library.Library("sdk_parity", "DEF")  # module-level: the ops live as long as the module


def _forward_to(name):
    cpp = getattr(torch.ops.sdkernels, name).default

    def impl(*args):
        # Under the CPU (or Fake) key the autograd keys are already excluded: this is the plain
        # C++ kernel (or the C++ op's fake kernel), never its C++ autograd.
        return cpp(*args)

    return impl


for _name, _schema in SCHEMAS.items():
    LIB.define(_schema)
    LIB.impl(_name, _forward_to(_name), "CPU")
    torch.library.register_fake(f"sdk_parity::{_name}", _forward_to(_name), lib=LIB)

core_family.register_autograd("sdk_parity::scaled_residual_add", "sdk_parity::sample_scale")
layer_scale_family.register_autograd("sdk_parity::scaled_residual_add_ls", "sdk_parity::sample_scale_ls",
                                     "sdk_parity::layer_scale_grads")
_setup, _backward = add_norm_family.autograd_rules(torch.ops.sdk_parity.add_norm_backward.default)
torch.library.register_autograd("sdk_parity::add_norm", _backward, setup_context=_setup, lib=LIB)
skip_family.register_autograd("sdk_parity::scaled_index_add", "sdk_parity::index_scale")

# ---- inputs --------------------------------------------------------------------------------------

F32, BF16, F16, F64 = torch.float32, torch.bfloat16, torch.float16, torch.float64


def _randn(shape, dtype, layout, g, offset=0.0):
    """Fresh random values of ``shape`` in ``dtype``: "contig", "channels_last" (4-D), "t01" (dims 0 and 1
    swapped in memory) or "tlast" (the last two dims swapped in memory: the last dim is not contiguous)."""
    def draw(s):
        return (torch.randn(s, generator=g, dtype=F64) + offset).to(dtype)

    if layout == "contig":
        return draw(shape)
    if layout == "channels_last":
        return draw(shape).contiguous(memory_format=torch.channels_last)
    if layout == "t01":
        return draw((shape[1], shape[0], *shape[2:])).transpose(0, 1)
    if layout == "tlast":
        return draw((*shape[:-2], shape[-1], shape[-2])).transpose(-1, -2)
    raise ValueError(layout)


def _mask(n, g, dtype=F32):
    """A 0/1 keep mask of n samples with at least one dropped and one kept sample."""
    keep = (torch.rand(n, generator=g, dtype=F64) < 0.5).to(dtype)
    keep[0], keep[-1] = 0, 1
    return keep


def _index(n, g):
    """The kept sample indices of a skip-path draw: unique, at least one dropped, in random order."""
    k = max(1, n // 2)
    return torch.randperm(n, generator=g)[:k]


# ---- the cases: (op, args, differentiable args, output indices the loss uses, grad_out layout) --
#
# Every case builds its args from a seeded generator, so the C++ and the Python run get identical
# inputs.  A differentiable arg listed in ``grad`` requires grad; the others do not.

P = 0.4
ALPHA = keep_scale(P, True)  # 1 / 0.6 in fp32: not a power of two, so the multiplies round


def _core_add(rdt, bdt, dim, layout, grad, shape=(5, 6, 7), blayout=None, one_scale=None, go_layout="contig"):
    def make(g):
        r = _randn(shape, rdt, layout, g)
        b = _randn(shape, bdt, blayout or layout, g)
        sdt = F64 if F64 in (rdt, bdt) else F32
        sc = _mask(shape[dim], g, sdt) if one_scale is None else torch.tensor([one_scale], dtype=sdt)
        return dict(residual=r, branch=b, scale=sc, sample_dim=dim, alpha=ALPHA)
    return ("scaled_residual_add", make, grad, None, go_layout)


def _core_scale(xdt, odt, dim, layout, shape=(5, 6, 7), one_scale=None):
    def make(g):
        x = _randn(shape, xdt, layout, g)
        sdt = F64 if xdt == F64 else F32
        sc = _mask(shape[dim], g, sdt) if one_scale is None else torch.tensor([one_scale], dtype=sdt)
        return dict(x=x, scale=sc, sample_dim=dim, alpha=ALPHA, dtype=odt)
    return ("sample_scale", make, ("x",), None, "contig")


def _ls_pair(name, first, fdt, bdt, gdt, dim, cdim, layout, grad, used=None, shape=(4, 6, 8)):
    """``scaled_residual_add_ls`` (first = "residual") or ``layer_scale_grads`` (first = "grad"): same arguments."""
    def make(g):
        t = _randn(shape, fdt, layout, g)
        b = _randn(shape, bdt, layout, g)
        gm = _randn((shape[cdim],), gdt, "contig", g, offset=0.5)
        return {first: t, "branch": b, "scale": _mask(shape[dim], g), "gamma": gm, "sample_dim": dim,
                "channel_dim": cdim, "alpha": ALPHA}
    return (name, make, grad, used, "contig")


def _ls_add(rdt, bdt, gdt, dim, cdim, layout, grad, shape=(4, 6, 8)):
    return _ls_pair("scaled_residual_add_ls", "residual", rdt, bdt, gdt, dim, cdim, layout, grad, shape=shape)


def _ls_scale(xdt, gdt, odt, dim, cdim, layout, grad, shape=(4, 6, 8)):
    def make(g):
        x = _randn(shape, xdt, layout, g)
        gm = _randn((shape[cdim],), gdt, "contig", g, offset=0.5)
        return dict(x=x, scale=_mask(shape[dim], g), gamma=gm, sample_dim=dim, channel_dim=cdim, alpha=ALPHA,
                    dtype=odt)
    return ("sample_scale_ls", make, grad, None, "contig")


def _ls_grads(gdt, bdt, pdt, dim, cdim, layout, grad, used=None, shape=(4, 6, 8)):
    return _ls_pair("layer_scale_grads", "grad", gdt, bdt, pdt, dim, cdim, layout, grad, used, shape)


def _add_norm(rdt, bdt, dim, layout, grad, rms=False, params=("weight", "bias"), gamma=False, pdt=F32,
              out_dtype=None, used=(0, 1), shape=(4, 5, 24), go_layout="contig"):
    def make(g):
        H = shape[-1]
        r = _randn(shape, rdt, layout, g, offset=0.5)
        b = _randn(shape, bdt, layout, g)
        w = _randn((H,), pdt, "contig", g, offset=1.0) if "weight" in params else None
        bias = _randn((H,), pdt, "contig", g) if "bias" in params else None
        gm = _randn((H,), pdt, "contig", g, offset=0.5) if gamma else None
        return dict(residual=r, branch=b, scale=_mask(shape[dim], g), weight=w, bias=bias, gamma=gm, sample_dim=dim,
                    alpha=ALPHA, eps=1e-5, rms=rms, out_dtype=out_dtype)
    return ("add_norm", make, grad, used, go_layout)


def _index_add(rdt, sdt, dim, layout, grad, shape=(6, 5, 4, 3), go_layout="contig"):
    def make(g):
        n = shape[dim]
        idx = _index(n, g)
        r = _randn(shape, rdt, layout, g)
        src_shape = list(shape)
        src_shape[dim] = idx.numel()
        s = _randn(tuple(src_shape), sdt, layout, g)
        return dict(residual=r, src=s, index=idx, sample_dim=dim, alpha=n / idx.numel())
    return ("scaled_index_add", make, grad, None, go_layout)


def _index_scale(xdt, odt, dim, layout, shape=(6, 5, 4, 3), go_layout="contig"):
    def make(g):
        idx = _index(shape[dim], g)
        return dict(grad=_randn(shape, xdt, layout, g), index=idx, sample_dim=dim, alpha=shape[dim] / idx.numel(),
                    dtype=odt)
    return ("index_scale", make, ("grad",), None, go_layout)


RB = ("residual", "branch")
CASES = {
    # core
    "add-f32-d0": _core_add(F32, F32, 0, "contig", RB),
    "add-bf16-d1-branch": _core_add(BF16, BF16, 1, "contig", ("branch",)),
    "add-f32res-bf16br-d0-t01": _core_add(F32, BF16, 0, "t01", RB, go_layout="t01"),
    "add-f32res-bf16br-d1-residual": _core_add(F32, BF16, 1, "contig", ("residual",)),
    "add-f16-chlast-d0": _core_add(F16, F16, 0, "channels_last", RB, shape=(4, 6, 3, 5)),
    "add-f32-chlast-res-contig-br": _core_add(F32, F32, 0, "channels_last", RB, shape=(4, 6, 3, 5), blayout="contig"),
    "add-f64-d1-one-scale": _core_add(F64, F64, 1, "contig", RB, one_scale=2.5),
    "add-f32-one-scale-dropped": _core_add(F32, F32, 0, "contig", RB, one_scale=0.0),
    "scale-f32-d0": _core_scale(F32, None, 0, "contig"),
    "scale-bf16-to-f32-d1": _core_scale(BF16, F32, 1, "contig"),
    "scale-f32-to-bf16-t01": _core_scale(F32, BF16, 0, "t01"),
    "scale-f16-chlast": _core_scale(F16, None, 0, "channels_last", shape=(4, 6, 3, 5)),
    "scale-f32-one-scale-dropped": _core_scale(F32, None, 1, "contig", one_scale=0.0),
    # LayerScale
    "ls-add-f32-d0-gamma": _ls_add(F32, F32, F32, 0, -1, "contig", RB + ("gamma",)),
    "ls-add-f32-d0-nogamma": _ls_add(F32, F32, F32, 0, -1, "contig", RB),
    "ls-add-f32res-bf16br-f32g-d1": _ls_add(F32, BF16, F32, 1, 2, "contig", RB + ("gamma",)),
    "ls-add-bf16-bf16g-gamma-only": _ls_add(BF16, BF16, BF16, 0, -1, "contig", ("gamma",)),
    "ls-add-bf16-chlast-c1": _ls_add(BF16, BF16, F32, 0, 1, "channels_last", RB + ("gamma",), shape=(4, 6, 3, 5)),
    "ls-add-f32-t01-d1": _ls_add(F32, F32, F32, 1, 2, "t01", ("branch", "gamma")),
    "ls-scale-f32-gamma": _ls_scale(F32, F32, None, 0, -1, "contig", ("x", "gamma")),
    "ls-scale-bf16-f32g-nogamma-d1": _ls_scale(BF16, F32, None, 1, 2, "contig", ("x",)),
    "ls-scale-bf16-to-bf16-chlast": _ls_scale(BF16, F32, BF16, 0, 1, "channels_last", ("x", "gamma"),
                                              shape=(4, 6, 3, 5)),
    "ls-scale-f64-t01-gamma-only": _ls_scale(F64, F64, None, 1, 2, "t01", ("gamma",)),
    "ls-grads-f32-all": _ls_grads(F32, F32, F32, 0, -1, "contig", ("grad", "branch", "gamma")),
    "ls-grads-f32g-bf16br-d1": _ls_grads(F32, BF16, F32, 1, 2, "contig", ("grad", "branch", "gamma")),
    "ls-grads-chlast-grad-only": _ls_grads(F32, F32, F32, 0, 1, "channels_last", ("grad",), shape=(4, 6, 3, 5)),
    "ls-grads-f32-only-grad-branch": _ls_grads(F32, F32, F32, 0, -1, "contig", ("grad", "branch", "gamma"),
                                               used=(0,)),
    "ls-grads-f32-only-grad-gamma": _ls_grads(F32, F32, F32, 0, -1, "contig", ("grad", "branch", "gamma"),
                                              used=(1,)),
    # add + norm
    "an-ln-f32-d0": _add_norm(F32, F32, 0, "contig", RB + ("weight", "bias")),
    "an-rms-f32-d1-weight": _add_norm(F32, F32, 1, "contig", RB + ("weight",), rms=True, params=("weight",)),
    "an-ln-bf16-t01-params-frozen": _add_norm(BF16, BF16, 1, "t01", RB, go_layout="t01"),
    "an-ln-f32res-bf16br-gamma": _add_norm(F32, BF16, 0, "contig", RB + ("weight", "bias", "gamma"), gamma=True),
    "an-rms-bf16-gamma-frozen-out-f32": _add_norm(BF16, BF16, 0, "contig", RB + ("weight",), rms=True, gamma=True,
                                                  out_dtype=F32),
    "an-ln-f32-tlast-noparams": _add_norm(F32, F32, 0, "tlast", RB, params=()),
    "an-ln-f32-h-only": _add_norm(F32, F32, 0, "contig", RB + ("weight", "bias", "gamma"), gamma=True, used=(1,)),
    "an-rms-f32-x-only": _add_norm(F32, F32, 1, "contig", RB + ("weight",), rms=True, used=(0,)),
    "an-ln-f64-branch-only": _add_norm(F64, F64, 0, "contig", ("branch", "gamma"), gamma=True, pdt=F64),
    # an absent weight (bias) shifts the autograd edges of the parameters after it
    "an-ln-f32-bias-gamma-no-weight": _add_norm(F32, F32, 0, "contig", RB + ("bias", "gamma"), params=("bias",),
                                                gamma=True),
    "an-rms-f32-gamma-no-params": _add_norm(F32, F32, 1, "contig", ("residual", "gamma"), rms=True, params=(),
                                            gamma=True),
    # skip path
    "ia-f32-d0": _index_add(F32, F32, 0, "contig", ("residual", "src")),
    "ia-f32res-bf16src-d1": _index_add(F32, BF16, 1, "contig", ("residual", "src")),
    "ia-bf16-chlast-src-only": _index_add(BF16, BF16, 0, "channels_last", ("src",)),
    "ia-f32-t01-d1": _index_add(F32, F32, 1, "t01", ("residual", "src"), go_layout="t01"),
    "is-f32-d0": _index_scale(F32, None, 0, "contig"),
    "is-bf16-to-f32-d1": _index_scale(BF16, F32, 1, "contig"),
    "is-f32-chlast": _index_scale(F32, None, 0, "channels_last"),
    "is-f16-t01-d1": _index_scale(F16, None, 1, "t01", go_layout="t01"),
}

# ---- the comparison ---------------------------------------------------------------------------------


def _describe(t):
    return "None" if t is None else f"{t.dtype} {tuple(t.shape)} strides {t.stride()}"


def _assert_same(cpp, py, what):
    """C++ and Python results equal bit for bit, with the same dtype, shape, strides and definedness."""
    if cpp is None or py is None:
        assert cpp is None and py is None, f"{what}: C++ gives {_describe(cpp)}, Python {_describe(py)}"
        return
    assert (cpp.dtype, cpp.shape, cpp.stride()) == (py.dtype, py.shape, py.stride()), (
        f"{what}: C++ gives {_describe(cpp)}, Python {_describe(py)}")
    assert cpp.requires_grad == py.requires_grad, (
        f"{what}: requires_grad C++ {cpp.requires_grad}, Python {py.requires_grad}")
    if not torch.equal(cpp, py):
        diff = (cpp.double() - py.double()).abs()
        pytest.fail(f"{what}: {int((diff != 0).sum())} of {cpp.numel()} values differ, at most {float(diff.max())}")


def _run(ns, case, create_graph):
    """Forward, first and (with create_graph) second derivatives of one case through ``torch.ops.<ns>``."""
    name, make, grad, used, go_layout = CASES[case]
    args = make(torch.Generator().manual_seed(1234))
    for k in grad:
        args[k] = args[k].detach().clone().requires_grad_()  # clone keeps the strides (dense tensors)
    leaves = [args[k] for k in grad]
    outs = getattr(getattr(torch.ops, ns), name).default(*args.values())
    outs = outs if isinstance(outs, tuple) else (outs,)
    used = range(len(outs)) if used is None else used
    g = torch.Generator().manual_seed(99)
    grad_outs = [_randn(outs[i].shape, outs[i].dtype, go_layout, g).requires_grad_(create_graph) for i in used]
    firsts = torch.autograd.grad([outs[i] for i in used], leaves, grad_outs, create_graph=create_graph,
                                 allow_unused=True)
    # "grad_residual is grad_out itself" (no copy) is part of the rules: which gradients alias a grad_out
    aliases = [t is not None and any(t.data_ptr() == go.data_ptr() for go in grad_outs) for t in firsts]
    seconds = ()
    if create_graph:
        diffable = [t for t in firsts if t is not None and t.requires_grad]
        vs = [_randn(t.shape, t.dtype, "contig", g) for t in diffable]
        seconds = torch.autograd.grad(diffable, leaves + grad_outs, vs, allow_unused=True)
        seconds = ([t is not None and t.requires_grad for t in firsts], seconds)
    return outs, (firsts, aliases), seconds


@pytest.mark.parametrize("create_graph", [False, True], ids=["grad", "double"])
@pytest.mark.parametrize("case", list(CASES))
def test_cpp_and_python_rules_agree(case, create_graph):
    _, _, grad, used, _ = CASES[case]
    c_outs, c_firsts, c_seconds = _run("sdkernels", case, create_graph)
    p_outs, p_firsts, p_seconds = _run("sdk_parity", case, create_graph)
    for i, (c, p) in enumerate(zip(c_outs, p_outs)):
        _assert_same(c.detach(), p.detach(), f"output {i}")
    (c_firsts, c_aliases), (p_firsts, p_aliases) = c_firsts, p_firsts
    for k, c, p in zip(grad, c_firsts, p_firsts):
        _assert_same(c, p, f"grad of {k}")
    assert c_aliases == p_aliases, f"which gradients are grad_out itself: C++ {c_aliases}, Python {p_aliases}"
    if create_graph:
        (c_diffable, c_sec), (p_diffable, p_sec) = c_seconds, p_seconds
        assert c_diffable == p_diffable, f"which gradients are differentiable: C++ {c_diffable}, Python {p_diffable}"
        names = list(grad) + [f"grad_out {i}" for i in (range(len(c_outs)) if used is None else used)]
        for k, c, p in zip(names, c_sec, p_sec):
            _assert_same(c, p, f"double backward: grad of {k}")
