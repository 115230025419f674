"""Ahead-of-time compile of the add + norm Triton kernels for sm_80 and sm_90 (no GPU needed).

As tests/test_triton_aot.py does for the core kernels: the arguments specialised as
Triton's runtime specialises them for aligned tensors (pointers, ``H`` and ``inner``
divisible by 16), then the PTX must use 128-bit global loads and stores for fp32 and
bf16 rows, every vector of addresses must come from 64-bit offsets (TTIR), and x's
multiplies must be ``mul.rn`` (never fused into an FMA with the add).
"""
import re

import pytest

triton = pytest.importorskip("triton", reason="Triton is not installed")

try:
    from triton.backends.compiler import GPUTarget  # noqa: F401
    from triton.compiler import ASTSource  # noqa: F401
except ImportError as e:  # pragma: no cover
    pytest.skip(f"this Triton has no ASTSource/GPUTarget API: {e}", allow_module_level=True)

from sdkernels.triton_kernels import add_norm as K  # noqa: E402

if K.INTERPRET:
    pytest.skip("TRITON_INTERPRET=1 makes @triton.jit build interpreter kernels: no AOT compile", allow_module_level=True)

from _aot import PTR, aot_asm, tensor_offset_types  # noqa: E402

TARGETS = [80, 90]
DIVISIBLE = ("H", "inner")
FLAGS = dict(HAS_W=True, HAS_B=True, HAS_G=True, RMS=False, ACC64=False)


def _fwd(dt, arch, rows, block, loop, flags=None, hdt=None, acc="fp32"):
    ptrs = {a: PTR[dt] for a in ("x_ptr", "res_ptr", "br_ptr")}
    ptrs.update(h_ptr=PTR[hdt or dt], mean_ptr=PTR[acc], rstd_ptr=PTR[acc], scale_ptr="*fp32",
                w_ptr="*fp32", b_ptr="*fp32", g_ptr="*fp32")
    consts = dict(ROWS=rows, BLOCK_N=block, LOOP=loop, **(flags or FLAGS))
    return aot_asm("add_norm_fwd", K.KERNELS["add_norm_fwd"], ptrs, arch, consts,
                   num_warps=K._warps(rows * block), divisible=DIVISIBLE)


def _bwd(dt, arch, rows, block, loop, acc="fp32"):
    ptrs = {a: PTR[dt] for a in ("gr_ptr", "gb_ptr", "gx_ptr", "gh_ptr", "x_ptr", "br_ptr")}
    ptrs.update({a: PTR[acc] for a in ("pw_ptr", "pb_ptr", "pg_ptr", "mean_ptr", "rstd_ptr")})
    ptrs.update(scale_ptr="*fp32", w_ptr="*fp32", g_ptr="*fp32")
    consts = dict(ROWS=rows, BLOCK_N=block, LOOP=loop, HAS_GX=True, HAS_W=True, HAS_G=True, WANT_W=True,
                  WANT_B=True, WANT_G=True, RMS=False, ACC64=acc == "fp64")
    return aot_asm("add_norm_bwd", K.KERNELS["add_norm_bwd"], ptrs, arch, consts,
                   num_warps=K._warps(rows * block), divisible=DIVISIBLE)


def _v4(ptx):
    return len(re.findall(r"ld\.global(?:\.[a-z0-9_]+)*\.v4", ptx)), len(re.findall(r"st\.global(?:\.[a-z0-9_]+)*\.v4", ptx))


# (rows, BLOCK_N, loop): ViT-B rows of 768 (4 per tile), LLM rows of 4096, the loop path's column blocks.
HOT = [(4, 1024, False), (1, 4096, False), (1, 4096, True)]


@pytest.mark.parametrize("arch", TARGETS)
@pytest.mark.parametrize("dt", ["fp32", "bf16"])
@pytest.mark.parametrize("rows,block,loop", HOT)
def test_forward_uses_128bit_accesses_and_mul_rn(rows, block, loop, dt, arch):
    asm = _fwd(dt, arch, rows, block, loop)
    loads, stores = _v4(asm["ptx"])
    assert loads >= 2 and stores >= 2, (loads, stores)  # residual, branch in; x, h out
    assert not re.search(r"ld\.global(\.[a-z]+)*\.b16 ", asm["ptx"]), "scalar 16-bit loads of a row"
    assert "mul.rn.f32" in asm["ptx"]  # x = r + (b * g) * m: multiplies never contracted
    assert tensor_offset_types(asm["ttir"]) == {"i64"}


@pytest.mark.parametrize("arch", TARGETS)
@pytest.mark.parametrize("dt", ["fp32", "bf16"])
@pytest.mark.parametrize("rows,block,loop", HOT)
def test_backward_uses_128bit_accesses(rows, block, loop, dt, arch):
    asm = _bwd(dt, arch, rows, block, loop)
    loads, stores = _v4(asm["ptx"])
    assert loads >= 3 and stores >= 2, (loads, stores)  # x, grad_h, grad_x in; grad_residual, grad_branch out
    assert tensor_offset_types(asm["ttir"]) == {"i64"}


def test_every_kernel_compiles():
    # Every dtype combination the launchers give the kernels, both paths, on sm_90 (sm_80 above).
    arch = 90
    for dt, hdt, acc in [("fp32", "fp32", "fp32"), ("bf16", "bf16", "fp32"), ("fp16", "fp16", "fp32"),
                         ("fp64", "fp64", "fp64"), ("fp32", "bf16", "fp32")]:
        for rows, block, loop in [(8, 64, False), (1, 1024, True)]:
            for rms in (False, True) if dt == "fp32" else (False,):
                flags = dict(FLAGS, RMS=rms, ACC64=acc == "fp64")
                assert ".entry" in _fwd(dt, arch, rows, block, loop, flags, hdt, acc)["ptx"]
            assert ".entry" in _bwd(dt, arch, rows, block, loop, acc)["ptx"]
    for out in ("fp32", "bf16", "fp64"):
        acc = "fp64" if out == "fp64" else "fp32"
        asm = aot_asm("reduce_partials", K.KERNELS["reduce_partials"], {"out_ptr": PTR[out], "part_ptr": PTR[acc]},
                      arch, dict(BLOCK=1024, ACC64=acc == "fp64"), num_warps=4, divisible=("H",))
        assert ".entry" in asm["ptx"]


def test_launch_heuristics():
    assert K.forward_params(64 * 197, 768) == K.AddNormLaunch(4, 1024, False, 8, 64 * 197 // 4)
    assert K.forward_params(16384, 4096).block_n == 4096 and not K.forward_params(16384, 4096).loop
    assert K.forward_params(4, 65536).loop
    assert K.forward_params(3, 1).rows == 4  # short rows: several per program
    import torch

    lp = K.backward_params(16384, 8192, torch.device("cpu"))
    assert not lp.loop and lp.grid >= 1
    assert K.backward_params(16384, 16384, torch.device("cpu")).loop
    assert K.backward_params(5, 64, torch.device("cpu"), programs=40).grid == 40  # more programs than rows
