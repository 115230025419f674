"""One backend table class for every op family, and the one rule that picks a backend.

Each op family (:mod:`sdkernels.ops`) owns a :class:`BackendTable` naming the ops a backend must
bring (``("residual_add", "sample_scale")`` for the core family, ``("add_norm",)`` for add + norm
...).  Backends register themselves into it: ``"reference"`` (pure PyTorch, any device), ``"cpu"``
and ``"cuda"`` (the C++ ops, when built) and ``"triton"`` (when Triton imports).  Every public
function picks its entry with :meth:`BackendTable.pick`, which applies :func:`auto_order`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

import torch

from .checks import BACKEND_NAMES

__all__ = ["Backend", "BackendTable", "TRITON_MIN_NUMEL", "auto_order", "TABLES"]

# ---- auto rule between "cuda" and "triton" ------------------------------------------------------------
# Measured on an NVIDIA H200 (torch 2.11, triton 3.6, 2026-11-27, one run of `python -m benchmarks`,
# benchmarks/results/cuda-h200-2026-11-27.csv): the C++ CUDA op is as fast or faster in 48 of the 50 rows
# timed for both.  Forward bf16 256x197x1024, p=0.1: cuda 84 us (94% of copy bandwidth) vs triton 96 us;
# 2048x8x4096 seq-first: 107 vs 234 us; backward 256x197x1024: 56 vs 329 us; host-bound 8x16x64: 28 vs
# 145 us.  The two exceptions are forwards at 256x197x1024 with fp32 outputs (fp32 p=0.5: 129 (triton)
# vs 134 us; fp32+bf16 autocast p=0.1: 125 vs 140 us); the C++ op wins every fwd+bwd row.  So "auto"
# takes the C++ op whenever it is built and Triton only where it is not (TRITON_MIN_NUMEL = inf).
# Those Triton times were host-bound; its eager fast path (sdkernels.ops.launch) has since halved that
# host time: re-measure on a GPU before changing this rule.
TRITON_MIN_NUMEL = float("inf")


def auto_order(device_type: str, numel: int = 0) -> Tuple[str, ...]:
    """The backends "auto" tries for a tensor on ``device_type``, best first; "reference" always ends it."""
    if device_type == "cpu":
        return ("cpu", "reference")
    if device_type == "cuda":
        return ("triton", "cuda", "reference") if numel >= TRITON_MIN_NUMEL else ("cuda", "triton", "reference")
    return ("reference",)


@dataclass(frozen=True)
class Backend:
    """One way to run an op family: its ops by role (``be.ops["residual_add"]``, or ``be.residual_add``),
    the device types it takes (None: any) and whether it is usable in this process."""

    name: str
    devices: Optional[FrozenSet[str]]
    available: bool
    ops: Mapping[str, Callable] = field(default_factory=dict)

    def __getattr__(self, role: str):
        if role.startswith("__"):
            raise AttributeError(role)
        try:
            return object.__getattribute__(self, "ops")[role]
        except KeyError:
            raise AttributeError(f"backend {self.name!r} has no {role!r} op") from None

    def runs_on(self, device_type: str) -> bool:
        return self.available and (self.devices is None or device_type in self.devices)


class BackendTable:
    """The backends of one op family, by name (one of :data:`sdkernels.checks.BACKEND_NAMES` but "auto")."""

    def __init__(self, family: str, roles: Iterable[str]):
        self.family = family
        self.roles = tuple(roles)
        self._entries: Dict[str, Backend] = {}
        self._auto: Dict[tuple, Backend] = {}  # "auto"'s choice per (device type, above TRITON_MIN_NUMEL)
        self._listeners: List[Callable[[], None]] = []
        TABLES[family] = self

    def register(self, name: str, devices, available: bool, **ops: Callable) -> Backend:
        """Add (or replace) backend ``name`` with its ops (every role of the table)."""
        if name not in BACKEND_NAMES or name == "auto":
            raise ValueError(f"unknown backend name {name!r}")
        missing = [r for r in self.roles if r not in ops]
        if missing:
            raise ValueError(f"backend {name!r} of {self.family!r} lacks the ops {missing}")
        be = Backend(name, None if devices is None else frozenset(devices), bool(available), dict(ops))
        self._entries[name] = be
        self._auto.clear()
        for fn in self._listeners:
            fn()
        return be

    def on_change(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` now and whenever a backend is registered (callers cache what "auto" picks)."""
        self._listeners.append(fn)
        fn()

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> Backend:
        return self._entries[name]

    def get(self, name: str) -> Optional[Backend]:
        return self._entries.get(name)

    def available(self) -> Tuple[str, ...]:
        """Names of the usable backends, in :data:`~sdkernels.checks.BACKEND_NAMES` order."""
        return tuple(n for n in BACKEND_NAMES if n in self._entries and self._entries[n].available)

    def auto(self, device_type: str, numel: int = 0) -> Backend:
        """The backend "auto" takes for a tensor on ``device_type``: the compiled kernel, else the reference."""
        key = (device_type, numel >= TRITON_MIN_NUMEL)
        be = self._auto.get(key)
        if be is None:
            be = self._entries["reference"]
            for name in auto_order(device_type, numel):
                cand = self._entries.get(name)
                if cand is not None and cand.runs_on(device_type):
                    be = cand
                    break
            self._auto[key] = be
        return be

    def pick(self, backend: str, device: torch.device, numel: int = 0) -> Backend:
        """The backend that runs ``backend`` ("auto" or a name) on ``device``; ValueError if it cannot."""
        if backend == "auto":
            return self.auto(device.type, numel)
        be = self._entries.get(backend)
        if be is None or not be.available:
            raise ValueError(f"backend {backend!r} is not available here for {self.family}; available backends: "
                             f"{self.available()}")
        if be.devices is not None and device.type not in be.devices:
            raise ValueError(f"backend {backend!r} runs on {sorted(be.devices)} tensors, got a tensor on {device}")
        return be


#: Every family's table, by family name ("core", "layer_scale", "add_norm", "skip").
TABLES: Dict[str, BackendTable] = {}
