"""sdkernels.convert on real timm and torchvision models (built here without weights, small inputs).

Each model is checked for the conversion's exactness rules: under one seed the converted model's
training outputs equal the original's (bitwise in fp32: the fused kernel rounds as eager does) and its
gradients equal them to rounding; eval outputs are bitwise the original's; state_dict keys and values
are unchanged by convert and unconvert; the report has one row per drop-path site and leaves nothing
with p > 0 "eager"; unconvert restores every forward and module; a second convert changes nothing.
"""
import copy

import pytest
import torch
from torch import nn

import sdkernels
from _convert_steps import assert_grads_close, assert_same_forward, pickled, train_step
from sdkernels import conversion
from sdkernels.conversion import core

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")
from timm.layers import DropPath as TimmDropPath  # noqa: E402
from torchvision.ops import StochasticDepth as TvStochasticDepth  # noqa: E402

# name -> (builder, input size, the block class convert fuses, skip possible)
MODELS = {
    "timm-vit_tiny": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10,
                                               drop_path_rate=0.4), 32, "timm.models.vision_transformer.Block", True),
    "timm-deit3_small": (lambda: timm.create_model("deit3_small_patch16_224", img_size=32, patch_size=8, depth=4,
                                                  num_classes=10, drop_path_rate=0.4), 32,
                         "timm.models.vision_transformer.Block", True),
    "timm-eva02_tiny": (lambda: timm.create_model("eva02_tiny_patch14_224", img_size=28, num_classes=10,
                                                 drop_path_rate=0.4), 28, "timm.models.eva.EvaBlock", True),
    "timm-convnext_atto": (lambda: timm.create_model("convnext_atto", num_classes=10, drop_path_rate=0.4), 32,
                           "timm.models.convnext.ConvNeXtBlock", True),
    "timm-swin_tiny": (lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4,
                                                num_classes=10, drop_path_rate=0.4), 64,
                       "timm.models.swin_transformer.SwinTransformerBlock", True),
    "timm-efficientnet_b0": (lambda: timm.create_model("efficientnet_b0", num_classes=10, drop_path_rate=0.4), 32,
                             "timm.models._efficientnet_blocks.InvertedResidual", False),
    "timm-resnet18": (lambda: timm.create_model("resnet18", num_classes=10, drop_path_rate=0.4), 32,
                      "timm.models.resnet.BasicBlock", False),
    "tv-convnext_tiny": (lambda: tvm.convnext_tiny(weights=None, num_classes=10, stochastic_depth_prob=0.4), 32,
                         "torchvision.models.convnext.CNBlock", True),
    "tv-efficientnet_b0": (lambda: tvm.efficientnet_b0(weights=None, num_classes=10, stochastic_depth_prob=0.4), 32,
                           "torchvision.models.efficientnet.MBConv", False),
    "tv-swin_t": (lambda: tvm.swin_t(weights=None, num_classes=10), 64,
                  "torchvision.models.swin_transformer.SwinTransformerBlock", True),
}
SKIP_FAMILIES = [k for k, v in MODELS.items() if v[3]]
# pre-norm blocks whose first add feeds norm2: convert(fuse_norm=True) makes it one drop_path_add_norm pass
NORM_FUSED = ["timm-vit_tiny", "timm-deit3_small", "timm-eva02_tiny", "timm-swin_tiny", "tv-swin_t"]


def _build(name):
    torch.manual_seed(0)
    builder, size, _, _ = MODELS[name]
    model = builder()
    x = torch.randn(8, 3, size, size)
    return model, x


