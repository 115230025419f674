"""The generic conversion on Hugging Face transformers models (built from small configs, no weights).

HF's drop path draws ``floor(keep + rand)`` and divides by ``keep``; a converted model draws the same
samples (``draw="hf"``) under one seed, so its training outputs equal the original's to rounding (the fused
op multiplies by ``1 / keep``), its eval outputs bitwise.
"""
import copy

import pytest
import torch

import sdkernels
from sdkernels.conversion import generic

transformers = pytest.importorskip("transformers")


def _dinov2():
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=32, patch_size=8, drop_path_rate=0.5)
    return transformers.Dinov2Model(cfg), torch.randn(8, 3, 32, 32)


def _beit():
    cfg = transformers.BeitConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=32, patch_size=8, drop_path_rate=0.5, layer_scale_init_value=0.1)
    return transformers.BeitModel(cfg), torch.randn(8, 3, 32, 32)


MODELS = {"dinov2": _dinov2, "beit": _beit}


def _out(model, x, seed):
    torch.manual_seed(seed)
    return model(pixel_values=x).last_hidden_state


@pytest.mark.parametrize("name", list(MODELS))
def test_hf_model_same_samples(name, monkeypatch):
    torch.manual_seed(0)
    orig, x = MODELS[name]()
    conv = copy.deepcopy(orig)
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    sdkernels.convert(conv)
    assert all(torch.equal(conv.state_dict()[k], v) for k, v in state.items())
    rows = sdkernels.conversion_report(conv)
    assert rows and all(r["how"] == "fused" for r in rows), rows
    calls = []
    real = generic.drop_path_add
    monkeypatch.setattr(generic, "drop_path_add", lambda *a, **k: calls.append(k.get("draw")) or real(*a, **k))
    orig.train()
    conv.train()
    for seed in (1, 2, 3):
        a = _out(orig, x, seed)
        b = _out(conv, x, seed)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)  # a different sample would differ by O(1)
        ga, = torch.autograd.grad(a.square().mean(), orig.embeddings.patch_embeddings.projection.weight)
        gb, = torch.autograd.grad(b.square().mean(), conv.embeddings.patch_embeddings.projection.weight)
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
    assert calls and set(calls) == {"hf"}
    orig.eval()
    conv.eval()
    with torch.no_grad():
        assert torch.equal(_out(conv, x, 0), _out(orig, x, 0))


def test_models_suite_runs_hf_dinov2():
    """The models suite's hf-dinov2-small (tiny image here): eager and convert timed, convert-skip not (same)."""
    from benchmarks import models

    rows = models.run_models("cpu", models=["hf-dinov2-small"], rates=[0.4], providers=("eager", "convert",
                                                                                          "convert-skip"),
                             batch=2, repeats=1, img_size=28)
    by = {r["provider"]: r for r in rows}
    assert by["eager"]["status"] == by["convert"]["status"] == "ok" and by["convert"]["time_ms"] > 0
    assert by["convert-skip"]["status"] == "skipped"
