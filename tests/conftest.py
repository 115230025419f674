"""Shared fixtures: the device and backend matrix.

Every compiled backend available here is tested against sdkernels.reference on
the devices it runs on.  CUDA cases are collected everywhere and skipped where
no GPU is present (marker ``cuda``).  Triton interpreter tests run in their own
pytest process (``TRITON_INTERPRET=1 pytest -m triton_interpret``): the
variable is read when ``@triton.jit`` runs.
"""
import os

import pytest
import torch

import sdkernels

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")])]


def backends_for(device: str):
    """Compiled backends that run tensors of ``device`` here, plus the reference."""
    avail = sdkernels.available_backends()
    names = ["reference"]
    if device == "cpu" and "cpu" in avail:
        names.append("cpu")
    if device == "cuda":
        names += [b for b in ("cuda", "triton") if b in avail]
    return names


def _device_backend_params():
    params = []
    for dev in ("cpu", "cuda"):
        if dev == "cuda" and not HAS_CUDA:
            params.append(pytest.param(("cuda", "cuda"), id="cuda", marks=[pytest.mark.cuda, pytest.mark.skip(reason="needs a CUDA device")]))
            continue
        for be in backends_for(dev):
            if be == "reference":
                continue
            marks = [pytest.mark.cuda] if dev == "cuda" else []
            params.append(pytest.param((dev, be), marks=marks, id=f"{dev}-{be}"))
    return params


DEVICE_BACKENDS = _device_backend_params()


@pytest.fixture(params=DEVICE_BACKENDS)
def device_backend(request):
    """(device, backend) for every compiled backend here; CUDA cases skip without a GPU."""
    return request.param


@pytest.fixture
def replace_backend():
    """``replace_backend(table, name, devices, available, **ops)``: register backend ``name`` anew in an op
    family's table (``sdkernels.functional.CORE`` ...) for one test; the entry it replaced comes back after."""
    saved = []

    def replace(table, name, devices, available, **ops):
        old = table.get(name)
        assert old is not None, f"backend {name!r} is not registered for {table.family}"
        saved.append((table, old))
        table.register(name, devices, available, **ops)

    yield replace
    for table, old in reversed(saved):
        table.register(old.name, old.devices, old.available, **old.ops)


def pytest_collection_modifyitems(config, items):
    # Interpreter tests need TRITON_INTERPRET=1 set before triton is imported:
    # keep them out of a normal run unless explicitly selected with -m.
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    markexpr = config.getoption("-m") or ""
    if "triton_interpret" in markexpr and "not" not in markexpr:
        return
    skip = pytest.mark.skip(reason="Triton interpreter tests run in their own process: TRITON_INTERPRET=1 pytest -m triton_interpret")
    for item in items:
        if "triton_interpret" in item.keywords:
            item.add_marker(skip)
