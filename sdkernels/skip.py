"""Import shim: the skip path now lives in :mod:`sdkernels.ops.skip` (ops), :mod:`sdkernels.functional`
(``drop_path_residual``, ``kept_count``) and :mod:`sdkernels.nn` (``StochasticResidual``)."""
from .checks import COUNTS
from .functional import SKIP, drop_path_residual, kept_count
from .nn import StochasticResidual
from .ops.skip import register_autograd as register_index_autograd, samples_like
from .reference import index_scale as reference_index_scale, scaled_index_add as reference_scaled_index_add

__all__ = ["drop_path_residual", "StochasticResidual", "kept_count", "samples_like", "reference_scaled_index_add",
           "reference_index_scale", "register_index_autograd", "available_skip_backends", "COUNTS"]


def available_skip_backends():
    """Names of the skip-path backends usable in this process, e.g. ``("reference", "cpu")``."""
    return SKIP.available()
