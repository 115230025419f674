"""sdkernels: fused stochastic depth (DropPath) kernels for PyTorch.

``drop_path_add(residual, branch, p)`` computes ``residual + drop_path(branch)``
in one pass over memory, forward and backward, on CPU (C++), CUDA and Triton.
"""
from . import compat, nn, reference, rng  # noqa: F401
from .functional import available_backends, drop_path, drop_path_add, drop_path_rates

__version__ = "0.1.0"
__all__ = ["drop_path_add", "drop_path", "available_backends", "drop_path_rates", "nn", "reference", "compat"]

# ---- skip path (issue 5): branch run on kept samples only ------------------
from .skip import drop_path_residual  # noqa: E402

__all__ += ["drop_path_residual"]

# ---- one call for timm and torchvision models (issue 12) --------------------
from .conversion import conversion_report, convert, unconvert  # noqa: E402

__all__ += ["convert", "unconvert", "conversion_report"]

# ---- add + norm (issue 14): drop path + residual add + LayerNorm / RMSNorm ------
from .add_norm import drop_path_add_norm  # noqa: E402

__all__ += ["drop_path_add_norm"]

# ---- distributed training (issue 15): DTensor sharding rules of every op built here ---------
from . import distributed  # noqa: E402

distributed.register_rules()
__all__ += ["rng", "distributed"]
