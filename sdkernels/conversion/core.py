"""The machinery of :func:`sdkernels.convert`: block patterns, drop-path rates, residual sites.

A *pattern* says how one block class of timm or torchvision meets its drop path
and its residual add, and gives a replacement ``forward`` that does the same with
sdkernels' fused op (or the skip path).  The family files of this package
(``vit.py``, ``convnext.py`` ...) each register the patterns of one model family;
nothing here knows a model.

Rules every pattern follows (so that a converted model is exact):

* The replacement forward reads the block's own drop-path modules (rate,
  ``scale_by_keep``, mode, train flag) at every call: a drop-rate schedule that
  changes ``drop_prob`` during training is followed.
* When no site of the block is active (eval mode, or every rate 0) it calls the
  class's original ``forward``: bitwise the original.
* Active sites call :func:`residual_site`: the branch is computed where the
  original computes it, then ``sdkernels.drop_path_add`` draws (the original's draw
  order), so under one seed the same samples are kept.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from .. import _fx, checks, functional, nn as sdk_nn
from ..functional import drop_path_add_norm, drop_path_residual

__all__ = ["Pattern", "Settings", "Rate", "register", "pattern_for", "rate_of", "active_draw", "residual_site",
           "has_batchnorm", "run_sequence", "norm_of", "residual_norm_site", "is_drop_path_module",
           "looks_like_drop_path", "is_hf_drop_path", "has_forward_hooks"]


@dataclass(frozen=True)
class Settings:
    """What ``convert`` was asked for, as one block sees it (``skip``: this block may skip)."""

    skip: bool
    count: str
    backend: str
    fuse_norm: bool = True


@dataclass(frozen=True)
class Rate:
    """A drop-path module as the original forward would use it."""

    p: float
    scale_by_keep: bool
    mode: str
    training: bool
    draw: str = "timm"  # "timm" (timm, torchvision, sdkernels) or "hf" (Hugging Face transformers' drop paths)

    @property
    def active(self) -> bool:
        return self.training and self.p > 0.0


@dataclass(frozen=True)
class Pattern:
    """How one block class meets drop path and its residual add.

    * ``cls``: the exact class (``Block``, ``Bottleneck``, ``MBConv`` exist in several files);
    * ``forward``: ``forward(block, settings, *args, **kwargs)``, the replacement (a module-level
      function: it is pickled by name with a converted model);
    * ``params``: the parameter names of ``cls.forward`` the replacement was written for;
    * ``drop_paths``: the attribute names holding the block's drop-path modules;
    * ``check``: ``check(block) -> reason or None``: why this instance cannot be patched;
    * ``no_skip``: ``no_skip(block) -> reason or None``: why its branches must see every sample;
    * ``fuses_norm``: the replacement fuses the first add with ``norm2`` (``convert(fuse_norm=True)``).

    The generic rewrite fuses every block's adds; a pattern is used only where it does more: the skip
    path (``convert(skip=True)``) or the add + norm fusion.
    """

    cls: type
    forward: Callable
    params: Tuple[str, ...]
    drop_paths: Tuple[str, ...]
    check: Optional[Callable[[nn.Module], Optional[str]]] = None
    no_skip: Optional[Callable[[nn.Module], Optional[str]]] = None
    fuses_norm: bool = False

    @property
    def name(self) -> str:
        return qualname(self.cls)

    def signature_mismatch(self) -> Optional[str]:
        """Why the installed class's ``forward`` is not the one this pattern was written for (None: it is)."""
        got = tuple(inspect.signature(self.cls.forward).parameters)
        if got != self.params:
            return (f"{self.name}.forward takes ({', '.join(got)}), the pattern was written for "
                    f"({', '.join(self.params)})")
        return None


PATTERNS: Dict[type, Pattern] = {}


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register(pattern: Pattern) -> Pattern:
    """Add a block pattern (keyed by its exact class; a later one replaces an earlier one)."""
    if not isinstance(pattern, Pattern):
        raise TypeError(f"register takes a Pattern, got {type(pattern).__name__}")
    PATTERNS[pattern.cls] = pattern
    return pattern


