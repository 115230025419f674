"""Providers (the implementations compared) and the bytes each one moves.

Providers of an op (``drop_path_add``: ``residual + drop_path(branch)``;
``drop_path``: ``drop_path(x)``):

- ``eager_timm``: timm-style eager code, ``residual + timm_drop_path(branch)``
  (``sdkernels.reference.timm_drop_path``).
- ``eager_tv``: torchvision-style ``stochastic_depth(branch, p, "row")`` + add
  (``sdkernels.reference.torchvision_stochastic_depth``).
- ``compile``: ``torch.compile`` of the ``eager_timm`` code.
- ``sdk-<backend>``: ``sdkernels.drop_path_add(..., backend=<backend>)`` for
  every backend sdkernels knows ("reference", "cpu", "cuda", "triton", and
  any later one in ``sdkernels.available_backends()``).  ``sdk-auto`` (not in
  the default list) is what ``backend="auto"`` picks.

For a sample_dim other than 0 the eager code runs on
``branch.movedim(sample_dim, 0)`` and moves it back: views, no copy.

Baselines (time the memory floor, measured in the same run):

- ``copy``: ``dst.copy_(src)`` into a preallocated tensor: the device's
  copy bandwidth, the denominator of every "fraction of copy bandwidth".
- ``clone``: ``src.clone()``: a copy that allocates its output, like the
  out-of-place ops do (on CPU, above glibc's 32 MB mmap line, every fresh
  output pays page faults; compare against this one there).
- ``add``: one ``torch.add(residual, branch)``: the floor of the fused
  forward at p = 0 (3 tensors).
- ``scale``: one ``grad * scale_view`` (a per-sample broadcast): the floor of
  the backward at p = 0, and of drop_path's forward.

Bytes moved (N elements; e_r, e_b, e_o bytes per element of residual,
branch and output; q = 1 - p, the expected kept fraction):

=========================  =============================  ===================================
provider                   forward                        backward
=========================  =============================  ===================================
sdk-cpu/cuda/triton/auto   N (e_r + e_o + q e_b)          N (q e_o + e_b) [+ N (e_o + e_r) when
                           (dropped rows not read)        e_r != e_o: grad_residual cast]
eager_timm, eager_tv       N (e_b + e_b + e_r + e_b +     N (e_o + e_b + e_b + e_b) when e_b !=
                           e_o): mul reads and writes,    e_o (cast for the bf16 input), else
                           add reads two and writes one   N (2 e_b): one mul
compile (inductor fuses)   N (e_r + e_b + e_o)            N (e_o + e_b)
copy / clone               2 N e_r                        -
add                        N (e_r + e_b + e_o)            -
scale                      -                              2 N e_o
sdk-reference              not counted (a spec, many passes: GB/s left blank)
=========================  =============================  ===================================

LayerScale (op ``drop_path_add_ls``, issue 13: ``residual + drop_path(gamma *
branch)``, gamma of C << N values in the output dtype, its traffic left out;
e_l = bytes of promote(branch, gamma), the dtype of ``branch * gamma``):

=========================  =============================  ===================================
provider                   forward                        backward (all three gradients)
=========================  =============================  ===================================
sdk-cpu/cuda/triton/auto   N (e_r + e_o + q e_b)          N (q e_o + q e_b + e_b): grad and the
                                                          branch read on kept rows only, one
                                                          pass [+ N (e_o + e_r) cast as above]
eager_timm                 N (e_b + e_l) ls = b * gamma,  N (e_o + e_l) grad_ls = grad * mask,
                           N 2 e_l ls * mask, N (e_r +    N (e_l + e_b) grad_b = grad_ls *
                           e_l + e_o) the add: 7 tensors  gamma, N (2 e_l + e_b) grad_ls * b,
                                                          N e_l its sum: 8 tensors
compile                    N (e_r + e_b + e_o)            N (e_o + 2 e_b): grad and branch
                                                          read, grad_branch written (the
                                                          gamma reduction fused in)
=========================  =============================  ===================================

On CPU, PyTorch's TensorIterator casts a mixed-dtype input into a temporary
before the kernel, so eager's add of an fp32 residual and a bf16 product moves
N (e_b + e_o) more; that is counted on CPU (``add`` too).  ``drop_path`` alone:
fused N (q e_x + e_x) both ways, eager and compile 2 N e_x.  Rows of the
fwd+bwd mode count the sum.  The kept fraction is its expectation 1 - p; one
draw of n samples varies by about sqrt(n p (1 - p)) samples.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "EAGER",
    "COMPILE",
    "BASELINES",
    "SDK_BACKENDS",
    "all_providers",
    "default_providers",
    "unavailable_reason",
    "bytes_model",
    "moved_bytes",
    "make_forward",
    "sdkernels_or_none",
]

EAGER = ("eager_timm", "eager_tv")
COMPILE = "compile"
BASELINES = ("copy", "clone", "add", "scale")
SDK_BACKENDS = ("reference", "cpu", "cuda", "triton")
#: baseline -> the mode whose floor it is ("copy" rows form their own group)
BASELINE_MODE = {"copy": "copy", "clone": "copy", "add": "fwd", "scale": "bwd"}


def sdkernels_or_none():
    """``import sdkernels``, or None when it does not import (its providers are then skipped)."""
    try:
        import sdkernels  # noqa: F401

        return sdkernels
    except Exception:  # pragma: no cover - only on a broken install
        return None


def _sdk_backend_names() -> Tuple[str, ...]:
    names = list(SDK_BACKENDS)
    sdk = sdkernels_or_none()
    if sdk is not None:
        for b in sdk.available_backends():
            if b not in names:
                names.append(b)
    return tuple(names)


def all_providers() -> Tuple[str, ...]:
    """Every provider name the op suite understands."""
    return EAGER + (COMPILE,) + tuple(f"sdk-{b}" for b in _sdk_backend_names()) + ("sdk-auto",) + BASELINES


def default_providers() -> Tuple[str, ...]:
    """All but ``sdk-auto`` (which duplicates one of the sdk backends)."""
    return tuple(p for p in all_providers() if p != "sdk-auto")


def _backend_devices(name: str):
    sdk = sdkernels_or_none()
    table = getattr(getattr(sdk, "functional", None), "_BACKENDS", {}) if sdk is not None else {}
    be = table.get(name)
    if be is not None:
        return be.devices
    return {"cpu": {"cpu"}, "cuda": {"cuda"}, "triton": {"cuda"}}.get(name)


def unavailable_reason(provider: str, device: str, op: Optional[str] = None) -> Optional[str]:
    """None when ``provider`` can run ``op`` on ``device``, else why not (the row is then 'skipped')."""
    if op == "drop_path_add_ls" and provider == "eager_tv":
        return "LayerScale: eager_timm (LayerScale, drop_path, add) is the eager baseline"
    if provider in EAGER or provider in BASELINES:
        return None
    if provider == COMPILE:
        try:
            import torch._dynamo as dynamo

            if not dynamo.is_dynamo_supported():
                return "torch.compile is not supported on this Python"
        except Exception as e:  # pragma: no cover
            return f"torch.compile unavailable: {e}"
        return None
    if provider.startswith("sdk-"):
        sdk = sdkernels_or_none()
        if sdk is None:
            return "sdkernels does not import"
        b = provider[4:]
        if b == "auto":
            return None
        avail = sdk.available_backends()
        if b not in avail:
            return f"backend {b!r} not in sdkernels.available_backends() {avail}"
        devs = _backend_devices(b)
        if devs is not None and device not in devs:
            return f"backend {b!r} runs on {sorted(devs)} tensors, not {device}"
        return None
    return f"unknown provider {provider!r}"


# ----------------------------------------------------------------- bytes ----

def bytes_model(provider: str) -> str:
    """The name of the traffic model a provider's bytes are counted by."""
    if provider in EAGER:
        return "eager"
    if provider == COMPILE:
        return "compiled"
    if provider == "sdk-reference":
        return "n/a"
    if provider.startswith("sdk-"):
        return "fused"
    return provider


