"""The train suite: does a converted model train to the same accuracy?

A small timm ViT (8x8 images, patch 2, dim 64, depth 6, 4 heads, drop_path_rate 0.2) trains on
scikit-learn's bundled digits (1797 real 8x8 handwritten digits, 10 classes, shipped inside the
package: no download), split 80/20 with a fixed permutation, for ``EPOCHS`` epochs of AdamW, with:

- ``eager``: the timm model as built;
- ``convert``: ``sdkernels.convert(model)``;
- ``convert-skip``: ``sdkernels.convert(model, skip=True)`` (count "fixed");
- ``convert-nonorm``: ``sdkernels.convert(model, fuse_norm=False)``: without the add + LayerNorm kernel,
  so every op rounds as eager does (fp32: bitwise eager's curve).

Each variant runs over ``SEEDS`` seeds; one seed gives every variant the same initial weights and the
same batches (shuffled by a generator of their own, so the drop-path draws of eager and convert line up
and convert follows eager's loss curve step for step: bitwise with ``fuse_norm=False``, to rounding
with the fused norm, whose rounding differences stay at 1e-7 until training amplifies them).
Rows (suite "train", one per variant and
seed, plus a "mean" row per variant) carry the final test accuracy, the training time and the loss
curve's distance from eager's; a PNG shows the loss curves.

Goals: each variant's mean accuracy within eager's mean +- max(1 point, twice eager's spread across
seeds); ``convert`` follows eager's loss curve to rounding (``max_loss_diff_vs_eager``).
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["VARIANTS", "SEEDS", "EPOCHS", "run_train", "load_digits", "plot_curves", "main"]

VARIANTS = ("eager", "convert", "convert-skip", "convert-nonorm")
SEEDS = (0, 1, 2)
EPOCHS = 30
BATCH = 64
DROP_PATH_RATE = 0.2


def load_digits() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): scikit-learn's digits as [N, 1, 8, 8] floats in [0, 1], 80/20 split."""
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    x, y = x[perm], y[perm]
    n_train = int(0.8 * len(y))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _model(seed: int):
    import timm

    torch.manual_seed(seed)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0,
        drop_path_rate=DROP_PATH_RATE, global_pool="avg", class_token=False)


def _variant(base, variant: str):
    import sdkernels

    m = copy.deepcopy(base)
    if variant != "eager":
        sdkernels.convert(m, skip=variant == "convert-skip", fuse_norm=variant != "convert-nonorm")
    return m


def _train_one(model, data, seed: int, epochs: int) -> Tuple[List[float], float, float]:
    """(per-step losses, test accuracy in %, seconds)."""
    xtr, ytr, xte, yte = data
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    shuffle = torch.Generator().manual_seed(seed)
    torch.manual_seed(10_000 + seed)  # the drop-path draws: the same stream for every variant
    losses = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=shuffle)
        for i in range(0, len(perm), BATCH):
            idx = perm[i:i + BATCH]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item() * 100
    return losses, acc, seconds


