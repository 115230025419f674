"""The generic conversion (``sdkernels/conversion/generic.py``): block methods rewritten, residual adds fused.

Real tiny timm models of families no hand-written pattern covers (fp32, CPU): training outputs bitwise the
original's under one seed, gradients to rounding, eval bitwise, state_dict unchanged, every drop path with
p > 0 fused (or never running).  Then the rewrite's forms and its refusals on small hand-made blocks, and
deepcopy, pickle, torch.compile(fullgraph=True) and activation checkpointing of a generically converted model.
"""
import copy
import functools

import pytest
import torch
from torch import nn

import sdkernels
from _convert_steps import assert_grads_close, assert_same_forward, pickled, train_step
from sdkernels.conversion import generic

timm = pytest.importorskip("timm")
from timm.layers import DropPath, LayerScale  # noqa: E402

_TINY_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
# name -> (timm model, its tiny arguments, input size)
MODELS = {
    "cait": ("cait_xxs24_224", dict(depth_token_only=1, **_TINY_VIT), 32),
    "beit": ("beit_base_patch16_224", dict(init_values=0.1, use_abs_pos_emb=True, **_TINY_VIT), 32),
    "pvt_v2": ("pvt_v2_b0", dict(depths=(1, 1, 1, 1)), 32),
    "maxvit": ("test_maxvit", dict(img_size=64), 64),
    "xcit": ("xcit_nano_12_p8_224", dict(img_size=32, depth=2, embed_dim=32, num_heads=2), 32),
    "twins": ("twins_svt_small", dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2),
                                      img_size=32), 32),
    "fastvit": ("fastvit_t8", dict(layers=(1, 1, 1, 1), embed_dims=(8, 16, 16, 16)), 32),
    "resnetv2": ("resnetv2_18", dict(layers=(1, 1, 1, 1)), 32),
}


def _build(name, rate=0.4):
    torch.manual_seed(0)
    arch, kw, size = MODELS[name]
    model = timm.create_model(arch, pretrained=False, drop_path_rate=rate, num_classes=5, **kw)
    return model, torch.randn(4, 3, size, size)


