"""Launch-config overrides of the Triton launchers, and ``benchmarks/triton_sweep.py``, under the interpreter.

Every :class:`LaunchConfig` of a small grid must give the default launch's
output bit for bit and ``sdkernels.reference``'s within tolerance; bad configs
raise ``ValueError`` naming the field; the sweep runs on CPU (correctness
only), exits 0 when every config is right and non-zero when one is wrong or
fails.  Run in its own process:  ``TRITON_INTERPRET=1 pytest -m triton_interpret``.
"""
import math
import os
import sys

import pytest

from _interpret import triton_ops_under_interpreter

pytestmark = pytest.mark.triton_interpret

T, K = triton_ops_under_interpreter()

import torch  # noqa: E402
from sdkernels import reference as R  # noqa: E402
from sdkernels.triton_kernels import common as KC  # noqa: E402
from _tolerances import assert_close  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import triton_sweep as SW  # noqa: E402

LC = K.LaunchConfig

# (shape, sample_dim): tile kernel (rows of 200 and of 40), row kernel with a tail (2200, 1100),
# short rows (7) and inner == 1 (sample_dim -1).
CASES = [((3, 5, 40), 0), ((3, 5, 40), 1), ((4, 2, 1100), 0), ((4, 2, 1100), 1), ((6, 7), 0), ((6, 7), -1)]
DTYPES = [torch.bfloat16, torch.float32, torch.float64]
# Heuristic fields, each field alone, forced kernels with tiny and big blocks (many programs per row,
# one row per tile, several rows per tile).
CONFIGS = [
    LC(),
    LC(block=256),
    LC(block=512, num_warps=2),
    LC(block=4096, num_warps=16),
    LC(rows_kernel=True),
    LC(rows_kernel=False),
    LC(block=128, num_warps=1, rows_kernel=True),
    LC(block=2048, num_warps=4, rows_kernel=False),
    LC(block=8, rows_kernel=False),
]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _case(shape, dim, dtype):
    g = _gen(1)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    n = shape[dim]
    keep = torch.tensor([float(i % 3 != 1) for i in range(n)])  # kept and dropped samples
    return r, b, keep, 1.0 / 0.9


def _run(which, r, b, keep, dim, alpha, config):
    out = torch.full_like(r, math.nan)  # an element left unwritten fails the comparison
    n, inner = K.plan(out, dim % r.dim(), keep.numel())
    if which == "add":
        K.launch_scaled_residual_add(out, r, b, keep, alpha, n, inner, config=config)
    else:
        K.launch_sample_scale(out, b, keep, alpha, n, inner, config=config)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", CASES, ids=str)
def test_every_config_matches_default_and_reference(shape, dim, dtype):
    r, b, keep, alpha = _case(shape, dim, dtype)
    exp = {"add": R.scaled_residual_add(r, b, keep, dim, alpha), "scale": R.sample_scale(b, keep, dim, alpha)}
    for which in ("add", "scale"):
        default = _run(which, r, b, keep, dim, alpha, None)
        assert_close(default, exp[which])
        for cfg in CONFIGS:
            out = _run(which, r, b, keep, dim, alpha, cfg)
            assert torch.equal(out, default), (which, cfg)
            assert_close(out, exp[which])


