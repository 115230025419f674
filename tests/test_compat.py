"""sdkernels.compat against timm's and torchvision's own tests of their drop-path functions.

timm's ``tests/test_layers_drop.py`` (``TestDropPath``, ``TestDropPathModule``) and
torchvision's ``TestStochasticDepth`` (``test/test_ops.py``), rewritten in our
words against sdkernels, plus the promise the twins make beyond those tests:
the same samples as the real libraries under one seed, for every float dtype.
"""
import pytest
import torch

import sdkernels
from sdkernels import compat
from sdkernels import reference as R
from _tolerances import assert_close

timm_drop = pytest.importorskip("timm.layers.drop")
tv_ops = pytest.importorskip("torchvision.ops")
stats = pytest.importorskip("scipy.stats")

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _kept(y: torch.Tensor) -> torch.Tensor:
    return (y.flatten(1) != 0).any(1)


# ---- timm: TestDropPath ----------------------------------------------------------------

class TestTimmDropPath:
    def test_identity_at_zero_prob(self):
        x = torch.randn(4, 8, 16, 16)
        assert compat.drop_path(x, drop_prob=0.0, training=True) is x

    def test_identity_when_not_training(self):
        x = torch.randn(4, 8, 16, 16)
        assert compat.drop_path(x, drop_prob=0.5, training=False) is x

    def test_training_defaults_to_false_as_in_timm(self):
        x = torch.randn(4, 8)
        assert compat.drop_path(x, 0.5) is x  # timm: drop_path(x, drop_prob) in eval code keeps everything

    def test_positional_call_as_timm_modules_make_it(self):
        x = torch.rand(64, 3) + 0.5
        torch.manual_seed(11)
        y = compat.drop_path(x, 0.25, True, False)  # drop_path(x, self.drop_prob, self.training, self.scale_by_keep)
        kept = _kept(y)
        assert 0 < kept.sum() < 64
        assert torch.equal(y[kept], x[kept]) and torch.equal(y[~kept], torch.zeros_like(y[~kept]))

    def test_scale_by_keep(self):
        torch.manual_seed(42)
        x = torch.rand(100, 8, 4, 4) + 0.5
        keep_prob = 0.8
        y = compat.drop_path(x, drop_prob=1 - keep_prob, training=True, scale_by_keep=True)
        kept = _kept(y)
        assert 0 < kept.sum() < 100
        assert_close(y[kept], x[kept] / keep_prob)
        assert (y[~kept] == 0).all()

    def test_no_scaling(self):
        torch.manual_seed(42)
        x = torch.rand(100, 8, 4, 4) + 0.5
        y = compat.drop_path(x, drop_prob=0.2, training=True, scale_by_keep=False)
        kept = _kept(y)
        assert 0 < kept.sum() < 100
        assert torch.equal(y[kept], x[kept])


class TestTimmDropPathModule:
    def test_training_mode(self):
        m = compat.DropPath(drop_prob=0.5)
        x = torch.rand(32, 8, 4, 4) + 0.5
        m.eval()
        assert m(x) is x
        m.train()
        torch.manual_seed(42)
        y = m(x)
        assert (y == 0).any(), "some paths must be dropped in training mode"
        assert (y != 0).any()

    def test_extra_repr(self):
        m = compat.DropPath(drop_prob=0.123)
        assert "0.123" in m.extra_repr()
        assert m.extra_repr() == timm_drop.DropPath(drop_prob=0.123).extra_repr()
        assert repr(m).endswith("DropPath(drop_prob=0.123)")

    def test_signature_and_defaults(self):
        m = compat.DropPath()
        assert m.drop_prob == 0.0 and m.scale_by_keep is True
        m = compat.DropPath(0.2, False)
        assert m.drop_prob == 0.2 and m.scale_by_keep is False


# ---- torchvision: TestStochasticDepth ----------------------------------------------------

class _Wrapper(torch.nn.Module):
    """torchvision's test wraps the op in a module with one input."""

    n_inputs = 1

    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x):
        return self.op(x)


