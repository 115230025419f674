"""The models suite: real timm models' training steps, eager against ``sdkernels.convert``.

A step is forward, cross-entropy on random labels, backward and an SGD step, on random images.
Providers, each on its own deep copy of one randomly initialised model (same weights), steps
interleaved (A B C A B C ...), medians of synchronised wall-clock times:

- ``eager``: the timm model as built (timm's ``DropPath`` modules);
- ``convert``: ``sdkernels.convert(model)``: fused drop path + residual add in every block;
- ``convert-skip``: ``sdkernels.convert(model, skip=True)`` (count "fixed"): the branches of
  LayerNorm blocks run on the kept samples only;
- ``convert-nonorm``: ``sdkernels.convert(model, fuse_norm=False)``: as ``convert`` without the
  add + LayerNorm kernel in the pre-norm blocks (what that kernel adds to ``convert``);
- ``compile``, ``compile-convert``, ``compile-convert-skip``, ``compile-convert-nonorm``: the same under
  ``torch.compile(model)`` (Inductor, default mode), which is how most serious training runs;
  ``compile`` is the baseline of the other three (``speedup_vs_compile``).

Models: ViT-S/16 (``vit_small_patch16_224``), DeiT III-S (``deit3_small_patch16_224``, LayerScale)
and ConvNeXt-Atto, at drop_path_rate 0.1 and 0.4; on CUDA also ViT-B/16 (batch 128).  On request
(``--models``), two that only the generic rewrite converts: CaiT-XXS24 (``cait_xxs24_224``, LayerScale
blocks) and ``hf-dinov2-small`` (Hugging Face ``Dinov2ForImageClassification`` with DINOv2-S's config:
384 wide, 12 layers, patch 14; HF's draw).  For them ``convert-skip`` and ``convert-nonorm`` are
``convert`` (no skip path or add + norm block there) and are not timed.  CPU: fp32,
batch 16.  CUDA: bf16 autocast (fp32 weights and residual stream), batch 128.

Goals (``goal_ratio`` column: time / baseline must be at most this, at rate 0.4; the issue sets them
for ViT-S on CPU and ViT-B on CUDA): CPU convert 1.00 (2% noise allowed: 1.02), convert-skip 0.80,
compiled convert 1.02, compiled skip 0.82; CUDA convert 0.98, convert-skip 0.85.

``python -m benchmarks --suite models`` runs it (not in the default run: tens of minutes on a 2-core
CPU, most of it compiling); ``python -m benchmarks.models`` runs it alone with more options.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .timing import time_interleaved

__all__ = ["MODELS", "PROVIDERS", "RATES", "run_models", "default_models", "default_batch", "main"]

MODELS = ("vit_small_patch16_224", "deit3_small_patch16_224", "convnext_atto", "vit_base_patch16_224",
          "cait_xxs24_224", "hf-dinov2-small")
#: models whose blocks only the generic rewrite converts: convert-skip and convert-nonorm are convert there
GENERIC_ONLY = ("cait_xxs24_224", "hf-dinov2-small")
EAGER_PROVIDERS = ("eager", "convert", "convert-skip", "convert-nonorm")
COMPILED_PROVIDERS = ("compile", "compile-convert", "compile-convert-skip", "compile-convert-nonorm")
PROVIDERS = EAGER_PROVIDERS + COMPILED_PROVIDERS
RATES = (0.1, 0.4)
#: (device, provider) -> the most time / baseline may be at rate 0.4, for the goal model of the device.
GOALS = {
    ("cpu", "convert"): 1.02, ("cpu", "convert-skip"): 0.80,
    ("cpu", "compile-convert"): 1.02, ("cpu", "compile-convert-skip"): 0.82,
    ("cuda", "convert"): 0.98, ("cuda", "convert-skip"): 0.85,
}
GOAL_MODEL = {"cpu": "vit_small_patch16_224", "cuda": "vit_base_patch16_224"}
GOAL_RATE = 0.4


def default_models(device: str) -> Sequence[str]:
    return MODELS[:4] if device == "cuda" else MODELS[:3]


def default_batch(device: str) -> int:
    return 128 if device == "cuda" else 16


class _Logits(torch.nn.Module):
    """A Hugging Face image classifier called as ``model(x) -> logits``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def _build_hf_dinov2(rate: float, img_size: int):
    import transformers

    cfg = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                    intermediate_size=1536, image_size=img_size, patch_size=14,
                                    drop_path_rate=rate, num_labels=1000)
    return _Logits(transformers.Dinov2ForImageClassification(cfg))


