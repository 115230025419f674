"""The op families: each one file with the same sections.

``core`` (``residual + drop_path(branch)``, ``drop_path``), ``layer_scale`` (with LayerScale's
gamma), ``add_norm`` (drop path + add + LayerNorm / RMSNorm) and ``skip`` (the skip path's scaled
index-add).  Every family file holds, in this order:

1. allocation rules (shared by its fake kernels and Triton twin; the C++ kernels allocate alike);
2. fake kernels of its C++ ops (``torch.library.register_fake``);
3. autograd rules: the Python twin of ``csrc/autograd/<family>.cpp`` (the C++ ops keep theirs in
   C++, off the Python dispatch path; the Triton twin registers these);
4. the Triton twin (``sdkernels::<op>_triton``, kernels in ``sdkernels.triton_kernels``), when
   Triton imports; shared glue in :mod:`sdkernels.ops.launch`;
5. ``BACKENDS``: the family's :class:`sdkernels.backends.BackendTable`;
6. ``SHARDING``: its DTensor rules (registered by :mod:`sdkernels.distributed`).

Schemas live in ``csrc/ops/<family>.cpp``, the spec in ``sdkernels/reference/<family>.py``, the
public functions in :mod:`sdkernels.functional` and the modules in :mod:`sdkernels.nn`.
"""
from . import core, layer_scale, add_norm, skip  # noqa: F401  (registers every op)

__all__ = ["core", "layer_scale", "add_norm", "skip", "FAMILIES"]

#: The family modules, in dependency order.
FAMILIES = (core, layer_scale, add_norm, skip)
