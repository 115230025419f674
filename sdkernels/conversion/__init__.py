"""One call that makes timm, torchvision and Hugging Face transformers models use sdkernels: :func:`convert`.

::

    model = timm.create_model("deit3_small_patch16_224", drop_path_rate=0.2)
    sdkernels.convert(model)                    # in place; fused residual adds, same results under one seed
    sdkernels.convert(model, skip=True)         # branches run on the kept samples only, where that is exact
    rows = sdkernels.conversion_report(model)   # one dict per drop-path module
    print(sdkernels.conversion_report(model, summary=True))
    sdkernels.unconvert(model)                  # the original methods and modules again

What it does, per module of the model that holds a drop path (timm ``DropPath``, torchvision
``StochasticDepth``, a Hugging Face ``*DropPath`` class, sdkernels' own):

* **the generic rewrite** (``generic.py``, ``rewrite.py``): the methods of the module's class that call the
  drop path (``forward`` and any other) are rewritten from their own source: each residual add the drop path
  feeds (``r + self.drop_path(b)`` in either order, ``r += ...``, ``v = self.drop_path(b)`` ... ``v + r``)
  becomes one :func:`sdkernels.drop_path_add`, with a LayerScale branch (``self.ls(b)``, ``gamma * b``)
  fused as its ``layer_scale``; everything else of the method runs as written (control flow, keyword
  arguments, decorators, ``super()``, closures).  The rewritten methods are bound to the instance (the class
  is untouched; ``how = "fused"``).  A site the rewrite cannot prove exact keeps its code, and the report
  names the construct: a scale after the drop path (``x + gamma * drop_path(y)``), a reshape or slice
  between drop path and add, no residual add (concatenated, returned), or a random op (dropout) that could
  run between the original's draw and the add;
* **hand-written blocks** (the family files ``vit.py``, ``swin.py``, ``convnext.py``), only where they do
  more than the rewrite: the add + LayerNorm fusion of pre-norm blocks (``fuse_norm``) and the skip path
  (``skip=True``);
* a timm or torchvision drop path that is not fused is swapped for ``sdkernels.nn.DropPath`` /
  ``sdkernels.nn.StochasticDepth`` (``how = "module"``); a Hugging Face one stays (``how = "eager"``).

Exactness: under one seed a converted model (``skip=False``) keeps the samples the original keeps
(same draws, same order: where the original draws before the add, the site is fused only when nothing
between the two can draw) and gives its outputs (fp32 forward bitwise for timm and torchvision: the fused
kernel rounds ``(branch * gamma) * scale`` and the add as eager does) and its gradients to rounding.
Hugging Face drop paths draw ``floor(keep + rand)`` in the branch's dtype and divide by ``keep``: the fused
op draws the same samples (``draw="hf"``) and multiplies by ``1 / keep``, so outputs equal the original's
to rounding, not bitwise.  In eval mode, at rate 0, or when a drop path has forward hooks, the original
expression runs: bitwise the original.  ``state_dict`` keys and values are unchanged (the fused ops use
the blocks' own parameters: LayerScale ``gamma``, norms).  Converted models deep-copy (timm's model EMA),
pickle whole (``torch.save``/``torch.load``), train under ``torch.utils.checkpoint`` and timm's
``set_grad_checkpointing``, compile with ``torch.compile(fullgraph=True)``, and trace with ``torch.fx``
(feature extraction): a traced graph of a ``skip=True`` model runs the fused form, since a traced branch
cannot be re-run on a subset.  ``torch.jit.script`` raises an error that names :func:`unconvert`.
An in-place residual add (``r += drop_path(b)``) becomes an out-of-place one bound to the same name (the
add keeps ``r``'s dtype: where the op would promote it, the original in-place add runs).

``skip=True`` caveats (see :func:`sdkernels.drop_path_residual`): count ``"fixed"`` keeps exactly
``round(n (1 - p))`` samples per call, a realised rate ``1 - k/n`` that differs from ``p`` for small
batches (warned once when by more than 0.1); count ``"bernoulli"`` is timm's distribution and costs one
host sync per site. A block whose branch holds BatchNorm (EfficientNet, ResNet, RegNet), whose shortcut
is not the identity, that gets a per-sample attention mask, or that no hand-written family knows is fused
instead (the report says why). Under DDP, count ``"fixed"`` runs every branch at every step (on k >= 1
samples); a site in mode "batch" (torchvision's ``StochasticDepth(p, "batch")``) skips its branch for a
dropped batch, leaving its parameters unused in that step: DDP then needs ``find_unused_parameters=True``,
and every rank must be seeded alike.
"""
from __future__ import annotations

