"""Ahead-of-time compile of every Triton kernel for sm_80 and sm_90 (no GPU needed).

Each kernel is compiled from its AST with the arguments specialised as
Triton's runtime does for aligned tensors: ``tt.divisibility`` 16 on the
pointers and on the integer size / stride arguments.  The PTX of the
kernels must then use 128-bit global loads and stores (``ld.global.v4`` /
``st.global.v4``) for fp32 and bf16, and the row kernels must branch over the
branch's loads for a dropped row.
"""
import re

import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed")
import triton.language as tl  # noqa: E402

try:
    from triton.backends.compiler import GPUTarget  # noqa: F401
    from triton.compiler import ASTSource  # noqa: F401
except ImportError as e:  # pragma: no cover
    pytest.skip(f"this Triton has no ASTSource/GPUTarget API: {e}", allow_module_level=True)

from sdkernels.triton_kernels import drop_path as K  # noqa: E402
from sdkernels.triton_kernels.common import num_warps  # noqa: E402

if K.INTERPRET:
    pytest.skip("TRITON_INTERPRET=1 makes @triton.jit build interpreter kernels: no AOT compile", allow_module_level=True)

from _aot import PTR, aot_asm, aot_ptx, tensor_offset_types  # noqa: E402

TARGETS = [80, 90]

# kernel -> launch constants of a hot configuration (what the launcher picks for big tensors).
HOT = {
    "residual_add_rows": dict(BLOCK=4096),
    "residual_add_tiles": dict(ROWS=64, COLS=64),
    "sample_scale_rows": dict(BLOCK=4096),
    "sample_scale_tiles": dict(ROWS=64, COLS=64),
}


def _compile(name, dtypes, arch, consts, acc64=False, num_warps=8, scale="fp32"):
    """PTX of kernel `name`; dtypes maps each tensor pointer argument (out_ptr, res_ptr, ...) to a dtype name."""
    ptrs = {arg: PTR[dt] for arg, dt in dtypes.items()}
    ptrs["scale_ptr"] = PTR[scale]
    return aot_ptx(name, K.KERNELS[name], ptrs, arch, dict(consts, ACC64=acc64), num_warps=num_warps)


def _ptrs(name, dt):
    return {a: dt for a in K.KERNELS[name].arg_names if a.endswith("_ptr") and a != "scale_ptr"}


def _global_ops(ptx):
    return (sorted(set(re.findall(r"ld\.global(?:\.[a-z0-9_]+)*", ptx))),
            sorted(set(re.findall(r"st\.global(?:\.[a-z0-9_]+)*", ptx))))


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(HOT))
def test_every_address_uses_64bit_offsets(name, dt):
    """Tensors past 2**31 elements: every vector of addresses is built from int64 offsets (TTIR), as the
    kernels promise; the 64-bit run itself needs a GPU with tens of GB (tests/test_triton_cuda.py)."""
    ptrs = {arg: PTR[d] for arg, d in _ptrs(name, dt).items()}
    ptrs["scale_ptr"] = PTR["fp32"]
    ttir = aot_asm(name, K.KERNELS[name], ptrs, 90, dict(HOT[name], ACC64=False))["ttir"]
    n_addptr = len(re.findall(r"tt\.addptr [^:]*: tensor<", ttir))
    assert n_addptr >= len(ptrs) - 1, f"{name}: expected a tensor addptr per tensor argument"
    assert tensor_offset_types(ttir) == {"i64"}, f"{name}: offsets {tensor_offset_types(ttir)}"


@triton.jit
def _copy_i32_offsets(out_ptr, x_ptr, numel, BLOCK: tl.constexpr):  # control: a 32-bit offset kernel
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=offs < numel), mask=offs < numel)


def test_offset_check_sees_32bit_offsets():
    ttir = aot_asm("control", _copy_i32_offsets, {"out_ptr": "*fp32", "x_ptr": "*fp32"}, 90, dict(BLOCK=1024))["ttir"]
    assert tensor_offset_types(ttir) == {"i32"}


@pytest.mark.parametrize("arch", TARGETS)
@pytest.mark.parametrize("dt", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(HOT))
def test_hot_kernels_use_128bit_loads_and_stores(name, dt, arch):
    ptx = _compile(name, _ptrs(name, dt), arch, HOT[name])
    loads, stores = _global_ops(ptx)
    assert any(op.startswith("ld.global.v4") for op in loads), f"{name} {dt} sm_{arch}: loads {loads}"
    assert any(op.startswith("st.global.v4") for op in stores), f"{name} {dt} sm_{arch}: stores {stores}"
    # Every tensor access is vectorised: the only scalar loads are the scale's.
    n_tensor_loads = len(re.findall(r"ld\.global\.v4", ptx))
    n_inputs = len(_ptrs(name, dt)) - 1
    per_thread_bytes = 4096 * (4 if dt == "fp32" else 2) // (8 * 32)
    assert n_tensor_loads == n_inputs * per_thread_bytes // 16, ptx.count("ld.global")
    assert "ld.global.v2" not in ptx and not re.search(r"ld\.global(\.[a-z]+)*\.b16", ptx)


@pytest.mark.parametrize("arch", TARGETS)
def test_row_kernel_branches_over_the_branch_load(arch):
    # The dropped case must not issue the branch's loads: a `bra` on the scale comes before them.
    ptx = _compile("residual_add_rows", _ptrs("residual_add_rows", "fp32"), arch, HOT["residual_add_rows"])
    lines = ptx.splitlines()
    bra = next(i for i, l in enumerate(lines) if re.search(r"@%p\d+ bra", l))
    loads_before = sum("ld.global.v4" in l for l in lines[:bra])
    loads_after = sum("ld.global.v4" in l for l in lines[bra:])
    assert loads_before == 4 and loads_after == 4, (loads_before, loads_after)  # residual, then branch
    ptx = _compile("sample_scale_rows", _ptrs("sample_scale_rows", "fp32"), arch, HOT["sample_scale_rows"])
    lines = ptx.splitlines()
    bra = next(i for i, l in enumerate(lines) if re.search(r"@%p\d+ bra", l))
    assert not any("ld.global.v4" in l for l in lines[:bra])


