"""Import shim: the Triton twins now live with their families in :mod:`sdkernels.ops` (``ops.core``,
``ops.layer_scale``; shared glue in :mod:`sdkernels.ops.launch`).  Raises ImportError without Triton."""
from .ops import core as _core, layer_scale as _layer_scale

if _core.TRITON is None:
    raise ImportError(f"the Triton backend is not available: {_core.TRITON_IMPORT_ERROR}")

from .ops.launch import AVAILABLE, DEVICES, INTERPRET  # noqa: E402

#: ``torch.ops.sdkernels.scaled_residual_add_triton.default`` and its siblings (the C++ ops' signatures).
scaled_residual_add, sample_scale = _core.TRITON["ops"]
scaled_residual_add_ls, sample_scale_ls, layer_scale_grads = _layer_scale.TRITON["ops"]

__all__ = ["scaled_residual_add", "sample_scale", "scaled_residual_add_ls", "sample_scale_ls", "layer_scale_grads",
           "INTERPRET", "AVAILABLE", "DEVICES"]