def _build(name: str, rate: float, device: str, img_size: int = 224, seed: int = 0):
    import timm

    torch.manual_seed(seed)
    if name == "hf-dinov2-small":
        return _build_hf_dinov2(rate, img_size).to(device).train()
    kw = {} if img_size == 224 or name.startswith("convnext") else {"img_size": img_size}
    return timm.create_model(name, pretrained=False, drop_path_rate=rate, num_classes=1000, **kw).to(device).train()


def _variant(base, provider: str):
    import sdkernels

    m = copy.deepcopy(base)
    if "convert" in provider:
        sdkernels.convert(m, skip=provider.endswith("skip"), fuse_norm=not provider.endswith("nonorm"))
    if provider.startswith("compile"):
        m = torch.compile(m)
    return m


def _step_fn(model, x, y, device: str, amp_dtype):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    amp = (lambda: torch.autocast(device, dtype=amp_dtype)) if amp_dtype is not None else contextlib.nullcontext

    def step():
        with amp():
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_models(device: str, models: Optional[Sequence[str]] = None, rates: Sequence[float] = RATES,
               providers: Sequence[str] = PROVIDERS, batch: Optional[int] = None, repeats: Optional[int] = None,
               dtype: Optional[torch.dtype] = None, progress=None, deadline: Optional[float] = None,
               img_size: int = 224) -> List[Dict]:
    """Rows (suite "models", mode "step") for each model, rate and provider (module docstring).

    ``img_size`` other than 224 (smoke tests) builds the ViTs for that size."""
    from sdkernels.functional import kept_count

    models = list(models or default_models(device))
    batch = batch or default_batch(device)
    repeats = repeats or (20 if device == "cuda" else 5)
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    amp_dtype = None if dtype == torch.float32 else dtype
    label = {torch.float32: "fp32", torch.bfloat16: "fp32+bf16", torch.float16: "fp32+fp16"}[dtype]
    rows: List[Dict] = []
    for name in models:
        for rate in rates:
            base_row = {"suite": "models", "op": name, "size": name, "shape": f"{batch}x3x{img_size}x{img_size}",
                        "dtype": label, "mode": "step", "p": rate, "batch": batch, "requires_grad": True, "sample_dim": 0,
                        "layout": "contiguous"}
            my = [dict(base_row, provider=prov, status="ok", time_ms=None) for prov in providers]
            rows += my
            if name in GENERIC_ONLY:
                for r in my:
                    if r["provider"].endswith(("skip", "nonorm")):
                        r.update(status="skipped", note="same as convert here: no hand-written block in this model")
                my = [r for r in my if r["status"] == "ok"]
            if deadline is not None and time.monotonic() > deadline:
                for r in my:
                    r.update(status="skipped", note="time limit reached")
                continue
            t0 = time.monotonic()
            try:
                base = _build(name, rate, device, img_size)
                torch.manual_seed(1)
                x = torch.randn(batch, 3, img_size, img_size, device=device)
                y = torch.randint(0, 1000, (batch,), device=device)
                steps = {}
                for r in my:
                    try:
                        steps[r["provider"]] = _step_fn(_variant(base, r["provider"]), x, y, device, amp_dtype)
                    except Exception as e:  # noqa: BLE001 - one provider failing must not lose the others
                        r.update(status="error", note=f"{type(e).__name__}: {str(e)[:200]}")
                timings = time_interleaved(steps, repeats, device, warmup=2, deadline=deadline)
            except Exception as e:  # noqa: BLE001
                for r in my:
                    if r["status"] == "ok":
                        r.update(status="error", note=f"{type(e).__name__}: {str(e)[:200]}")
                timings = {}
            for r in my:
                t = timings.get(r["provider"])
                if t is None:
                    continue
                r.update(time_ms=t.median * 1e3, iqr_ms=t.iqr * 1e3, n_samples=t.n, timer=t.method,
                         cost_s=time.monotonic() - t0)
                if r["provider"].endswith("skip"):
                    k = kept_count(batch, rate)
                    r["note"] = (f"count=fixed: a block at rate p keeps round({batch} (1 - p)) samples; at the top "
                                 f"rate {rate}: k={k} of {batch} (realised drop {1 - k / batch:.3f})")
            eager = {r["provider"]: r["time_ms"] for r in my if r["time_ms"] is not None}
            for r in my:
                if r["time_ms"] is None:
                    continue
                baseline = eager.get("compile" if r["provider"].startswith("compile") else "eager")
                if baseline:
                    r["time_ratio_vs_baseline"] = r["time_ms"] / baseline
                if name == GOAL_MODEL.get(device) and rate == GOAL_RATE:
                    r["goal_ratio"] = GOALS.get((device, r["provider"]))
            if progress is not None:
                progress.update(len(my))
    return rows


