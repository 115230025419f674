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

LayerScale (op ``drop_path_add_ls``: ``residual + drop_path(gamma *
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
fwd+bwd mode count the sum.

The add + norm ops (``add_layernorm``, ``add_rmsnorm``: ``x = residual +
drop_path(branch)``, ``h = norm(x)``) have their own providers:
``eager_timm`` (timm-style drop path, the add, ``F.layer_norm`` / ``F.rms_norm``),
``compile`` (``torch.compile`` of it), ``sdk-<backend>``
(``sdkernels.drop_path_add_norm``), ``flash_attn`` (flash-attention's Triton
``layer_norm_fn`` with drop path as its ``rowscale``, prenorm) and ``liger``
(Liger-Kernel's fused add + RMSNorm, ``add_rmsnorm`` only, no drop path: the
add of the whole branch), the last two on CUDA where importable; baselines
``copy`` and ``clone``.  Bytes (e_x, e_h bytes per element of x and h; the
parameters' H elements are not counted):

=========================  =====================================  ======================================
provider                   forward                                backward (grads of x and h arriving)
=========================  =====================================  ======================================
sdk-*                      N (e_r + q e_b + e_x + e_h)            N (2 e_x + e_h + e_r + e_b): x, grad_h,
                           (dropped rows of the branch unread)    grad_x in, grad_residual, grad_branch out
eager_timm                 N (3 e_b + e_r + 2 e_x + e_h): mask    N (e_h + 6 e_x + e_b) [+ N (e_h + e_x):
                           multiply, add, norm                    CUDA's separate weight-gradient pass]
compile                    N (e_r + e_b + e_x + e_h) [+ N (e_r +  N (2 e_x + e_h + e_r + e_b)
                           e_b): CUDA rows > 1024 re-read]
flash_attn, liger          N (e_r + e_b + e_x + e_h)              N (2 e_x + e_h + e_r + e_b)
=========================  =====================================  ======================================  The kept fraction is its expectation 1 - p; one
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
    "EXTERNAL",
    "applies",
]

EAGER = ("eager_timm", "eager_tv")
COMPILE = "compile"
BASELINES = ("copy", "clone", "add", "scale")
#: Other libraries' fused add + norm (the add + norm ops only; CUDA; skipped where not installed).
EXTERNAL = ("flash_attn", "liger")
NORM_OPS = ("add_layernorm", "add_rmsnorm")
#: The eps of the add + norm rows (timm's ViT and EVA norms use 1e-6).
NORM_EPS = 1e-6
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
    return (EAGER + (COMPILE,) + tuple(f"sdk-{b}" for b in _sdk_backend_names()) + ("sdk-auto",) + BASELINES
            + EXTERNAL)


def applies(provider: str, op: str) -> bool:
    """Whether ``provider`` measures ``op`` at all (the op suite plans no row otherwise).

    The add + norm ops have no torchvision-style variant and no one-op floor (``add``,
    ``scale``); flash-attention's and Liger's kernels are add + norm kernels (Liger's
    RMSNorm only); LayerScale's eager baseline is timm's (LayerScale, drop_path, add).
    """
    if op in NORM_OPS:
        if provider in ("eager_tv", "add", "scale"):
            return False
        return provider != "liger" or op == "add_rmsnorm"
    if provider in EXTERNAL:
        return False
    if op == "drop_path_add_ls" and provider == "eager_tv":  # eager_timm (LayerScale, drop_path, add) is it
        return False
    return provider != "add" or op in ("drop_path_add", "drop_path_add_ls")


def default_providers() -> Tuple[str, ...]:
    """All but ``sdk-auto`` (which duplicates one of the sdk backends)."""
    return tuple(p for p in all_providers() if p != "sdk-auto")


def _backend_devices(name: str):
    sdk = sdkernels_or_none()
    table = getattr(getattr(sdk, "functional", None), "CORE", None) if sdk is not None else None
    be = table.get(name) if table is not None else None
    if be is not None:
        return be.devices
    return {"cpu": {"cpu"}, "cuda": {"cuda"}, "triton": {"cuda"}}.get(name)


_EXTERNAL_MODULES = {"flash_attn": "flash_attn.ops.triton.layer_norm",
                     "liger": "liger_kernel.transformers.fused_add_rms_norm"}


def unavailable_reason(provider: str, device: str) -> Optional[str]:
    """None when ``provider`` can run on ``device``, else why not (the row is then 'skipped')."""
    if provider in EAGER or provider in BASELINES:
        return None
    if provider in EXTERNAL:
        if device != "cuda":
            return f"{provider} runs on CUDA tensors only"
        import importlib

        try:
            importlib.import_module(_EXTERNAL_MODULES[provider])
        except Exception as e:  # noqa: BLE001 - not installed, or incompatible with this torch/triton
            return f"{_EXTERNAL_MODULES[provider]} does not import ({type(e).__name__}: {str(e)[:80]})"
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
    if provider in EXTERNAL:
        return "external"
    return provider


def _es(dt: torch.dtype) -> int:
    return torch.empty((), dtype=dt).element_size()


def moved_bytes(provider: str, op: str, mode: str, numel: int, dtypes: Sequence[torch.dtype], p: Optional[float],
                device: str, H: int = 0) -> float:
    """Bytes moved by one call (see the module docstring); NaN where not counted.

    ``dtypes`` is (residual, branch, out) for drop_path_add, (x, x, x) for
    drop_path and (residual, branch, x, h) for the add + norm ops.  ``mode`` is
    fwd, fwd-nograd, bwd or fwd+bwd (baselines: any).  ``H``: the add + norm
    rows' length (CUDA's compiled forward re-reads rows past 1024).
    """
    if mode == "fwd+bwd":
        return (moved_bytes(provider, op, "fwd", numel, dtypes, p, device, H)
                + moved_bytes(provider, op, "bwd", numel, dtypes, p, device, H))
    if op in NORM_OPS:
        return _norm_bytes(provider, mode in ("fwd", "fwd-nograd"), float(numel), dtypes, 1.0 - (p or 0.0), device, H)
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


def _norm_bytes(provider: str, fwd: bool, n: float, dtypes, q: float, device: str, H: int) -> float:
    """Bytes of the add + norm ops (the table in the module docstring)."""
    er, eb, ex, eh = (_es(d) for d in dtypes)
    model = bytes_model(provider)
    if model in ("copy", "clone"):
        return 2 * n * er
    if model == "n/a":
        return float("nan")
    if not fwd:
        if model == "eager":
            return n * (eh + 6 * ex + eb) + (n * (eh + ex) if device == "cuda" else 0.0)
        return n * (2 * ex + eh + er + eb)
    if model == "fused":
        return n * (er + q * eb + ex + eh)
    if model == "eager":
        return n * (3 * eb + er + 2 * ex + eh)
    if model == "compiled":
        return n * (er + eb + ex + eh) + (n * (er + eb) if device == "cuda" and H > 1024 else 0.0)
    if model == "external":
        return n * (er + eb + ex + eh)
    raise ValueError(f"no bytes model for provider {provider!r} and the add + norm ops")


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


def eager_add_norm(residual, branch, weight, bias, p: float, sample_dim: int, rms: bool):
    """``x = residual + timm_drop_path(branch)``, ``h = F.layer_norm(x)`` / ``F.rms_norm(x)``: the eager code
    of a pre-norm block (also what ``compile`` compiles for the add + norm ops)."""
    import torch.nn.functional as F

    x = eager_timm_add(residual, branch, p, sample_dim)
    H = x.shape[-1]
    h = F.rms_norm(x, (H,), weight, NORM_EPS) if rms else F.layer_norm(x, (H,), weight, bias, NORM_EPS)
    return x, h


def _keep_rowscale(branch, p: float, sample_dim: int):
    """flash-attention's drop path: a per-row scale in the branch's dtype (kept / (1 - p), or 0)."""
    n = branch.shape[sample_dim]
    keep = torch.empty(n, device=branch.device, dtype=torch.float32).bernoulli_(1.0 - p) / (1.0 - p)
    view = [1] * (branch.dim() - 1)
    view[sample_dim] = n
    return keep.to(branch.dtype).reshape(view).expand(branch.shape[:-1])


def flash_attn_add_norm(residual, branch, weight, bias, p: float, sample_dim: int, rms: bool):
    """flash-attention's ``layer_norm_fn`` (prenorm: returns the norm and the new residual), drop path as rowscale."""
    from flash_attn.ops.triton.layer_norm import layer_norm_fn

    rowscale = _keep_rowscale(branch, p, sample_dim) if p > 0 else None
    h, x = layer_norm_fn(branch, weight, bias, residual=residual, eps=NORM_EPS, rowscale=rowscale, prenorm=True,
                         residual_in_fp32=residual.dtype == torch.float32, is_rms_norm=rms)
    return x, h


@functools.lru_cache(maxsize=None)
def _liger_module(H: int, device: str, dtype: torch.dtype):
    from liger_kernel.transformers.fused_add_rms_norm import LigerFusedAddRMSNorm

    return LigerFusedAddRMSNorm(H, eps=NORM_EPS).to(device=device, dtype=dtype)


def liger_add_rms_norm(residual, branch, weight, bias, p: float, sample_dim: int, rms: bool):
    """Liger-Kernel's fused add + RMSNorm of the whole branch (it has no drop path; ``p`` is ignored)."""
    m = _liger_module(branch.shape[-1], str(branch.device), weight.dtype)
    m.weight = torch.nn.Parameter(weight) if not isinstance(weight, torch.nn.Parameter) else weight
    h, x = m(branch, residual)
    return x, h


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
    fn = {"drop_path_add": eager_timm_add, "drop_path": eager_timm_dp,
          "drop_path_add_ls": eager_timm_ls_add}.get(op, eager_add_norm)
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
    elif op in NORM_OPS:
        rms = op == "add_rmsnorm"
        if provider == "eager_timm":
            return lambda r, b, w, bias=None: eager_add_norm(r, b, w, bias, p, sd, rms)
        if provider == COMPILE:
            cf = _compiled(op)
            return lambda r, b, w, bias=None: cf(r, b, w, bias, p, sd, rms)
        if provider == "flash_attn":
            return lambda r, b, w, bias=None: flash_attn_add_norm(r, b, w, bias, p, sd, rms)
        if provider == "liger":
            return lambda r, b, w, bias=None: liger_add_rms_norm(r, b, w, bias, p, sd, rms)
        if provider.startswith("sdk-"):
            import sdkernels

            be, norm = provider[4:], ("rms" if rms else "layer")
            return lambda r, b, w, bias=None: sdkernels.drop_path_add_norm(r, b, p, w, bias, NORM_EPS, norm=norm,
                                                                           sample_dim=sd, backend=be)
    raise ValueError(f"no forward for provider {provider!r} and op {op!r}")
