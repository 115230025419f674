"""The op suite: every (case, p, provider, mode) of drop_path_add / drop_path, plus the baselines.

Modes (inputs are leaf tensors; "grad" means they require grad, as in training):

- ``fwd``: the forward with grad (autograd records the graph, as in training);
- ``fwd-nograd``: the forward in training mode on inputs not requiring grad
  (run by default on host-bound sizes, where autograd's overhead shows);
- ``bwd``: ``torch.autograd.grad(out, inputs, grad_out, retain_graph=True)`` on
  a graph recorded once: the backward alone, nothing accumulated into .grad;
- ``fwd+bwd``: the forward and ``torch.autograd.grad`` on its output.

Peak memory is measured for fwd+bwd, after all timings (see
:func:`benchmarks.timing.peak_memory`), by :func:`measure_memory`.

On CUDA each row is timed twice: as a user calls it (``time_ms``: CUDA events
with an L2 flush, or a wall-clock loop on host-bound sizes) and, with
``gpu_timer`` (:func:`benchmarks.timing.time_cuda_graph`), as a captured CUDA
graph (``gpu_ms``: the kernels alone).  Where the two differ the call is
host-bound, and only ``gpu_ms`` says what its kernels do.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import providers as P
from .report import error_note, join_notes
from .sizes import Case
from .timing import peak_memory, time_fn

__all__ = ["OpPlan", "plan_ops", "run_ops", "measure_memory"]


@dataclass
class OpPlan:
    """One measurement to make."""

    op: str
    case: Case
    provider: str
    mode: str
    p: Optional[float]


def _modes_for(case: Case, modes: Optional[Sequence[str]]) -> List[str]:
    if modes:
        return list(modes)
    ms = ["fwd", "bwd", "fwd+bwd"]
    if case.size.host_bound:
        ms.insert(1, "fwd-nograd")
    return ms


def plan_ops(ops: Sequence[str], cases, providers: Sequence[str], modes: Optional[Sequence[str]],
             ps: Sequence[float]) -> List[OpPlan]:
    """The measurements of the op suite, in run order (grouped by case so inputs are made once).

    ``cases`` and ``ps``: lists for every op, or dicts op -> list.  A provider that does not
    measure an op (:func:`benchmarks.providers.applies`) gets no row for it.
    """
    plans: List[OpPlan] = []
    for op in ops:
        for case in (cases[op] if isinstance(cases, dict) else cases):
            ms = _modes_for(case, modes)
            for prov in providers:
                if prov in P.BASELINES:
                    if not P.applies(prov, op):
                        continue
                    plans.append(OpPlan(op, case, prov, P.BASELINE_MODE[prov], None))
            for p in (ps[op] if isinstance(ps, dict) else ps):
                for prov in providers:
                    if prov in P.BASELINES or not P.applies(prov, op):
                        continue
                    for m in ms:
                        plans.append(OpPlan(op, case, prov, m, p))
    return plans


class _Inputs:
    """The tensors of one (op, case), made once on the device."""

    def __init__(self, op: str, case: Case, device: str, seed: int = 0):
        g = torch.Generator(device=device).manual_seed(seed)
        rd, bd, od = case.dtypes()
        if op == "drop_path":
            rd = od = bd
        self.dtypes = (rd, bd, od) if op not in P.NORM_OPS else (rd, bd, od, od)
        shape = case.size.shape

        def make(dt):
            t = torch.randn(shape, generator=g, dtype=torch.float32, device=device).to(dt)
            if case.size.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            return t

        self.op = op
        self.sample_dim = case.size.sample_dim
        self.channel_dim = case.size.channel_dim
        self.branch = make(bd)
        self.residual = make(rd) if op != "drop_path" else None
        # LayerScale: gamma in the output dtype (a bf16 model's bf16 gamma; fp32 with the fp32+bf16
        # case, as autocast leaves the parameter), values around 1
        self.gamma = None
        if op == "drop_path_add_ls":
            C = shape[self.channel_dim]
            self.gamma = (1.0 + 0.1 * torch.randn(C, generator=g, dtype=torch.float32, device=device)).to(od)
        self.grad = make(od)
        self.grads = (self.grad,)
        self.params: Tuple[torch.Tensor, ...] = ()
        if op in P.NORM_OPS:  # the norm's weight (and bias) in the residual's dtype; grads of x and h
            H = shape[-1]
            w = 1.0 + 0.1 * torch.randn(H, generator=g, dtype=torch.float32, device=device)
            bias = 0.1 * torch.randn(H, generator=g, dtype=torch.float32, device=device)
            self.params = (w.to(rd),) if op == "add_rmsnorm" else (w.to(rd), bias.to(rd))
            self.grads = (self.grad, make(od))
        self.numel = self.branch.numel()
        self.H = shape[-1]
        n = shape[self.sample_dim]
        view = [1] * len(shape)
        view[self.sample_dim] = n
        self.scale_view = torch.full(view, 1.0 / 0.9, dtype=od, device=device)
        self.dst = torch.empty_like(self.residual if self.residual is not None else self.branch)

    def leaves(self, grad: bool) -> Tuple[torch.Tensor, ...]:
        ts = (self.branch,) if self.op == "drop_path" else (self.residual, self.branch) + self.params
        if self.gamma is not None:
            ts += (self.gamma,)
        if not grad:
            return ts
        return tuple(t.detach().requires_grad_() for t in ts)


def _baseline_fn(prov: str, x: _Inputs) -> Callable[[], object]:
    src = x.residual if x.residual is not None else x.branch
    if prov == "copy":
        return lambda: x.dst.copy_(src)
    if prov == "clone":
        return lambda: src.clone()
    if prov == "add":
        return lambda: torch.add(x.residual, x.branch)
    if prov == "scale":
        return lambda: torch.mul(x.grad, x.scale_view)
    raise ValueError(prov)


def _outs(out) -> Tuple[torch.Tensor, ...]:
    """An op's outputs as a tuple (the add + norm ops return (x, h))."""
    return out if isinstance(out, tuple) else (out,)


