"""The benchmark suite: byte counting, name checks, rows, CSV -> plot round trip, and the GPU check's dry run."""
import importlib.util
import math
import os
import subprocess
import sys
import tarfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import cli, opsuite, plot, providers as P, report, sizes as S  # noqa: E402

N = 64 * 197 * 768
F32, BF16 = torch.float32, torch.bfloat16


# ------------------------------------------------------------------ bytes ----

@pytest.mark.parametrize("p", [0.1, 0.5])
def test_bytes_same_dtype(p):
    d = (F32, F32, F32)
    mb = lambda prov, mode, dev="cuda": P.moved_bytes(prov, "drop_path_add", mode, N, d, p, dev)  # noqa: E731
    # fused: residual read, out written, kept rows of branch read; backward: kept grad rows read, grad_branch written
    assert mb("sdk-cuda", "fwd") == pytest.approx(N * 4 * (2 + (1 - p)))
    assert mb("sdk-cpu", "fwd-nograd") == pytest.approx(N * 4 * (2 + (1 - p)))
    assert mb("sdk-triton", "bwd") == pytest.approx(N * 4 * (1 + (1 - p)))
    assert mb("sdk-cpu", "fwd+bwd") == pytest.approx(N * 4 * (3 + 2 * (1 - p)))
    # eager: mul reads+writes, add reads two, writes one; backward one mul
    assert mb("eager_timm", "fwd") == pytest.approx(5 * N * 4)
    assert mb("eager_tv", "bwd") == pytest.approx(2 * N * 4)
    # compile: one fused kernel that still reads every branch row
    assert mb("compile", "fwd") == pytest.approx(3 * N * 4)
    assert mb("compile", "bwd") == pytest.approx(2 * N * 4)
    # the best a large tensor can gain over eager: 5 / (3 - p)
    assert mb("eager_timm", "fwd") / mb("sdk-cuda", "fwd") == pytest.approx(5 / (3 - p))
    # baselines
    assert mb("copy", "copy") == 2 * N * 4
    assert mb("add", "fwd") == 3 * N * 4
    assert mb("scale", "bwd") == 2 * N * 4
    assert math.isnan(mb("sdk-reference", "fwd"))


def test_bytes_mixed_dtype():
    d = (F32, BF16, F32)  # autocast: fp32 residual, bf16 branch, fp32 out
    p = 0.1
    mb = lambda prov, mode, dev: P.moved_bytes(prov, "drop_path_add", mode, N, d, p, dev)  # noqa: E731
    assert mb("sdk-cuda", "fwd", "cuda") == pytest.approx(N * (4 + 4 + 0.9 * 2))
    assert mb("sdk-cuda", "bwd", "cuda") == pytest.approx(N * (0.9 * 4 + 2))
    # eager on CUDA: bf16 mul (2+2), add reads 4+2 writes 4; on CPU TensorIterator also casts the product (2+4)
    assert mb("eager_timm", "fwd", "cuda") == pytest.approx(N * (2 + 2 + 4 + 2 + 4))
    assert mb("eager_timm", "fwd", "cpu") == pytest.approx(N * (14 + 6))
    # eager backward: fp32 grad cast to bf16 for the add's bf16 input, then the bf16 mul
    assert mb("eager_timm", "bwd", "cuda") == pytest.approx(N * (4 + 2 + 2 + 2))
    assert mb("compile", "fwd", "cpu") == pytest.approx(N * (4 + 2 + 4))
    # residual in bf16, branch fp32: the residual's gradient needs a cast (fp32 -> bf16) in the fused path
    d2 = (BF16, F32, F32)
    assert P.moved_bytes("sdk-cuda", "drop_path_add", "bwd", N, d2, p, "cuda") == pytest.approx(N * (0.9 * 4 + 4 + 4 + 2))


