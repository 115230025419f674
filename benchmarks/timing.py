"""Timers and the peak-memory probe.

Three timers, chosen by device and size:

- CPU: ``torch.utils.benchmark.Timer`` with ``num_threads =
  torch.get_num_threads()``; each sample is a block of calls long enough
  (about 20 ms) that the timer's own overhead vanishes; median over samples
  (``repeats``, fewer for slow calls: see :func:`time_cpu`).
- GPU, bandwidth-bound sizes: CUDA events around each single call, with the
  L2 cache flushed (a 256 MB buffer zeroed) before each call, as
  ``triton.testing.do_bench`` does; median over calls.
- GPU, host-bound sizes (8x16x64): a synchronised wall-clock loop of many
  back-to-back calls, because a flush between calls hides the launch
  overhead that dominates there; median over blocks.
- GPU, the device's work alone (:func:`time_cuda_graph`): the call captured
  once into a CUDA graph, each replay timed by CUDA events with the L2
  flushed before it.  No host overhead (Python, dispatch, launches) is left
  in it: with the other GPU timers a call whose host side outlasts its
  kernels is timed by its host side, which says nothing about the kernels'
  bandwidth.  Both are reported: the first is what a user sees, this one
  what the kernels do.

The peak-memory probe measures the memory a forward+backward allocates above
what is live before it: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the
process's resident-set high-water mark (``VmHWM``, reset through
``/proc/self/clear_refs``), with glibc told to serve every allocation of 16 KiB
or more by ``mmap`` so that freed tensors leave the resident set at once (see
:func:`cpu_memory_probe`).  The CPU figure is page-granular and counts
everything the process touches, so it is an estimate, labelled as such.
"""
from __future__ import annotations

import ctypes
import math
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

__all__ = ["Timing", "time_fn", "time_cpu", "time_cuda_events", "time_cuda_graph", "time_wallclock", "time_interleaved",
           "peak_memory", "cpu_memory_probe"]


@dataclass
class Timing:
    """Per-call seconds: median and inter-quartile range over ``n`` samples."""

    median: float
    iqr: float
    n: int
    method: str


def _summary(per_call: List[float], method: str) -> Timing:
    per_call = sorted(per_call)
    med = statistics.median(per_call)
    if len(per_call) >= 4:
        q = statistics.quantiles(per_call, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = per_call[-1] - per_call[0]
    return Timing(med, iqr, len(per_call), method)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_cpu(fn: Callable[[], object], repeats: int, block_s: float = 0.02, warmup: int = 1,
             threads: Optional[int] = None, budget_s: float = 0.6) -> Timing:
    """Median per-call time of ``fn`` on CPU with ``torch.utils.benchmark``.

    ``repeats`` samples, each a block of calls lasting at least ``block_s``;
    for slow calls the count drops so the samples take about ``budget_s``,
    but never below 3 (or ``repeats``, if smaller).  The calibration's last
    block counts as a sample when it is already a full block.
    """
    from torch.utils import benchmark as tbench

    threads = torch.get_num_threads() if threads is None else threads
    for _ in range(warmup):
        fn()
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    # Calibrate the block: the smallest power of 4 calls taking >= block_s.
    number = 1
    while True:
        m = timer.timeit(number)
        t = m.median * number
        if t >= block_s or number >= 4 ** 8:
            break
        number *= 4 if t * 4 < block_s else 2
    n = max(1, repeats)
    n = max(min(n, 3), min(n, int(budget_s / max(t, 1e-9))))
    samples = [m.median] + [timer.timeit(number).median for _ in range(n - 1)]
    return _summary(samples, "torch.utils.benchmark")


_FLUSH_BUF: Optional[torch.Tensor] = None


def _flush_buffer() -> torch.Tensor:
    global _FLUSH_BUF
    if _FLUSH_BUF is None:
        # Larger than any L2 so far (H100: 50 MB, H200: 60 MB, B200: 126 MB).
        _FLUSH_BUF = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    return _FLUSH_BUF


def time_cuda_events(fn: Callable[[], object], repeats: int, warmup: int = 5, flush: bool = True) -> Timing:
    """Median per-call time on GPU from CUDA events, L2 flushed before every call."""
    buf = _flush_buffer() if flush else None
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    n = max(1, repeats)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        if buf is not None:
            buf.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    per_call = [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]
    return _summary(per_call, "cuda_events+l2_flush")


def _graph_events_supported() -> bool:
    """torch.cuda.Event(external=True): events recorded as nodes of a captured graph (torch >= 2.8)."""
    import inspect

    try:
        return "external" in inspect.signature(torch.cuda.Event.__new__).parameters
    except (TypeError, ValueError):
        return False


def time_cuda_graph(make_fn: Callable[[], Callable[[], object]], repeats: int, warmup: int = 2,
                    flush: bool = True) -> Timing:
    """Median GPU time of one call: ``make_fn()``'s call captured in a CUDA graph, replays event-timed.

    ``make_fn`` builds the call (and whatever it needs recorded first, e.g.
    the forward whose backward is timed) on a side stream, where it is then
    warmed up and captured: autograd runs a backward on its forward's stream,
    so a forward recorded on another stream could not be captured.  Each
    replay is preceded by an L2 flush (outside the graph).  Random draws inside
    the call (``bernoulli_``) advance per replay, as in eager mode.

    The timing events are recorded inside the graph (``Event(external=True)``)
    where torch supports it: a replay of a graph that draws random numbers
    first fills the generator's seed and offset (two tiny kernels, outside the
    graph), which the in-graph events leave out.  Older torch: events around
    each replay, that prologue included (the method name says which).
    Raises what capture raises (e.g. for a call that syncs with the host),
    with the current stream restored.
    """
    buf = _flush_buffer() if flush else None
    prev = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(prev)
    with torch.cuda.stream(side):
        fn = make_fn()
        for _ in range(warmup):
            fn()
    side.synchronize()
    inner = _graph_events_supported()
    if inner:
        g_start = torch.cuda.Event(enable_timing=True, external=True)
        g_end = torch.cuda.Event(enable_timing=True, external=True)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=side):
            if inner:
                g_start.record()
            out = fn()
            if inner:
                g_end.record()
    finally:
        # torch.cuda.graph does not leave its stream when ending the capture raises.
        torch.cuda.set_stream(prev)
    torch.cuda.synchronize()
    n = max(1, repeats)
    graph.replay()  # the first replay uploads the graph
    torch.cuda.synchronize()
    if inner:
        try:
            g_start.elapsed_time(g_end)
        except RuntimeError:  # events in graphs unsupported by this driver / runtime
            inner = False
    if inner:
        per_call: List[float] = []
        for _ in range(n):
            if buf is not None:
                buf.zero_()
            graph.replay()
            g_end.synchronize()
            per_call.append(g_start.elapsed_time(g_end) * 1e-3)
        timing = _summary(per_call, "cuda_graph_inner_events+l2_flush")
    else:
        t = time_cuda_events(graph.replay, n, warmup=0, flush=flush)
        timing = Timing(t.median, t.iqr, t.n, "cuda_graph_replay+l2_flush")
    del out, graph, fn
    return timing