def run_train(variants: Sequence[str] = VARIANTS, seeds: Sequence[int] = SEEDS, epochs: int = EPOCHS,
              progress=None) -> Tuple[List[Dict], Dict[Tuple[str, int], List[float]]]:
    """(rows, loss curves by (variant, seed)); rows as in the module docstring."""
    data = load_digits()
    rows: List[Dict] = []
    curves: Dict[Tuple[str, int], List[float]] = {}
    base_row = {"suite": "train", "op": "vit-digits", "size": "vit-digits", "shape": f"{BATCH}x1x8x8",
                "dtype": "fp32", "mode": "train", "p": DROP_PATH_RATE, "batch": BATCH, "requires_grad": True}
    for seed in seeds:
        base = _model(seed)
        for v in variants:
            losses, acc, secs = _train_one(_variant(base, v), data, seed, epochs)
            curves[(v, seed)] = losses
            rows.append(dict(base_row, provider=v, status="ok", time_ms=secs * 1e3, seed=seed, accuracy=acc,
                             final_loss=statistics.mean(losses[-10:]), epochs=epochs))
            if progress is not None:
                progress.update(1)
    eager_time = {r["seed"]: r["time_ms"] for r in rows if r["provider"] == "eager"}
    for r in rows:
        if r["seed"] in eager_time:
            r["speedup_vs_eager"] = eager_time[r["seed"]] / r["time_ms"]
    for v in variants:
        accs = [r["accuracy"] for r in rows if r["provider"] == v and "seed" in r]
        times = [r["time_ms"] for r in rows if r["provider"] == v and "seed" in r]
        diffs = [max(abs(a - b) for a, b in zip(curves[(v, s)], curves[("eager", s)]))
                 for s in seeds if ("eager", s) in curves]
        rows.append(dict(base_row, provider=v, status="ok", time_ms=statistics.mean(times), seed="mean",
                         accuracy=statistics.mean(accs), accuracy_spread=statistics.pstdev(accs),
                         max_loss_diff_vs_eager=max(diffs) if diffs else None, epochs=epochs))
    _verdicts(rows)
    return rows, curves


def _verdicts(rows: List[Dict]) -> None:
    """``goal_ok`` on each mean row: within eager's mean +- max(1 point, twice eager's spread)."""
    means = {r["provider"]: r for r in rows if r.get("seed") == "mean"}
    eager = means.get("eager")
    if eager is None:
        return
    band = max(1.0, 2 * eager["accuracy_spread"])
    for r in means.values():
        r["goal_band"] = band
        r["goal_ok"] = abs(r["accuracy"] - eager["accuracy"]) <= band


def plot_curves(curves: Dict[Tuple[str, int], List[float]], path: str, title: str = "") -> Optional[str]:
    """Training loss against step, one line per variant and seed (smoothed over 20 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    styles = {"eager": "-", "convert": "--", "convert-skip": ":", "convert-nonorm": "-."}
    colors = {}
    for (v, seed), losses in sorted(curves.items()):
        w = 20
        smooth = [statistics.mean(losses[max(0, i - w + 1):i + 1]) for i in range(len(losses))]
        color = colors.setdefault(seed, f"C{len(colors)}")
        ax.plot(smooth, styles.get(v, "-"), color=color, lw=1.2 if v == "eager" else 1.0, label=f"{v}, seed {seed}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (20-step mean)")
    ax.set_title(title or "ViT on scikit-learn digits, drop_path_rate 0.2", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_rows(rows: Sequence[Dict]) -> str:
    lines = [f"{'variant':14s} {'seed':>5s} {'acc %':>7s} {'spread':>7s} {'time s':>7s} {'max |dloss|':>11s} goal"]
    for r in rows:
        if r["suite"] != "train":
            continue
        spread = r.get("accuracy_spread")
        diff = r.get("max_loss_diff_vs_eager")
        goal = "" if r.get("goal_ok") is None else ("ok" if r["goal_ok"] else "MISS")
        lines.append(f"{r['provider']:14s} {str(r['seed']):>5s} {r['accuracy']:7.2f} "
                     f"{'' if spread is None else format(spread, '.2f'):>7s} {r['time_ms'] / 1e3:7.1f} "
                     f"{'' if diff is None else format(diff, '.2e'):>11s} {goal}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import os

    from . import report

    ap = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: the model is tiny, and more threads only wait on each other)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if "eager" not in variants or any(v not in VARIANTS for v in variants):
        ap.error(f"--variants: among {', '.join(VARIANTS)}, eager included")
    env = report.environment("cpu")
    rows, curves = run_train(variants, [int(s) for s in a.seeds.split(",")], a.epochs)
    report.finish_rows(rows, env)
    tag = os.path.basename(report.output_stem(env, os.path.join(a.out, "__no_such_dir__"), None))
    stem = report.output_stem(env, a.out, a.name or f"train-{tag}")
    report.write_csv(rows, stem + ".csv")
    png = None if a.no_plot else plot_curves(curves, stem + ".png")
    print(format_rows(rows))
    print(f"wrote {stem}.csv" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