def test_bytes_drop_path_alone():
    d = (BF16, BF16, BF16)
    assert P.moved_bytes("sdk-cuda", "drop_path", "fwd", N, d, 0.5, "cuda") == pytest.approx(N * 2 * 1.5)
    assert P.moved_bytes("eager_timm", "drop_path", "fwd", N, d, 0.5, "cuda") == pytest.approx(N * 2 * 2)
    assert P.moved_bytes("compile", "drop_path", "bwd", N, d, 0.5, "cuda") == pytest.approx(N * 2 * 2)


@pytest.mark.parametrize("dt", list(S.DTYPES))
@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd+bwd"])
def test_fused_never_moves_more(dt, mode):
    r, b = S.DTYPES[dt]
    d = (r, b, torch.promote_types(r, b))
    for p in (0.0, 0.1, 0.5, 1.0):
        for dev in ("cpu", "cuda"):
            fused = P.moved_bytes("sdk-cpu", "drop_path_add", mode, N, d, p, dev)
            assert fused <= P.moved_bytes("compile", "drop_path_add", mode, N, d, p, dev)
            assert P.moved_bytes("compile", "drop_path_add", mode, N, d, p, dev) <= \
                P.moved_bytes("eager_timm", "drop_path_add", mode, N, d, p, dev)


# ------------------------------------------------------------------ names ----

def test_parse_names_lists_valid():
    assert S.parse_names("size", "vit-b, small", list(S.SIZES)) == ["vit-b", "small"]
    with pytest.raises(ValueError) as e:
        S.parse_names("size", "vit-b,vit-xxl", list(S.SIZES))
    msg = str(e.value)
    assert "'vit-xxl'" in msg and "valid size names" in msg and "resnet50-cl" in msg and "llm" in msg


