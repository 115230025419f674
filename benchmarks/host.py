"""The host suite: per-call host time of every public function and module against the eager code it replaces.

At 8x16x64 fp32 the kernels' own work is negligible, so a call's time is its host cost: Python,
argument checks, the draw, dispatch and allocation.  That is what a GPU step that is bound by
launches pays per drop path, so sdkernels must cost less host time than eager PyTorch there too.
CPU: one thread (``torch.set_num_threads(1)``), timed by that thread's CPU time
(``time.thread_time``): a call's host cost is the CPU time it takes, and unlike the wall clock it does
not grow when other processes share the cores.  CUDA: the same calls on the GPU, timed by the wall
clock with a synchronisation per block, so the GPU never waits on the host unseen.

Each row is a pair, eager against sdkernels, timed alternately (eager, sdkernels, eager, ...) with
``torch.utils.benchmark.Timer.blocked_autorange`` blocks; the median of each side's per-block medians is
reported and ``ratio = sdkernels / eager`` (lower is better), with the goal it must meet:

- forward paths at most 0.67x eager's host time, forward + backward at most 0.87x;
- a converted timm ViT block (dim 64, 16 tokens, batch 2) forward + backward no slower than the original
  (1.0x), still running the fused ops; ``drop_path_residual`` no slower than ``x + drop_path(fn(x))``.

``python -m benchmarks --suite host`` runs it; ``python -m benchmarks.host`` alone prints its table.
"""
from __future__ import annotations

import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["CASES", "run_host", "format_rows", "main"]

SHAPE = (8, 16, 64)
P = 0.1
FWD_GOAL, FWDBWD_GOAL, BLOCK_GOAL = 0.67, 0.87, 1.0
#: name, mode, goal; the builders below make (eager, sdkernels) callables for one device.
CASES: Tuple[Tuple[str, str, float], ...] = (
    ("drop_path_add", "fwd", FWD_GOAL),
    ("drop_path_add", "fwd+bwd", FWDBWD_GOAL),
    ("drop_path_add layer_scale", "fwd", FWD_GOAL),
    ("drop_path_add layer_scale", "fwd+bwd", FWDBWD_GOAL),
    ("drop_path", "fwd", FWD_GOAL),
    ("drop_path", "fwd+bwd", FWDBWD_GOAL),
    ("nn.DropPathAdd", "fwd", FWD_GOAL),
    ("nn.DropPathAdd", "fwd+bwd", FWDBWD_GOAL),
    ("compat.DropPath", "fwd", FWD_GOAL),
    ("compat.StochasticDepth", "fwd", FWD_GOAL),
    ("drop_path_add_norm", "fwd", FWD_GOAL),
    ("drop_path_add_norm", "fwd+bwd", FWDBWD_GOAL),
    ("drop_path_residual", "fwd+bwd", BLOCK_GOAL),
    ("convert ViT block", "fwd+bwd", BLOCK_GOAL),
)


def _timm():
    try:
        import timm.layers as tl
    except ImportError:
        return None
    return tl


def _builders(device: str):
    """{case name: make(mode) -> (eager_fn, sdk_fn) or None (a library missing)}."""
    import torch.nn.functional as F

    import sdkernels
    from sdkernels import compat, nn as snn

    tl = _timm()
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, grad=False):
        t = torch.randn(*shape, generator=gen).to(device)
        return t.requires_grad_(grad)

    def pair(eager, sdk, grads, shape=SHAPE):
        """Forward callables, or forward + backward ones (a fixed grad_out of ``shape``) when ``grads``."""
        if not grads:
            return eager, sdk
        g = rand(*shape)

        def bwd(fn):
            return lambda: fn().backward(g)
        return bwd(eager), bwd(sdk)

    def drop_path_add(mode):
        if tl is None:
            return None
        grads = mode == "fwd+bwd"
        x, f = rand(*SHAPE, grad=grads), rand(*SHAPE, grad=grads)
        return pair(lambda: x + tl.drop_path(f, P, True), lambda: sdkernels.drop_path_add(x, f, P), grads)

    def drop_path_add_ls(mode):
        if tl is None:
            return None
        grads = mode == "fwd+bwd"
        x, f, gamma = rand(*SHAPE, grad=grads), rand(*SHAPE, grad=grads), rand(SHAPE[-1], grad=grads)
        return pair(lambda: x + tl.drop_path(f * gamma, P, True),
                    lambda: sdkernels.drop_path_add(x, f, P, layer_scale=gamma), grads)

    def drop_path(mode):
        if tl is None:
            return None
        grads = mode == "fwd+bwd"
        f = rand(*SHAPE, grad=grads)
        return pair(lambda: tl.drop_path(f, P, True), lambda: sdkernels.drop_path(f, P), grads)

    def module_add(mode):
        if tl is None:
            return None
        grads = mode == "fwd+bwd"
        x, f = rand(*SHAPE, grad=grads), rand(*SHAPE, grad=grads)
        e, s = tl.DropPath(P).to(device), snn.DropPathAdd(P).to(device)
        return pair(lambda: x + e(f), lambda: s(x, f), grads)

    def compat_drop_path(mode):
        if tl is None:
            return None
        f = rand(*SHAPE)
        e, s = tl.DropPath(P), compat.DropPath(P)
        return (lambda: e(f)), (lambda: s(f))

    def compat_sd(mode):
        try:
            from torchvision.ops import StochasticDepth
        except Exception:  # noqa: BLE001 - torchvision missing or mismatched
            return None
        f = rand(*SHAPE)
        e, s = StochasticDepth(P, "row"), compat.StochasticDepth(P, "row")
        return (lambda: e(f)), (lambda: s(f))

    def add_norm(mode):
        if tl is None:
            return None
        grads = mode == "fwd+bwd"
        x, f = rand(*SHAPE, grad=grads), rand(*SHAPE, grad=grads)
        w, b = rand(SHAPE[-1], grad=grads), rand(SHAPE[-1], grad=grads)

        def eager():
            y = x + tl.drop_path(f, P, True)
            return y, F.layer_norm(y, (SHAPE[-1],), w, b, 1e-5)

        def sdk():
            return sdkernels.drop_path_add_norm(x, f, P, w, b, 1e-5)

        if not grads:
            return eager, sdk
        g = rand(*SHAPE)
        return (lambda: torch.autograd.backward(eager(), (g, g))), (lambda: torch.autograd.backward(sdk(), (g, g)))

    def residual(mode):
        if tl is None:
            return None
        fn = torch.nn.Linear(SHAPE[-1], SHAPE[-1]).to(device)
        x = rand(*SHAPE, grad=True)
        return pair(lambda: x + tl.drop_path(fn(x), P, True),
                    lambda: sdkernels.drop_path_residual(x, fn, P, count="bernoulli"), True)

    def vit_block(mode):
        try:
            from timm.models.vision_transformer import Block
        except ImportError:
            return None
        import copy

        torch.manual_seed(0)
        eager = Block(64, 4, drop_path=P).to(device).train()
        conv = sdkernels.convert(copy.deepcopy(eager))
        x = rand(2, 16, 64, grad=True)
        return pair(lambda: eager(x), lambda: conv(x), True, (2, 16, 64))

    return {
        "drop_path_add": drop_path_add, "drop_path_add layer_scale": drop_path_add_ls, "drop_path": drop_path,
        "nn.DropPathAdd": module_add, "compat.DropPath": compat_drop_path, "compat.StochasticDepth": compat_sd,
        "drop_path_add_norm": add_norm, "drop_path_residual": residual, "convert ViT block": vit_block,
    }


