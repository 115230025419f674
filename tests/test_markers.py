"""The heavy-test table of tests/conftest.py names tests that exist, and the marker is registered."""
import ast
import os

import pytest

import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _functions(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


@pytest.mark.parametrize("key", sorted(conftest.HEAVY))
def test_heavy_entries_name_existing_tests(key):
    path, _, name = key.partition("::")
    assert os.path.isfile(os.path.join(ROOT, path)), f"{key}: no such file"
    func = name.split("[")[0]
    assert func in _functions(path), f"{key}: no test {func} in {path}"


def test_heavy_reason_matches_parametrisations_only():
    key = "tests/test_triton_fastpath.py::test_gradcheck_gradgradcheck_fp64"
    assert conftest.heavy_reason(key + "[0]") == conftest.HEAVY[key]
    assert conftest.heavy_reason(key) == conftest.HEAVY[key]
    assert conftest.heavy_reason(key + "_other") is None
    assert conftest.heavy_reason("tests/test_skip.py::test_block_gradcheck_gradgradcheck_fp64[cpu-cpu]") is None


def test_heavy_marker_is_registered(pytestconfig):
    assert any(m.startswith("heavy:") for m in pytestconfig.getini("markers"))
