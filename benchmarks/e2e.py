"""End-to-end row: one ViT-B/16 block's training step, eager DropPath against sdkernels.

The block is pre-norm: ``x = x + drop_path(attn(norm1(x)))`` then
``x = x + drop_path(mlp(norm2(x)))`` (dim 768, 12 heads, MLP 3072, 197
tokens), so each step runs two drop paths.  A step is forward, backward from a
fixed random output gradient, and ``zero_grad(set_to_none=True)``; no
optimizer.  Providers (one block, so the weights are identical):

- ``eager``: timm-style ``x + DropPath(branch)`` (``sdkernels.reference.timm_drop_path``);
- ``sdk-droppath``: ``x + sdkernels.nn.DropPath(p)(branch)`` (drop-in, add not fused);
- ``sdk-fused``: ``sdkernels.nn.DropPathAdd(p)(x, branch)``.

On CUDA the block runs under bf16 autocast (fp32 residual stream, bf16 branch
outputs: the mixed-dtype case), batch 64.  On CPU it runs in fp32 at a small
batch (default 4) to keep the default suite short.  The providers' steps are
interleaved (A B C A B C ...) so slow drift of a shared machine hits all alike;
each step is timed with a synchronised wall clock and the median is reported.
Drop path is a sliver of a block's time, so expect ratios near 1.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .timing import peak_memory

__all__ = ["E2E_PROVIDERS", "ViTBlock", "default_batch", "run_e2e", "measure_memory"]

E2E_PROVIDERS = ("eager", "sdk-droppath", "sdk-fused")


class _EagerDropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        from sdkernels.reference import timm_drop_path

        return timm_drop_path(x, self.p, self.training)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """A pre-norm ViT block whose two drop paths are chosen by ``impl`` (see the module docstring)."""

    def __init__(self, p: float, dim: int = 768, heads: int = 12, mlp_ratio: int = 4):
        super().__init__()
        import sdkernels

        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.impl = "eager"
        self.dp = nn.ModuleDict({
            "eager1": _EagerDropPath(p), "eager2": _EagerDropPath(p),
            "sdk1": sdkernels.nn.DropPath(p), "sdk2": sdkernels.nn.DropPath(p),
        })
        self.dpa1 = sdkernels.nn.DropPathAdd(p)
        self.dpa2 = sdkernels.nn.DropPathAdd(p)

    def forward(self, x):
        if self.impl == "sdk-fused":
            x = self.dpa1(x, self.attn(self.norm1(x)))
            return self.dpa2(x, self.mlp(self.norm2(x)))
        pre = "eager" if self.impl == "eager" else "sdk"
        x = x + self.dp[pre + "1"](self.attn(self.norm1(x)))
        return x + self.dp[pre + "2"](self.mlp(self.norm2(x)))


def default_batch(device: str, quick: bool = False) -> int:
    if quick:
        return 2 if device == "cpu" else 8
    return 64 if device == "cuda" else 4


def _step_fn(block: ViTBlock, x: torch.Tensor, g: torch.Tensor, device: str):
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def step():
        with amp:
            out = block(x)
        out.backward(g)
        grads = x.grad
        block.zero_grad(set_to_none=True)
        x.grad = None
        return grads

    return step


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


#: block name -> (dim, heads); ViT-Ti is the --quick smoke test's stand-in.
BLOCKS = {"vit-b-block": (768, 12), "vit-ti-block": (192, 3)}


def _setup(device: str, batch: int, p: float, size: str = "vit-b-block", seed: int = 0):
    dim, heads = BLOCKS[size]
    torch.manual_seed(seed)
    block = ViTBlock(p, dim=dim, heads=heads).to(device).train()
    x = torch.randn(batch, 197, dim, device=device, requires_grad=True)
    g = torch.randn(batch, 197, dim, device=device)
    return block, x, g


def run_e2e(device: str, ps: Sequence[float], batch: int, repeats: int, providers: Sequence[str] = E2E_PROVIDERS,
            size: str = "vit-b-block", progress=None, deadline: Optional[float] = None, rows: Optional[List[Dict]] = None) -> List[Dict]:
    """Rows (suite "e2e", op "vit_block", mode "step") for each p and provider, appended to ``rows``."""
    from .providers import sdkernels_or_none

    dtype = "fp32+bf16" if device == "cuda" else "fp32"
    rows = [] if rows is None else rows
    for p in ps:
        base = {"suite": "e2e", "op": "vit_block", "size": size, "shape": f"{batch}x197x{BLOCKS[size][0]}",
                "dtype": dtype, "mode": "step", "p": p, "batch": batch, "requires_grad": True, "sample_dim": 0,
                "layout": "contiguous"}
        my = [dict(base, provider=prov, status="ok", time_ms=None) for prov in providers]
        rows += my
        if deadline is not None and time.monotonic() > deadline:
            for r in my:
                r.update(status="skipped", note="time limit reached (--time-limit)")
            if progress is not None:
                progress.update(len(my))
            continue
        if sdkernels_or_none() is None:
            for r in my:
                if r["provider"] != "eager":
                    r.update(status="skipped", note="sdkernels does not import")
        try:
            block, x, g = _setup(device, batch, p, size)
            step = _step_fn(block, x, g, device)
            live = [r for r in my if r["status"] == "ok"]
            for r in live:  # warm-up, one step each
                block.impl = r["provider"]
                step()
            _sync(device)
            times: Dict[str, List[float]] = {r["provider"]: [] for r in live}
            for _ in range(max(1, repeats)):
                for r in live:
                    block.impl = r["provider"]
                    _sync(device)
                    t0 = time.perf_counter()
                    step()
                    _sync(device)
                    times[r["provider"]].append(time.perf_counter() - t0)
            for r in live:
                ts = sorted(times[r["provider"]])
                r.update(time_ms=statistics.median(ts) * 1e3, n_samples=len(ts),
                         iqr_ms=(ts[-1] - ts[0]) * 1e3 if len(ts) < 4 else
                         (statistics.quantiles(ts, n=4)[2] - statistics.quantiles(ts, n=4)[0]) * 1e3,
                         timer="wall_clock_sync (providers interleaved)")
        except Exception as e:
            for r in my:
                if r["status"] == "ok":
                    r.update(status="error", note=f"{type(e).__name__}: {str(e)[:200]}")
        if progress is not None:
            progress.update(len(my))
    return rows


def measure_memory(rows: List[Dict], device: str, progress=None, deadline: Optional[float] = None,
                   tries: int = 3) -> None:
    """Peak memory of one training step for every ok e2e row (in place)."""
    for r in rows:
        if r["suite"] != "e2e":
            continue
        if progress is not None:
            progress.update(1)
        if r["status"] != "ok" or (deadline is not None and time.monotonic() > deadline):
            continue
        try:
            block, x, g = _setup(device, r["batch"], r["p"], r["size"])
            block.impl = r["provider"]
            mem, how = peak_memory(_step_fn(block, x, g, device), device, tries=tries)
            r["peak_mem_mb"], r["mem_method"] = mem / 1e6, how
        except Exception as e:
            r["mem_method"] = f"n/a ({type(e).__name__})"
