"""Every argument check of sdkernels, in one place.

Two kinds:

* the public functions' and modules' checks (``check_*`` of user arguments): ``TypeError`` /
  ``ValueError`` / ``IndexError`` naming the bad argument, before any work is done;
* the raw ops' checks of the Triton twins (``op_*``): the C++ kernels' rules and messages, so the
  ``*_triton`` ops and their C++ twins reject the same inputs alike.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .dtypes import FLOAT_DTYPES, FLOAT_NAMES

__all__ = [
    "MODES", "DRAWS", "COUNTS", "NORMS", "BACKEND_NAMES", "check_rate", "check_mode", "check_backend_name",
    "check_generator", "check_draw", "check_tensor", "check_sample_dim", "check_call", "check_branch", "check_layer_scale",
    "check_module_args", "check_torchvision_args", "check_count", "check_norm", "check_eps",
    "check_norm_param", "check_out_dtype", "check_norm_input", "check_normalized_shape", "check_param_dtype",
    "op_float", "op_pair", "op_sample_dim", "op_channel_dim", "op_scale", "op_gamma", "op_out_dtype",
    "op_norm_dims", "op_norm_param", "op_index", "op_devices",
]

MODES = ("row", "batch")
#: Draw rules: "timm" (timm and torchvision: ``bernoulli_``), "hf" (Hugging Face transformers: ``floor(keep + rand)``).
DRAWS = ("timm", "hf")
COUNTS = ("fixed", "bernoulli")
NORMS = ("layer", "rms")
BACKEND_NAMES = ("auto", "reference", "cpu", "cuda", "triton")


# ---- public arguments ------------------------------------------------------------------------------

def check_rate(p, name: str = "p") -> None:
    """A drop probability: a real number in [0, 1] (not a bool)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(p).__name__}")
    if math.isnan(p) or p < 0.0 or p > 1.0:
        raise ValueError(f"{name} (drop probability) must be in [0, 1], got {p}")


def check_mode(mode) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def check_draw(draw) -> None:
    if draw not in DRAWS:
        raise ValueError(f"draw must be one of {DRAWS}, got {draw!r}")


def check_backend_name(backend) -> None:
    """ValueError unless ``backend`` is one of :data:`BACKEND_NAMES` (every public entry point's check)."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def check_tensor(x, name: str) -> None:
    """``x`` is a floating-point tensor of one of :data:`sdkernels.dtypes.FLOAT_DTYPES`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor ({FLOAT_NAMES}), got {x.dtype}")


def check_sample_dim(x: torch.Tensor, name: str, sample_dim) -> int:
    """``sample_dim`` is an int indexing one of x's dims; returns it wrapped to [0, ndim)."""
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (the sample dim), got a 0-dim tensor")
    if isinstance(sample_dim, bool) or not isinstance(sample_dim, int):
        raise TypeError(f"sample_dim must be an int, got {type(sample_dim).__name__}")
    nd = x.dim()
    if not -nd <= sample_dim < nd:
        raise IndexError(f"sample_dim {sample_dim} is out of range for a tensor with {nd} dims")
    return sample_dim % nd