def _es(dt: torch.dtype) -> int:
    return torch.empty((), dtype=dt).element_size()


def moved_bytes(provider: str, op: str, mode: str, numel: int, dtypes: Sequence[torch.dtype], p: Optional[float],
                device: str) -> float:
    """Bytes moved by one call (see the module docstring); NaN where not counted.

    ``dtypes`` is (residual, branch, out) for drop_path_add and (x, x, x) for
    drop_path.  ``mode`` is fwd, fwd-nograd, bwd or fwd+bwd (baselines: any).
    """
    if mode == "fwd+bwd":
        return (moved_bytes(provider, op, "fwd", numel, dtypes, p, device)
                + moved_bytes(provider, op, "bwd", numel, dtypes, p, device))
    fwd = mode in ("fwd", "fwd-nograd")
    er, eb, eo = (_es(d) for d in dtypes)
    n = float(numel)
    q = 1.0 - (p or 0.0)
    cpu_cast = device == "cpu"
    model = bytes_model(provider)
    if model in ("copy", "clone"):
        return 2 * n * er
    if model == "add":
        extra = n * (eb + eo) if (cpu_cast and er != eb) else 0.0
        return n * (er + eb + eo) + extra
    if model == "scale":
        return 2 * n * eo
    if model == "n/a":
        return float("nan")
    if op == "drop_path":
        ex = eb
        if model == "fused":
            return n * (q * ex + ex)
        return 2 * n * ex  # eager and compiled: one multiply
    if op == "drop_path_add_ls":
        return _ls_bytes(model, fwd, n, er, eb, eo, q, cpu_cast)
    # drop_path_add
    if model == "fused":
        if fwd:
            return n * (er + eo + q * eb)
        cast = n * (eo + er) if er != eo else 0.0
        return n * (q * eo + eb) + cast
    if model == "eager":
        if fwd:
            extra = n * (eb + eo) if (cpu_cast and eb != eo) else 0.0
            return n * (3 * eb + er + eo) + extra
        cast_r = n * (eo + er) if er != eo else 0.0
        if eb != eo:
            return n * (eo + eb + 2 * eb) + cast_r
        return n * 2 * eb + cast_r
    if model == "compiled":
        if fwd:
            return n * (er + eb + eo)
        cast_r = n * (eo + er) if er != eo else 0.0
        return n * (eo + eb) + cast_r
    raise ValueError(f"no bytes model for provider {provider!r}")