def _mode_fn(fwd: Callable, mode: str, x: _Inputs) -> Callable[[], object]:
    if mode == "fwd-nograd":
        ins = x.leaves(False)
        return lambda: fwd(*ins)
    ins = x.leaves(True)
    if mode == "fwd":
        return lambda: fwd(*ins)
    if mode == "fwd+bwd":
        return lambda: torch.autograd.grad(_outs(fwd(*ins)), ins, x.grads)
    if mode == "bwd":
        out = _outs(fwd(*ins))
        return lambda: torch.autograd.grad(out, ins, x.grads, retain_graph=True)
    raise ValueError(f"unknown mode {mode!r}")


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _base_row(plan: OpPlan, x_dtypes=None) -> Dict:
    c = plan.case
    return {
        "suite": "ops", "op": plan.op, "size": c.size.name, "shape": c.size.shape_str, "dtype": c.dtype,
        "provider": plan.provider, "mode": plan.mode, "p": plan.p, "status": "ok", "time_ms": None,
        "sample_dim": c.size.sample_dim, "layout": c.size.layout,
        "requires_grad": plan.mode in ("fwd", "bwd", "fwd+bwd") and plan.provider not in P.BASELINES,
        "bytes_model": P.bytes_model(plan.provider),
    }


def run_ops(plans: Sequence[OpPlan], device: str, repeats: int, progress=None,
            deadline: Optional[float] = None, rows: Optional[List[Dict]] = None,
            gpu_timer: Optional[Callable] = None) -> List[Dict]:
    """Measure every plan; one row per plan (skipped and failed ones included), appended to ``rows``.

    Rows are appended as they are measured, so an interrupted run keeps them.
    ``gpu_timer(make_fn, repeats) -> Timing`` (:func:`benchmarks.timing.time_cuda_graph`
    on CUDA) adds ``gpu_ms`` to every row it can time; ``make_fn()`` builds the
    call afresh (a backward's forward recorded first).  A row it cannot time
    keeps its ``time_ms`` and says why in ``note``.
    """
    rows = [] if rows is None else rows
    inputs: Optional[_Inputs] = None
    key = None
    reasons: Dict[Tuple[str, str], Optional[str]] = {}
    for plan in plans:
        row = _base_row(plan)
        rows.append(row)
        if progress is not None:
            progress.set_postfix_str(f"{plan.case.name} {plan.provider} {plan.mode} p={plan.p}", refresh=False)
        if (plan.provider, plan.op) not in reasons:
            reasons[(plan.provider, plan.op)] = P.unavailable_reason(plan.provider, device)
        why = reasons[(plan.provider, plan.op)]
        if why is None and deadline is not None and time.monotonic() > deadline:
            why = "time limit reached (--time-limit)"
        if why is not None:
            row.update(status="skipped", note=why)
            if progress is not None:
                progress.update(1)
            continue
        if key != (plan.op, plan.case):
            inputs = None
            if device == "cuda":
                torch.cuda.empty_cache()
            inputs = _Inputs(plan.op, plan.case, device)
            key = (plan.op, plan.case)
        x = inputs
        t_start = time.perf_counter()
        row["tensor_mb"] = x.numel * torch.empty((), dtype=x.dtypes[2]).element_size() / 1e6
        row["bytes"] = P.moved_bytes(plan.provider, plan.op, plan.mode, x.numel, x.dtypes, plan.p, device, x.H)
        try:
            if plan.provider in P.BASELINES:
                fn = _baseline_fn(plan.provider, x)
            else:
                fwd = P.make_forward(plan.provider, plan.op, plan.p, x.sample_dim, x.channel_dim)
                t0 = time.perf_counter()
                fn = _mode_fn(fwd, plan.mode, x)
                fn()
                _sync(device)
                first = time.perf_counter() - t0
                if plan.provider == P.COMPILE and first > 0.5:
                    row["note"] = f"first call (compile) {first:.1f} s"
            t = time_fn(fn, device, repeats, host_bound=plan.case.size.host_bound,
                        warmed=plan.provider not in P.BASELINES)
            row.update(time_ms=t.median * 1e3, iqr_ms=t.iqr * 1e3, n_samples=t.n, timer=t.method)
        except Exception as e:  # a failing provider must not stop the suite
            row.update(status="error", note=error_note(e))
        finally:
            fn = None
        if gpu_timer is not None and row["status"] == "ok":
            _gpu_time(row, gpu_timer, plan, x, repeats, device)
        row["cost_s"] = time.perf_counter() - t_start
        if progress is not None:
            progress.update(1)
    return rows


