"""The zoo suite: how much of timm, torchvision and Hugging Face transformers ``sdkernels.convert`` fuses.

One variant per architecture (timm: per model module, the smallest-named model that builds;
torchvision: per model module; transformers: per model type whose modeling file has a ``*DropPath``
class, built with ``AutoModel.from_config``), built on the meta device (no weights, no memory, no
download) with drop path rate 0.1, converted, and counted from :func:`sdkernels.conversion_report`:

- ``sites``: drop-path modules with p > 0 (the report's rows);
- ``fused`` / ``module`` / ``eager``: rows by how, ``never``: ``module`` rows whose drop path never runs;
- ``fully_fused``: every row with p > 0 fused, except rows that never run;
- ``reasons``: the distinct reasons of the rows not fused.

Architectures without drop path are listed with ``sites`` 0 (and do not count in the totals);
ones that do not build on the meta device with ``note`` saying why.

``python -m benchmarks --suite zoo`` writes ``zoo-<date>.csv`` and ``.txt`` under ``benchmarks/results``
(``--quick``: a few architectures per library); ``python -m benchmarks.zoo`` runs it alone.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import os
import re
import sys
import time
import warnings
from typing import Dict, Iterable, List, Optional, Sequence

import torch

__all__ = ["RATE", "COLUMNS", "timm_variants", "torchvision_variants", "transformers_variants", "coverage_row",
           "run_zoo", "totals", "format_table", "write", "main"]

RATE = 0.1
COLUMNS = ("library", "architecture", "model", "sites", "fused", "module", "never", "eager", "fully_fused",
           "convert_s", "reasons", "note")
_SMALL = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "mini", "small", "_s_", "b0", "t_", "18")
QUICK = {"timm": ("cait", "efficientnet", "metaformer", "vision_transformer"), "torchvision": ("convnext",),
         "transformers": ("dinov2", "poolformer")}


def _small_first(names: Sequence[str]) -> List[str]:
    return sorted(names, key=lambda n: (not any(t in n for t in _SMALL), len(n), n))


def timm_variants(only: Optional[Iterable[str]] = None):
    """``(architecture, model name, builder)`` per timm model module (up to three candidates each)."""
    import timm

    for module in sorted(timm.list_modules()):
        if only is not None and module not in only:
            continue
        names = _small_first(timm.list_models(module=module))[:3]
        yield module, [(n, (lambda n=n: timm.create_model(n, pretrained=False, drop_path_rate=RATE)))
                       for n in names]


def torchvision_variants(only: Optional[Iterable[str]] = None):
    """Classification and video models (the others hold these backbones, and would fetch their weights)."""
    import torchvision.models as tvm
    import torchvision.models.video as tvv

    by_module: Dict[str, List[str]] = {}
    for n in tvm.list_models(module=tvm) + tvm.list_models(module=tvv):
        by_module.setdefault(tvm.get_model_builder(n).__module__.rsplit(".", 1)[-1], []).append(n)
    for module, names in sorted(by_module.items()):
        if only is not None and module not in only:
            continue

        def build(n):
            try:
                return tvm.get_model(n, weights=None, stochastic_depth_prob=RATE)
            except TypeError:  # no stochastic depth in this family
                return tvm.get_model(n, weights=None)

        yield module, [(n, (lambda n=n: build(n))) for n in _small_first(names)[:2]]


def _hf_types() -> List[str]:
    """The model types whose modeling file defines a ``*DropPath`` class (read from the files, not imported)."""
    import transformers

    root = os.path.join(os.path.dirname(transformers.__file__), "models")
    found = []
    for d in sorted(os.listdir(root)):
        path = os.path.join(root, d, f"modeling_{d}.py")
        if os.path.exists(path):
            with open(path) as f:
                if re.search(r"class \w+DropPath\(", f.read()):
                    found.append(d)
    return found


def _hf_model_classes(d: str, cfg) -> list:
    """The model classes of ``transformers.models.<d>`` built from a config like ``cfg``, base models first."""
    from transformers import PreTrainedModel

    mod = importlib.import_module(f"transformers.models.{d}.modeling_{d}")
    found = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, PreTrainedModel)
             and c.__module__ == mod.__name__ and getattr(c, "config_class", None) is type(cfg)]
    return sorted(found, key=lambda c: (not c.__name__.endswith("Model"), len(c.__name__)))


def _hf_config(d: str):
    """The top-level config of model folder ``d`` (the one its model types map to), with drop path rate 0.1."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    mod = importlib.import_module(f"transformers.models.{d}.configuration_{d}")
    classes = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, PretrainedConfig)
               and c.__module__ == mod.__name__
               and CONFIG_MAPPING_NAMES.get(getattr(c, "model_type", "")) == c.__name__]
    if not classes:
        raise LookupError(f"no registered config class in transformers.models.{d}")
    classes.sort(key=lambda c: -len(getattr(c, "sub_configs", None) or {}))  # the composite one first
    cfg = classes[0]()
    todo = [cfg]
    while todo:
        c = todo.pop()
        for attr in ("drop_path_rate", "drop_path"):
            v = getattr(c, attr, None)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                try:
                    setattr(c, attr, RATE)
                except Exception:  # noqa: BLE001 - a field typed otherwise: the model keeps its default
                    pass
        todo += [getattr(c, k, None) for k in (getattr(c, "sub_configs", None) or {})
                 if isinstance(getattr(c, k, None), PretrainedConfig)]
    return cfg