def _ls_bytes(model: str, fwd: bool, n: float, er: int, eb: int, eo: int, q: float, cpu_cast: bool) -> float:
    """Bytes of ``residual + drop_path(gamma * branch)`` (gamma in the output dtype; the module docstring's table)."""
    el = max(eb, eo)  # branch * gamma: promoted
    cast_r = n * (eo + er) if er != eo else 0.0
    if model == "fused":
        return n * (er + eo + q * eb) if fwd else n * (q * eo + q * eb + eb) + cast_r
    if model == "eager":
        if fwd:
            extra = n * (el + eo) if (cpu_cast and el != er) else 0.0
            return n * (eb + el) + 2 * n * el + n * (er + el + eo) + extra
        return n * (eo + el) + n * (el + eb) + n * (2 * el + eb) + n * el + cast_r
    if model == "compiled":
        return n * (er + eb + eo) if fwd else n * (eo + 2 * eb) + cast_r
    raise ValueError(f"no LayerScale bytes model for {model!r}")


# ------------------------------------------------------------- callables ----

def _to_front(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x if dim == 0 else x.movedim(dim, 0)


def _from_front(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x if dim == 0 else x.movedim(0, dim)


def eager_timm_add(residual, branch, p: float, sample_dim: int):
    """``residual + timm_drop_path(branch)``: the eager code, also what ``compile`` compiles."""
    from sdkernels.reference import timm_drop_path

    return residual + _from_front(timm_drop_path(_to_front(branch, sample_dim), p, True), sample_dim)


def eager_tv_add(residual, branch, p: float, sample_dim: int):
    """``residual + torchvision_stochastic_depth(branch, p, "row")``."""
    from sdkernels.reference import torchvision_stochastic_depth

    return residual + _from_front(torchvision_stochastic_depth(_to_front(branch, sample_dim), p, "row", True), sample_dim)


def eager_timm_dp(x, p: float, sample_dim: int):
    from sdkernels.reference import timm_drop_path

    return _from_front(timm_drop_path(_to_front(x, sample_dim), p, True), sample_dim)


def eager_tv_dp(x, p: float, sample_dim: int):
    from sdkernels.reference import torchvision_stochastic_depth

    return _from_front(torchvision_stochastic_depth(_to_front(x, sample_dim), p, "row", True), sample_dim)


@functools.lru_cache(maxsize=None)
def _compiled(op: str):
    import torch._dynamo

    cfg = torch._dynamo.config
    # One graph per (case, p) would hit the default limit of 8 recompiles.
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(cfg, knob):
            setattr(cfg, knob, max(getattr(cfg, knob), 256))
    try:
        # The bwd mode replays one graph (retain_graph=True), which donated buffers forbid.
        # They only let the compiled backward reuse its saved mask's memory: no traffic change.
        import torch._functorch.config as fconfig

        if hasattr(fconfig, "donated_buffer"):
            fconfig.donated_buffer = False
    except ImportError:  # pragma: no cover
        pass
    fn = {"drop_path_add": eager_timm_add, "drop_path": eager_timm_dp, "drop_path_add_ls": eager_timm_ls_add}[op]
    return torch.compile(fn, dynamic=False)


def eager_timm_ls_add(residual, branch, gamma, p: float, sample_dim: int, channel_dim: int):
    """``residual + timm_drop_path(branch * gamma)``: timm's LayerScale, drop path, add (and what ``compile`` compiles)."""
    from sdkernels.reference import timm_layer_scale_drop_path_add

    return timm_layer_scale_drop_path_add(residual, branch, gamma, p, channel_dim, sample_dim)


def make_forward(provider: str, op: str, p: float, sample_dim: int, channel_dim: int = -1) -> Callable:
    """The forward of a (non-baseline) provider: ``f(residual, branch)``, ``f(x)`` or (LayerScale) ``f(residual, branch, gamma)``."""
    sd = sample_dim
    if op == "drop_path_add_ls":
        cd = channel_dim
        if provider == "eager_timm":
            return lambda r, b, g: eager_timm_ls_add(r, b, g, p, sd, cd)
        if provider == COMPILE:
            cf = _compiled(op)
            return lambda r, b, g: cf(r, b, g, p, sd, cd)
        if provider.startswith("sdk-"):
            import sdkernels

            be = provider[4:]
            return lambda r, b, g: sdkernels.drop_path_add(r, b, p, sample_dim=sd, backend=be, layer_scale=g,
                                                           channel_dim=cd)
    elif op == "drop_path_add":
        if provider == "eager_timm":
            return lambda r, b: eager_timm_add(r, b, p, sd)
        if provider == "eager_tv":
            return lambda r, b: eager_tv_add(r, b, p, sd)
        if provider == COMPILE:
            cf = _compiled(op)
            return lambda r, b: cf(r, b, p, sd)
        if provider.startswith("sdk-"):
            import sdkernels

            be = provider[4:]
            return lambda r, b: sdkernels.drop_path_add(r, b, p, sample_dim=sd, backend=be)
    elif op == "drop_path":
        if provider == "eager_timm":
            return lambda x: eager_timm_dp(x, p, sd)
        if provider == "eager_tv":
            return lambda x: eager_tv_dp(x, p, sd)
        if provider == COMPILE:
            cf = _compiled(op)
            return lambda x: cf(x, p, sd)
        if provider.startswith("sdk-"):
            import sdkernels

            be = provider[4:]
            return lambda x: sdkernels.drop_path(x, p, sample_dim=sd, backend=be)
    raise ValueError(f"no forward for provider {provider!r} and op {op!r}")