import functools
import importlib
from typing import Dict, List, Optional

import torch
from torch import nn

from .. import _fx, nn as sdk_nn
from . import core, generic
from .core import Pattern, Settings, register

__all__ = ["convert", "unconvert", "conversion_report", "Pattern", "register"]

_FAMILIES = ("vit", "convnext", "swin")


@functools.lru_cache(maxsize=None)
def _load_families() -> None:
    """Import the family files, which register their patterns (each does nothing when its library is
    missing).  On first use, not at ``import sdkernels``: importing timm's and torchvision's models takes
    seconds."""
    for name in _FAMILIES:
        importlib.import_module(f"{__name__}.{name}")

class PatchedForward:
    """The instance ``forward`` of a converted block: ``pattern.forward(block, settings, *args, **kwargs)``.

    A plain object (not a closure or bound method) so that a converted model deep-copies and pickles:
    it holds the block, the pattern's module-level function and the settings.
    """

    def __init__(self, block: nn.Module, pattern: Pattern, settings: Settings, skip_reason: Optional[str]):
        self.block = block
        self.pattern_cls = pattern.cls
        self.drop_paths = pattern.drop_paths
        self.fn = pattern.forward
        self.settings = settings
        self.skip_reason = skip_reason

    def __call__(self, *args, **kwargs):
        return self.fn(self.block, self.settings, *args, **kwargs)


class _Unscriptable:
    """``__prepare_scriptable__`` of a converted block: torch.jit.script calls it first and gets a clear error."""

    def __init__(self, block: nn.Module):
        self.block = block

    def __call__(self):
        _fx.NotScriptable.__prepare_scriptable__(self.block)


def _patched(m: nn.Module) -> Optional[PatchedForward]:
    f = m.__dict__.get("forward")
    return f if isinstance(f, PatchedForward) else None


def _swapped_original(m: nn.Module):
    return m.__dict__.get("_sdk_original")


def _swap_in(m: nn.Module, backend: str) -> nn.Module:
    """The sdkernels module standing for drop-path module ``m`` (timm's or torchvision's)."""
    if isinstance(m, core.tv_stochastic_depth_types()):
        new = sdk_nn.StochasticDepth(m.p, m.mode, backend=backend)
    else:
        new = sdk_nn.DropPath(m.drop_prob, m.scale_by_keep, backend=backend)
    new.train(m.training)
    new.__dict__["_sdk_original"] = m  # not registered: no new state_dict keys or submodules
    return new


def _swap_back(new: nn.Module) -> nn.Module:
    """The original module again, carrying the rate the sdkernels module has now (a schedule may have set it)."""
    orig = _swapped_original(new)
    if isinstance(new, sdk_nn.StochasticDepth):
        orig.p, orig.mode = new.p, new.mode
    else:
        orig.drop_prob, orig.scale_by_keep = new.drop_prob, new.scale_by_keep
    orig.train(new.training)
    return orig


def _children_by_parent(model: nn.Module):
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if child is not None:
                yield parent, name, child


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("model is a TorchScript module; convert the Python model before scripting it")


def _pattern_applies(pat: Pattern, m: nn.Module, skip: bool, fuse_norm: bool) -> bool:
    """Whether hand-written pattern ``pat`` does more for ``m`` than the generic rewrite: the skip path or
    the add + norm fusion."""
    if not any(core.is_drop_path_module(getattr(m, n, None)) for n in pat.drop_paths):
        return False  # no drop path here (timm builds nn.Identity or None at rate 0): nothing to fuse
    return skip or (fuse_norm and pat.fuses_norm)


def _skip_reason(m: nn.Module) -> str:
    """Why a block the generic rewrite fuses is not skipped under ``convert(skip=True)``."""
    return core.has_batchnorm(m) or (f"no skip form for {type(m).__name__}: fused on every sample (the skip path "
                                     "knows timm ViT, EVA, Swin, ConvNeXt and torchvision ConvNeXt, Swin blocks)")