def transformers_variants(only: Optional[Iterable[str]] = None):
    """``(model type, [(model type, builder)])`` per transformers model folder with a ``*DropPath`` class:
    ``AutoModel.from_config``, else the folder's own model class for that config."""
    try:
        from transformers import AutoModel
    except Exception:  # noqa: BLE001 - transformers missing: no HF rows
        return
    for d in _hf_types():
        if only is not None and d not in only:
            continue

        def build(d=d):
            cfg = _hf_config(d)
            try:
                return AutoModel.from_config(cfg)
            except ValueError:  # not mapped for AutoModel: the folder's own class
                classes = _hf_model_classes(d, cfg)
                if not classes:
                    raise
                return classes[0](cfg)

        yield d, [(d, build)]


def coverage_row(library: str, arch: str, candidates) -> Dict:
    """Build the first candidate that builds on the meta device, convert it, count the report's rows."""
    import sdkernels

    row = dict(library=library, architecture=arch, model="", sites=0, fused=0, module=0, never=0, eager=0,
               fully_fused="", convert_s="", reasons="", note="")
    errors = []
    model = None
    for name, build in candidates:
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                model = build()
            row["model"] = name
            break
        except TypeError as e:
            if "drop_path_rate" in str(e) or "stochastic_depth_prob" in str(e):
                row["note"] = "no drop path (no drop_path_rate argument)"
                return row
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}")
        except Exception as e:  # noqa: BLE001 - a variant that does not build on meta: try the next
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}")
    if model is None:
        row["note"] = "not built: " + "; ".join(errors)
        return row
    model.train()
    t0 = time.perf_counter()
    try:
        sdkernels.convert(model)
    except Exception as e:  # noqa: BLE001 - reported, never hidden
        row["note"] = f"convert failed: {type(e).__name__}: {e}"
        return row
    row["convert_s"] = round(time.perf_counter() - t0, 4)
    rows = [r for r in sdkernels.conversion_report(model) if r["p"] > 0]
    row["sites"] = len(rows)
    for r in rows:
        row[r["how"]] += 1
        if r["how"] == "module" and r["reason"].startswith("never runs"):
            row["never"] += 1
    row["fully_fused"] = bool(rows) and all(r["how"] == "fused" or r["reason"].startswith("never runs") for r in rows)
    reasons = dict.fromkeys(f"{r['cls'].rsplit('.', 1)[-1]}: {r['reason']}" for r in rows
                            if r["how"] != "fused" and not r["reason"].startswith("never runs"))
    row["reasons"] = " | ".join(reasons)
    return row


