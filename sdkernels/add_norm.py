"""Import shim: the add + norm family now lives in :mod:`sdkernels.ops.add_norm` (ops) and
:mod:`sdkernels.functional` (``drop_path_add_norm``)."""
from .checks import NORMS
from .functional import ADD_NORM, drop_path_add_norm
from .ops.add_norm import x_like

__all__ = ["drop_path_add_norm", "available_add_norm_backends", "NORMS", "x_like"]


def available_add_norm_backends():
    """Names of the add + norm backends usable in this process, e.g. ``("reference", "cpu")``."""
    return ADD_NORM.available()
