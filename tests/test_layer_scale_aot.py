"""Ahead-of-time compile of the Triton LayerScale kernels (issue 13) for sm_80 and sm_90, no GPU needed.

Specialised as Triton's runtime specialises aligned tensors (``tt.divisibility``
16 on the pointers and on the row length ``L``, as for ViT-B's 768 channels or
ConvNeXt's 96), the hot configurations must use 128-bit global loads and
stores, form every vector of addresses from int64 offsets, and round each
multiply and add on its own (``mul.rn`` / ``add.rn``, no ``fma``: the fp32
results are eager timm's bits).
"""
import re

import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed")

try:
    from triton.backends.compiler import GPUTarget  # noqa: F401
    from triton.compiler import ASTSource  # noqa: F401
except ImportError as e:  # pragma: no cover
    pytest.skip(f"this Triton has no ASTSource/GPUTarget API: {e}", allow_module_level=True)

from sdkernels.triton_kernels import layer_scale as LS  # noqa: E402
from sdkernels.triton_kernels.common import num_warps  # noqa: E402

if LS.INTERPRET:
    pytest.skip("TRITON_INTERPRET=1 makes @triton.jit build interpreter kernels: no AOT compile", allow_module_level=True)

from _aot import PTR, aot_asm  # noqa: E402

# kernel -> (constants of a hot launch, tensor pointers other than scale/gamma/partials)
HOT = {
    "ls_add": (dict(ROWS=4, COLS=1024, GAMMA_COLS=True), ("out_ptr", "res_ptr", "br_ptr")),
    "ls_scale": (dict(ROWS=4, COLS=1024, GAMMA_COLS=True), ("out_ptr", "x_ptr")),
    "ls_grads_cols": (dict(ROWS=4, COLS=1024), ("gb_ptr", "go_ptr", "br_ptr")),
    "ls_grads_rows": (dict(ROWS=4, COLS=1024), ("gb_ptr", "go_ptr", "br_ptr")),
}


def _asm(name, dt, arch, gamma_cols=None):
    consts, tensors = HOT[name]
    consts = dict(consts, ACC64=False)
    if gamma_cols is not None and "GAMMA_COLS" in consts:
        consts["GAMMA_COLS"] = gamma_cols
    kern = LS.KERNELS[name]
    ptrs = {a: PTR[dt] for a in tensors}
    ptrs.update({a: PTR["fp32"] for a in kern.arg_names if a.endswith("_ptr") and a not in ptrs})
    return aot_asm(name, kern, ptrs, arch, consts, num_warps=num_warps(4096), divisible=("L",))


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dt", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(HOT))
def test_hot_kernels_128bit_int64_and_no_fma(name, dt, arch):
    for gamma_cols in ((True, False) if "GAMMA_COLS" in HOT[name][0] else (None,)):
        asm = _asm(name, dt, arch, gamma_cols)
        ptx, ttir = asm["ptx"], asm["ttir"]
        assert re.search(r"ld\.global(\.[a-z0-9_]+)*\.v4", ptx), f"{name} {dt}: no 128-bit load"
        assert re.search(r"st\.global(\.[a-z0-9_]+)*\.v4", ptx), f"{name} {dt}: no 128-bit store"
        offs = set(re.findall(r"tt\.addptr [^:]*: tensor<[^>]*!tt\.ptr<[^>]*>>, tensor<[0-9x]*x(i\d+)>", ttir))
        assert offs == {"i64"}, f"{name}: offsets {offs}"
        arith = set(re.findall(r"\b(?:mul|add|fma)\.[a-z0-9.]*f32", ptx))
        assert not any(op.startswith("fma") for op in arith), f"{name} {dt}: an FMA contraction: {arith}"
        assert not any(".ftz" in op for op in arith), f"{name} {dt}: flush to zero: {arith}"
        assert "mul.rn.f32" in arith and ("add.rn.f32" in arith or name != "ls_add"), arith


@pytest.mark.parametrize("arch", [80, 90])
def test_every_kernel_compiles_fp64_and_mixed(arch):
    for name, (consts, tensors) in HOT.items():
        kern = LS.KERNELS[name]
        for dts, acc64 in [(("fp64",) * 3, True), (("fp32", "bf16", "bf16"), False), (("bf16", "fp16", "fp32"), False)]:
            ptrs = {a: PTR[d] for a, d in zip(tensors, dts)}
            ptrs.update({a: PTR["fp64" if acc64 else "fp32"] for a in kern.arg_names if a.endswith("_ptr") and a not in ptrs})
            ptrs["scale_ptr"] = PTR["fp32"]
            asm = aot_asm(name, kern, ptrs, arch, dict(consts, ACC64=acc64), num_warps=4)
            assert ".entry" in asm["ptx"]