class TestTorchvisionStochasticDepth:
    @pytest.mark.parametrize("seed", range(10))
    @pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
    @pytest.mark.parametrize("mode", ["batch", "row"])
    def test_drop_rate_is_binomial(self, seed, mode, p):
        torch.manual_seed(seed)
        batch_size = 5
        # values from their own generator: the global stream is the one torchvision's test draws from
        x = torch.rand(batch_size, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) + 0.5
        layer = compat.StochasticDepth(p=p, mode=mode)
        repr(layer)
        trials, samples, dropped = 250, 0, 0
        for _ in range(trials):
            out = layer(x)
            nonzero = out.sum(dim=(1, 2, 3)).nonzero().size(0)
            if mode == "batch":
                dropped += nonzero == 0
                samples += 1
            else:
                dropped += batch_size - nonzero
                samples += batch_size
        assert stats.binomtest(int(dropped), samples, p=p).pvalue > 0.01

    @pytest.mark.parametrize("seed", range(10))
    @pytest.mark.parametrize("p", (0, 1))
    @pytest.mark.parametrize("mode", ["batch", "row"])
    def test_p_zero_and_one(self, seed, mode, p):
        torch.manual_seed(seed)
        x = torch.randn(5, 3, 4, 4)
        out = compat.StochasticDepth(p=p, mode=mode)(x)
        if p == 0:
            assert out.equal(x)
        else:
            assert out.equal(torch.zeros_like(x))

    @pytest.mark.parametrize("p", (0, 0.5))
    @pytest.mark.parametrize("mode", ["batch", "row"])
    def test_is_leaf_node(self, p, mode):
        from torchvision.models.feature_extraction import get_graph_node_names

        wrapped = _Wrapper(compat.StochasticDepth(p, mode))
        train_names, eval_names = get_graph_node_names(wrapped)
        assert len(train_names) == len(eval_names) == 1 + wrapped.n_inputs

    def test_function_errors_are_torchvision_s(self):
        x = torch.randn(4, 3)
        for fn in (compat.stochastic_depth, tv_ops.stochastic_depth):
            with pytest.raises(ValueError, match=r"^drop probability has to be between 0 and 1, but got 1.5$"):
                fn(x, 1.5, "row")
            with pytest.raises(ValueError, match=r"^mode has to be either 'batch' or 'row', but got rows$"):
                fn(x, 0.5, "rows")
        with pytest.raises(ValueError, match="drop probability"):
            compat.StochasticDepth(-0.1, "row")

    def test_training_defaults_to_true_and_eval_is_identity(self):
        x = torch.rand(64, 3) + 0.5
        torch.manual_seed(3)
        y = compat.stochastic_depth(x, 0.5, "row")
        assert 0 < _kept(y).sum() < 64
        assert compat.stochastic_depth(x, 0.5, "row", training=False) is x
        assert compat.stochastic_depth(x, 0.5, "row", False) is x

    def test_repr_as_torchvision(self):
        assert repr(compat.StochasticDepth(0.3, "row")) == repr(tv_ops.StochasticDepth(0.3, "row"))


# ---- the same draws as the real libraries under one seed ---------------------------------

@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("shape", [(64, 5), (33, 4, 3, 2)])
def test_same_samples_as_timm(dtype, p, shape):
    x = (torch.rand(shape) + 0.5).to(dtype)
    torch.manual_seed(2025)
    theirs = timm_drop.drop_path(x, p, True)
    state_theirs = torch.get_rng_state()
    torch.manual_seed(2025)
    ours = compat.drop_path(x, p, True)
    assert torch.equal(torch.get_rng_state(), state_theirs), "the same random numbers must be consumed"
    assert torch.equal(_kept(ours), _kept(theirs)) and 0 < _kept(ours).sum() < shape[0]
    # ours applies 1/(1-p) exactly in fp32; timm rounds the mask to x's dtype first
    torch.manual_seed(2025)
    assert_close(ours, R.drop_path(x, p))
    if dtype in (torch.float32, torch.float64):  # the same scale, float32(1) / float32(1 - p) for fp32: bitwise
        assert torch.equal(ours, theirs)
    else:  # timm rounds its mask to x's dtype first
        assert_close(ours.double(), theirs.double(), rtol=1e-2, atol=0, dtype=torch.float64)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.3, 0.6])
def test_same_samples_as_torchvision(dtype, mode, p):
    x = (torch.rand(48, 3, 2) + 0.5).to(dtype)
    for seed in range(6):  # mode "batch" has one decision per call: several seeds see both outcomes
        torch.manual_seed(seed)
        theirs = tv_ops.stochastic_depth(x, p, mode)
        torch.manual_seed(seed)
        ours = compat.stochastic_depth(x, p, mode)
        assert torch.equal(_kept(ours), _kept(theirs))
        torch.manual_seed(seed)
        m_ours = compat.StochasticDepth(p, mode)(x)
        torch.manual_seed(seed)
        m_theirs = tv_ops.StochasticDepth(p, mode)(x)
        assert torch.equal(_kept(m_ours), _kept(m_theirs))
        assert torch.equal(m_ours, ours)
        if dtype in (torch.float32, torch.float64):
            assert torch.equal(ours, theirs)


def test_fp64_draw_follows_the_input_dtype():
    """fp64 inputs draw their mask in fp64 (timm and torchvision do): the one draw rule, for every entry point."""
    x = torch.rand(40, 3, dtype=torch.float64) + 0.5
    torch.manual_seed(5)
    expect = torch.empty(40, dtype=torch.float64).bernoulli_(0.5)
    r = torch.randn_like(x)
    for fn in (lambda: sdkernels.drop_path(x, 0.5), lambda: compat.drop_path(x, 0.5, True),
               lambda: sdkernels.drop_path_add(r, x, 0.5) - r, lambda: R.drop_path(x, 0.5)):
        torch.manual_seed(5)
        assert torch.equal(_kept(fn()), expect.bool())


def test_nan_in_a_dropped_sample_stays_out():
    x = torch.randn(64, 4)
    x[::2] = float("nan")
    torch.manual_seed(1)
    y = compat.drop_path(x, 0.5, True)
    kept = _kept(torch.nan_to_num(y, nan=1.0))
    assert (~kept).any()
    assert (y[~kept] == 0).all(), "a dropped sample is written as zeros without reading it"


def test_drop_prob_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="drop probability"):
        compat.drop_path(torch.randn(3, 2), 1.5, True)
