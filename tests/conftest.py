"""Shared fixtures: the device and backend matrix.

Every compiled backend available here is tested against sdkernels.reference on
the devices it runs on.  CUDA cases are collected everywhere and skipped where
no GPU is present (marker ``cuda``).  Triton interpreter tests run in their own
pytest process (``TRITON_INTERPRET=1 pytest -m triton_interpret``): the
variable is read when ``@triton.jit`` runs.

Heavy tests (:data:`HEAVY`: tens of seconds each on a 2-core CPU) are marked
``heavy`` here and left out of ``make test``; ``make test-heavy`` runs them
(``-m heavy``, in both processes) and CI runs both targets.
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


#: Tests marked ``heavy`` (out of ``make test``, run by ``make test-heavy``): a test's node id, or that of
#: one of its parametrisations, -> why it is heavy.  Seconds from one run of each suite on a loaded
#: 2-core CPU.  tests/test_markers.py checks that every entry names a test that exists.
HEAVY = {
    # main suite
    "tests/test_benchmarks.py::test_gpu_check_dry_run": "the GPU check's dry run: every step of it on CPU (38 s)",
    "tests/test_distributed_multiproc.py::test_sequence_parallel_two_ranks": "two gloo processes (14 s)",
    "tests/test_distributed_multiproc.py::test_ddp_batch_mode_ranks_drop_the_same_blocks": "two gloo processes (8 s)",
    "tests/test_distributed_multiproc.py::test_fsdp2_tensor_parallel_four_ranks_match_one_process":
        "four gloo processes, FSDP2 x tensor parallel (20 s)",
    "tests/test_skip_ddp.py::test_ddp_batch_mode_two_ranks_stay_in_sync": "two gloo processes, DDP (18 s)",
    "tests/test_triton_aot.py::test_every_kernel_compiles": "every Triton kernel compiled ahead of time (59 s)",
    "tests/test_skip.py::test_triton_every_kernel_compiles": "every Triton skip kernel compiled ahead of time (19 s)",
    "tests/test_add_norm_aot.py::test_every_kernel_compiles": "every add + norm Triton kernel compiled (7 s)",
    "tests/test_layer_scale.py::test_cuda_layer_scale_kernels_use_128_bit_accesses": "nvcc to SASS (12 s)",
    "tests/test_cuda_kernels.py::test_vector_path_uses_128_bit_accesses": "nvcc to SASS (10 s)",
    "tests/test_convert.py::test_convert_model": "ten real timm and torchvision models (60 s)",
    "tests/test_bench_models.py::test_models_suite_rows": "the models suite on a real ViT (8 s)",
    "tests/test_bench_models.py::test_train_suite_convert_follows_eager": "trains a real ViT (5 s)",
    "tests/test_skip.py::test_block_suite_smoke": "the block suite on ViT-B blocks (15 s)",
    "tests/test_skip.py::test_block_suite_profile_counts": "the block suite, profiled (10 s)",
    # Triton interpreter suite
    "tests/test_triton_fastpath.py::test_gradcheck_gradgradcheck_fp64": "fp64 gradgradcheck, interpreted (134 s)",
    "tests/test_skip.py::test_block_gradcheck_gradgradcheck_fp64[cpu-triton-interpret]":
        "fp64 gradgradcheck, interpreted (48 s)",
    "tests/test_skip_triton_interpret.py::test_triton_opcheck_and_gradcheck": "opcheck and gradcheck, interpreted (20 s)",
    "tests/test_add_norm_triton_interpret.py::test_gradgradcheck_fp64": "fp64 gradgradcheck, interpreted (31 s)",
    "tests/test_layer_scale_interpret.py::test_compile_fullgraph_on_cpu_under_interpreter":
        "torch.compile of interpreted kernels (17 s)",
}


def heavy_reason(nodeid: str):
    """Why the test ``nodeid`` is heavy (:data:`HEAVY`), or None."""
    for key, why in HEAVY.items():
        if nodeid == key or nodeid.startswith(key + "["):
            return why
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        why = heavy_reason(item.nodeid)
        if why is not None:
            item.add_marker(pytest.mark.heavy(reason=why))
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