def run_zoo(libraries: Sequence[str] = ("timm", "torchvision", "transformers"), quick: bool = False,
            progress=None) -> List[Dict]:
    """The coverage rows of the chosen libraries (``quick``: the architectures of :data:`QUICK` only)."""
    sources = {"timm": timm_variants, "torchvision": torchvision_variants, "transformers": transformers_variants}
    rows = []
    for lib in libraries:
        try:
            importlib.import_module(lib)
        except Exception:  # noqa: BLE001 - not installed: no rows
            continue
        for arch, candidates in sources[lib](QUICK[lib] if quick else None):
            rows.append(coverage_row(lib, arch, candidates))
            if progress is not None:
                progress(rows[-1])
    return rows


def totals(rows: Sequence[Dict]) -> Dict[str, Dict[str, int]]:
    """Per library: architectures with drop path, fully fused ones, sites, fused sites, not built."""
    out: Dict[str, Dict[str, int]] = {}
    for r in rows:
        t = out.setdefault(r["library"], dict(with_drop_path=0, fully_fused=0, sites=0, fused=0, never=0,
                                              not_built=0))
        if r["note"].startswith("not built"):
            t["not_built"] += 1
        if r["sites"]:
            t["with_drop_path"] += 1
            t["fully_fused"] += bool(r["fully_fused"])
            t["sites"] += r["sites"]
            t["fused"] += r["fused"]
            t["never"] += r["never"]
    return out


def format_table(rows: Sequence[Dict]) -> str:
    lines = [f"{'library':<12} {'architecture':<26} {'model':<34} {'sites':>5} {'fused':>5} {'module':>6} "
             f"{'never':>5} {'eager':>5}  reasons / note"]
    for r in rows:
        if not r["sites"] and not r["note"].startswith(("not built", "convert failed")):
            continue
        lines.append(f"{r['library']:<12} {r['architecture'][:26]:<26} {r['model'][:34]:<34} {r['sites']:>5} "
                     f"{r['fused']:>5} {r['module']:>6} {r['never']:>5} {r['eager']:>5}  "
                     + (r["reasons"] or r["note"] or ("" if r["fully_fused"] else "-")))
    lines.append("")
    for lib, t in totals(rows).items():
        lines.append(f"{lib}: {t['fully_fused']} of {t['with_drop_path']} architectures with drop path fully fused; "
                     f"{t['fused']} of {t['sites']} sites fused ({t['never']} never run); "
                     f"{t['not_built']} architectures not built on the meta device")
    return "\n".join(lines)


def write(rows: Sequence[Dict], out: str, stem: Optional[str] = None) -> str:
    """Write ``<out>/<stem>.csv`` and ``.txt`` (stem default ``zoo-<date>``); returns the stem path."""
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, stem or f"zoo-{datetime.date.today().isoformat()}")
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in COLUMNS})
    with open(stem + ".txt", "w") as f:
        f.write(format_table(rows) + "\n")
    return stem


def main(argv=None, out: Optional[str] = None, quick: Optional[bool] = None, name: Optional[str] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--name", default=None, help="file stem (default zoo-<date>)")
    ap.add_argument("--quick", action="store_true", help="a few architectures per library")
    ap.add_argument("--libraries", default="timm,torchvision,transformers")
    a = ap.parse_args(argv if argv is not None else ([] if out is not None else None))
    t0 = time.monotonic()
    rows = run_zoo([s for s in a.libraries.split(",") if s], quick=a.quick if quick is None else quick,
                   progress=lambda r: print(f"{r['library']} {r['architecture']}: {r['sites']} sites, "
                                            f"{r['fused']} fused {r['note']}", file=sys.stderr))
    stem = write(rows, out or a.out, name or a.name)
    print(format_table(rows))
    print(f"\nwrote {stem}.csv, {stem}.txt; wall time {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