def check_call(x, name: str, p, mode, sample_dim, backend, generator) -> int:
    """The arguments every public function shares; returns ``sample_dim`` wrapped to [0, ndim)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_rate(p)
    check_mode(mode)
    check_backend_name(backend)
    check_generator(generator)
    check_tensor(x, name)
    return check_sample_dim(x, name, sample_dim)


def check_branch(residual: torch.Tensor, branch) -> None:
    """``branch`` pairs with ``residual``: a floating-point tensor of its shape, on its device."""
    check_tensor(branch, "branch")
    if residual.shape != branch.shape:
        raise ValueError(f"residual and branch must have the same shape, got {tuple(residual.shape)} and "
                         f"{tuple(branch.shape)}")
    if residual.device != branch.device:
        raise ValueError(f"residual and branch must be on the same device, got {residual.device} and {branch.device}")


def check_layer_scale(layer_scale, x: torch.Tensor, channel_dim, sample_dim: int) -> int:
    """Validate ``layer_scale`` against ``x`` (the branch); returns ``channel_dim`` wrapped to [0, ndim).

    ``layer_scale`` may be 1-D with ``C = x.shape[channel_dim]`` values, or any shape that
    broadcasts to ``x`` along ``channel_dim`` only (torchvision's ``(C, 1, 1)`` with ``channel_dim=1``).
    """
    if not isinstance(layer_scale, torch.Tensor):
        raise TypeError(f"layer_scale must be a torch.Tensor or None, got {type(layer_scale).__name__}")
    if layer_scale.dtype not in FLOAT_DTYPES:
        raise TypeError(f"layer_scale must be a floating-point tensor ({FLOAT_NAMES}), got {layer_scale.dtype}")
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
        raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")
    nd = x.dim()
    if not -nd <= channel_dim < nd:
        raise IndexError(f"channel_dim {channel_dim} is out of range for a tensor with {nd} dims")
    cd = channel_dim % nd
    if cd == sample_dim:
        raise ValueError(f"channel_dim ({channel_dim}) must differ from sample_dim ({sample_dim}): "
                         "LayerScale scales channels, drop path drops samples")
    C = x.shape[cd]
    gs = tuple(layer_scale.shape)
    if layer_scale.dim() == 1:
        ok = gs[0] == C
    else:
        lead = nd - layer_scale.dim()  # right-aligned broadcasting
        ok = 1 <= layer_scale.dim() <= nd and lead <= cd and all(
            size == (C if lead + k == cd else 1) for k, size in enumerate(gs))
    if not ok:
        raise ValueError(
            f"layer_scale must hold one value per channel: a 1-D tensor of {C} values (x.shape[{channel_dim}]) or a "
            f"shape broadcasting to {tuple(x.shape)} along channel_dim {channel_dim} only, got shape {gs}")
    if layer_scale.device != x.device:
        raise ValueError(f"layer_scale is on {layer_scale.device} but the tensors are on {x.device}")
    return cd


def check_module_args(p, mode) -> None:
    """The modules' constructor checks of ``p`` and ``mode`` (ValueError naming the argument)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p (drop probability) must be in [0, 1], got {p}")
    check_mode(mode)


def check_torchvision_args(p, mode) -> None:
    """torchvision's ``stochastic_depth`` checks, with its messages (the drop-in twins raise them alike)."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")


def check_count(count) -> None:
    if count not in COUNTS:
        raise ValueError(f"count must be one of {COUNTS}, got {count!r}")


def check_norm(norm) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def check_eps(eps) -> None:
    """A norm's epsilon: a finite real number >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")


def check_norm_param(t, name: str, H: int, device) -> None:
    """An optional per-feature parameter of the norm (weight, bias, LayerScale gamma): shape ``(H,)``."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor ({FLOAT_NAMES}), got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != H:
        raise ValueError(f"{name} must have shape ({H},) (the normalized last dim of the residual), "
                         f"got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on the residual's device {device}, got {t.device}")


def check_out_dtype(out_dtype, name: str = "out_dtype") -> None:
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be None or a floating-point dtype ({FLOAT_NAMES}), got {out_dtype}")


def check_param_dtype(dtype, name: str = "dtype") -> None:
    """A module's parameter dtype: None or a floating-point dtype sdkernels computes in."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be None or a floating-point dtype ({FLOAT_NAMES}), got {dtype}")


def check_norm_input(residual: torch.Tensor, dim: int, sample_dim) -> None:
    """The add + norm layout: at least 2 dims, the sample dim not the normalised last one."""
    if residual.dim() < 2:
        raise ValueError(f"residual must have at least 2 dims (samples, ..., the normalized last dim), "
                         f"got shape {tuple(residual.shape)}")
    if dim == residual.dim() - 1:
        raise ValueError(f"sample_dim must not be the normalized last dim, got sample_dim={sample_dim} "
                         f"for {residual.dim()} dims")


def check_normalized_shape(normalized_shape) -> Tuple[int]:
    """``normalized_shape`` of a norm over the last dim: an int or a 1-element sequence of one; as a tuple."""
    if isinstance(normalized_shape, bool):
        raise TypeError(f"normalized_shape must be an int or a 1-element tuple/list/Size, got {normalized_shape!r}")
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    if not isinstance(normalized_shape, (tuple, list, torch.Size)):
        raise TypeError(f"normalized_shape must be an int or a 1-element tuple/list/Size (the last dim), "
                        f"got {type(normalized_shape).__name__}")
    shape = tuple(normalized_shape)
    if len(shape) != 1 or isinstance(shape[0], bool) or not isinstance(shape[0], int) or shape[0] < 1:
        raise ValueError(f"normalized_shape must be one positive int (the last dim), got {shape}")
    return shape


# ---- raw ops (the Triton twins; the C++ kernels check the same) ---------------------------------------

def op_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"sdkernels: {name} must be a {FLOAT_NAMES} tensor, got {t.dtype}")


