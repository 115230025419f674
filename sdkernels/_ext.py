"""Loads the compiled extension once; sdkernels still imports without it."""
import warnings

import torch

try:
    from . import _C  # noqa: F401  (registers the sdkernels::* ops)

    HAS_EXT = True
    EXT_ERROR = None
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    HAS_EXT = False
    EXT_ERROR = e
    warnings.warn(
        f"sdkernels: the compiled kernels could not be loaded ({e}); only the "
        "'reference' backend is available. Reinstall with "
        "`pip install --no-build-isolation -e .` to build them.",
        RuntimeWarning,
        stacklevel=2,
    )


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the extension registered ``sdkernels::<op>`` for ``dispatch_key`` (e.g. "CPU", "CUDA")."""
    if not HAS_EXT:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sdkernels::{op}", dispatch_key)