def _paired_medians(eager: Callable, sdk: Callable, rounds: int, block_s: float, timer) -> Tuple[float, float]:
    """Median (seconds per call) of each side over ``rounds`` alternating ``blocked_autorange`` blocks."""
    from torch.utils.benchmark import Timer

    te = Timer("fn()", globals={"fn": eager}, timer=timer)
    ts = Timer("fn()", globals={"fn": sdk}, timer=timer)
    e_meds, s_meds = [], []
    for _ in range(rounds):
        e_meds.append(te.blocked_autorange(min_run_time=block_s).median)
        s_meds.append(ts.blocked_autorange(min_run_time=block_s).median)
    return statistics.median(e_meds), statistics.median(s_meds)


def run_host(device: str = "cpu", rounds: int = 7, block_s: float = 0.05, cases: Optional[Sequence[str]] = None,
             progress=None) -> List[Dict]:
    """Rows (suite "host") for every case: provider "eager" and "sdkernels", ``time_ms`` per call, the
    sdkernels row carrying ``ratio`` (sdkernels / eager) in ``note`` with its goal."""
    import time

    threads = torch.get_num_threads()
    timer = time.thread_time if device == "cpu" else time.perf_counter
    if device == "cpu":
        torch.set_num_threads(1)
    rows: List[Dict] = []
    try:
        builders = _builders(device)
        for name, mode, goal in CASES:
            if cases and name not in cases:
                continue
            base = {"suite": "host", "op": name, "size": "host", "shape": "x".join(map(str, SHAPE)), "dtype": "fp32",
                    "mode": mode, "p": P, "requires_grad": mode != "fwd", "timer": "blocked_autorange, " + ("thread CPU time" if device == "cpu" else "wall clock")}
            made = builders[name](mode)
            if made is None:
                rows += [dict(base, provider=pv, status="skipped", time_ms=None, note="timm/torchvision not installed")
                         for pv in ("eager", "sdkernels")]
                continue
            eager, sdk = made
            for _ in range(20):  # warm-up: caches, lazy initialisation
                eager()
                sdk()
            e, s = _paired_medians(eager, sdk, rounds, block_s, timer)
            ratio = s / e
            verdict = "ok" if ratio <= goal else "MISS"
            rows.append(dict(base, provider="eager", status="ok", time_ms=e * 1e3))
            rows.append(dict(base, provider="sdkernels", status="ok", time_ms=s * 1e3,
                             note=f"ratio {ratio:.3f} (goal <= {goal}) {verdict}"))
            if progress is not None:
                progress.update(1)
    finally:
        torch.set_num_threads(threads)
    return rows


def format_rows(rows: Sequence[Dict]) -> str:
    """The suite's table: eager and sdkernels microseconds per call, their ratio and the goal's verdict."""
    lines = [f"{'host cost per call':28s} {'mode':8s} {'eager us':>9s} {'sdk us':>9s}  ratio (goal)"]
    by = {}
    for r in rows:
        if r["suite"] == "host":
            by.setdefault((r["op"], r["mode"]), {})[r["provider"]] = r
    for (op, mode), d in by.items():
        e, s = d.get("eager"), d.get("sdkernels")
        if not e or not s or e["status"] != "ok" or s["status"] != "ok":
            lines.append(f"{op:28s} {mode:8s} skipped ({(s or e or {}).get('note')})")
            continue
        lines.append(f"{op:28s} {mode:8s} {e['time_ms'] * 1e3:9.1f} {s['time_ms'] * 1e3:9.1f}  {s['note']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m benchmarks.host", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cases", default=None, help="comma list of case names (default: all)")
    a = ap.parse_args(argv)
    rows = run_host(a.device, a.rounds, cases=a.cases.split(",") if a.cases else None)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
