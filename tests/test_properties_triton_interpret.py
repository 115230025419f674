"""The property-based tests of tests/test_properties.py on the Triton backend, under the Triton interpreter.

Run in its own process: ``TRITON_INTERPRET=1 pytest -m triton_interpret``.  Every
interpreted launch costs milliseconds, so the tensors are smaller and the
examples fewer than on the CPU backend; the cases and checks are the same
(tests/_property_cases.py).
"""
import pytest

from _interpret import triton_ops_under_interpreter

pytestmark = pytest.mark.triton_interpret

triton_ops_under_interpreter()
pytest.importorskip("hypothesis")

import torch  # noqa: E402

import sdkernels  # noqa: E402
import _property_cases as C  # noqa: E402

globals().update(C.property_tests("triton", max_numel=256, max_examples=40))


def test_the_triton_backend_runs_cpu_tensors_here():
    assert "triton" in sdkernels.available_backends()
    x = torch.randn(4, 3)
    assert sdkernels.drop_path(x, 0.5, backend="triton").shape == x.shape