def time_wallclock(fn: Callable[[], object], repeats: int, device: str, block_s: float = 0.005,
                   warmup: int = 5) -> Timing:
    """Median per-call time of back-to-back calls, synchronised once per block (host-bound sizes)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        _sync(device)
        t = time.perf_counter() - t0
        if t >= block_s or number >= 4 ** 8:
            break
        number *= 4 if t * 4 < block_s else 2
    samples = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) / number)
    return _summary(samples, "wall_clock_sync")


def time_fn(fn: Callable[[], object], device: str, repeats: int, host_bound: bool = False,
            warmed: bool = False) -> Timing:
    """The timer the module docstring describes for this device and size.

    ``warmed``: ``fn`` has just run once, so the CPU timer skips its warm-up call.
    """
    if device == "cuda":
        if host_bound:
            return time_wallclock(fn, repeats, device)
        return time_cuda_events(fn, repeats)
    return time_cpu(fn, repeats, warmup=0 if warmed else 1)


# ---------------------------------------------------------------- memory ----

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_CPU_PROBE_READY: Optional[bool] = None


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(key + r":\s+(\d+) kB", f.read())
    if m is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(m.group(1)) * 1024


def cpu_memory_probe() -> bool:
    """Make the CPU peak-memory probe usable; False where it cannot work.

    Pins glibc's mmap threshold to 16 KiB and its trim threshold to 64 KiB
    (``mallopt``), and trims the heap, so every tensor of 16 KiB or more is its
    own mapping that leaves the resident set when freed; glibc otherwise
    recycles freed chunks of up to 32 MB (and keeps up to 64 MB of free heap
    top) where a new tensor does not raise the resident set.  This changes
    allocation costs, so call it only after all timings are done.
    """
    global _CPU_PROBE_READY
    if _CPU_PROBE_READY is not None:
        return _CPU_PROBE_READY
    ok = False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 16 * 1024)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024))
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_bytes("VmHWM")
    except (OSError, AttributeError):
        ok = False
    _CPU_PROBE_READY = ok
    return ok


def peak_memory(fn: Callable[[], object], device: str, tries: int = 3) -> Tuple[float, str]:
    """Bytes allocated above the live set during ``fn()`` (its result held), and the method's name.

    Returns ``(nan, reason)`` when no probe works.  ``fn`` is run once
    before measuring, so one-off allocations (compiled kernels, pools) are
    not counted.
    """
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        best = math.inf
        for _ in range(tries):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = fn()
            torch.cuda.synchronize()
            best = min(best, torch.cuda.max_memory_allocated() - base)
            del out
        return float(best), "cuda_max_memory_allocated"
    if not cpu_memory_probe():
        return math.nan, "n/a (no /proc/self/clear_refs or mallopt)"
    best = math.inf
    libc = ctypes.CDLL("libc.so.6")
    for _ in range(tries):
        # Free heap chunks touched earlier are still resident and would serve new
        # tensors unseen: give their pages back first.
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_bytes("VmRSS")
        out = fn()
        best = min(best, _status_bytes("VmHWM") - base)
        del out
    return float(max(best, 0)), "cpu_rss_hwm_estimate"


def time_interleaved(steps: "dict", repeats: int, device: str, warmup: int = 2,
                     deadline: Optional[float] = None) -> "dict":
    """Time whole training steps of several providers, interleaved (A B C A B C ...).

    ``steps`` maps a provider name to a callable running one step.  Each is run ``warmup`` times first
    (torch.compile compiles there), then ``repeats`` rounds in which every provider's step is timed once
    by a synchronised wall clock, so slow drift of a shared machine hits all alike.  Returns
    ``{name: Timing}`` (median, inter-quartile range).  ``deadline`` (a ``time.monotonic()`` value)
    ends the rounds early, keeping at least one.
    """
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times = {name: [] for name in steps}
    for i in range(max(1, repeats)):
        if i and deadline is not None and time.monotonic() > deadline:
            break
        for name, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: _summary(ts, "wall_clock_sync (providers interleaved)") for name, ts in times.items()}
