"""sdkernels: fused stochastic depth (DropPath) kernels for PyTorch.

``drop_path_add(residual, branch, p)`` computes ``residual + drop_path(branch)``
in one pass over memory, forward and backward, on CPU (C++), CUDA and Triton.
"""
from . import compat, distributed, nn, reference, rng  # noqa: F401
from .conversion import conversion_report, convert, unconvert
from .functional import (available_backends, drop_path, drop_path_add, drop_path_add_norm, drop_path_rates,
                         drop_path_residual)

__version__ = "0.1.0"
__all__ = ["drop_path_add", "drop_path", "drop_path_add_norm", "drop_path_residual", "available_backends",
           "drop_path_rates", "convert", "unconvert", "conversion_report", "nn", "reference", "compat", "rng",
           "distributed"]

distributed.register_rules()