def _gpu_time(row: Dict, gpu_timer: Callable, plan: OpPlan, x: _Inputs, repeats: int, device: str) -> None:
    """``row["gpu_ms"]`` from ``gpu_timer``, or the reason it failed appended to the row's note."""
    if plan.provider in P.BASELINES:
        def make():
            return _baseline_fn(plan.provider, x)
    else:
        fwd = P.make_forward(plan.provider, plan.op, plan.p, x.sample_dim, x.channel_dim)

        def make():
            return _mode_fn(fwd, plan.mode, x)
    try:
        t = gpu_timer(make, repeats)
        row["gpu_ms"] = t.median * 1e3
        if t.method.startswith("cuda_graph_replay"):  # events around the replay (older torch)
            row["note"] = join_notes(row.get("note"),
                                     "gpu_ms timed around each replay: includes a random graph's seed/offset prologue")
    except Exception as e:  # e.g. a provider that syncs with the host cannot be captured
        row["note"] = join_notes(row.get("note"), "gpu timer: " + error_note(e, 120))
        try:
            _sync(device)
        except Exception:  # noqa: BLE001 - the row already says what failed
            pass


def measure_memory(rows: List[Dict], cases: Sequence[Case], device: str, progress=None,
                   deadline: Optional[float] = None, tries: int = 3) -> None:
    """Peak memory of one fwd+bwd for every ok fwd+bwd row of the op suite (in place)."""
    by_name = {c.name: c for c in cases}
    x = None
    key = None
    for row in rows:
        if row["suite"] != "ops" or row["mode"] != "fwd+bwd" or row["provider"] in P.BASELINES:
            continue
        if progress is not None:
            progress.update(1)
        if row["status"] != "ok":
            continue
        if deadline is not None and time.monotonic() > deadline:
            row["mem_method"] = "n/a (time limit)"
            continue
        case = by_name.get(f"{row['size']}/{row['dtype']}")
        if case is None:
            continue
        if key != (row["op"], case):
            x = None
            x = _Inputs(row["op"], case, device)
            key = (row["op"], case)
        try:
            fwd = P.make_forward(row["provider"], row["op"], row["p"], x.sample_dim, x.channel_dim)
            mem, how = peak_memory(_mode_fn(fwd, "fwd+bwd", x), device, tries=tries)
            row["peak_mem_mb"] = mem / 1e6
            row["mem_method"] = how
        except Exception as e:
            row["mem_method"] = f"n/a ({type(e).__name__})"
