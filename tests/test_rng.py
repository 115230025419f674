"""The RNG contract (sdkernels.rng): data-parallel draws, and explicit generators under activation
checkpointing (torch.utils.checkpoint restores only the default generators)."""
import pytest
import torch
from torch.utils.checkpoint import checkpoint

import sdkernels
from sdkernels import reference as R
from sdkernels import rng


class Block(torch.nn.Module):
    def __init__(self, generator=None, mode="row"):
        super().__init__()
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 8)
        self.generator = generator
        self.mode = mode

    def forward(self, x):
        x = sdkernels.drop_path_add(x, self.fc(self.norm(x)), 0.5, generator=self.generator, mode=self.mode)
        x = x + sdkernels.drop_path(self.fc(x), 0.3, generator=self.generator)
        return sdkernels.drop_path_residual(x, self.fc, 0.5, generator=self.generator)


def _grads(block, x, run):
    block.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_()
    run(block, xr).square().sum().backward()
    return [xr.grad] + [p.grad for p in block.parameters()]


def _same(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_default_generator_repeats_the_masks(reentrant):
    torch.manual_seed(0)
    block = Block()
    x = torch.randn(16, 5, 8)
    torch.manual_seed(1)
    plain = _grads(block, x, lambda b, t: b(t))
    torch.manual_seed(1)
    ckpt = _grads(block, x, lambda b, t: checkpoint(b, t, use_reentrant=reentrant))
    _same(ckpt, plain)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_explicit_generator_raises_instead_of_silent_wrong_gradients(reentrant):
    torch.manual_seed(0)
    block = Block(torch.Generator().manual_seed(5))
    x = torch.randn(16, 5, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="checkpoint_context_fn"):
        out = checkpoint(block, x, use_reentrant=reentrant)
        out.sum().backward()  # the reentrant variant recomputes (and so draws) in the backward


def test_checkpoint_context_fn_replays_the_generator():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    block = Block(g)
    x = torch.randn(16, 5, 8)
    g.manual_seed(5)
    plain = _grads(block, x, lambda b, t: b(t))
    state_after_plain = g.get_state()
    g.manual_seed(5)
    ctx = rng.checkpoint_context_fn(g)
    ckpt = _grads(block, x, lambda b, t: checkpoint(b, t, use_reentrant=False, context_fn=ctx))
    _same(ckpt, plain)
    # the recompute did not move the generator on: later draws are the unchecked run's
    assert torch.equal(g.get_state(), state_after_plain)
    with pytest.raises(TypeError, match="torch.Generator"):
        rng.checkpoint_context_fn(3)


def test_generator_outside_checkpoint_is_fine_and_unchecked():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 4, requires_grad=True)
    sdkernels.drop_path(x, 0.5, generator=g).sum().backward()


def test_data_parallel_draws_slice_the_global_draw():
    x = torch.randn(6, 3)
    torch.manual_seed(7)
    global_mask = R.draw_keep(6 * 3, 0.5, "row", "cpu")
    for rank in range(3):
        with rng.data_parallel_draws(rank, 3):
            torch.manual_seed(7)
            local = rng.draw(x, 0, 0.5, "row", None)
            torch.manual_seed(7)
            batch = rng.draw(x, 0, 0.5, "batch", None)
            torch.manual_seed(7)
            subset = rng.fixed_subset(x, 6, 3, None)
        assert torch.equal(local, global_mask[rank * 6:(rank + 1) * 6])
        torch.manual_seed(7)
        assert torch.equal(batch, R.draw_keep(1, 0.5, "batch", "cpu"))  # one decision for every rank
        assert subset.unique().numel() == 3 and subset.max() < 6
    masks = []
    for rank in range(3):
        with rng.data_parallel_draws(rank, 3):
            torch.manual_seed(7)
            masks.append(rng.fixed_subset(x, 6, 3, None).sort().values)
    assert not all(torch.equal(masks[0], m) for m in masks[1:]), "replicas must not share their subsets"
    assert rng.data_parallel() is None


def test_data_parallel_draws_arguments():
    with pytest.raises(ValueError, match="rank < world_size"):
        rng.set_data_parallel_draws(2, 2)
    with pytest.raises(TypeError, match="ints"):
        rng.set_data_parallel_draws(0.5, 2)
    rng.set_data_parallel_draws(1, 2)
    assert rng.data_parallel() == (1, 2)
    rng.set_data_parallel_draws(None)
    assert rng.data_parallel() is None
