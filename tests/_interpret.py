"""The preamble of the Triton-interpreter test modules: skip unless the interpreter runs, else import.

``TRITON_INTERPRET`` is read when ``@triton.jit`` runs, so these modules run in
their own process: ``TRITON_INTERPRET=1 pytest -m triton_interpret``.  Call
:func:`triton_ops_under_interpreter` at module level, before anything imports
Triton's kernels.
"""
import os

import pytest


def triton_ops_under_interpreter():
    """``(sdkernels.triton_ops, sdkernels.triton_kernels.drop_path)``, or a module-level skip saying why not."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "Triton interpreter tests need TRITON_INTERPRET=1 in the environment before import; "
            "run them in their own process: TRITON_INTERPRET=1 pytest -m triton_interpret",
            allow_module_level=True,
        )
    pytest.importorskip("triton", reason="Triton is not installed")
    try:
        from sdkernels import triton_ops
        from sdkernels.triton_kernels import drop_path
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"sdkernels.triton_ops does not import: {e}", allow_module_level=True)
    if not drop_path.INTERPRET:  # pragma: no cover
        pytest.skip("sdkernels.triton_kernels was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
    return triton_ops, drop_path