def pattern_for(module: nn.Module) -> Tuple[Optional[Pattern], Optional[str]]:
    """``(pattern, None)`` when ``module`` can be patched, ``(None, reason)`` when a pattern's class is
    among its bases but it cannot, ``(None, None)`` when no pattern knows it."""
    cls = type(module)
    for base in cls.__mro__:
        pat = PATTERNS.get(base)
        if pat is None:
            continue
        if cls.forward is not base.forward:
            return None, f"{qualname(cls)} overrides {pat.name}.forward"
        why = pat.signature_mismatch() or (pat.check(module) if pat.check else None)
        return (None, why) if why else (pat, None)
    return None, None


# ---- drop-path modules ---------------------------------------------------------------------------

_TYPES: Dict[str, tuple] = {}  # filled once; a plain dict, which torch.compile reads without a warning


def _imported(key: str, loader) -> tuple:
    types = _TYPES.get(key)
    if types is None:
        try:
            types = (loader(),)
        except Exception:  # noqa: BLE001 - the library is missing or broken: nothing of it to convert
            types = ()
        _TYPES[key] = types
    return types


def _timm_drop_path_types() -> tuple:
    def load():
        from timm.layers import DropPath as TimmDropPath
        return TimmDropPath

    return _imported("timm", load)


def tv_stochastic_depth_types() -> tuple:
    def load():
        from torchvision.ops import StochasticDepth as TvStochasticDepth
        return TvStochasticDepth

    return _imported("torchvision", load)


def foreign_drop_path_types() -> tuple:
    """The drop-path module classes of timm and torchvision installed here (the ones convert can swap)."""
    return _timm_drop_path_types() + tv_stochastic_depth_types()


_HF_KINDS: Dict[type, bool] = {}  # class -> its forward is Hugging Face's drop path (checked once per class)


def is_hf_drop_path(m) -> bool:
    """A Hugging Face transformers drop-path module: a ``*DropPath`` class of ``transformers.models`` whose
    forward draws ``floor(keep + rand)`` and returns ``x.div(keep) * mask`` (checked on its source once)."""
    cls = type(m)
    known = _HF_KINDS.get(cls)
    if known is None:
        known = False
        if cls.__module__.startswith("transformers.") and cls.__name__.endswith("DropPath"):
            try:
                src = inspect.getsource(cls)
                fn = inspect.getmodule(cls).__dict__.get("drop_path")
                if "torch.rand(" not in src and callable(fn):
                    src += inspect.getsource(fn)
            except (OSError, TypeError):
                src = ""
            known = all(t in src for t in ("torch.rand(", "floor", ".div(keep_prob)", "drop_prob"))
        _HF_KINDS[cls] = known
    return known


def is_drop_path_module(m) -> bool:
    """A drop-path module sdkernels knows how to fuse: timm's, torchvision's, Hugging Face's or its own."""
    return isinstance(m, (sdk_nn.DropPath, sdk_nn.StochasticDepth) + foreign_drop_path_types()) or is_hf_drop_path(m)


def looks_like_drop_path(m) -> bool:
    """Any module convert reports: a known drop path, or any class whose name ends in ``DropPath``."""
    return is_drop_path_module(m) or type(m).__name__.endswith("DropPath")


def rate_of(m) -> Optional[Rate]:
    """The rate of a block's drop-path attribute: None for ``None`` / ``nn.Identity`` (timm at rate 0)."""
    if m is None or isinstance(m, nn.Identity):
        return None
    if isinstance(m, (sdk_nn.StochasticDepth,) + tv_stochastic_depth_types()):
        return Rate(float(m.p), True, m.mode, m.training)
    if isinstance(m, (sdk_nn.DropPath,) + _timm_drop_path_types()):
        return Rate(float(m.drop_prob), bool(m.scale_by_keep), "row", m.training)
    if is_hf_drop_path(m):
        return Rate(float(m.drop_prob), True, "row", m.training, "hf")
    raise TypeError(f"not a drop-path module: {type(m).__name__}")


_KINDS: Dict[type, Optional[str]] = {}  # class -> "timm" / "tv" / "hf" (how its rate reads), None: not a drop path


def _kind(cls: type, m) -> Optional[str]:
    kind = _KINDS.get(cls, False)
    if kind is False:
        if issubclass(cls, (sdk_nn.StochasticDepth,) + tv_stochastic_depth_types()):
            kind = "tv"
        elif issubclass(cls, (sdk_nn.DropPath,) + _timm_drop_path_types()):
            kind = "timm"
        else:
            kind = "hf" if is_hf_drop_path(m) else None
        _KINDS[cls] = kind
    return kind