@pytest.mark.parametrize("flag,bad,valid", [
    ("--sizes", "vit-b,huge", "vit-l"),
    ("--providers", "eager_timm,fast", "sdk-cpu"),
    ("--suite", "bogus", "blocks"),
    ("--dtypes", "fp8", "fp32+bf16"),
    ("--modes", "sideways", "fwd+bwd"),
    ("--ops", "layernorm", "drop_path_add"),
])
def test_cli_unknown_names(flag, bad, valid, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([flag, bad, "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown" in err and valid in err


def test_cli_bad_ps(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--ps", "0.1,1.5"])
    assert "outside [0, 1]" in capsys.readouterr().err


def test_cli_list(capsys):
    assert cli.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("vit-l", "256x197x1024", "sample_dim=1", "channels_last", "eager_tv", "compile", "sdk-cpu", "copy"):
        assert name in out


def test_blocks_suite_needs_module(capsys):
    try:
        import benchmarks.blocks  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit) as e:
            cli.main(["--suite", "blocks", "--no-progress"])
        assert e.value.code == 2
        assert "blocks.py" in capsys.readouterr().err
    else:
        from benchmarks import blocks

        assert callable(blocks.run_block_suite)


def test_cases_from():
    cpu = S.cases_from("cpu")
    names = [c.name for c in cpu]
    # the CPU goal sizes are in the CPU default
    for want in ("small/fp32", "vit-b-half/fp32", "vit-b/fp32", "vit-b/bf16"):
        assert want in names
    assert not any(c.size.name in ("vit-l", "resnet50", "llm") for c in cpu)
    gpu = [c.name for c in S.cases_from("cuda")]
    for want in ("vit-l/bf16", "vit-l/fp32", "llm/bf16", "resnet50-cl/bf16", "small/fp32"):
        assert want in gpu
    assert [c.name for c in S.cases_from("cpu", ["llm"], ["bf16", "fp32"])] == ["llm/bf16", "llm/fp32"]
    assert S.SIZES["llm"].sample_dim == 1


# ------------------------------------------------------------- providers ----

def test_unavailable_providers_are_skipped_rows():
    case = S.Case(S.SIZES["small"], "fp32")
    plans = opsuite.plan_ops(["drop_path_add"], [case], ["sdk-cuda", "sdk-triton"], ["fwd"], [0.5])
    rows = opsuite.run_ops(plans, "cpu", repeats=1)
    assert len(rows) == 2
    for r in rows:
        assert r["status"] == "skipped" and r["time_ms"] is None and r["note"]


def test_run_ops_measures_and_reports_errors(monkeypatch):
    case = S.Case(S.SIZES["small"], "fp32")
    plans = opsuite.plan_ops(["drop_path_add"], [case], ["eager_timm", "sdk-cpu", "copy", "add", "scale"],
                             ["fwd", "bwd", "fwd+bwd"], [0.5])
    rows = opsuite.run_ops(plans, "cpu", repeats=1)
    assert {r["provider"] for r in rows} == {"eager_timm", "sdk-cpu", "copy", "add", "scale"}
    assert all(r["status"] == "ok" and r["time_ms"] > 0 for r in rows), [r for r in rows if r["status"] != "ok"]
    assert len(rows) == 3 + 2 * 3

    real = P.make_forward

    def broken(provider, *a, **k):
        if provider == "sdk-cpu":
            raise RuntimeError("planted failure")
        return real(provider, *a, **k)

    monkeypatch.setattr(P, "make_forward", broken)
    rows = opsuite.run_ops(opsuite.plan_ops(["drop_path_add"], [case], ["sdk-cpu", "eager_timm"], ["fwd"], [0.5]),
                           "cpu", repeats=1)
    assert rows[0]["status"] == "error" and "planted failure" in rows[0]["note"]
    assert rows[1]["status"] == "ok"


def _cpu_stand_in_for_graph_timer(calls):
    """A gpu_timer with time_cuda_graph's protocol, timing on CPU: records how it was called."""
    from benchmarks.timing import time_cpu

    def timer(make_fn, repeats):
        fn = make_fn()
        calls.append(repeats)
        return time_cpu(fn, 1)

    return timer


def test_host_bound_sizes_take_the_wall_clock_on_gpu(monkeypatch):
    """On CUDA a host-bound size (8x16x64) is timed by a synchronised wall-clock loop, not by events
    around an L2 flush (which would hide the launch overhead); the others by CUDA events; CPU by its timer."""
    from benchmarks import timing

    used = []
    for name in ("time_wallclock", "time_cuda_events", "time_cpu"):
        monkeypatch.setattr(timing, name, lambda *a, _n=name, **k: used.append(_n))
    host_bound = [s.name for s in S.SIZES.values() if s.host_bound]
    assert "small" in host_bound and S.SIZES["small"].shape == (8, 16, 64)
    for size in S.SIZES.values():
        used.clear()
        timing.time_fn(lambda: None, "cuda", 3, host_bound=size.host_bound)
        assert used == ["time_wallclock" if size.host_bound else "time_cuda_events"], size.name
    used.clear()
    timing.time_fn(lambda: None, "cpu", 3, host_bound=True)
    assert used == ["time_cpu"]


def test_run_ops_gpu_timer_columns():
    """run_ops hands every ok row to gpu_timer; finish_rows derives the gpu_* columns; table and headline show them."""
    case = S.Case(S.SIZES["small"], "fp32")
    plans = opsuite.plan_ops(["drop_path_add"], [case], ["eager_timm", "sdk-cpu", "copy", "sdk-cuda"],
                             ["fwd", "bwd"], [0.5])
    calls = []
    rows = opsuite.run_ops(plans, "cpu", repeats=2, gpu_timer=_cpu_stand_in_for_graph_timer(calls))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 5 and len(calls) == 5 and set(calls) == {2}  # skipped sdk-cuda rows are not timed
    assert all(r["gpu_ms"] > 0 for r in ok)
    assert all(r.get("gpu_ms") is None for r in rows if r["status"] != "ok")
    report.finish_rows(rows, report.environment("cpu"))
    for r in ok:
        if r["provider"] != "copy":
            assert r["gpu_frac_copy"] == pytest.approx(
                (r["bytes"] / r["gpu_ms"]) / (_row(ok, "copy", "copy")["bytes"] / _row(ok, "copy", "copy")["gpu_ms"]))
    f = _row(ok, "sdk-cpu", "fwd")
    assert f["gpu_speedup_vs_eager"] == pytest.approx(_row(ok, "eager_timm", "fwd")["gpu_ms"] / f["gpu_ms"])
    assert f.get("gpu_speedup_vs_compile") is None  # no compile row in this run
    table = report.format_table(rows)
    assert "gcopy%" in table and "gEager" in table
    assert "GPU only: fwd " in report.headline(rows)


def _row(rows, provider, mode):
    return next(r for r in rows if r["provider"] == provider and r["mode"] == mode)


def test_run_ops_gpu_timer_failure_keeps_the_row():
    case = S.Case(S.SIZES["small"], "fp32")
    plans = opsuite.plan_ops(["drop_path_add"], [case], ["sdk-cpu"], ["fwd"], [0.5])

    def failing(make_fn, repeats):
        make_fn()
        raise RuntimeError("operation not permitted when stream is capturing")

    rows = opsuite.run_ops(plans, "cpu", repeats=1, gpu_timer=failing)
    assert rows[0]["status"] == "ok" and rows[0]["time_ms"] > 0 and rows[0].get("gpu_ms") is None
    assert "gpu timer: RuntimeError: operation not permitted" in rows[0]["note"]
    report.finish_rows(rows, report.environment("cpu"))
    assert "gcopy%" not in report.format_table(rows)  # no gpu columns when no row has gpu_ms


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_ops_graph_timer_cuda():
    """time_cuda_graph captures every mode of every CUDA provider (the bwd mode's forward recorded on its stream)."""
    from benchmarks.timing import time_cuda_graph

    provs = ["eager_timm", "eager_tv", "sdk-cuda", "copy", "scale"] + (["sdk-triton"] if "sdk-triton" in P.all_providers() else [])
    plans = opsuite.plan_ops(["drop_path_add", "drop_path"], [S.Case(S.SIZES["vit-b"], "bf16")], provs,
                             ["fwd", "bwd", "fwd+bwd"], [0.1])
    rows = opsuite.run_ops(plans, "cuda", repeats=5, gpu_timer=time_cuda_graph)
    bad = [(r["provider"], r["mode"], r.get("note")) for r in rows
           if r["status"] != "ok" or not r.get("gpu_ms") or "gpu timer" in (r.get("note") or "")]
    assert not bad, bad
    # The graph has no host overhead: never much slower than the event-timed call.
    assert all(r["gpu_ms"] < 1.5 * r["time_ms"] + 0.01 for r in rows), [(r["provider"], r["mode"], r["time_ms"], r["gpu_ms"]) for r in rows]


def test_eager_seq_first_matches_reference_draw():
    # seq-first eager code drops whole samples along dim 1, like the fused op
    x = torch.randn(5, 6, 7)
    r = torch.zeros(5, 6, 7)
    torch.manual_seed(3)
    out = P.eager_timm_add(r, x, 0.5, 1)
    for s in range(6):  # each sample (a column of dim 1) is all dropped or all kept and scaled by 2
        col = out[:, s]
        assert torch.equal(col, torch.zeros_like(col)) or torch.allclose(col, x[:, s] * 2)
    # with the draw along dim 0 instead, some column would mix kept and dropped rows: check the test can fail
    torch.manual_seed(3)
    wrong = P.eager_timm_add(r, x, 0.5, 0)
    assert not all(torch.equal(wrong[:, s], torch.zeros_like(wrong[:, s])) or torch.allclose(wrong[:, s], x[:, s] * 2)
                   for s in range(6))


# ------------------------------------------------------- rows, CSV, plot ----

def _rows():
    base = dict(suite="ops", op="drop_path_add", size="vit-b", shape="64x197x768", dtype="fp32", sample_dim=0,
                layout="contiguous", status="ok")
    b = 64 * 197 * 768 * 4
    rows = [
        dict(base, provider="copy", mode="copy", p=None, time_ms=2.0, bytes=2 * b),
        dict(base, provider="add", mode="fwd", p=None, time_ms=3.0, bytes=3 * b),
        dict(base, provider="eager_timm", mode="fwd", p=0.1, time_ms=5.0, bytes=5 * b, requires_grad=True),
        dict(base, provider="compile", mode="fwd", p=0.1, time_ms=4.0, bytes=3 * b, requires_grad=True),
        dict(base, provider="sdk-cpu", mode="fwd", p=0.1, time_ms=2.5, bytes=2.9 * b, requires_grad=True,
             peak_mem_mb=77.2, mem_method="cpu_rss_hwm_estimate"),
        dict(base, provider="sdk-cuda", mode="fwd", p=0.1, status="skipped", time_ms=None, note="no GPU"),
        dict(suite="e2e", op="vit_b_block", size="vit-b-block", shape="8x197x768", dtype="fp32", provider="eager",
             mode="step", p=0.1, status="ok", time_ms=400.0, batch=8),
        dict(suite="e2e", op="vit_b_block", size="vit-b-block", shape="8x197x768", dtype="fp32", provider="sdk-fused",
             mode="step", p=0.1, status="ok", time_ms=390.0, batch=8),
    ]
    return rows


def test_finish_rows_derives_columns():
    rows = report.finish_rows(_rows(), report.environment("cpu"))
    by = {(r["suite"], r["provider"]): r for r in rows}
    copy_gbps = 2 * 64 * 197 * 768 * 4 / 2e-3 / 1e9
    assert by[("ops", "copy")]["gbps"] == pytest.approx(copy_gbps)
    sdk = by[("ops", "sdk-cpu")]
    assert sdk["gbps"] == pytest.approx(2.9 * 64 * 197 * 768 * 4 / 2.5e-3 / 1e9)
    assert sdk["frac_copy"] == pytest.approx(sdk["gbps"] / copy_gbps)
    assert sdk["speedup_vs_eager"] == pytest.approx(2.0)
    assert sdk["speedup_vs_compile"] == pytest.approx(1.6)
    assert by[("ops", "add")]["speedup_vs_eager"] is None  # baselines have no p
    assert by[("ops", "sdk-cuda")]["gbps"] is None
    assert by[("e2e", "sdk-fused")]["speedup_vs_eager"] == pytest.approx(400 / 390)
    assert by[("e2e", "sdk-fused")]["items_per_s"] == pytest.approx(8 / 0.39)
    for r in rows:
        assert r["device"] == "cpu" and r["torch"] == torch.__version__ and r["date"]
    with pytest.raises(ValueError, match="required"):
        report.finish_rows([{"suite": "ops"}], report.environment("cpu"))


def test_csv_plot_round_trip(tmp_path):
    rows = report.finish_rows(_rows(), report.environment("cpu"))
    path = report.write_csv(rows, str(tmp_path / "cpu-test.csv"))
    back = report.read_csv(path)
    assert len(back) == len(rows)
    for a, b in zip(rows, back):
        for k in report.FIELDS:
            va, vb = a[k], b[k]
            if isinstance(va, float):
                assert vb == pytest.approx(va, rel=1e-5), k
            else:
                assert vb == va, (k, va, vb)
    # the plots come from the CSV alone, into another folder
    assert plot.main([path, "--out", str(tmp_path / "png")]) == 0
    pngs = sorted(os.listdir(tmp_path / "png"))
    assert pngs == ["cpu-test-bandwidth.png", "cpu-test-e2e.png", "cpu-test-speedup.png"]
    for name in pngs:
        with open(tmp_path / "png" / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = report.format_table(back, back[0])
    assert "sdk-cpu" in table and "skipped providers" in table and "no GPU" in table
    assert "sdk-cpu" in report.headline(back)


def test_output_stem_never_overwrites(tmp_path):
    env = report.environment("cpu")
    s1 = report.output_stem(env, str(tmp_path))
    assert os.path.basename(s1) == f"cpu-{env['date']}"
    open(s1 + ".csv", "w").close()
    s2 = report.output_stem(env, str(tmp_path))
    assert s2 == s1 + "-2"


# ------------------------------------------------------------ GPU check ----

@pytest.mark.skipif(os.environ.get("SDKERNELS_IN_GPU_CHECK") == "1", reason="running inside gpu_check.sh itself")
def test_gpu_check_dry_run(tmp_path):
    """The one-shot GPU script's logic: bash -n, sanitize_case on CPU, the block, models and sweep steps and a tiny CPU benchmark."""
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, GPU_CHECK_BUDGET="300")
    env.pop("SDKERNELS_IN_GPU_CHECK", None)
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=420)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "gpu_check summary (DRY RUN" in out
    assert "Triton launch-config sweep:" in out and "best: 3x5x40 fwd" in out  # the sweep ran under the interpreter
    for step in ("syntax", "build", "import", "tests", "memcheck", "blocks", "models", "sweep", "bench"):
        assert step in out
    files = os.listdir(tmp_path)
    assert {"gpu_check.log", "summary.txt", "bench-dry-run.csv", "bench-dry-run-speedup.png"} <= set(files), files
    if importlib.util.find_spec("timm") is not None:
        assert "[models] OK" in out, out[-3000:]
        # the blocks and models suites' CSVs are written (as files, or packed in a .tar.gz)
        names = set(files)
        for f in files:
            if f.endswith(".tar.gz"):
                with tarfile.open(tmp_path / f) as tar:
                    names |= set(tar.getnames())
        assert {"blocks-dry-run.csv", "models-dry-run.csv"} <= names, sorted(names)
    rows = report.read_csv(str(tmp_path / "bench-dry-run.csv"))
    ok = {(r["provider"], r["mode"]) for r in rows if r["status"] == "ok"}
    assert ("sdk-cpu", "fwd") in ok and ("eager_timm", "bwd") in ok and ("copy", "copy") in ok
    assert any(r["status"] == "skipped" and r["provider"] == "sdk-cuda" for r in rows)
    # the add + norm rows: measured on CPU, the other libraries' kernels skipped with a reason
    norm_ok = {(r["op"], r["provider"], r["mode"]) for r in rows if r["status"] == "ok"}
    for op in ("add_layernorm", "add_rmsnorm"):
        assert {(op, "sdk-cpu", "fwd"), (op, "eager_timm", "bwd"), (op, "sdk-cpu", "fwd+bwd")} <= norm_ok
    assert any(r["op"] == "add_layernorm" and r["provider"] == "flash_attn" and r["status"] == "skipped" for r in rows)
    assert "memcheck" in out and "add_norm cases" in out


def test_gpu_check_rejects_unknown_flag():
    res = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--bogus"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "--dry-run" in res.stderr


# ---- LayerScale rows -------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5])
def test_bytes_layer_scale(p):
    q = 1 - p
    mb = lambda prov, mode, d=(F32, F32, F32): P.moved_bytes(prov, "drop_path_add_ls", mode, N, d, p, "cuda")  # noqa: E731
    # fused: the same as without LayerScale forward; backward reads grad and branch on kept rows only
    assert mb("sdk-cuda", "fwd") == pytest.approx(N * 4 * (2 + q))
    assert mb("sdk-triton", "bwd") == pytest.approx(N * 4 * (1 + 2 * q))
    # eager timm: LayerScale, mask, add = 7 tensors forward; 8 backward
    assert mb("eager_timm", "fwd") == pytest.approx(7 * N * 4)
    assert mb("eager_timm", "bwd") == pytest.approx(8 * N * 4)
    assert mb("compile", "fwd") == pytest.approx(3 * N * 4)
    assert mb("compile", "bwd") == pytest.approx(3 * N * 4)
    assert mb("eager_timm", "fwd", (BF16,) * 3) == pytest.approx(7 * N * 2)
    # autocast: fp32 residual and gamma, bf16 branch: eager's product is fp32
    d = (F32, BF16, F32)
    assert mb("sdk-cuda", "fwd", d) == pytest.approx(N * (4 + 4 + q * 2))
    assert mb("eager_timm", "fwd", d) == pytest.approx(N * (2 + 4 + 8 + 4 + 4 + 4))


def test_layer_scale_cases_and_rows():
    cpu = [c.name for c in S.cases_from("cpu", op="drop_path_add_ls")]
    assert cpu == ["vit-b/fp32", "vit-b/bf16", "convnext-s1-cl/fp32"]
    cl = S.SIZES["convnext-s1-cl"]
    assert cl.shape == (64, 96, 56, 56) and cl.channels_last and cl.channel_dim == 1
    assert "convnext-s1-cl/bf16" in [c.name for c in S.cases_from("cuda", op="drop_path_add_ls")]
    assert S.cases_from("cpu", op="drop_path_add") == S.cases_from("cpu")
    small = S.Case(S.Size("tiny-cl", (4, 6, 3, 5), channels_last=True, channel_dim=1), "fp32")
    plans = opsuite.plan_ops(["drop_path_add_ls"], {"drop_path_add_ls": [small]},
                             ["eager_timm", "eager_tv", "sdk-cpu", "add"], ["fwd", "bwd"], [0.5])
    rows = opsuite.run_ops(plans, "cpu", repeats=1)
    by = {(r["provider"], r["mode"]): r for r in rows}
    assert ("eager_tv", "fwd") not in by  # eager_timm is LayerScale's eager baseline: no torchvision row
    for key in (("eager_timm", "fwd"), ("eager_timm", "bwd"), ("sdk-cpu", "fwd"), ("sdk-cpu", "bwd"), ("add", "fwd")):
        assert by[key]["status"] == "ok" and by[key]["time_ms"] > 0, by[key]
    # the eager baseline and the fused op agree under one seed (the same samples dropped)
    x = opsuite._Inputs("drop_path_add_ls", small, "cpu")
    torch.manual_seed(3)
    a = P.make_forward("eager_timm", "drop_path_add_ls", 0.5, 0, 1)(x.residual, x.branch, x.gamma)
    torch.manual_seed(3)
    b = P.make_forward("sdk-cpu", "drop_path_add_ls", 0.5, 0, 1)(x.residual, x.branch, x.gamma)
    assert torch.equal(a, b)


# ------------------------------------------------------------------ add + norm ----

@pytest.mark.parametrize("p", [0.1, 0.5])
def test_norm_bytes(p):
    q = 1 - p
    d = (BF16, BF16, BF16, BF16)
    mb = lambda prov, mode, dev="cuda", H=768: P.moved_bytes(prov, "add_layernorm", mode, N, d, p, dev, H)  # noqa: E731
    # fused: residual and the kept branch rows in, x and h out; backward: x, grad_h, grad_x in, two grads out
    assert mb("sdk-cuda", "fwd") == pytest.approx(N * 2 * (3 + q))
    assert mb("sdk-triton", "bwd") == pytest.approx(N * 2 * 5)
    assert mb("sdk-cpu", "fwd+bwd") == pytest.approx(N * 2 * (8 + q))
    # eager: mask multiply, add, norm (x re-read); its backward re-reads on CUDA for the weight gradient
    assert mb("eager_timm", "fwd") == pytest.approx(N * 2 * 7)
    assert mb("eager_timm", "bwd") == pytest.approx(N * 2 * 10)
    assert mb("eager_timm", "bwd", "cpu") == pytest.approx(N * 2 * 8)
    # compile: one pass for rows <= 1024, inputs re-read for longer ones on CUDA
    assert mb("compile", "fwd") == pytest.approx(N * 2 * 4)
    assert mb("compile", "fwd", H=4096) == pytest.approx(N * 2 * 6)
    assert mb("compile", "fwd", "cpu", H=4096) == pytest.approx(N * 2 * 4)
    # flash-attention / Liger read the whole branch
    assert mb("flash_attn", "fwd") == pytest.approx(N * 2 * 4) and mb("liger", "bwd") == pytest.approx(N * 2 * 5)
    assert math.isnan(mb("sdk-reference", "fwd"))
    # mixed: fp32 residual and x, bf16 branch
    dm = (F32, BF16, F32, F32)
    assert P.moved_bytes("sdk-cuda", "add_rmsnorm", "fwd", N, dm, p, "cuda", 4096) == pytest.approx(N * (12 + 2 * q))


def test_norm_plans_and_defaults():
    provs = list(P.default_providers())
    assert "flash_attn" in provs and "liger" in provs
    cases = {op: S.cases_from("cuda", op=op) for op in ("drop_path_add", "add_layernorm", "add_rmsnorm")}
    plans = opsuite.plan_ops(list(cases), cases, provs, None, {"drop_path_add": [0.1, 0.5], "add_layernorm": [0.1],
                                                                "add_rmsnorm": [0.1]})
    by_op = {}
    for pl in plans:
        by_op.setdefault(pl.op, set()).add(pl.provider)
    assert {"flash_attn", "liger"}.isdisjoint(by_op["drop_path_add"])
    assert "flash_attn" in by_op["add_layernorm"] and "liger" not in by_op["add_layernorm"]
    assert {"flash_attn", "liger"} <= by_op["add_rmsnorm"]
    assert {"eager_tv", "add", "scale"}.isdisjoint(by_op["add_layernorm"] | by_op["add_rmsnorm"])
    assert {pl.p for pl in plans if pl.op == "add_layernorm" and pl.p is not None} == {0.1}
    # the goal cases: ViT-B, ViT-L tokens and LLM rows of 4096 and 8192, bf16 and fp32 + bf16
    names = {(c.size.name, c.dtype) for c in cases["add_layernorm"]}
    assert {("vit-b", "bf16"), ("vit-l", "bf16"), ("llm", "bf16"), ("llm-8k", "bf16"), ("vit-l", "fp32+bf16")} <= names
    assert S.SIZES["llm-8k"].numel // S.SIZES["llm-8k"].shape[-1] == 16384
    assert P.unavailable_reason("flash_attn", "cpu") == "flash_attn runs on CUDA tensors only"


def test_norm_providers_agree_on_cpu():
    # eager, compile's source and sdkernels compute the same (x, h) under one seed (bf16: one rounding)
    x = opsuite._Inputs("add_layernorm", S.Case(S.SIZES["small"], "fp32"), "cpu")
    outs = {}
    for prov in ("eager_timm", "sdk-cpu", "sdk-reference"):
        torch.manual_seed(3)
        outs[prov] = P.make_forward(prov, "add_layernorm", 0.5, 0)(*x.leaves(False))
    for prov in ("sdk-cpu", "sdk-reference"):
        torch.testing.assert_close(outs[prov][0], outs["eager_timm"][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(outs[prov][1], outs["eager_timm"][1], rtol=1e-5, atol=1e-5)
    assert not torch.equal(outs["sdk-cpu"][0], x.residual + x.branch)  # the mask mattered


def test_norm_headline():
    base = dict(suite="ops", op="add_layernorm", size="vit-b", shape="64x197x768", dtype="bf16", p=0.1,
                status="ok", iqr_ms=None)
    rows = [dict(base, provider="sdk-cuda", mode="fwd", time_ms=0.1, frac_copy=0.9, speedup_vs_eager=3.2,
                 speedup_vs_compile=1.1),
            dict(base, provider="flash_attn", mode="fwd", time_ms=0.12),
            dict(base, provider="sdk-cuda", mode="bwd", time_ms=0.2, speedup_vs_eager=4.1)]
    line = report._norm_headline(rows)
    assert len(line) == 1
    assert "fwd 100.0 us 90% copy BW 3.20x eager 1.10x compile 1.20x flash_attn" in line[0]
    assert "bwd 200.0 us" in line[0] and "4.10x eager" in line[0]
