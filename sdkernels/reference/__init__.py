"""Pure-PyTorch reference: the executable specification of sdkernels.

Every test and benchmark compares against these functions; nothing else in the project re-types
them.  They favour clarity over speed.  One module per op family (``core``, ``layer_scale``,
``add_norm``, ``skip``), the public functions' spec in ``functional``, the eager code sdkernels
replaces in ``baselines``, and the dtype rules every family shares re-exported from
:mod:`sdkernels.dtypes`.

The core operation (``s`` indexes ``sample_dim``)::

    out[s] = residual[s] + branch[s] * (scale[s] * alpha)   if scale[s] != 0
    out[s] = residual[s]                                    if scale[s] == 0

A dropped sample's branch is never read, so NaN or Inf there does not reach
the output.  The math is fp32 (fp64 when any tensor is fp64) and the result is
rounded once to ``torch.promote_types(residual.dtype, branch.dtype)``.
"""
from ..dtypes import acc_dtype, add_norm_dtypes, draw_dtype, drop_dtypes, keep_scale
from .add_norm import NORMS, add_norm, add_norm_backward, norm_rows, norm_stats
from .baselines import timm_drop_path, timm_layer_scale_drop_path_add, torchvision_stochastic_depth
from .core import draw_keep, draw_keep_hf, drop_path_rates, per_sample, sample_scale, scaled_residual_add
from .functional import drop_path, drop_path_add, drop_path_add_norm
from .layer_scale import layer_scale_grads, layer_scale_view, sample_scale_ls, scaled_residual_add_ls
from .skip import index_scale, scaled_index_add

__all__ = [
    "acc_dtype", "draw_dtype", "drop_dtypes", "draw_keep", "draw_keep_hf", "keep_scale", "per_sample",
    "scaled_residual_add", "sample_scale", "drop_path_add", "drop_path", "drop_path_rates",
    "timm_drop_path", "torchvision_stochastic_depth",
    "layer_scale_view", "scaled_residual_add_ls", "sample_scale_ls", "layer_scale_grads",
    "timm_layer_scale_drop_path_add",
    "NORMS", "add_norm_dtypes", "norm_rows", "add_norm", "norm_stats", "add_norm_backward", "drop_path_add_norm",
    "scaled_index_add", "index_scale",
]