def active_draw(m) -> Optional[Tuple[float, bool, str, str]]:
    """``(p, scale_by_keep, mode, draw)`` of ``m`` when it is a drop-path module convert can fuse, in training
    with p > 0 and no forward hooks (a fused op never calls the module, so its hooks would not run); None
    otherwise.  The per-call check of every fused site (a class lookup, no allocation)."""
    kind = _kind(type(m), m)
    if kind is None or not m.training or has_forward_hooks(m):
        return None
    if kind == "tv":
        return (float(m.p), True, m.mode, "timm") if m.p > 0 else None
    if kind == "timm":
        return (float(m.drop_prob), bool(m.scale_by_keep), "row", "timm") if m.drop_prob > 0 else None
    return (float(m.drop_prob), True, "row", "hf") if m.drop_prob > 0 else None


def check_drop_paths(block: nn.Module, names) -> Optional[str]:
    """Why the drop-path attributes ``names`` of ``block`` are not ones a pattern can read (None: they are)."""
    for name in names:
        m = getattr(block, name, None)
        if m is None or isinstance(m, nn.Identity) or is_drop_path_module(m):
            continue
        return f"{name} is a {qualname(type(m))}, not a drop-path module sdkernels knows"
    return None


def any_active(*rates: Optional[Rate]) -> bool:
    return any(r is not None and r.active for r in rates)


def has_batchnorm(*modules: Optional[nn.Module]) -> Optional[str]:
    """'BatchNorm in the branch' when any of ``modules`` holds a BatchNorm (it mixes samples in training)."""
    for mod in modules:
        if mod is None:
            continue
        for sub in mod.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                return (f"BatchNorm in the branch ({type(sub).__name__}): in training it normalises over the "
                        "batch, so a branch run on the kept samples only would differ")
    return None


# ---- the residual sites --------------------------------------------------------------------------

def residual_site(
    settings: Settings,
    x: torch.Tensor,
    branch: Callable[[torch.Tensor], torch.Tensor],
    rate: Optional[Rate],
    *,
    gamma: Optional[torch.Tensor] = None,
    channel_dim: int = -1,
    residual: Optional[torch.Tensor] = None,
    skip: bool = True,
) -> torch.Tensor:
    """``residual + drop_path(branch(x) * gamma)`` as the original block computes it, with sdkernels.

    ``residual`` defaults to ``x`` (a block whose shortcut is not ``x`` itself passes it, and cannot
    skip).  ``gamma`` is the block's own LayerScale tensor (so the state_dict does not change), as the
    original holds it: ``(C,)`` scaling ``channel_dim`` (timm's ``ls1.gamma``, ``gamma_1``, ConvNeXt's
    ``gamma`` with ``channel_dim=1``) or a shape broadcasting along it (torchvision's ``(C, 1, 1)``).
    It is fused into the op (``layer_scale=``).  The branch is called exactly once, on every sample
    (fused op) or, when ``skip`` and the settings allow it, on the kept samples only
    (``drop_path_residual``).  An inactive site (no drop path, eval, rate 0) is the original
    expression ``residual + branch * gamma`` (the op's eval path returns exactly that).
    """
    res = x if residual is None else residual
    p = 0.0 if rate is None else rate.p
    training = rate is not None and rate.active
    mode = "row" if rate is None else rate.mode
    scale_by_keep = True if rate is None else rate.scale_by_keep
    if training and skip and settings.skip and residual is None and not isinstance(x, _fx.Proxy):
        return drop_path_residual(x, branch, p, mode=mode, count=settings.count, scale_by_keep=scale_by_keep,
                                  backend=settings.backend, layer_scale=gamma, channel_dim=channel_dim)
    return functional.drop_path_add(res, branch(x), p, training=training, mode=mode, scale_by_keep=scale_by_keep,
                                    backend=settings.backend, layer_scale=gamma, channel_dim=channel_dim)


#: Under torch.compile, rows of at most this many elements are left to Inductor, which fuses the add and
#: the norm into one persistent reduction there (and the norm with its consumers); longer rows it re-reads,
#: so the add + norm op is kept for them.  On the 2-core CPU (ViT-S/16, fp32, batch 16, rate 0.4, one run)
#: the compiled step with the op was 1.017x compiled eager, with Inductor's norm 0.954x.
INDUCTOR_NORM_ROWS = 1024


