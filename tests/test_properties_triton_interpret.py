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
from hypothesis import HealthCheck, given, settings  # noqa: E402

import sdkernels  # noqa: E402
import _property_cases as C  # noqa: E402

BACKEND = "triton"
MAX_NUMEL = 256
EXAMPLES = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@EXAMPLES
@given(case=C.drop_path_cases(MAX_NUMEL, layer_scale=False))
def test_drop_path_add(case):
    C.check_drop_path_add(case, BACKEND)


@EXAMPLES
@given(case=C.drop_path_cases(MAX_NUMEL, layer_scale=True))
def test_drop_path_add_layer_scale(case):
    C.check_drop_path_add(case, BACKEND)


@EXAMPLES
@given(case=C.drop_path_cases(MAX_NUMEL))
def test_drop_path(case):
    C.check_drop_path(case, BACKEND)


@EXAMPLES
@given(case=C.add_norm_cases(MAX_NUMEL))
def test_drop_path_add_norm(case):
    C.check_drop_path_add_norm(case, BACKEND)


@EXAMPLES
@given(case=C.residual_cases(MAX_NUMEL))
def test_drop_path_residual(case):
    C.check_drop_path_residual(case, BACKEND)


@pytest.mark.xfail(strict=True, reason=C.FP64_PARAMETERS_X)
@pytest.mark.parametrize("param", ["weight", "bias", "out_dtype"])
def test_add_norm_x_with_fp64_parameters(param):
    C.check_add_norm_x_with_fp64_parameters(param, BACKEND)


def test_the_triton_backend_runs_cpu_tensors_here():
    assert "triton" in sdkernels.available_backends()
    x = torch.randn(4, 3)
    assert sdkernels.drop_path(x, 0.5, backend=BACKEND).shape == x.shape
