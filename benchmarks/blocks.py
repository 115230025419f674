"""The block suite: residual blocks with stochastic depth, forward+backward.

Two blocks, each built once per p with identical weights for every provider:

- ``vit_b_block``: a pre-norm ViT-B/16 block, ``x = x + dp(attn(norm1(x)))``
  then ``x = x + dp(mlp(norm2(x)))`` (dim 768, 12 heads, MLP 3072, 197 tokens);
- ``resnet_bottleneck``: a ResNet-50 stage-1 bottleneck on 256x56x56 in
  channels_last (the fast layout for convolutions on CPU and GPU),
  ``relu(x + dp(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))))))`` (1x1 256->64,
  3x3 64->64, 1x1 64->256; BatchNorm in training mode).

Providers (``provider`` column):

- ``eager``: timm-style ``x + drop_path(branch(x))`` (:func:`sdkernels.reference.timm_drop_path`):
  the whole branch is computed, then a quarter or half of it multiplied by zero;
- ``fused``: the core fused op, ``sdkernels.drop_path_add(x, branch(x), p)``;
- ``skip``: :func:`sdkernels.drop_path_residual` with count "fixed": the branch
  runs on the kept samples only (``k = floor(n (1 - p) + 1/2)``);
- ``skip-bernoulli`` (opt-in): the same with timm's per-sample distribution
  (one host sync per call).

A step is forward, backward from a fixed random output gradient, and
``zero_grad(set_to_none=True)``.  Providers' steps are interleaved (A B C A B C
...) so slow drift on a shared machine hits all alike; each step is timed with
a synchronised wall clock and the median is reported.

Two timers (``timer`` column):

- ``wall`` (default): eager steps, each launched from Python as a user runs
  them.  On a fast GPU a small block is **launch-bound** this way: the H200
  took 2.6-2.9 ms per eager ViT-B step at batch 64 whatever p was, about
  twice its arithmetic at realistic bf16 throughput, so skipping samples'
  compute cannot show and every extra host-side op counts.
- ``graph`` (CUDA only): each provider's whole step (forward and backward)
  is captured once into a CUDA graph and replayed (``REPLAYS_PER_SAMPLE``
  replays per timed sample), which takes the host out: what remains is the
  GPU work, the quantity the skip path reduces.  Only graph-safe providers
  run (eager, fused and skip with count "fixed" draw on the device with no
  host sync; every replay draws fresh masks / a fresh subset).  Autocast runs
  with ``cache_enabled=False`` inside the capture, as PyTorch advises.  fp32 runs everything in
fp32; bf16/fp16 run under autocast with fp32 weights and residual stream (the
mixed-precision case, labelled "fp32+bf16").

``--profile`` (wall timer only) adds, per provider, what one step costs the
host and the GPU, from ``torch.profiler`` over ``PROFILE_STEPS`` steps:
``ops_per_step`` (top-level operator calls, ATen's and custom ops', the
host's dispatch work),
``launches_per_step`` (CUDA kernels, memsets and copies),
``gpu_busy_ms`` (their summed device time per step), ``syncs_per_step``
(blocking CUDA runtime calls: ``cudaStreamSynchronize`` and kin, which make a
step cost host time plus device time instead of the larger of the two; 0 for
every graph-safe provider, 1 or more for ``skip-bernoulli``), and the
``TOP_N`` largest per-step times by name: ``top_ops`` (top-level operators,
host time including what they wait for) and ``top_kernels`` (CUDA).  On a
launch-bound GPU ``gpu_busy_ms`` is well under ``time_ms`` and the launch
counts say where the host time goes; a provider slower than eager by more
than its own op costs shows it in these lists.

The goal: ``time(skip) / time(eager) <= (1 - p) + margin`` with margin
0.1 on a GPU (bf16, batch 64) and 0.15 on CPU (fp32).  Rows carry
``time_ratio_vs_eager``, ``goal_ratio``, ``kept`` and ``realised_p``.

``python -m benchmarks --suite blocks`` calls :func:`run_block_suite`;
``python -m benchmarks.blocks`` runs it alone and writes
``results/blocks-<device>-<date>.csv`` and ``.png`` (speed-up against p).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .e2e import _Attention  # the same multi-head self-attention as the e2e ViT block

__all__ = ["BLOCK_PROVIDERS", "BLOCKS", "DEFAULT_PS", "default_batch", "run_block_suite", "plot_blocks", "main"]

BLOCK_PROVIDERS = ("eager", "fused", "skip")
ALL_PROVIDERS = BLOCK_PROVIDERS + ("skip-bernoulli",)
BLOCKS = ("vit_b_block", "resnet_bottleneck")
TIMERS = ("wall", "graph")
#: Providers a CUDA graph can hold (no host sync, draws on the device).
GRAPH_SAFE = ("eager", "fused", "skip")
REPLAYS_PER_SAMPLE = 5
PROFILE_STEPS = 3
TOP_N = 5  # --profile: operators and kernels listed per row (top_ops, top_kernels)
DEFAULT_PS = (0.1, 0.2, 0.3, 0.5)
GOAL_MARGIN = {"cpu": 0.15, "cuda": 0.1}


def default_batch(device: str) -> int:
    """GPU: 64 (the issue's goal setting).  CPU: 10, where k = n (1 - p) exactly for p in 0.1..0.5
    and a fwd+bwd ViT-B step takes about a second on 2 cores."""
    return 64 if device == "cuda" else 10


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------


def _residual(impl: str, x: torch.Tensor, branch, p: float) -> torch.Tensor:
    import sdkernels
    from sdkernels.reference import timm_drop_path

    if impl == "eager":
        return x + timm_drop_path(branch(x), p, True)
    if impl == "fused":
        return sdkernels.drop_path_add(x, branch(x), p)
    if impl == "skip":
        return sdkernels.drop_path_residual(x, branch, p, count="fixed")
    if impl == "skip-bernoulli":
        return sdkernels.drop_path_residual(x, branch, p, count="bernoulli")
    raise ValueError(f"unknown provider {impl!r}")


class ViTBlock(nn.Module):
    """Pre-norm ViT block; ``impl`` picks the drop path of both residual branches."""

    def __init__(self, p: float, dim: int = 768, heads: int = 12, mlp_ratio: int = 4):
        super().__init__()
        self.p = p
        self.impl = "eager"
        self.attn_branch = nn.Sequential(nn.LayerNorm(dim), _Attention(dim, heads))
        self.mlp_branch = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                        nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        x = _residual(self.impl, x, self.attn_branch, self.p)
        return _residual(self.impl, x, self.mlp_branch, self.p)


class Bottleneck(nn.Module):
    """ResNet-50 stage-1 bottleneck (identity shortcut); ``impl`` picks the drop path."""

    def __init__(self, p: float, channels: int = 256, width: int = 64):
        super().__init__()
        self.p = p
        self.impl = "eager"
        self.branch = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, 1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return torch.relu(_residual(self.impl, x, self.branch, self.p))


def _make(block: str, p: float, batch: int, device: str, seed: int = 0):
    torch.manual_seed(seed)
    if block == "vit_b_block":
        m = ViTBlock(p)
        shape = (batch, 197, 768)
    elif block == "resnet_bottleneck":
        m = Bottleneck(p)
        shape = (batch, 256, 56, 56)
    else:
        raise ValueError(f"unknown block {block!r}")
    m = m.to(device).train()
    x = torch.randn(shape, device=device)
    g = torch.randn(shape, device=device)
    if len(shape) == 4:
        m = m.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
        g = g.to(memory_format=torch.channels_last)
    return m, x.requires_grad_(), g


_SIZE = {"vit_b_block": "vit-b-block", "resnet_bottleneck": "resnet50-bottleneck"}


def _step_fn(m, x, g, device: str, amp_dtype):
    amp = torch.autocast(device, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    def step():
        with amp:
            out = m(x)
        out.backward(g.to(out.dtype))
        m.zero_grad(set_to_none=True)
        x.grad = None

    return step


def _graphed_step(m, x, g, amp_dtype, impl: str, warmup: int = 3):
    """A callable replaying one captured CUDA graph of ``impl``'s forward+backward step.

    The pattern of PyTorch's whole-network capture: warm-up steps on a side
    stream (cuBLAS/cuDNN workspaces, lazy init), gradients set to None, then
    one captured forward and backward.  Replays rewrite the same gradient
    tensors and draw fresh random numbers (the generator's offsets advance
    per replay).  Returns ``(replay, keep)``: hold ``keep`` (the graph and the
    gradient it reads) as long as ``replay`` is used.
    """
    def amp():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=amp_dtype, cache_enabled=False)

    m.impl = impl
    with torch.no_grad(), amp():
        gg = g.to(m(x).dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            with amp():
                out = m(x)
            out.backward(gg)
            m.zero_grad(set_to_none=True)
            x.grad = None
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        with amp():
            out = m(x)
        out.backward(gg)
    torch.cuda.synchronize()
    return graph.replay, (graph, gg)  # the graph reads gg: keep it alive with the graph


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


_NOT_OPS = ("autograd", "profiler", "torch", "cuda", "triton")  # namespaces of profiler ranges, not operators


def _is_op(name: str) -> bool:
    """``aten::add``, ``sdkernels::scaled_residual_add``: an operator call (not an autograd or profiler range)."""
    ns, sep, rest = name.partition("::")
    return bool(sep) and bool(rest) and "::" not in rest and " " not in name and ns not in _NOT_OPS


def _is_host_sync(name: str) -> bool:
    """A CUDA runtime call that blocks the host until the device catches up.

    ``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` / ``cudaEventSynchronize``
    (``.item()``, ``nonzero``, blocking copies end in one of these) and the
    synchronous ``cudaMemcpy``.
    """
    return name.startswith("cuda") and (name.endswith("Synchronize") or name == "cudaMemcpy")


# The range around the profiled steps: syncs outside it (the closing syncs of _profile and of the
# profiler itself, which synchronises on exit while still recording) are not the steps' own.
_STEPS = "sdkernels_blocks_steps"


def _count_events(events, steps: int, device: str) -> Dict[str, Optional[float]]:
    """The per-step counts of :func:`_profile` from profiler events (``FunctionEvent``-like objects)."""
    from torch.autograd import DeviceType

    events = list(events)
    steps_ranges = [e.time_range for e in events if e.name == _STEPS and e.device_type != DeviceType.CUDA]
    ops = launches = syncs = 0
    busy_us = 0.0
    kernel_us: Dict[str, float] = {}
    op_us: Dict[str, float] = {}
    for e in events:
        if e.device_type == DeviceType.CUDA:
            if not getattr(e, "is_user_annotation", False):
                us = e.time_range.elapsed_us()
                launches += 1
                busy_us += us
                kernel_us[e.name] = kernel_us.get(e.name, 0.0) + us
        elif _is_op(e.name):
            parent = e.cpu_parent
            while parent is not None and not _is_op(parent.name):
                parent = parent.cpu_parent
            if parent is None:
                ops += 1
                op_us[e.name] = op_us.get(e.name, 0.0) + e.time_range.elapsed_us()
        elif _is_host_sync(e.name):
            t = e.time_range
            if any(o.start <= t.start and t.end <= o.end for o in steps_ranges):
                syncs += 1
    gpu = device == "cuda" and launches > 0
    return {
        "ops_per_step": ops / steps,
        "launches_per_step": launches / steps if gpu else None,
        "gpu_busy_ms": busy_us / steps / 1e3 if gpu else None,
        "syncs_per_step": syncs / steps if gpu else None,
        "top_ops": _top(op_us, steps),
        "top_kernels": _top(kernel_us, steps) if gpu else None,
    }


def _top(us_by_name: Dict[str, float], steps: int, n: int = TOP_N) -> str:
    """``"name 12.3us; ..."``: the ``n`` largest per-step times, names cut to 60 characters."""
    top = sorted(us_by_name.items(), key=lambda kv: (-kv[1], kv[0]))[:n]  # ties by name
    return "; ".join(f"{name[:60]} {us / steps:.1f}us" for name, us in top)


def _profile(run_one, device: str, steps: int = PROFILE_STEPS) -> Dict[str, Optional[float]]:
    """Per-step counts from ``torch.profiler`` over ``steps`` calls of ``run_one`` (see the module docstring).

    An operator call counts when no operator encloses it (a custom op's inner
    ATen calls are its own work); GPU events are kernels, memsets and copies
    (user annotations left out); host syncs are the CUDA runtime's blocking
    calls (:func:`_is_host_sync`) made during the steps (not the closing
    syncs).  No GPU event at all gives None, not zero, for the CUDA counts.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    _sync(device)
    with profile(activities=acts) as prof:
        with record_function(_STEPS):
            for _ in range(steps):
                run_one()
        _sync(device)
    return _count_events(prof.events(), steps, device)


def _dtype_label(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "fp32+bf16", torch.float16: "fp32+fp16"}[dtype]


def run_block_suite(device: str, dtype: torch.dtype = torch.float32, batch: Optional[int] = None,
                    ps: Sequence[float] = DEFAULT_PS, repeats: Optional[int] = None, progress=None,
                    providers: Sequence[str] = BLOCK_PROVIDERS, blocks: Sequence[str] = BLOCKS,
                    timer: str = "wall", deadline: Optional[float] = None, profile: bool = False) -> List[Dict]:
    """Rows (suite "blocks", mode "fwd+bwd") for each block, p and provider.

    ``dtype``: fp32 (everything fp32) or bf16/fp16 (autocast, fp32 weights and
    stream).  ``batch`` defaults to :func:`default_batch`; ``repeats`` (timed
    samples per provider, median reported) to 5 on CPU and 20 on GPU;
    ``progress`` is anything with ``update(n)`` (a tqdm bar) or None;
    ``timer`` is "wall" (eager steps) or "graph" (CUDA-graph replays, CUDA
    only; see the module docstring); ``deadline`` (a ``time.monotonic()``
    value) stops starting new (block, p) groups once passed: their rows come
    back with status "skipped"; ``profile`` (wall timer only) adds the
    per-step counts of :func:`_profile` to every timed row.
    """
    from sdkernels.functional import kept_count

    batch = batch or default_batch(device)
    repeats = repeats or (20 if device == "cuda" else 5)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    if timer not in TIMERS:
        raise ValueError(f"timer must be one of {TIMERS}, got {timer!r}")
    if profile and timer != "wall":
        raise ValueError("profile runs with timer 'wall' only (a replayed graph has no host side to profile)")
    if timer == "graph":
        unsafe = [prov for prov in providers if prov not in GRAPH_SAFE]
        if unsafe:
            raise ValueError(f"timer 'graph' runs only graph-safe providers {GRAPH_SAFE}, got {unsafe}")
        if device != "cuda" or not torch.cuda.is_available():
            raise ValueError("timer 'graph' needs CUDA (CUDA graphs)")
    amp_dtype = None if dtype == torch.float32 else dtype
    margin = GOAL_MARGIN.get(device, 0.15)
    rows: List[Dict] = []
    for block in blocks:
        for p in ps:
            k = kept_count(batch, p)
            m, x, g = _make(block, p, batch, device)
            base = {"suite": "blocks", "op": block, "size": _SIZE[block], "shape": "x".join(map(str, x.shape)),
                    "dtype": _dtype_label(dtype), "mode": "fwd+bwd", "p": p, "batch": batch,
                    "requires_grad": True, "sample_dim": 0,
                    "layout": "channels_last" if x.dim() == 4 else "contiguous"}
            my = [dict(base, provider=prov, status="ok", time_ms=None) for prov in providers]
            rows += my
            if deadline is not None and time.monotonic() > deadline:
                for r in my:
                    r.update(status="skipped", note="time limit reached")
                del m, x, g
                continue
            graphs = []
            try:
                if timer == "graph":
                    # One graph per provider, all alive so the replays interleave like the eager steps;
                    # a provider whose capture fails is reported as an error, the others still run.
                    run = {}
                    for r in my:
                        try:
                            replay, keep = _graphed_step(m, x, g, amp_dtype, r["provider"])
                        except Exception as e:  # noqa: BLE001
                            r.update(status="error", note=f"capture: {type(e).__name__}: {str(e)[:200]}")
                            torch.cuda.synchronize()
                            continue
                        graphs.append(keep)
                        run[r["provider"]] = (lambda rp=replay: [rp() for _ in range(REPLAYS_PER_SAMPLE)])
                    my = [r for r in my if r["provider"] in run]
                    per_call, label = REPLAYS_PER_SAMPLE, (f"cuda_graph_replay x{REPLAYS_PER_SAMPLE}, "
                                                           "wall_clock_sync (providers interleaved)")
                else:
                    step = _step_fn(m, x, g, device, amp_dtype)

                    def _eager(prov, step=step):
                        m.impl = prov
                        step()

                    run = {r["provider"]: (lambda prov=r["provider"]: _eager(prov)) for r in my}
                    per_call, label = 1, "wall_clock_sync (providers interleaved)"
                for r in my:  # warm-up: two samples each
                    run[r["provider"]]()
                    run[r["provider"]]()
                _sync(device)
                times: Dict[str, List[float]] = {r["provider"]: [] for r in my}
                for _ in range(repeats):
                    for r in my:
                        _sync(device)
                        t0 = time.perf_counter()
                        run[r["provider"]]()
                        _sync(device)
                        times[r["provider"]].append((time.perf_counter() - t0) / per_call)
                for r in my:
                    ts = sorted(times[r["provider"]])
                    iqr = (ts[-1] - ts[0]) if len(ts) < 4 else (statistics.quantiles(ts, n=4)[2] -
                                                                statistics.quantiles(ts, n=4)[0])
                    r.update(time_ms=statistics.median(ts) * 1e3, n_samples=len(ts), iqr_ms=iqr * 1e3,
                             timer=label)
                    if profile:
                        try:
                            r.update(_profile(run[r["provider"]], device))
                        except Exception as e:  # noqa: BLE001 - the timing stands without the counts
                            r["note"] = f"profile: {type(e).__name__}: {str(e)[:160]}"
                    if r["provider"] == "skip":
                        r.update(kept=k, realised_p=1.0 - k / batch,
                                 note=f"count=fixed keeps k={k} of {batch} (realised drop {1 - k / batch:.3f})")
                    elif r["provider"] == "skip-bernoulli":
                        r.update(note="count=bernoulli: timm's distribution, one host sync per call")
                eager = next((r["time_ms"] for r in my if r["provider"] == "eager"), None)
                for r in my:
                    if eager:
                        r["speedup_vs_eager"] = eager / r["time_ms"]
                        r["time_ratio_vs_eager"] = r["time_ms"] / eager
                    r["goal_ratio"] = (1.0 - p) + margin if r["provider"].startswith("skip") else None
            except Exception as e:  # one broken provider must not lose the suite
                for r in my:
                    if r["time_ms"] is None:
                        r.update(status="error", note=f"{type(e).__name__}: {str(e)[:200]}")
            del m, x, g, graphs
            if progress is not None:
                progress.update(len(my))
    return rows


def _timer_name(row: Dict) -> str:
    """"graph" for rows timed by CUDA-graph replay, else "wall" (rows written before the timer option too)."""
    return "graph" if str(row.get("timer") or "").startswith("cuda_graph") else "wall"


def plot_blocks(rows: Sequence[Dict], path: str, margin: float) -> Optional[str]:
    """Speed-up against eager vs p, one line per block and provider, with the goal 1 / ((1 - p) + margin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r.get("status") == "ok" and r.get("speedup_vs_eager") and r["provider"] != "eager"]
    if not sel:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    groups: Dict[tuple, List[Dict]] = {}
    for r in sel:
        groups.setdefault((r["op"], r["provider"], _timer_name(r)), []).append(r)
    styles = {"vit_b_block": "-", "resnet_bottleneck": "--"}
    several = len({k[2] for k in groups}) > 1
    for (op, prov, tm), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["p"])
        ax.plot([r["p"] for r in rs], [r["speedup_vs_eager"] for r in rs], styles.get(op, "-"),
                marker="s" if tm == "graph" else "o", label=f"{op} {prov}" + (f" ({tm})" if several else ""))
    ps = sorted({r["p"] for r in sel})
    grid = [min(ps) + (max(ps) - min(ps)) * i / 50 for i in range(51)]
    ax.plot(grid, [1 / ((1 - p) + margin) for p in grid], color="k", lw=1, ls=":",
            label=f"goal for skip: 1 / ((1 - p) + {margin})")
    ax.plot(grid, [1 / (1 - p) for p in grid], color="grey", lw=0.8, ls="-.", label="ideal skip: 1 / (1 - p)")
    ax.axhline(1.0, color="k", lw=0.6)
    r0 = sel[0]
    ax.set_title(f"block fwd+bwd speed-up vs eager drop path: {r0.get('device_name') or r0.get('device')}, "
                 f"{r0['dtype']}, batch {r0['batch']}"
                 + (f", {r0['threads']} thread(s)" if r0.get("threads") else ""), fontsize=9)
    ax.set_xlabel("drop probability p")
    ax.set_ylabel("time(eager) / time(provider)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def main(argv=None) -> int:
    import argparse
    import os
    import sys

    from . import report

    ap = argparse.ArgumentParser(prog="python -m benchmarks.blocks", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                    help="default: bf16 (autocast) on CUDA, fp32 on CPU")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--ps", default=",".join(map(str, DEFAULT_PS)))
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--providers", default=",".join(BLOCK_PROVIDERS), help=f"among {', '.join(ALL_PROVIDERS)}")
    ap.add_argument("--blocks", default=",".join(BLOCKS))
    ap.add_argument("--timer", default="wall",
                    help="wall (eager steps), graph (CUDA-graph replays, CUDA only) or both: wall,graph")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds: start no new (block, p) group after this (its rows are marked skipped)")
    ap.add_argument("--profile", action="store_true",
                    help="wall-timer rows: also count operator calls, CUDA launches, GPU busy time and host syncs "
                         "per step (torch.profiler)")
    ap.add_argument("--no-plot", action="store_true", help="write the CSV only (the PNG can be drawn from it later)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (torch.set_num_threads); 1 is steadier on a CPU shared with other jobs")
    ap.add_argument("--name", default=None, help="output file stem (default blocks-<device>-<date>)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        a.dtype or ("bf16" if a.device == "cuda" else "fp32")]
    ps = [float(v) for v in a.ps.split(",") if v.strip()]
    env = report.environment(a.device)
    t0 = time.monotonic()
    timers = [t.strip() for t in a.timer.split(",") if t.strip()]
    bad = [t for t in timers if t not in TIMERS]
    if bad or not timers:
        ap.error(f"--timer: unknown {bad or a.timer!r}; valid: {', '.join(TIMERS)}")
    if "graph" in timers and (a.device != "cuda" or not torch.cuda.is_available()):
        ap.error("--timer graph needs a CUDA device (it times CUDA-graph replays)")
    provs = [s.strip() for s in a.providers.split(",") if s.strip()]
    deadline = None if a.time_limit is None else time.monotonic() + a.time_limit
    rows = []
    for t in timers:
        rows += run_block_suite(a.device, dt, a.batch, ps, a.repeats,
                                providers=[pv for pv in provs if t != "graph" or pv in GRAPH_SAFE],
                                blocks=[s.strip() for s in a.blocks.split(",") if s.strip()], timer=t,
                                deadline=deadline, profile=a.profile and t == "wall")
    report.finish_rows(rows, env)
    tag = os.path.basename(report.output_stem(env, os.path.join(a.out, "__no_such_dir__"), None))  # e.g. cpu-2026-11-27
    stem = report.output_stem(env, a.out, a.name or f"blocks-{tag}")
    report.write_csv(rows, stem + ".csv")
    margin = GOAL_MARGIN.get(a.device, 0.15)
    png = None if a.no_plot else plot_blocks(rows, stem + ".png", margin)
    print(f"{'block':20s} {'p':>4s} {'provider':15s} {'timer':6s} {'ms':>9s} {'t/eager':>8s} {'goal':>6s}"
          + ("  [ops/step launches/step gpu-busy-ms syncs/step]" if a.profile else ""))
    for r in rows:
        tm = _timer_name(r)
        if r["status"] != "ok":
            print(f"{r['op']:20s} {r['p']:4.2f} {r['provider']:15s} {tm:6s} {r['status']}: {r.get('note')}")
            continue
        goal = r.get("goal_ratio")
        ratio = r.get("time_ratio_vs_eager")
        verdict = "" if goal is None or ratio is None else ("ok" if ratio <= goal else "MISS")
        prof = ""
        if r.get("ops_per_step") is not None:
            prof = (f"  [{r['ops_per_step']:.0f} {_num(r.get('launches_per_step'), '.0f')} "
                    f"{_num(r.get('gpu_busy_ms'), '.2f')} {_num(r.get('syncs_per_step'), '.0f')}]")
        print(f"{r['op']:20s} {r['p']:4.2f} {r['provider']:15s} {tm:6s} {r['time_ms']:9.2f} "
              f"{ratio if ratio is not None else float('nan'):8.3f} {goal if goal else float('nan'):6.3f} {verdict}{prof}")
    print(f"wrote {stem}.csv" + (f" and {png}" if png else "") + f" in {time.monotonic() - t0:.0f} s")
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        print(f"{len(errors)} row(s) failed", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