def _foreign_drop_paths(model):
    return [m for m in model.modules() if isinstance(m, (TimmDropPath, TvStochasticDepth))]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_convert_model(name):
    orig, x = _build(name)
    conv = copy.deepcopy(orig)
    state = _state(conv)
    assert sdkernels.convert(conv) is conv

    # state_dict: same keys, same values
    after = conv.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state)

    # the report: one row per site, nothing with p > 0 left eager, the expected blocks fused
    rows = sdkernels.conversion_report(conv)
    block_cls = MODELS[name][2]
    fused = [r for r in rows if r["how"] == "fused"]
    assert fused and all(r["cls"] == block_cls for r in fused), rows
    assert not [r for r in rows if r["how"] == "eager"]
    assert set(r["how"] for r in rows) <= {"fused", "module"}
    assert all(set(r) >= {"path", "cls", "how", "p", "reason"} for r in rows)
    n_sites = sum(1 for r in rows for _ in (r["p"] if isinstance(r["p"], tuple) else (r["p"],)))
    assert n_sites >= 1
    summary = sdkernels.conversion_report(conv, summary=True)
    assert block_cls in summary and "fused" in summary

    # training: same samples, same outputs (fp32: bitwise without the fused norm, whose sums are
    # ordered otherwise: to rounding with it), gradients to rounding
    orig.train()
    conv.train()
    for fuse_norm in (False, True):
        sdkernels.convert(conv, fuse_norm=fuse_norm)
        for seed in (1, 2):
            out_o, g_o = train_step(orig, x, seed)
            out_c, g_c = train_step(conv, x, seed)
            if fuse_norm and name in NORM_FUSED:
                torch.testing.assert_close(out_c, out_o, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(out_c, out_o), (name, seed, (out_c - out_o).abs().max())
            assert_grads_close(g_c, g_o, rtol=1e-4 if fuse_norm else 1e-5, atol=1e-6)

    # eval: the original expressions, bitwise
    orig.eval()
    conv.eval()
    with torch.no_grad():
        assert torch.equal(conv(x), orig(x))

    # idempotent: a second call with the same arguments changes nothing
    forwards = {id(m): m.__dict__.get("forward") for m in conv.modules()}
    modules = [id(m) for m in conv.modules()]
    sdkernels.convert(conv)
    assert [id(m) for m in conv.modules()] == modules
    assert {id(m): m.__dict__.get("forward") for m in conv.modules()} == forwards

    # unconvert: every forward and module back; state unchanged
    n_foreign = len(_foreign_drop_paths(orig))
    state = _state(conv)  # training moved BatchNorm's running statistics
    assert sdkernels.unconvert(conv) is conv
    assert not any("forward" in m.__dict__ for m in conv.modules())
    assert len(_foreign_drop_paths(conv)) == n_foreign
    assert not any(isinstance(m, (sdkernels.nn.DropPath, sdkernels.nn.StochasticDepth)) for m in conv.modules())
    assert [type(m) for m in conv.modules()] == [type(m) for m in orig.modules()]
    after = conv.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert all(r["how"] == "eager" for r in sdkernels.conversion_report(conv))


@pytest.mark.parametrize("name", SKIP_FAMILIES)
def test_skip_bernoulli_equals_original(name):
    """skip=True with count 'bernoulli': the same draws keep the same samples; the branch runs on them only."""
    orig, x = _build(name)
    conv = sdkernels.convert(copy.deepcopy(orig), skip=True, count="bernoulli")
    rows = sdkernels.conversion_report(conv)
    skipped = [r for r in rows if r["how"] == "skip"]
    assert skipped and all(r["cls"] == MODELS[name][2] for r in skipped)
    orig.train()
    conv.train()
    for seed in (3, 4):
        out_o, g_o = train_step(orig, x, seed)
        out_c, g_c = train_step(conv, x, seed)
        torch.testing.assert_close(out_c, out_o, rtol=1e-4, atol=1e-5)
        assert_grads_close(g_c, g_o, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", [k for k, v in MODELS.items() if not v[3]])
def test_skip_with_batchnorm_is_fused_and_says_why(name):
    model, x = _build(name)
    sdkernels.convert(model, skip=True)
    rows = sdkernels.conversion_report(model)
    fused = [r for r in rows if r["how"] == "fused"]
    assert fused and not [r for r in rows if r["how"] == "skip"]
    assert all("BatchNorm" in r["reason"] for r in fused)


def test_skip_fixed_runs_branch_on_kept_samples_only():
    model, x = _build("timm-vit_tiny")
    sdkernels.convert(model, skip=True)  # count "fixed"
    seen = []
    model.blocks[-1].mlp.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    model.train()
    model(x)
    p = model.blocks[-1].drop_path2.drop_prob
    assert seen == [sdkernels.functional.kept_count(8, p)] and seen[0] < 8
    model.eval()
    seen.clear()
    model(x)
    assert seen == [8]


def test_reconvert_with_other_arguments():
    model, x = _build("timm-convnext_atto")
    sdkernels.convert(model)
    first = {id(m): m.__dict__["forward"] for m in model.modules() if "forward" in m.__dict__}
    assert {r["how"] for r in sdkernels.conversion_report(model)} == {"fused"}
    sdkernels.convert(model, skip=True, count="bernoulli", backend="reference")
    assert {r["how"] for r in sdkernels.conversion_report(model)} == {"skip"}
    settings = {f.settings for f in (m.__dict__["forward"] for m in model.modules() if "forward" in m.__dict__)}
    assert settings == {core.Settings(skip=True, count="bernoulli", backend="reference")}
    sdkernels.convert(model)
    assert {r["how"] for r in sdkernels.conversion_report(model)} == {"fused"}
    assert len(first) == len([m for m in model.modules() if "forward" in m.__dict__])


def test_shortcut_block_is_fused_not_skipped():
    from timm.models.convnext import ConvNeXtBlock

    torch.manual_seed(0)
    blk = ConvNeXtBlock(16, 32, drop_path=0.4, ls_init_value=0.5)  # the shortcut is a 1x1 conv
    ref = copy.deepcopy(blk)
    sdkernels.convert(blk, skip=True)
    (row,) = sdkernels.conversion_report(blk)
    assert row["how"] == "fused" and "shortcut" in row["reason"]
    x = torch.randn(16, 16, 6, 6)
    for seed in (0, 1):
        a, ga = train_step(ref, x, seed)
        b, gb = train_step(blk, x, seed)
        assert torch.equal(a, b)
        assert_grads_close(gb, ga, rtol=1e-5, atol=1e-6)


def test_free_standing_modules_are_swapped_or_fused():
    """``x + self.dp(...)`` is fused by the generic rewrite; a drop path with no add after it is swapped."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.dp = TimmDropPath(0.3)
            self.sd = TvStochasticDepth(0.2, "batch")

        def forward(self, x):
            return self.sd(x + self.dp(self.lin(x)))

    net = Net()
    ref = copy.deepcopy(net)
    sdkernels.convert(net, backend="reference")
    assert type(net.dp) is TimmDropPath and "forward" in net.__dict__
    assert isinstance(net.sd, sdkernels.nn.StochasticDepth) and net.sd.mode == "batch"
    rows = {r["path"]: r for r in sdkernels.conversion_report(net)}
    assert rows["dp"]["how"] == "fused" and rows["sd"]["how"] == "module"
    assert rows["sd"]["reason"].startswith("no residual add")
    x = torch.randn(32, 4)
    assert_same_forward(ref, net, x, range(4))
    net.dp.drop_prob = 0.5  # a schedule changed the rate: unconvert carries it back
    sdkernels.unconvert(net)
    assert type(net.dp) is TimmDropPath and net.dp.drop_prob == 0.5 and type(net.sd) is TvStochasticDepth


def test_subclass_overriding_forward_keeps_it():
    from timm.models.vision_transformer import Block

    class MyBlock(Block):
        def forward(self, x, attn_mask=None, is_causal=False):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal) * 1.0

    blk = MyBlock(16, 2, drop_path=0.3)
    sdkernels.convert(blk)
    assert "forward" not in blk.__dict__
    assert isinstance(blk.drop_path1, sdkernels.nn.DropPath)
    (row1, row2) = sdkernels.conversion_report(blk)
    assert row1["how"] == "module" and "not called by name in MyBlock" in row1["reason"]


def test_signature_mismatch_falls_back_to_the_generic_rewrite(monkeypatch):
    from timm.models.vision_transformer import Block

    assert sdkernels.conversion_report(torch.nn.Identity()) == []  # loads the block patterns on first use
    pat = core.PATTERNS[Block]
    monkeypatch.setitem(core.PATTERNS, Block, core.Pattern(Block, pat.forward, ("self", "x"), pat.drop_paths,
                                                           fuses_norm=True))
    blk = Block(16, 2, drop_path=0.3)
    sdkernels.convert(blk)
    assert isinstance(blk.__dict__["forward"], conversion.generic.RewrittenMethod)
    rows = sdkernels.conversion_report(blk)
    assert [r["how"] for r in rows] == ["fused", "fused"]


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sdkernels.convert("resnet18")
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="count must be one of"):
        sdkernels.convert(model, count="sometimes")
    with pytest.raises(ValueError, match="backend must be one of"):
        sdkernels.convert(model, backend="gpu")
    with pytest.raises(TypeError, match="skip must be a bool"):
        sdkernels.convert(model, skip="yes")
    with pytest.raises(TypeError, match="fuse_norm must be a bool"):
        sdkernels.convert(model, fuse_norm=1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sdkernels.conversion_report(3)
    assert sdkernels.conversion_report(model, summary=True) == "no drop-path sites"


@pytest.mark.parametrize("name", NORM_FUSED)
def test_fuse_norm_runs_add_norm_once_per_block(name, monkeypatch):
    """Each pre-norm block's first add and its norm2 are one drop_path_add_norm call (the block's own
    norm2 weight, bias and eps), in training, fused (not skipped); never in eval, with skip or fuse_norm off."""
    calls = []
    real = core.drop_path_add_norm

    def counting(residual, branch, p, weight, bias, eps, **kw):
        calls.append((weight, bias, eps))
        return real(residual, branch, p, weight, bias, eps, **kw)

    monkeypatch.setattr(core, "drop_path_add_norm", counting)
    model, x = _build(name)
    cls = MODELS[name][2]
    blocks = [m for m in model.modules() if core.qualname(type(m)) == cls]
    norms = {id(b.norm2.weight): b.norm2 for b in blocks}
    rates = [core.rate_of(b.drop_path1 if hasattr(b, "drop_path1") else b.stochastic_depth) for b in blocks]
    active = sum(1 for r in rates if r is not None and r.p > 0)  # timm builds Identity at rate 0
    assert active >= 1
    for kw, train, expect in (({}, True, active), ({}, False, 0), (dict(skip=True), True, 0),
                              (dict(fuse_norm=False), True, 0)):
        sdkernels.convert(model, **kw)
        model.train(train)
        calls.clear()
        with torch.no_grad():
            model(x)
        assert len(calls) == expect, (kw, train)
        for w, b, eps in calls:
            norm = norms[id(w)]
            assert b is norm.bias and eps == norm.eps


def test_fuse_norm_keeps_norm2_hooks(monkeypatch):
    """A forward hook on norm2 (an observer, a tensor-parallel plan) must still run: no fused norm there."""
    calls = []
    real = core.drop_path_add_norm
    monkeypatch.setattr(core, "drop_path_add_norm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    model = sdkernels.convert(_two_block_vit())
    seen = []
    handle = model.blocks[1].norm2.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert calls == [] and len(seen) == 1
    handle.remove()
    model(torch.randn(4, 3, 32, 32))
    assert len(calls) == 1


def test_fuse_norm_leaves_short_rows_to_inductor(monkeypatch):
    """Under torch.compile rows of <= 1024 (here 192) keep Inductor's own add + norm fusion."""
    calls = []
    real = core.drop_path_add_norm
    monkeypatch.setattr(core, "drop_path_add_norm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    model = sdkernels.convert(_two_block_vit())
    x = torch.randn(4, 3, 32, 32)
    model.train()
    model(x)
    assert len(calls) == 1  # eager: one per block with an active drop path (the first has rate 0)
    calls.clear()
    torch._dynamo.reset()
    torch.compile(model, fullgraph=True, backend="eager")(x)
    assert calls == []
    monkeypatch.setattr(core, "INDUCTOR_NORM_ROWS", 64)
    torch._dynamo.reset()
    torch.compile(model, fullgraph=True, backend="eager")(x)
    assert len(calls) == 1  # traced once


def test_jit_script_names_unconvert():
    model, _ = _build("timm-resnet18")
    sdkernels.convert(model)
    with pytest.raises(RuntimeError, match="unconvert"):
        torch.jit.script(model)
    sdkernels.unconvert(model)
    torch.jit.script(model)  # the original model scripts again


def test_deepcopy_and_pickle_stay_converted():
    model, x = _build("timm-deit3_small")
    sdkernels.convert(model, skip=True)
    for clone in (copy.deepcopy(model), pickled(model)):
        f = clone.blocks[2].__dict__["forward"]
        assert isinstance(f, conversion.PatchedForward) and f.block is clone.blocks[2]
        assert f.settings == model.blocks[2].forward.settings
        clone.train()
        model.train()
        torch.manual_seed(7)
        a = model(x)
        torch.manual_seed(7)
        assert torch.equal(clone(x), a)


def _two_block_vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10,
                             drop_path_rate=0.5, init_values=1e-2, **kw)


# fuse_norm=False: no hand-written block does more than the generic rewrite, which converts the model
CONVERSIONS = {"fused": dict(), "skip": dict(skip=True), "generic": dict(fuse_norm=False)}


@pytest.mark.parametrize("kind", list(CONVERSIONS))
def test_checkpointing_same_gradients(kind):
    model = sdkernels.convert(_two_block_vit(), **CONVERSIONS[kind])
    assert isinstance(model.blocks[-1].forward, conversion.generic.RewrittenMethod) == (kind == "generic")
    x = torch.randn(8, 3, 32, 32)
    model.train()
    out_a, g_a = train_step(model, x, 5)
    model.set_grad_checkpointing(True)
    out_b, g_b = train_step(model, x, 5)
    assert torch.equal(out_a, out_b)
    assert_grads_close(g_b, g_a, rtol=0, atol=0)

    class Ckpt(nn.Module):
        def __init__(self, blk):
            super().__init__()
            self.blk = blk

        def forward(self, t):
            return torch.utils.checkpoint.checkpoint(self.blk, t, use_reentrant=False)

    model.set_grad_checkpointing(False)
    model.blocks = nn.Sequential(*[Ckpt(b) for b in model.blocks])
    out_c, g_c = train_step(model, x, 5)
    assert torch.equal(out_a, out_c)
    assert_grads_close({k.replace(".blk", ""): v for k, v in g_c.items()}, g_a, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["fused", "generic"])
def test_compile_fullgraph_no_graph_break(kind):
    model = sdkernels.convert(_two_block_vit(), **CONVERSIONS[kind])
    x = torch.randn(8, 3, 32, 32)
    model.train()
    expect, g_expect = train_step(model, x, 6)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got, g_got = train_step(compiled, x, 6)
    torch.testing.assert_close(got, expect)  # on CPU compiled and eager draws match
    assert_grads_close({k.replace("_orig_mod.", ""): v for k, v in g_got.items()}, g_expect, rtol=1e-5, atol=1e-6)


def test_fx_feature_extraction_on_converted_models():
    from timm.models._features_fx import FeatureGraphNet
    from torchvision.models.feature_extraction import create_feature_extractor

    for skip in (False, True):
        model, x = _build("timm-convnext_atto")
        sdkernels.convert(model, skip=skip)
        net = FeatureGraphNet(model, out_indices=(1, 3))
        tv_model, tv_x = _build("tv-convnext_tiny")
        sdkernels.convert(tv_model, skip=skip)
        ext = create_feature_extractor(tv_model, return_nodes=["features.3", "features.7"])
        for m, e, inp, names in ((model, net, x, ["stages.1", "stages.3"]),
                                 (tv_model, ext, tv_x, ["features.3", "features.7"])):
            for train in (True, False):
                m.train(train)
                e.train(train)
                out = {}
                hooks = [m.get_submodule(n).register_forward_hook(lambda mod, a, o, n=n: out.__setitem__(n, o))
                         for n in names]
                torch.manual_seed(8)
                m(inp)
                for h in hooks:
                    h.remove()
                torch.manual_seed(8)
                feats = e(inp)
                feats = list(feats.values()) if isinstance(feats, dict) else list(feats)
                if skip and train:  # a traced graph of a skip model runs the fused form: same kept rate, other numbers
                    assert [f.shape for f in feats] == [out[n].shape for n in names]
                else:
                    for f, n in zip(feats, names):
                        assert torch.equal(f, out[n]), (type(m).__name__, train, n)


# ---- the other block classes, one instance each -------------------------------------------------

def _blocks():
    from timm.models import _efficientnet_blocks as eb
    from timm.models.resnet import Bottleneck
    from timm.models.swin_transformer_v2 import SwinTransformerV2Block
    from torchvision.models.efficientnet import FusedMBConv, FusedMBConvConfig
    from torchvision.models.swin_transformer import SwinTransformerBlockV2

    bn = lambda c: nn.BatchNorm2d(c)  # noqa: E731
    return {
        "timm-DepthwiseSeparableConv": (lambda: eb.DepthwiseSeparableConv(16, 16, drop_path_rate=0.4), (16, 16, 6, 6)),
        "timm-EdgeResidual": (lambda: eb.EdgeResidual(16, 16, exp_ratio=2.0, drop_path_rate=0.4), (16, 16, 6, 6)),
        "timm-Bottleneck": (lambda: Bottleneck(32, 8, drop_path=TimmDropPath(0.4)), (16, 32, 6, 6)),
        "timm-SwinTransformerV2Block": (lambda: SwinTransformerV2Block(16, (8, 8), num_heads=2, window_size=4,
                                                                       drop_path=0.4), (16, 8, 8, 16)),
        "tv-SwinTransformerBlockV2": (lambda: SwinTransformerBlockV2(16, 2, [4, 4], [2, 2],
                                                                     stochastic_depth_prob=0.4), (16, 8, 8, 16)),
        "tv-FusedMBConv": (lambda: FusedMBConv(FusedMBConvConfig(2, 3, 1, 16, 16, 1), 0.4, bn), (16, 16, 6, 6)),
    }


@pytest.mark.parametrize("name", list(_blocks()))
def test_other_block_classes(name):
    make, shape = _blocks()[name]
    torch.manual_seed(0)
    blk = make()
    ref = copy.deepcopy(blk)
    sdkernels.convert(blk, skip=True)
    rows = sdkernels.conversion_report(blk)  # one row per drop-path module
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in blk.modules())
    assert rows and all(r["how"] == ("fused" if batchnorm else "skip") and r["p"] == pytest.approx(0.4) for r in rows)
    sdkernels.convert(blk)  # fused: exact
    x = torch.randn(shape)
    for seed in (0, 1):
        a, ga = train_step(ref, x, seed)
        b, gb = train_step(blk, x, seed)
        assert torch.equal(a, b), name
        assert_grads_close(gb, ga, rtol=1e-5, atol=1e-6)


def test_autocast_mixed_dtypes_follow_the_op_rule():
    """bf16 autocast: fp32 residual stream, bf16 branch; the fused op returns the promoted (fp32) stream."""
    model, x = _build("timm-vit_tiny")
    conv = sdkernels.convert(copy.deepcopy(model))
    model.train()
    conv.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(3)
        a = model.forward_features(x)
        torch.manual_seed(3)
        b = conv.forward_features(x)
    assert a.dtype == b.dtype
    # timm rounds its mask to bf16 (1/(1-p) in bf16): the two agree to bf16 rounding
    torch.testing.assert_close(b.float(), a.float(), rtol=3e-2, atol=3e-2)


def test_channels_last_stays_channels_last():
    model, x = _build("timm-convnext_atto")
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    conv = sdkernels.convert(copy.deepcopy(model))
    blk, ref_blk = conv.stages[1].blocks[1], model.stages[1].blocks[1]
    h = model.stages[1].downsample(model.stages[0](model.stem(x)))
    conv.train()
    model.train()
    torch.manual_seed(2)
    a = ref_blk(h)
    torch.manual_seed(2)
    b = blk(h)
    assert b.is_contiguous(memory_format=torch.channels_last) and torch.equal(a, b)
