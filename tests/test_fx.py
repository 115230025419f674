"""torch.fx: every sdkernels function and module a model holds traces as one leaf node.

Checked with ``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor``
(train and eval graphs) on a torchvision ConvNeXt, and timm's FX feature
extraction on a timm ConvNeXt, each holding sdkernels modules: the traced graphs
give the untraced model's results under one seed.
"""
import copy

import pytest
import torch
from torch import nn

import sdkernels
from sdkernels import compat, functional
from sdkernels.nn import DropPath, DropPathAdd, StochasticDepth, StochasticResidual
from sdkernels.functional import drop_path_residual

LEAVES = {functional.drop_path, functional.drop_path_add, drop_path_residual, compat.stochastic_depth}


def _leaf_nodes(g):
    """The sdkernels call nodes of a GraphModule or a Graph."""
    graph = g if isinstance(g, torch.fx.Graph) else g.graph
    return [n for n in graph.nodes if n.op == "call_function" and n.target in LEAVES]


class Holder(nn.Module):
    """One of each: the modules, and the functions called directly."""

    def __init__(self):
        super().__init__()
        self.dp = DropPath(0.4)
        self.sd = StochasticDepth(0.3, "row")
        self.sdb = StochasticDepth(0.5, "batch")
        self.dpa = DropPathAdd(0.3)
        self.res = StochasticResidual(nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 6)), 0.5)
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        x = x + self.dp(self.lin(x))
        x = x + self.sd(x)
        x = self.dpa(x, self.sdb(self.lin(x)))
        x = sdkernels.drop_path_add(x, self.lin(x), 0.25, training=self.training)
        x = x + sdkernels.drop_path(x, 0.2, training=self.training)
        x = x + compat.drop_path(x, 0.2, self.training)
        x = x + compat.stochastic_depth(x, 0.2, "row", self.training)
        return self.res(x)


@pytest.mark.parametrize("train", [True, False])
def test_symbolic_trace_one_leaf_per_call(train):
    m = Holder().train(train)
    gm = torch.fx.symbolic_trace(m)
    leaves = _leaf_nodes(gm)
    assert len(leaves) == 9, gm.graph
    # nothing of the draw or the checks leaked into the graph
    assert not [n for n in gm.graph.nodes if "bernoulli" in str(n.target) or "empty" in str(n.target)]
    res = [n for n in leaves if n.target is drop_path_residual]
    assert len(res) == 1 and res[0].kwargs["fn"].op == "get_attr" and res[0].kwargs["fn"].target == "res.branch"
    x = torch.randn(16, 5, 6)
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        expect = m(x)
        torch.manual_seed(seed)
        got = gm(x)
        assert torch.equal(got, expect)
    if not train:
        assert torch.equal(gm(x), m(x))


def test_traced_graph_backward_matches():
    m = Holder().train()
    gm = torch.fx.symbolic_trace(copy.deepcopy(m))  # its own parameters, so the two .grad do not add up
    x = torch.randn(16, 5, 6)
    torch.manual_seed(4)
    m(x).square().sum().backward()
    torch.manual_seed(4)
    gm(x).square().sum().backward()
    traced = dict(gm.named_parameters())
    assert traced.keys() == dict(m.named_parameters()).keys()
    for name, a in m.named_parameters():
        assert a.grad is not None and a.grad.abs().sum() > 0, name
        torch.testing.assert_close(traced[name].grad, a.grad, rtol=1e-6, atol=1e-6, msg=name)


def test_traced_module_itself():
    """The module as the traced root: its call is the one node (no recursion into a call_module of itself)."""
    for mod in (DropPath(0.3), StochasticDepth(0.3, "batch")):
        gm = torch.fx.symbolic_trace(mod)
        assert len(_leaf_nodes(gm)) == 1
        x = torch.randn(12, 3)
        torch.manual_seed(9)
        a = mod(x)
        torch.manual_seed(9)
        assert torch.equal(gm(x), a)


def test_branch_must_be_a_submodule():
    class Lam(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return drop_path_residual(x, lambda t: self.lin(t), 0.5)

    with pytest.raises(TypeError, match="submodule of the traced module"):
        torch.fx.symbolic_trace(Lam())

    class Stranger(nn.Module):
        def forward(self, x):
            return drop_path_residual(x, nn.Identity(), 0.5)

    with pytest.raises(TypeError, match="not installed"):
        torch.fx.symbolic_trace(Stranger())


def test_generator_cannot_be_traced():
    class G(nn.Module):
        def forward(self, x):
            return sdkernels.drop_path(x, 0.5, generator=torch.Generator())

    with pytest.raises(TypeError, match="generator= cannot be recorded"):
        torch.fx.symbolic_trace(G())


# ---- feature extraction on real models -------------------------------------------------------


def _swap_drop_paths(model):
    """timm DropPath / torchvision StochasticDepth -> the sdkernels modules (what convert does for free-standing ones)."""
    import timm.layers
    import torchvision.ops

    n = 0
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, timm.layers.DropPath):
                setattr(mod, cname, DropPath(child.drop_prob, child.scale_by_keep))
            elif isinstance(child, torchvision.ops.StochasticDepth):
                setattr(mod, cname, StochasticDepth(child.p, child.mode))
            else:
                continue
            n += 1
    return n


def _hooked(model, names):
    """Run the untraced model and collect the named submodules' outputs."""
    out = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: out.__setitem__(n, o)) for n in names]
    return out, handles


def _check_against_untraced(model, extractor, names, x):
    for train in (True, False):
        model.train(train)
        extractor.train(train)
        for seed in (0, 1):
            torch.manual_seed(seed)
            feats = extractor(x)
            got = list(feats.values()) if isinstance(feats, dict) else list(feats)
            out, handles = _hooked(model, names)
            torch.manual_seed(seed)
            model(x)
            for h in handles:
                h.remove()
            assert len(got) == len(names)
            for g, n in zip(got, names):
                assert torch.equal(g, out[n]), (train, seed, n)


def test_torchvision_create_feature_extractor():
    tvm = pytest.importorskip("torchvision.models")
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    torch.manual_seed(0)
    model = tvm.convnext_tiny(weights=None, stochastic_depth_prob=0.3)
    assert _swap_drop_paths(model) == 18
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes
    names = ["features.1", "features.3", "features.5"]
    ext = create_feature_extractor(model, return_nodes=names)
    # blocks of stages 1, 3 and 5 (3 + 3 + 9) up to the last node asked for, in both graphs
    assert len(_leaf_nodes(ext.train_graph)) == len(_leaf_nodes(ext.eval_graph)) == 15
    x = torch.randn(2, 3, 64, 64)
    _check_against_untraced(model, ext, names, x)


def test_timm_fx_feature_extraction():
    timm = pytest.importorskip("timm")
    from timm.models._features_fx import FeatureGraphNet

    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, drop_path_rate=0.3)
    assert _swap_drop_paths(model) == 11  # 12 blocks, the first at rate 0 holds an Identity
    net = FeatureGraphNet(model, out_indices=(0, 1, 2, 3))
    assert len(_leaf_nodes(net.graph_module)) == 11
    x = torch.randn(2, 3, 64, 64)
    _check_against_untraced(model, net, [f"stages.{i}" for i in range(4)], x)
