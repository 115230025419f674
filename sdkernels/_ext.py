"""Loads the compiled extension once; sdkernels still imports without it.

Whatever goes wrong (no extension in a pure-Python install, one compiled against another torch, a damaged
file, an error while its ops register), ``import sdkernels`` goes on: it warns once, naming the cause and the
fix, and the op families register only their pure-Python backends (the reference, and Triton where it
imports).  :data:`HAS_EXT` says whether the extension loaded, :func:`status` says why not.
"""
import importlib
import os
import warnings

import torch

_SOURCE_INSTALL = "pip install --no-build-isolation sdkernels (or, from a clone, pip install --no-build-isolation .)"


def _explain(error: BaseException) -> str:
    """The cause of a failed load and its fix, in a sentence each."""
    text = str(error)
    if isinstance(error, ModuleNotFoundError) and getattr(error, "name", None) == f"{__package__}._C":
        return ("the compiled extension is not installed (a pure-Python install, SDKERNELS_BUILD_EXT=0, or a "
                f"source tree that was never built). To build it, run `{_SOURCE_INSTALL}` with a C++ compiler.")
    if "undefined symbol" in text or "Symbol not found" in text:
        return (f"the compiled extension was built against another torch than the installed {torch.__version__} "
                f"({text}). Rebuild it against this torch: `{_SOURCE_INSTALL}`.")
    return (f"the compiled extension failed to load ({type(error).__name__}: {text}). Reinstall it against "
            f"torch {torch.__version__}: `{_SOURCE_INSTALL}`.")


HAS_EXT = False
#: The exception that stopped the extension from loading (None when it loaded or was switched off).
EXT_ERROR = None

if os.environ.get("SDKERNELS_DISABLE_EXT", "0") == "1":
    EXT_STATUS = "not loaded: SDKERNELS_DISABLE_EXT=1"
else:
    try:
        # import_module, not ``from . import _C``: a missing module then raises ModuleNotFoundError naming it.
        _C = importlib.import_module(f"{__package__}._C")  # registers the sdkernels::* ops

        HAS_EXT = True
        EXT_STATUS = f"loaded ({_C.__file__})"
    except Exception as e:  # noqa: BLE001 - any failure falls back to the pure-Python backends
        EXT_ERROR = e
        EXT_STATUS = "not loaded: " + _explain(e)
        warnings.warn(
            f"sdkernels: {_explain(e)} Only the pure-Python backends (reference, and Triton where it imports) "
            "are registered.",
            RuntimeWarning,
            stacklevel=2,
        )


def status() -> str:
    """One line on the compiled extension: ``"loaded (<path>)"`` or ``"not loaded: <cause and fix>"``."""
    return EXT_STATUS


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the extension registered ``sdkernels::<op>`` for ``dispatch_key`` (e.g. "CPU", "CUDA")."""
    if not HAS_EXT:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"sdkernels::{op}", dispatch_key)
    except RuntimeError:  # the op is not registered (an extension older than this package)
        return False
