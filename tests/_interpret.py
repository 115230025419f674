"""The preamble of the Triton test modules: the registered Triton ops, and the interpreter's skip.

``TRITON_INTERPRET`` is read when ``@triton.jit`` runs, so the interpreter modules
run in their own process: ``TRITON_INTERPRET=1 pytest -m triton_interpret``.  Call
:func:`triton_ops_under_interpreter` at module level, before anything imports
Triton's kernels.
"""
import os
import types

import pytest

#: The Triton twins of the C++ ops, in the order of the families' ``TRITON["ops"]``.
CORE_NAMES = ("scaled_residual_add", "sample_scale")
LAYER_SCALE_NAMES = ("scaled_residual_add_ls", "sample_scale_ls", "layer_scale_grads")


def triton_twins():
    """``(T, None)``: the registered Triton ops under their C++ twins' names (``T.scaled_residual_add`` is
    ``torch.ops.sdkernels.scaled_residual_add_triton.default``); ``(None, error)`` when Triton did not import."""
    from sdkernels.ops import core, layer_scale

    if core.TRITON is None or layer_scale.TRITON is None:
        return None, core.TRITON_IMPORT_ERROR or layer_scale.TRITON_IMPORT_ERROR
    ops = dict(zip(CORE_NAMES, core.TRITON["ops"]), **dict(zip(LAYER_SCALE_NAMES, layer_scale.TRITON["ops"])))
    return types.SimpleNamespace(**ops), None


def triton_ops_under_interpreter():
    """``(Triton ops namespace of triton_twins(), sdkernels.triton_kernels.drop_path)``, or a module-level skip
    saying why not."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "Triton interpreter tests need TRITON_INTERPRET=1 in the environment before import; "
            "run them in their own process: TRITON_INTERPRET=1 pytest -m triton_interpret",
            allow_module_level=True,
        )
    pytest.importorskip("triton", reason="Triton is not installed")
    T, err = triton_twins()
    if T is None:  # pragma: no cover
        pytest.skip(f"the Triton backend does not import: {err}", allow_module_level=True)
    from sdkernels.triton_kernels import drop_path

    if not drop_path.INTERPRET:  # pragma: no cover
        pytest.skip("sdkernels.triton_kernels was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
    return T, drop_path