@pytest.mark.parametrize("shape,dim", CASES, ids=str)
def test_launch_params(shape, dim):
    numel = math.prod(shape)
    n, inner = K.plan(torch.empty(shape), dim % len(shape), shape[dim])
    default = K.launch_params(inner, numel)
    # an empty config and the default's own config reproduce the default launch
    assert K.launch_params(inner, numel, LC()) == default
    assert K.launch_params(inner, numel, default.config) == default
    assert default.rows_kernel == (inner >= K.ROW_KERNEL_MIN_INNER or inner == numel)
    for cfg in CONFIGS:
        lp = K.launch_params(inner, numel, cfg)
        assert K.launch_params(inner, numel, lp.config) == lp
        if cfg.rows_kernel is not None:
            assert lp.rows_kernel == cfg.rows_kernel
        if cfg.num_warps is not None:
            assert lp.num_warps == cfg.num_warps
        rows = numel // inner
        if lp.rows_kernel:
            assert lp.block == (cfg.block or lp.block) and lp.grid * lp.block >= numel
            assert lp.grid == rows * lp.nblk and lp.nblk * lp.block >= inner
            assert lp.label == f"rows b{lp.block} w{lp.num_warps}"
        else:
            assert lp.cols == KC.next_pow2(inner) and lp.rows * lp.cols == lp.block
            if cfg.block is not None:
                assert lp.rows == max(1, cfg.block // lp.cols)
            assert lp.grid * lp.rows >= rows and lp.nrows == rows


def test_default_heuristics_unchanged():
    # the shipped numbers (a GPU sweep may change them: then change this test with them)
    assert (K.ROW_KERNEL_MIN_INNER, KC.MAX_BLOCK, K._TILE) == (1024, 4096, 4096)  # _TILE: a peek, no public name
    lp = K.launch_params(197 * 1024, 256 * 197 * 1024)
    assert lp.rows_kernel and lp.num_warps == 8 and lp.block == 4096  # interpreter: min(4096, next_pow2(inner))
    lp = K.launch_params(40, 3 * 5 * 40)
    assert not lp.rows_kernel and lp.cols == 64 and lp.rows == 16  # interpreter: rows clamped to next_pow2(15)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(block=1000), "block"),
        (dict(block=0), "block"),
        (dict(block=-4), "block"),
        (dict(block=1 << 17), "block"),
        (dict(block=2048.0), "block"),
        (dict(block=True), "block"),
        (dict(num_warps=3), "num_warps"),
        (dict(num_warps=32), "num_warps"),
        (dict(num_warps=0), "num_warps"),
        (dict(num_warps=4.0), "num_warps"),
        (dict(rows_kernel=1), "rows_kernel"),
        (dict(rows_kernel="rows"), "rows_kernel"),
    ],
    ids=str,
)
def test_invalid_config_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LC(**kwargs)


def test_invalid_config_for_the_tensor():
    # a tile holds whole rows: at most 65536 columns
    with pytest.raises(ValueError, match="rows_kernel"):
        K.launch_params(70000, 140000, LC(rows_kernel=False))
    K.launch_params(65536, 131072, LC(rows_kernel=False))  # the widest tile is fine
    # too many elements per thread
    with pytest.raises(ValueError, match="num_warps"):
        K.launch_params(1 << 20, 1 << 20, LC(block=65536, num_warps=1))
    K.launch_params(1 << 20, 1 << 20, LC(block=65536))  # heuristic warps: 256 per thread
    # a grid past 2**31 - 1 programs
    with pytest.raises(ValueError, match="block"):
        K.launch_params(1, 1 << 32, LC(block=1, rows_kernel=True))
    with pytest.raises(TypeError, match="LaunchConfig"):
        K.launch_params(10, 100, {"block": 1024})
    # the launchers check before launching: out is untouched
    x = torch.randn(2, 70000)
    out = torch.full_like(x, 7.0)
    with pytest.raises(ValueError, match="rows_kernel"):
        K.launch_sample_scale(out, x, torch.ones(2), 1.0, 1, 140000, config=LC(rows_kernel=False))
    with pytest.raises(ValueError, match="rows_kernel"):
        K.launch_scaled_residual_add(out, x, x, torch.ones(2), 1.0, 1, 140000, config=LC(rows_kernel=False))
    assert bool((out == 7.0).all())


def test_config_labels():
    assert LC().label == "auto b- w-"
    assert LC(block=4096, num_warps=8, rows_kernel=True).label == "rows b4096 w8"
    grid = SW.config_grid()
    labels = [label for label, _ in grid]
    assert labels[0] == "default" and grid[0][1] is None
    assert len(labels) == len(set(labels)) == 15
    for _, cfg in grid[1:]:
        assert 4 <= cfg.block // (32 * cfg.num_warps) <= 64 and cfg.rows_kernel is None
    assert all(cfg.rows_kernel is False for _, cfg in SW.config_grid(quick=True, rows_kernel=False)[1:])


# ---- the sweep ----------------------------------------------------------------------------