def main(argv=None) -> int:
    import argparse
    import os

    from . import report

    ap = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default=None, help=f"among {', '.join(MODELS)} (default: CPU the first 3, CUDA all)")
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--providers", default=",".join(PROVIDERS), help=f"among {', '.join(PROVIDERS)}")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                    help="default: bf16 autocast on CUDA, fp32 on CPU")
    ap.add_argument("--img-size", type=int, default=224, help="image size (smoke tests: e.g. 32)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds: start no new (model, rate) after this")
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    provs = [s.strip() for s in a.providers.split(",") if s.strip()]
    bad = [p for p in provs if p not in PROVIDERS]
    if bad:
        ap.error(f"--providers: unknown {bad}; valid: {', '.join(PROVIDERS)}")
    dt = None if a.dtype is None else {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    env = report.environment(a.device)
    deadline = None if a.time_limit is None else time.monotonic() + a.time_limit
    t0 = time.monotonic()
    rows = run_models(a.device, a.models.split(",") if a.models else None,
                      [float(v) for v in a.rates.split(",") if v.strip()], provs, a.batch, a.repeats, dt,
                      deadline=deadline, img_size=a.img_size)
    report.finish_rows(rows, env)
    tag = os.path.basename(report.output_stem(env, os.path.join(a.out, "__no_such_dir__"), None))
    stem = report.output_stem(env, a.out, a.name or f"models-{tag}")
    report.write_csv(rows, stem + ".csv")
    print(format_rows(rows))
    print(f"wrote {stem}.csv in {time.monotonic() - t0:.0f} s")
    return 1 if any(r["status"] == "error" for r in rows) else 0


def format_rows(rows: Sequence[Dict]) -> str:
    """The suite's table: one line per row, with the goal verdict where a goal is set."""
    lines = [f"{'model':26s} {'p':>4s} {'provider':22s} {'ms':>9s} {'t/base':>7s} {'goal':>5s}"]
    for r in rows:
        if r["suite"] != "models":
            continue
        if r["status"] != "ok":
            lines.append(f"{r['op']:26s} {r['p']:4.2f} {r['provider']:22s} {r['status']}: {r.get('note')}")
            continue
        ratio, goal = r.get("time_ratio_vs_baseline"), r.get("goal_ratio")
        verdict = "" if goal is None or ratio is None else ("ok" if ratio <= goal else "MISS")
        lines.append(f"{r['op']:26s} {r['p']:4.2f} {r['provider']:22s} {r['time_ms']:9.1f} "
                     f"{ratio if ratio is not None else float('nan'):7.3f} {goal or float('nan'):5.2f} {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
