"""The models and train suites of the benchmark (issue 12): they run, their rows hold, and the train
suite's converted model follows eager's loss curve."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

pytest.importorskip("timm")
from benchmarks import cli, models, report, train  # noqa: E402


def test_models_suite_rows():
    rows = models.run_models("cpu", models=["vit_tiny_patch16_224"], rates=[0.4], providers=models.EAGER_PROVIDERS,
                             batch=4, repeats=1, img_size=32)
    assert [r["provider"] for r in rows] == list(models.EAGER_PROVIDERS)
    assert all(r["status"] == "ok" and r["time_ms"] > 0 for r in rows), rows
    by = {r["provider"]: r for r in rows}
    assert by["eager"]["time_ratio_vs_baseline"] == 1.0
    assert "k=2 of 4" in by["convert-skip"]["note"]
    report.finish_rows(rows, report.environment("cpu"))
    assert by["convert"]["speedup_vs_eager"] == pytest.approx(by["eager"]["time_ms"] / by["convert"]["time_ms"])
    assert "vit_tiny_patch16_224" in models.format_rows(rows)


def test_models_suite_goal_rows(monkeypatch):
    monkeypatch.setitem(models.GOAL_MODEL, "cpu", "vit_tiny_patch16_224")
    rows = models.run_models("cpu", models=["vit_tiny_patch16_224"], rates=[models.GOAL_RATE],
                             providers=("eager", "convert-skip"), batch=4, repeats=1, img_size=32)
    assert rows[1]["goal_ratio"] == models.GOALS[("cpu", "convert-skip")]
    assert rows[1]["goal_ratio"] and ("ok" in models.format_rows(rows) or "MISS" in models.format_rows(rows))


def test_train_suite_convert_follows_eager(tmp_path):
    x_tr, y_tr, x_te, y_te = train.load_digits()
    assert x_tr.shape[1:] == (1, 8, 8) and len(y_tr) + len(y_te) == 1797 and 0 <= x_tr.min() and x_tr.max() <= 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows, curves = train.run_train(seeds=[0], epochs=1)
    finally:
        torch.set_num_threads(threads)
    means = {r["provider"]: r for r in rows if r["seed"] == "mean"}
    assert set(means) == set(train.VARIANTS)
    # fp32: the fused op rounds as eager does, forward and backward, so the curves agree step for step
    # (bitwise without the fused norm; to rounding with it, over one epoch)
    assert means["convert-nonorm"]["max_loss_diff_vs_eager"] == 0
    assert means["convert"]["max_loss_diff_vs_eager"] <= 1e-5
    assert curves[("convert-skip", 0)] != curves[("eager", 0)]  # another sampling: another curve
    assert means["eager"]["goal_ok"] is True and means["eager"]["goal_band"] >= 1.0
    assert all(0 <= r["accuracy"] <= 100 for r in rows)
    assert train.plot_curves(curves, str(tmp_path / "c.png"))
    assert "convert-skip" in train.format_rows(rows)


def test_cli_lists_the_new_suites(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "models" in out and "train" in out
    assert "every suite" in cli.build_parser().format_help().replace("\n", " ")