TINY = ["--device", "cpu", "--shape", "3x5x40", "--shape", "4x2x1100"]


def _table(out):
    """The table's rows, each a dict of its cells (fixed-width columns) plus "note"."""
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#") and not ln.startswith("best:")][1:]
    rows = []
    for ln in lines:
        row, pos = {}, 0
        for name, w in SW._COLS:
            row[name] = ln[pos:pos + w].strip()
            pos += w + 1
        row["note"] = ln[pos:].strip()
        rows.append(row)
    return rows


@pytest.mark.parametrize("dtype,dim", [("bf16", 1), ("fp32", 0)])
def test_sweep_cpu_all_ok(capsys, tmp_path, dtype, dim):
    path = tmp_path / "sweep.csv"
    rc = SW.main(TINY + ["--dtype", dtype, "--sample-dim", str(dim), "--csv", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _table(out)
    # 2 sizes x (copy + 2 kernels x 15 configs)
    assert len(rows) == 2 * (1 + 2 * 15)
    assert all(r["status"] == "ok" for r in rows), out
    best = [ln for ln in out.splitlines() if ln.startswith("best:")]
    assert len(best) == 4 and all("n/a (no timing: correctness only, 15/15 configs ok" in ln for ln in best)
    import csv

    with open(path) as f:
        data = list(csv.DictReader(f))
    assert len(data) == len(rows)
    assert {d["status"] for d in data} == {"ok"} and {d["dtype"] for d in data} == {dtype}
    assert {d["same_as_default"] for d in data if d["kernel"] != "copy"} == {"yes"}
    assert all(d["time_us"] == "nan" for d in data)  # nothing timed on CPU


def test_sweep_short_rows_and_quick(capsys):
    rc = SW.main(["--device", "cpu", "--shape", "6x7", "--sample-dim", "-1", "--dtype", "fp64", "--quick",
                  "--kernel-shape", "rows", "--kernels", "bwd"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _table(out)
    assert len(rows) == 1 + 1 + 6  # copy, default, 3 blocks x 2 warps
    assert all(r["status"] == "ok" for r in rows), out
    assert all(r["launch"].startswith("rows b") and r["config"].endswith(" rows") for r in rows[2:])


def _corrupt(monkeypatch, name, bad, how):
    """Wrap launcher ``name`` so the config whose label is ``bad`` writes a wrong value (or raises)."""
    orig = getattr(K, name)

    def launcher(out, *args, config=None, **kw):
        res = orig(out, *args, config=config, **kw)
        if config is not None and f"b{config.block} w{config.num_warps}" == bad:
            if how == "raise":
                raise RuntimeError("simulated launch failure")
            out.view(-1)[3] += 1  # one element off
        return res

    monkeypatch.setattr(K, name, launcher)


@pytest.mark.parametrize("name,kernel", [("launch_scaled_residual_add", "fwd"), ("launch_sample_scale", "bwd")])
@pytest.mark.parametrize("how", ["wrong", "raise"])
def test_sweep_detects_a_bad_config(monkeypatch, capsys, name, kernel, how):
    _corrupt(monkeypatch, name, "b2048 w4", how)
    rc = SW.main(TINY[:4] + ["--dtype", "fp32"])
    out = capsys.readouterr().out
    assert rc == 1, out
    rows = _table(out)
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(bad) == 1, out
    assert bad[0]["kernel"] == kernel and bad[0]["config"] == "b2048 w4"
    assert bad[0]["status"] == ("wrong" if how == "wrong" else "error")
    assert ("differs from sdkernels.reference" if how == "wrong" else "simulated launch failure") in bad[0]["note"]
    assert "1 wrong or failed" in out


def test_pick_best_never_picks_a_wrong_config():
    def row(config, status, t):
        return SW.Result("s", "1x2", "bf16", 0, "fwd", config, launch="rows b1 w1", status=status, time_us=t,
                         copy_pct=100.0 / t if math.isfinite(t) else math.nan)

    rows = [row("default", "ok", 10.0), row("b1024 w2", "wrong", 1.0), row("b2048 w4", "error", math.nan),
            row("b4096 w8", "ok", 8.0), row("b8192 w8", "skipped", math.nan)]
    best, default = SW.pick_best(rows)
    assert best.config == "b4096 w8" and default.config == "default"
    line = SW.best_lines(rows)[0]
    assert line.startswith("best: s fwd: b4096 w8 [rows b1 w1] 8.0 us = 12.5% copy BW (default: 10.0%")
    assert SW.pick_best([row("b1024 w2", "wrong", 1.0)])[0] is None
    assert "none (no config ran correctly" in SW.best_lines([row("b1024 w2", "wrong", 1.0)])[0]


def test_sweep_bandwidth_figures(monkeypatch, capsys):
    """GB/s, % of copy bandwidth and the best line, with the GPU timer replaced by fixed times."""
    grid = SW.config_grid()
    fast = 5  # this config is the fastest: 12 us; every other one 20 us; the copy 10 us
    times = iter([10e-6] + [12e-6 if i == fast else 20e-6 for i in range(len(grid))])
    monkeypatch.setattr(SW, "_time", lambda fn, device, repeats: (next(times), 1e-7))
    rc = SW.main(["--device", "cpu", "--shape", "5x300", "--dtype", "fp32", "--kernels", "fwd", "--p", "0.5",
                  "--csv", os.devnull])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _table(out)
    numel, es = 1500, 4
    copy_gbps = 2 * numel * es / 10e-6 / 1e9
    assert rows[0]["kernel"] == "copy" and float(rows[0]["GB/s"]) == pytest.approx(copy_gbps, abs=0.5)
    kept = int(rows[1]["note"].split()[1].split("/")[0]) / 5  # "keeps k/5 samples"
    gbps = numel * es * (2 + kept) / 20e-6 / 1e9
    pct = 100 * gbps / copy_gbps
    assert float(rows[1]["GB/s"]) == pytest.approx(gbps, abs=0.5)
    assert float(rows[1]["%copy"]) == pytest.approx(pct, abs=0.05)
    assert rows[1 + fast]["config"] == grid[fast][0]
    best = [ln for ln in out.splitlines() if ln.startswith("best:")]
    assert best == [f"best: 5x300 fwd: {grid[fast][0]} [{rows[1 + fast]['launch']}] 12.0 us = "
                    f"{pct * 20 / 12:.1f}% copy BW (default: {pct:.1f}% [{rows[1]['launch']}], best is 1.67x it)"]


def test_sweep_time_limit(capsys):
    rc = SW.main(TINY[:4] + ["--time-limit", "1e-9", "--kernels", "fwd"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _table(out)
    assert rows and all(r["status"] == "skipped" for r in rows)
    assert "time limit" in out


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--sizes", "nope"], "valid size names"),
        (["--kernels", "fwd,sideways"], "valid kernel names"),
        (["--shape", "3x0x4"], "--shape"),
        (["--shape", "3x4", "--sample-dim", "2"], "--sample-dim"),
        (["--p", "1.5"], "--p"),
        (["--repeats", "0"], "--repeats"),
        (["--device", "cuda"], "TRITON_INTERPRET"),
        (["--dtype", "int8"], "--dtype"),
    ],
    ids=str,
)
def test_sweep_bad_arguments(capsys, argv, msg):
    with pytest.raises(SystemExit) as info:
        SW.main(argv)
    assert info.value.code == 2
    assert msg in capsys.readouterr().err


def test_sweep_sizes():
    sizes = SW.resolve_sizes()
    assert [(s.name, s.shape, s.dtype, s.sample_dim) for s in sizes] == [
        ("vit-l", (256, 197, 1024), torch.bfloat16, 0),
        ("llm", (2048, 8, 4096), torch.bfloat16, 1),
        ("vit-l-fp32", (256, 197, 1024), torch.float32, 0),
    ]
    s = SW.resolve_sizes(["resnet50-cl", "llm"], ["2x3"], dtype="fp16", sample_dim=-1)
    assert [(x.name, x.dtype, x.sample_dim, x.channels_last) for x in s] == [
        ("resnet50-cl", torch.float16, 0, True), ("llm", torch.float16, 1, False), ("2x3", torch.float16, 1, False)]
