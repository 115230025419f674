"""Training steps and comparisons shared by the conversion tests."""
import io

import torch


def train_step(model, x, seed):
    """Forward + backward of ``out.square().mean()`` under ``seed``: (output, {param name: grad})."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got, expect, **tol):
    assert got.keys() == expect.keys()
    for n in expect:
        torch.testing.assert_close(got[n], expect[n], msg=n, **tol)


def pickled(model):
    """``model`` through ``torch.save`` / ``torch.load`` (whole-model pickle)."""
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def assert_same_forward(ref, model, x, seeds):
    """``model(x)`` is bitwise ``ref(x)`` under each seed."""
    for seed in seeds:
        torch.manual_seed(seed)
        a = ref(x)
        torch.manual_seed(seed)
        assert torch.equal(model(x), a), seed