def convert(model: nn.Module, *, skip: bool = False, count: str = "fixed", backend: str = "auto",
            fuse_norm: bool = True) -> nn.Module:
    """Make a model's drop paths use sdkernels' fused ops, in place; returns ``model``.

    Args:
        model: any ``nn.Module`` (timm, torchvision, Hugging Face transformers, or your own): every module
            that holds a drop path gets its residual adds fused (see the module docstring); drop paths
            that are not fused are swapped for sdkernels' modules where sdkernels has one.  Works before
            or after ``.to(device)`` and ``.train()``/``.eval()``, and before ``torch.compile``.
        skip: run the branches on the kept samples only where that is exact (timm ViT, EVA, Swin,
            ConvNeXt and torchvision ConvNeXt, Swin blocks without BatchNorm in the branch and with an
            identity shortcut); the others are fused, and :func:`conversion_report` says why.
        count: the skip path's count, "fixed" or "bernoulli" (:func:`sdkernels.drop_path_residual`).
        backend: the sdkernels backend ("auto", "reference", "cpu", "cuda", "triton").
        fuse_norm: in pre-norm blocks (timm ViT ``Block``, ``EvaBlock``, timm and torchvision Swin v1)
            whose first residual add feeds ``norm2``, do drop path + add + that LayerNorm in one
            :func:`sdkernels.drop_path_add_norm` pass (the block's own ``norm2`` weight, bias and eps).
            Applies where the block is fused (not skipped); under ``torch.compile`` only to rows longer
            than 1024 (Inductor fuses shorter ones itself: ``core.INDUCTOR_NORM_ROWS``); not where
            ``norm2`` has forward hooks (they would not run).  Training outputs then equal the original's
            to rounding (the norm's sums are ordered differently); with ``fuse_norm=False`` they are
            bitwise the original's in fp32.

    Idempotent: a second call with the same arguments changes nothing; with other arguments the model
    is re-converted to them.  :func:`unconvert` undoes it.
    """
    _check_model(model)
    core.validate(skip, count, backend, fuse_norm)
    _load_families()
    covered = set()  # ids of drop-path modules every site of which is fused (or skipped): not swapped
    why_not: Dict[int, str] = {}  # drop-path module id -> why it is not fused
    for m in list(model.modules()):
        if core.looks_like_drop_path(m):
            continue
        pat, reason = core.pattern_for(m)
        if pat is not None and _pattern_applies(pat, m, skip, fuse_norm):
            generic.unconvert_block(m)
            no_skip = pat.no_skip(m) if (skip and pat.no_skip) else None
            settings = Settings(skip=skip and no_skip is None, count=count, backend=backend, fuse_norm=fuse_norm)
            current = _patched(m)
            if current is None or current.settings != settings or current.fn is not pat.forward:
                m.forward = PatchedForward(m, pat, settings, no_skip)
                m.__dict__["__prepare_scriptable__"] = _Unscriptable(m)
            covered.update(id(getattr(m, n, None)) for n in pat.drop_paths)
            continue
        if _patched(m) is not None:
            del m.__dict__["forward"]
            m.__dict__.pop("__prepare_scriptable__", None)
        settings = Settings(skip=False, count=count, backend=backend, fuse_norm=fuse_norm)
        state = generic.convert_block(m, settings)
        if state is None:
            continue
        state.skip_reason = _skip_reason(m) if skip else ""
        if state.methods:
            m.__dict__["__prepare_scriptable__"] = _Unscriptable(m)
        for name, (how, why) in state.outcome.items():
            child = getattr(m, name)
            if how == "fused":
                covered.add(id(child))
            else:
                why_not.setdefault(id(child), why)
    for parent, name, child in _children_by_parent(model):
        if id(child) in covered:
            continue
        if _swapped_original(child) is not None:
            child.backend = backend
            continue
        if isinstance(child, core.foreign_drop_path_types()):
            new = _swap_in(child, backend)
            if id(child) in why_not:
                new.__dict__["_sdk_reason"] = why_not[id(child)]
            parent._modules[name] = new
    return model