class _Count:
    """Counts the fused op's calls made by the generic runtime."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = generic.drop_path_add

        def counted(*a, **k):
            self.n += 1
            return real(*a, **k)

        monkeypatch.setattr(generic, "drop_path_add", counted)


@pytest.mark.parametrize("name", list(MODELS))
def test_generic_family_is_exact(name, monkeypatch):
    orig, x = _build(name)
    conv = copy.deepcopy(orig)
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    sdkernels.convert(conv)
    after = conv.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    rows = [r for r in sdkernels.conversion_report(conv) if r["p"] > 0]
    assert rows and all(r["how"] == "fused" or r["reason"].startswith("never runs") for r in rows), rows
    assert any(isinstance(m.__dict__.get("forward"), generic.RewrittenMethod) for m in conv.modules())

    calls = _Count(monkeypatch)
    orig.train()
    conv.train()
    out_o, g_o = train_step(orig, x, 1)
    out_c, g_c = train_step(conv, x, 1)
    assert torch.equal(out_c, out_o), (name, (out_c - out_o).abs().max())
    assert_grads_close(g_c, g_o, rtol=1e-5, atol=1e-6)
    assert calls.n >= sum(1 for r in rows if r["how"] == "fused")  # the fused op ran at every fused site
    orig.eval()
    conv.eval()
    with torch.no_grad():
        assert torch.equal(conv(x), orig(x))
    sdkernels.unconvert(conv)
    assert not any(generic.state_of(m) for m in conv.modules())
    assert all(r["how"] == "eager" for r in sdkernels.conversion_report(conv))


# ---- the forms, on hand-made blocks -------------------------------------------------------------------

def _decorate(fn):
    @functools.wraps(fn)
    def wrapper(*a, **k):
        return fn(*a, **k)

    return wrapper


class Base(nn.Module):
    def __init__(self, c=8, p=0.5):
        super().__init__()
        self.lin = nn.Linear(c, c)
        self.drop_path = DropPath(p)


class Forms(Base):
    """Every matched form, behind a decorator, a zero-argument super(), a closure and a mangled name."""

    def __init__(self, c=8, p=0.5, with_skip=True):
        super().__init__(c, p)
        self.ls = LayerScale(c, 0.5)
        self.gamma = nn.Parameter(torch.full((c,), 0.3))
        self.shortcut = nn.Identity()
        self.drop_path2 = DropPath(p)
        self.with_skip = with_skip
        self.downsample = None
        self.__two = 2.0  # a private (mangled) name in a rewritten method

    @_decorate
    def forward(self, x):
        scale = self.__two

        def f(t):
            return self.lin(t) * scale

        x = x + self.drop_path(self.ls(f(x)))        # r + dp(ls(b))
        x = self.drop_path2(self.gamma * f(x)) + x   # dp(g * b) + r
        y = x.clone()
        y += self.drop_path(f(x) * self.gamma)       # r += dp(b * g)
        v = self.drop_path2(f(y))                    # deferred ...
        if self.downsample is not None:
            y = self.downsample(y)
        v = v + self.shortcut(y)                     # ... v + r
        if self.with_skip:
            w = self.drop_path(f(v))
            w += v                                   # deferred += under an if
            v = w
        return self._tail(v)

    def _tail(self, v):
        u = self.drop_path2(self.lin(v))
        if self.downsample is None:                  # deferred, used under an if: applied on the other path
            u = u + v
        return u if super().extra_repr() == "" else None  # a zero-argument super() in a rewritten method


def test_forms_fused_and_exact(monkeypatch):
    torch.manual_seed(0)
    blk = Forms()
    ref = copy.deepcopy(blk)
    sdkernels.convert(blk)
    rows = sdkernels.conversion_report(blk)
    assert {r["path"]: r["how"] for r in rows} == {"drop_path": "fused", "drop_path2": "fused"}, rows
    assert isinstance(blk.__dict__["_tail"], generic.RewrittenMethod)
    calls = _Count(monkeypatch)
    x = torch.randn(16, 8)
    for seed in range(3):
        a, ga = train_step(ref, x, seed)
        b, gb = train_step(blk, x, seed)
        assert torch.equal(a, b)
        assert_grads_close(gb, ga, rtol=1e-5, atol=1e-6)
    assert calls.n == 3 * 6
    ref.eval()
    blk.eval()
    assert torch.equal(blk(x), ref(x))


class ReturnUnderIf(Base):
    """A deferred drop path added by a return under an if (applied alone on the other path), and adds in a
    lambda and a comprehension."""

    def __init__(self, flag):
        super().__init__()
        self.flag = flag

    def forward(self, x):
        f = lambda t: t + self.drop_path(self.lin(t))  # noqa: E731
        x = [f(t) for t in (x,)][0]
        v = self.drop_path(self.lin(x))
        if self.flag:
            return v + x
        return v


@pytest.mark.parametrize("flag", [True, False])
def test_deferred_return_under_if(flag, monkeypatch):
    torch.manual_seed(0)
    blk = ReturnUnderIf(flag)
    ref = copy.deepcopy(blk)
    sdkernels.convert(blk)
    (row,) = sdkernels.conversion_report(blk)
    assert row["how"] == "fused", row
    calls = _Count(monkeypatch)
    assert_same_forward(ref, blk, torch.randn(16, 8), range(3))
    assert calls.n == 3 * (2 if flag else 1)


class Refused(Base):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.drop_path2 = DropPath(0.5)
        self.drop_path3 = DropPath(0.5)
        self.gamma = nn.Parameter(torch.ones(8))

    def forward(self, x):
        x = self.drop_path(self.lin(x)) + self.drop(x)   # dropout draws between drop path and add
        x = x + self.gamma * self.drop_path2(self.lin(x))  # scale after drop path
        return torch.cat([x, self.drop_path3(x)], dim=1)   # concatenated


def test_refused_sites_name_the_construct():
    torch.manual_seed(0)
    blk = Refused()
    ref = copy.deepcopy(blk)
    sdkernels.convert(blk)
    rows = {r["path"]: r for r in sdkernels.conversion_report(blk)}
    assert rows["drop_path"]["how"] == "module" and "may draw random numbers" in rows["drop_path"]["reason"]
    assert rows["drop_path2"]["reason"].startswith("scale after drop path")
    assert rows["drop_path3"]["reason"].startswith("no residual add: concatenated")
    x = torch.randn(16, 8)
    assert_same_forward(ref, blk, x, range(2))


def test_never_running_drop_path_is_reported_so():
    blk = Forms(with_skip=False)
    sdkernels.convert(blk)
    rows = {r["path"]: r for r in sdkernels.conversion_report(blk)}
    assert rows["drop_path"]["how"] == "fused"  # its other sites run
    from timm.models._efficientnet_blocks import InvertedResidual

    ir = InvertedResidual(8, 16, drop_path_rate=0.3)  # in != out: no shortcut, has_skip False
    sdkernels.convert(ir)
    (row,) = sdkernels.conversion_report(ir)
    assert row["how"] == "module" and row["reason"].startswith("never runs") and "has_skip" in row["reason"]
    summary = sdkernels.conversion_report(ir, summary=True)
    assert "InvertedResidual: 1 module" in summary and "never runs" in summary


def test_unknown_drop_path_class_is_reported():
    class MyDropPath(nn.Module):
        def forward(self, x):
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop_path = MyDropPath()

        def forward(self, x):
            return x + self.drop_path(x)

    (row,) = sdkernels.conversion_report(sdkernels.convert(Net()))
    assert row["how"] == "eager" and "unknown drop-path class" in row["reason"]


def test_class_rewrite_is_cached_and_fast():
    import time

    model = timm.create_model("cait_xxs24_224", drop_path_rate=0.1, **dict(_TINY_VIT, depth=6))
    t = time.perf_counter()
    sdkernels.convert(model)
    assert time.perf_counter() - t < 2.0
    fns = {m.__dict__["forward"].fn for m in model.modules() if isinstance(m.__dict__.get("forward"),
                                                                           generic.RewrittenMethod)}
    assert len(fns) == 1  # six blocks of one class: compiled once


# ---- deepcopy, pickle, compile, checkpointing -------------------------------------------------------


def test_deepcopy_and_pickle_stay_converted():
    model, x = _build("cait")
    sdkernels.convert(model)
    model.train()
    for clone in (copy.deepcopy(model), pickled(model)):
        f = clone.blocks[1].__dict__["forward"]
        assert isinstance(f, generic.RewrittenMethod) and f.block is clone.blocks[1]
        clone.train()
        torch.manual_seed(7)
        a = model(x)
        torch.manual_seed(7)
        assert torch.equal(clone(x), a)