def has_forward_hooks(m: nn.Module) -> bool:
    """Whether a forward (pre-)hook would run when ``m`` is called (its own or a global one)."""
    return bool(m._forward_hooks or m._forward_pre_hooks or _torch_module._global_forward_hooks
                or _torch_module._global_forward_pre_hooks)


def norm_of(norm: nn.Module, x: torch.Tensor) -> Optional[Tuple[str, Optional[torch.Tensor], Optional[torch.Tensor],
                                                                float]]:
    """``(kind, weight, bias, eps)`` when ``norm(x)`` is exactly ``F.layer_norm`` / ``F.rms_norm`` over x's
    last dim with the module's own parameters (``nn.LayerNorm``, timm's ``LayerNorm`` without its fast-norm
    flag, ``nn.RMSNorm`` with an explicit eps) and no forward hooks, else None: the add + norm op may stand
    in for it."""
    if not isinstance(x, torch.Tensor) or isinstance(x, _fx.Proxy) or x.dim() < 1:
        return None
    kind = None
    if type(norm) is nn.LayerNorm:
        kind = "layer"
    elif type(norm).__name__ == "LayerNorm" and type(norm).__module__ == "timm.layers.norm":
        kind = None if getattr(norm, "_fast_norm", True) else "layer"
    elif type(norm) is getattr(nn, "RMSNorm", None) and norm.eps is not None:
        kind = "rms"
    if kind is None or tuple(norm.normalized_shape) != (x.shape[-1],):
        return None
    if has_forward_hooks(norm):  # the fused op never calls the module: its hooks (observers, TP plans) would not run
        return None
    return kind, norm.weight, getattr(norm, "bias", None), float(norm.eps)


def residual_norm_site(
    settings: Settings,
    x: torch.Tensor,
    branch: Callable[[torch.Tensor], torch.Tensor],
    rate: Optional[Rate],
    norm: nn.Module,
    *,
    gamma: Optional[torch.Tensor] = None,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(x + drop_path(branch(x) * gamma), norm(that))`` in one :func:`sdkernels.drop_path_add_norm`
    pass, for a pre-norm block whose next branch starts with ``norm`` (timm ViT, EVA, Swin: ``norm2``).

    Returns None (the caller runs :func:`residual_site` and the norm as before) unless the site is an
    active drop path fused on every sample (``convert(fuse_norm=True)``, no skip path in the block),
    ``norm`` is one the op computes exactly (:func:`norm_of`) and, under torch.compile, the rows are
    longer than :data:`INDUCTOR_NORM_ROWS` (shorter ones Inductor fuses itself); the block's own
    ``norm.weight``, ``bias`` and ``eps`` are used, so its state_dict is unchanged.  Same draw as
    :func:`residual_site`; ``h`` is the norm of ``x`` as stored, equal to ``norm(x)`` to rounding.
    """
    if not (settings.fuse_norm and not settings.skip and rate is not None and rate.active):
        return None
    if torch.compiler.is_compiling() and isinstance(x, torch.Tensor) and x.shape[-1] <= INDUCTOR_NORM_ROWS:
        return None  # Inductor fuses drop path + add + this norm itself at such rows (and the norm onward)
    args = norm_of(norm, x)
    if args is None or gamma is not None and isinstance(gamma, _fx.Proxy):
        return None
    kind, weight, bias, eps = args
    return drop_path_add_norm(x, branch(x), rate.p, weight, bias, eps, norm=kind, mode=rate.mode,
                              scale_by_keep=rate.scale_by_keep, layer_scale=gamma, backend=settings.backend)


def run_sequence(block: nn.Module, x: torch.Tensor, names) -> torch.Tensor:
    """``x`` through the block's submodules ``names`` in order (a branch that is a plain chain of them)."""
    for name in names:
        x = getattr(block, name)(x)
    return x


def validate(skip, count, backend, fuse_norm=True) -> None:
    """The argument checks of ``convert`` (ValueError / TypeError naming the argument)."""
    if not isinstance(skip, bool):
        raise TypeError(f"skip must be a bool, got {type(skip).__name__}")
    if not isinstance(fuse_norm, bool):
        raise TypeError(f"fuse_norm must be a bool, got {type(fuse_norm).__name__}")
    checks.check_count(count)
    checks.check_backend_name(backend)