def unconvert(model: nn.Module) -> nn.Module:
    """Undo :func:`convert` in place (the original methods of every block, the original drop-path
    modules, carrying their current rates); returns ``model``.  A model never converted is unchanged."""
    _check_model(model)
    for m in model.modules():
        if _patched(m) is not None:
            del m.__dict__["forward"]
        generic.unconvert_block(m)
        m.__dict__.pop("__prepare_scriptable__", None)
    for parent, name, child in list(_children_by_parent(model)):
        if _swapped_original(child) is not None:
            parent._modules[name] = _swap_back(child)
    return model


def _p_of(m: nn.Module) -> float:
    if core.is_drop_path_module(m):
        return core.rate_of(m).p
    return float(getattr(m, "drop_prob", getattr(m, "p", 0.0)) or 0.0)


def conversion_report(model: nn.Module, summary: bool = False):
    """What :func:`convert` made of ``model``: one dict per drop-path module.

    Drop-path modules are found by what they are: timm's ``DropPath``, torchvision's ``StochasticDepth``,
    Hugging Face's ``*DropPath`` classes, sdkernels' modules, and any other class whose name ends in
    ``DropPath`` (reported, never fused: its draw is not known).

    Keys: ``path`` (the drop-path module's ``named_modules`` name), ``cls`` (qualified class name of the
    block holding it, or of the module itself when no block was converted around it), ``how``
    (``"fused"``: every residual add it feeds is fused; ``"skip"``: its block runs the skip path;
    ``"module"``: swapped for sdkernels' module, or a drop path that never runs; ``"eager"``: left as it
    is), ``p`` (the rate) and ``reason`` (why not fused, naming the construct; "" when nothing is left
    out).  A drop path that never runs (timm's ``has_skip`` False, torchvision's ``use_res_connect`` False:
    decided from the block's own flags) is ``"module"`` with a reason beginning "never runs".  With
    ``summary=True`` returns a string instead: one line per (class, how, reason) with the count and the
    range of p.
    """
    _check_model(model)
    _load_families()
    holders: Dict[int, tuple] = {}
    for m in model.modules():
        for name, child in m._modules.items():
            if child is not None:
                holders.setdefault(id(child), (m, name))
    rows: List[dict] = []
    for path, m in model.named_modules():
        if not core.looks_like_drop_path(m):
            continue
        holder, attr = holders.get(id(m), (None, None))
        p = _p_of(m)
        f = _patched(holder) if holder is not None else None
        state = generic.state_of(holder) if holder is not None else None
        if f is not None and attr in f.drop_paths:
            row = (core.qualname(type(holder)), "skip" if f.settings.skip else "fused", f.skip_reason or "")
        elif state is not None and attr in state.outcome:
            how, reason = state.outcome[attr]
            if how == "fused":
                reason = state.skip_reason
            if how == "module" and not reason.startswith("never runs") and _swapped_original(m) is None \
                    and not isinstance(m, (sdk_nn.DropPath, sdk_nn.StochasticDepth)):
                how = "eager"  # a Hugging Face drop path: no sdkernels module stands in for it
            row = (core.qualname(type(holder)), how, reason)
        elif _swapped_original(m) is not None or isinstance(m, (sdk_nn.DropPath, sdk_nn.StochasticDepth)):
            row = (core.qualname(type(m)), "module",
                   m.__dict__.get("_sdk_reason", "no block around it: the drop path alone is fused"))
        elif not core.is_drop_path_module(m):
            row = (core.qualname(type(m)), "eager", "unknown drop-path class: its draw is not known")
        else:
            row = (core.qualname(type(m)), "eager", "not converted: call sdkernels.convert(model)")
        rows.append(dict(path=path, cls=row[0], how=row[1], p=p, reason=row[2]))
    if not summary:
        return rows
    return _summary(rows)


def _summary(rows) -> str:
    groups: Dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["cls"], r["how"], r["reason"]), []).append(r)
    lines = []
    for (cls, how, reason), rs in groups.items():
        ps = [p for r in rs for p in (r["p"] if isinstance(r["p"], tuple) else (r["p"],))]
        line = f"{cls}: {len(rs)} {how}, p {min(ps):.3g}-{max(ps):.3g}"
        lines.append(line + (f" ({reason})" if reason else ""))
    return "\n".join(lines) if lines else "no drop-path sites"