# Every kernel, every dtype combination the launcher can give it, both targets.
COMBOS = [
    # (out, first input, second input, acc64)
    ("fp32", "fp32", "fp32", False),
    ("bf16", "bf16", "bf16", False),
    ("fp16", "fp16", "fp16", False),
    ("fp64", "fp64", "fp64", True),
    ("fp32", "fp32", "bf16", False),
    ("fp32", "fp16", "bf16", False),
    ("fp64", "fp64", "bf16", True),
    ("bf16", "fp64", None, True),  # sample_scale: fp64 grad to a bf16 branch's gradient
]
CONFIGS = {
    "rows": [dict(BLOCK=4096), dict(BLOCK=256)],
    "tiles": [dict(ROWS=4096, COLS=1), dict(ROWS=1, COLS=1024), dict(ROWS=128, COLS=32)],
}


@pytest.mark.parametrize("arch", TARGETS)
@pytest.mark.parametrize("name", list(K.KERNELS))
def test_every_kernel_compiles(name, arch):
    kind = "rows" if name.endswith("rows") else "tiles"
    args = [a for a in K.KERNELS[name].arg_names if a.endswith("_ptr") and a != "scale_ptr"]
    for out, a, b, acc64 in COMBOS:
        if len(args) == 3 and b is None:
            continue
        if len(args) == 2 and b is not None and a != b:
            continue
        dtypes = dict(zip(args, [out, a, b]))
        for consts in CONFIGS[kind]:
            for scale in ("fp32", "fp64") if consts is CONFIGS[kind][0] else ("fp32",):
                ptx = _compile(name, dtypes, arch, consts, acc64=acc64, num_warps=num_warps(4096), scale=scale)
                assert ".entry" in ptx


# ---- what torch.compile sees, traced on fake CUDA tensors (no GPU needed) ----------------------


def _trace_functional(f, *specs):
    """make_fx graph of f under functionalization (where triton_op decomposes), on fake CUDA tensors."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    with FakeTensorMode():
        args = [torch.empty(shape, dtype=dt, device="cuda") for shape, dt in specs]
        return make_fx(dispatch_functionalize(f))(*args)


def test_triton_ops_decompose_into_the_triton_kernels():
    import logging

    import torch
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from _interpret import triton_twins

    T, _ = triton_twins()

    def f(r, b, k):
        return T.scaled_residual_add(r, b, k, 1, 1 / 0.9) + T.sample_scale(b, k, 1, 2.0, torch.float32)

    # Without a GPU the HOP's mutation analysis cannot ask the driver for a target: it logs that and
    # conservatively clones every input.  On a GPU it finds that only out_ptr is written.
    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)
    gm = _trace_functional(f, ((197, 8, 1024), torch.float32), ((197, 8, 1024), torch.bfloat16), ((8,), torch.float32))
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and "triton_kernel_wrapper" in str(n.target)]
    assert len(calls) == 2
    kernels = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]) for n in calls]
    names = [getattr(k, "fn", k).fn.__name__ for k in kernels]
    assert names == ["_residual_add_rows_kernel", "_sample_scale_rows_kernel"]
    kw = calls[0].kwargs["kwargs"]
    # seq-first [S, B, H], sample_dim=1: no copy, inner = H, n = B, 128-bit friendly block
    assert (kw["inner"], kw["n"], kw["BLOCK"], kw["ACC64"]) == (1024, 8, 1024, False)
    assert kw["a_hi"] + kw["a_mid"] + kw["a_lo"] == 1 / 0.9
    assert not any("copy" in str(n.target) for n in gm.graph.nodes)


def test_import_sdkernels_without_triton():
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None\n"
            "import sdkernels\n"
            "assert 'triton' not in sdkernels.available_backends()\n"
            "from sdkernels.ops import core, layer_scale, add_norm, skip\n"
            "assert all(f.TRITON is None and f.TRITON_IMPORT_ERROR is not None\n"
            "           for f in (core, layer_scale, add_norm, skip))\n"
            "for family in ('core', 'layer_scale', 'add_norm', 'skip'):\n"
            "    assert 'triton' not in sdkernels.available_backends(family)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_auto_rule_between_cuda_and_triton(monkeypatch):
    import torch

    from sdkernels.backends import TABLES, BackendTable

    # A table of its own (every family's table picks with the same rule), kept out of TABLES after the test.
    monkeypatch.setitem(TABLES, "auto-rule-test", None)
    table = BackendTable("auto-rule-test", ("op",))
    table.register("reference", None, True, op=None)
    for name in ("cuda", "triton"):
        table.register(name, {"cuda"}, True, op=None)
    assert table.auto("cuda", 8 * 16 * 64).name == "cuda"  # host-bound: the C++ op
    # measured on an H200: the C++ op wins at every size, so Triton only when it is alone
    assert table.auto("cuda", 256 * 197 * 1024).name == "cuda"
    assert table.auto("cuda", 2**40).name == "cuda"
    assert table.pick("auto", torch.device("cuda"), 2**40).name == "cuda"
    table.register("cuda", {"cuda"}, False, op=None)
    assert table.auto("cuda", 10).name == "triton"  # whichever exists
    table.register("triton", {"cuda"}, False, op=None)
    assert table.auto("cuda", 10).name == "reference"
