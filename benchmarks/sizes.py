"""Named sizes, dtypes and the default cases of the op suite.

A *case* is one (size, dtype) pair.  Sizes are named after the models whose
activations they are; the dtype "fp32+bf16" is the mixed-precision case that
autocast produces (fp32 residual stream, bf16 branch output, fp32 result).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

__all__ = [
    "Size",
    "Case",
    "SIZES",
    "DTYPES",
    "MODES",
    "OPS",
    "NORM_OPS",
    "SUITES",
    "DEFAULT_PS",
    "DEFAULT_NORM_PS",
    "default_cases",
    "cases_from",
    "parse_names",
    "dtype_pair",
]


@dataclass(frozen=True)
class Size:
    """A named activation shape.

    ``sample_dim`` indexes the samples; ``channels_last`` stores a 4-d tensor
    NHWC in memory; ``host_bound`` marks sizes where host overhead dominates
    (timed by a synchronised wall-clock loop on GPU, and also measured without
    grad); ``channel_dim`` is the dim a LayerScale gamma scales (op
    ``drop_path_add_ls``).
    """

    name: str
    shape: Tuple[int, ...]
    sample_dim: int = 0
    channels_last: bool = False
    host_bound: bool = False
    about: str = ""
    channel_dim: int = -1

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def shape_str(self) -> str:
        return "x".join(str(s) for s in self.shape)

    @property
    def layout(self) -> str:
        if self.channels_last:
            return "channels_last"
        return "contiguous"


_SIZE_LIST = [
    Size("small", (8, 16, 64), host_bound=True, about="tiny, host-overhead bound"),
    Size("vit-b-half", (32, 197, 768), about="ViT-B/16 tokens, batch 32"),
    Size("vit-b", (64, 197, 768), about="ViT-B/16 tokens, batch 64"),
    Size("vit-l", (256, 197, 1024), about="ViT-L/16 tokens, batch 256"),
    Size("resnet50", (64, 256, 56, 56), about="ResNet-50 stage-1 activation, NCHW"),
    Size("resnet50-cl", (64, 256, 56, 56), channels_last=True, about="ResNet-50 stage-1 activation, channels_last"),
    Size("llm", (2048, 8, 4096), sample_dim=1, about="LLM layer, seq-first [S, B, H], sample_dim=1"),
    # LayerScale: ConvNeXt-T stage 1, gamma on channel_dim 1 of channels_last NCHW.
    Size("convnext-s1-cl", (64, 96, 56, 56), channels_last=True, channel_dim=1,
         about="ConvNeXt stage-1 activation, channels_last, LayerScale on dim 1"),
    # add + norm: LLM rows of 8192 (16384 rows, like llm's 16384 rows of 4096)
    Size("llm-8k", (2048, 8, 8192), sample_dim=1, about="LLM layer, 16384 rows of 8192, seq-first, sample_dim=1"),
]
SIZES: Dict[str, Size] = {s.name: s for s in _SIZE_LIST}

# name -> (residual dtype, branch dtype).  The output dtype is their promotion.
DTYPES: Dict[str, Tuple[torch.dtype, torch.dtype]] = {
    "fp32": (torch.float32, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "fp16": (torch.float16, torch.float16),
    "fp32+bf16": (torch.float32, torch.bfloat16),
}

#: fwd: forward with inputs requiring grad (as in training); bwd: the backward
#: alone (autograd.grad on a retained graph); fwd+bwd: both;
#: fwd-nograd: forward in training mode with inputs not requiring grad.
MODES = ("fwd", "bwd", "fwd+bwd", "fwd-nograd")
DEFAULT_MODES = ("fwd", "bwd", "fwd+bwd")
#: drop_path_add: residual + drop_path(branch); drop_path: drop_path(x) alone;
#: drop_path_add_ls: residual + drop_path(gamma * branch) (LayerScale; opt-in);
#: add_layernorm / add_rmsnorm: x = residual + drop_path(branch) and h = norm(x) over the last dim.
OPS = ("drop_path_add", "drop_path", "drop_path_add_ls", "add_layernorm", "add_rmsnorm")
NORM_OPS = ("add_layernorm", "add_rmsnorm")
#: ops: the op suite; e2e: ViT-B block training step; blocks: skip-path block suite; models: real timm
#: models' training steps, eager vs sdkernels.convert (eager and compiled); train: a small ViT trained on
#: scikit-learn's digits, eager vs convert (accuracy).  "all" runs every one of them.
SUITES = ("ops", "e2e", "blocks", "models", "train", "host")
DEFAULT_PS = (0.1, 0.5)
#: The add + norm ops' default: the issue's p (a drop rate of a deep ViT's later blocks).
DEFAULT_NORM_PS = (0.1,)


@dataclass(frozen=True)
class Case:
    """One (size, dtype) pair of the op suite."""

    size: Size
    dtype: str

    @property
    def name(self) -> str:
        return f"{self.size.name}/{self.dtype}"

    def dtypes(self) -> Tuple[torch.dtype, torch.dtype, torch.dtype]:
        """(residual, branch, out) dtypes."""
        r, b = DTYPES[self.dtype]
        return r, b, torch.promote_types(r, b)


def dtype_pair(name: str) -> Tuple[torch.dtype, torch.dtype]:
    return DTYPES[name]


# The defaults.  CPU: the CPU goal sizes (32x197x768 fp32 just below
# glibc's 32 MB mmap line, 64x197x768 fp32 above it, 64x197x768 bf16 below it,
# 8x16x64) plus the mixed-precision case; the big model sizes take minutes on
# 2 cores and are left to --sizes.  GPU: every size, past L2 where it matters.
_CPU_DEFAULT = [
    ("small", "fp32"),
    ("vit-b-half", "fp32"),
    ("vit-b", "fp32"),
    ("vit-b", "bf16"),
    ("vit-b", "fp32+bf16"),
]
# GPU: the goal sizes first, so a --time-limit cut loses the others;
# eight cases keep the default inside gpu_check.sh's budget (torch.compile
# builds one graph per case and p).  vit-b in fp32 or mixed: --sizes/--dtypes.
_GPU_DEFAULT = [
    ("vit-l", "bf16"),
    ("llm", "bf16"),
    ("vit-l", "fp32"),
    ("small", "fp32"),
    ("vit-b", "bf16"),
    ("vit-l", "fp32+bf16"),
    ("resnet50", "bf16"),
    ("resnet50-cl", "bf16"),
]
_QUICK = [("small", "fp32"), ("vit-b-half", "bf16")]
# LayerScale: ViT-B tokens (gamma on the last dim) and ConvNeXt stage 1 channels_last.
_LS_CPU = [("vit-b", "fp32"), ("vit-b", "bf16"), ("convnext-s1-cl", "fp32")]
_LS_GPU = [("vit-b", "fp32"), ("vit-b", "bf16"), ("convnext-s1-cl", "bf16"), ("convnext-s1-cl", "fp32")]
_LS_QUICK = [("small", "fp32"), ("vit-b-half", "bf16")]
# add + norm ops: the goal cases (ViT-B and ViT-L tokens, LLM rows of 4096 and 8192; bf16
# and autocast's fp32 residual + bf16 branch).  CPU: ViT-B only (fp32 above glibc's 32 MB line, bf16
# and mixed below it); the LLM rows take minutes on 2 cores (--sizes llm,llm-8k).
_NORM_CPU_DEFAULT = [("vit-b", "fp32"), ("vit-b", "bf16"), ("vit-b", "fp32+bf16")]
_NORM_GPU_DEFAULT = [("vit-b", "bf16"), ("vit-l", "bf16"), ("llm", "bf16"), ("llm-8k", "bf16"),
                     ("vit-l", "fp32+bf16"), ("llm", "fp32+bf16")]
_NORM_QUICK = [("small", "fp32"), ("vit-b-half", "bf16")]


def default_cases(device: str, quick: bool = False, op: str = None) -> List[Case]:
    """The cases run when neither --sizes nor --dtypes is given (``op``: the LayerScale and add + norm ops
    have their own)."""
    if op in NORM_OPS:
        pairs = _NORM_QUICK if quick else (_NORM_GPU_DEFAULT if device == "cuda" else _NORM_CPU_DEFAULT)
    elif op == "drop_path_add_ls":
        pairs = _LS_QUICK if quick else (_LS_GPU if device == "cuda" else _LS_CPU)
    elif quick:
        pairs = _QUICK
    else:
        pairs = _GPU_DEFAULT if device == "cuda" else _CPU_DEFAULT
    return [Case(SIZES[s], d) for s, d in pairs]


def cases_from(device: str, sizes: Sequence[str] = None, dtypes: Sequence[str] = None, quick: bool = False,
               op: str = None) -> List[Case]:
    """Cases for the given size and dtype names.

    Both given: their cross product.  Only sizes: each size in the dtypes
    the defaults use for it (fp32 if none).  Only dtypes: the default sizes
    in those dtypes.  Neither: :func:`default_cases`.
    """
    if not sizes and not dtypes:
        return default_cases(device, quick, op)
    base = default_cases(device, quick, op)
    if sizes and dtypes:
        return [Case(SIZES[s], d) for s in sizes for d in dtypes]
    if sizes:
        out = []
        for s in sizes:
            ds = [c.dtype for c in base if c.size.name == s] or ["fp32"]
            out += [Case(SIZES[s], d) for d in ds]
        return out
    seen = []
    for c in base:
        if c.size.name not in seen:
            seen.append(c.size.name)
    return [Case(SIZES[s], d) for s in seen for d in dtypes]


def parse_names(kind: str, text, valid: Sequence[str]) -> List[str]:
    """Split a comma list and check every name; ``ValueError`` lists the valid names.

    ``text`` may be a string ("a,b") or a list of strings (argparse nargs).
    """
    if text is None:
        return []
    items = text if isinstance(text, (list, tuple)) else [text]
    names: List[str] = []
    for item in items:
        names += [t.strip() for t in str(item).split(",") if t.strip()]
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(
            f"unknown {kind} name{'s' if len(bad) > 1 else ''}: {', '.join(repr(b) for b in bad)}; "
            f"valid {kind} names: {', '.join(valid)}"
        )
    return names