def op_devices(*tensors) -> None:
    """Every tensor (None skipped) on the first one's device, as ATen requires, checked with ``torch._check``
    so that fake kernels keep it: a meta tensor beside a CPU one must not reach a fake kernel and return
    uninitialised CPU memory."""
    dev = tensors[0].device
    for t in tensors[1:]:
        if t is not None and t.device != dev:
            torch._check(False, lambda: f"Tensor on device {t.device} is not on the expected device {dev}!")


def op_pair(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Both floating-point, of one shape, on one device (the C++ ops' messages)."""
    op_float(a, name_a)
    op_float(b, name_b)
    if a.shape != b.shape:
        raise ValueError(
            f"sdkernels: {name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"sdkernels: {name_a} is on {a.device} but {name_b} is on {b.device}")


def op_sample_dim(sample_dim: int, ndim: int) -> int:
    if ndim < 1:
        raise IndexError("sdkernels: a 0-dim tensor has no sample dim")
    if not -ndim <= sample_dim < ndim:
        raise IndexError(f"sdkernels: sample_dim {sample_dim} is out of range for a tensor of {ndim} dims")
    return sample_dim % ndim


def op_channel_dim(channel_dim: int, ndim: int, sample_dim: int) -> int:
    if not -ndim <= channel_dim < ndim:
        raise IndexError(f"sdkernels: channel_dim {channel_dim} is out of range for a tensor of {ndim} dims")
    cd = channel_dim % ndim
    if cd == sample_dim:
        raise ValueError(f"sdkernels: channel_dim ({channel_dim}) must differ from sample_dim ({sample_dim})")
    return cd


def op_scale(scale: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """The per-sample scale: float32/float64, one value per sample or one for all; contiguous."""
    if scale.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"sdkernels: scale must be float32 or float64, got {scale.dtype}")
    if scale.dim() > 1 or (scale.numel() != n and scale.numel() != 1):
        raise ValueError(
            f"sdkernels: scale must hold one value per sample ({n}) or a single value, got shape {tuple(scale.shape)}")
    if scale.device != device:
        raise ValueError(f"sdkernels: scale is on {scale.device} but the input is on {device}")
    return scale.contiguous()


def op_gamma(gamma: torch.Tensor, C: int, device: torch.device, acc: torch.dtype) -> torch.Tensor:
    """LayerScale's gamma at the op level: 1-D, ``C`` values; returned in the math dtype, contiguous."""
    op_float(gamma, "gamma")
    if gamma.dim() != 1 or gamma.shape[0] != C:
        raise ValueError(f"sdkernels: gamma must be 1-D with one value per channel ({C}), got shape {tuple(gamma.shape)}")
    if gamma.device != device:
        raise ValueError(f"sdkernels: gamma is on {gamma.device} but the input is on {device}")
    return gamma.to(acc).contiguous()


def op_out_dtype(dtype, name: str = "dtype") -> None:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"sdkernels: {name} must be {FLOAT_NAMES}, got {dtype}")


def op_norm_dims(t: torch.Tensor, sample_dim: int) -> int:
    """The add + norm ops' layout: >= 2 dims, sample_dim not the normalised last dim; returns it wrapped."""
    if t.dim() < 2:
        raise ValueError(f"sdkernels: add_norm needs at least 2 dims (samples, ..., the normalized last dim), "
                         f"got {t.dim()}")
    dim = op_sample_dim(sample_dim, t.dim())
    if dim == t.dim() - 1:
        raise ValueError(f"sdkernels: sample_dim must not be the normalized last dim ({sample_dim} of {t.dim()} dims)")
    return dim


def op_norm_param(t: Optional[torch.Tensor], name: str, H: int, device) -> Optional[torch.Tensor]:
    """An optional ``(H,)`` parameter of the add + norm ops; returned contiguous."""
    if t is None:
        return None
    if not t.is_floating_point():
        raise TypeError(f"sdkernels: {name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != H:
        raise ValueError(f"sdkernels: {name} must have shape ({H},) (the normalized last dim), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"sdkernels: {name} is on {t.device} but the inputs are on {device}")
    return t.contiguous()


def op_index(index: torch.Tensor, device) -> None:
    """The skip path's sample index: 1-D int64 on the inputs' device."""
    if index.dtype != torch.int64:
        raise TypeError(f"sdkernels: index must be int64, got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"sdkernels: index must be 1-D, got shape {tuple(index.shape)}")
    if index.device != device:
        raise ValueError(f"sdkernels: index is on {index.device} but the tensors are on {device}")
