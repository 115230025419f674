"""The CUDA kernels (csrc/cuda/drop_path.cu) against sdkernels.reference.

Tests marked ``cuda`` need a GPU and are skipped without one.  The rest run
everywhere: whether a CUDA build registered both ops for CUDA, whether CI's
build did build them (SDKERNELS_EXPECT_CUDA_BUILD=1), and whether the
compiled vector path really uses 128-bit loads and stores (read from the SASS
with cuobjdump).  The index math these kernels share is tested on CPU in
test_index_math.py.
"""
import os
import re
import shutil
import subprocess

import pytest
import torch

import sdkernels
from sdkernels import reference as R
from _tolerances import assert_close

HAS_CUDA = torch.cuda.is_available()
ops = torch.ops.sdkernels
OPS = ("scaled_residual_add", "sample_scale")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _has_cuda_kernel(op):
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"sdkernels::{op}", "CUDA")
    except RuntimeError:  # op not registered at all (extension missing)
        return False


CUDA_BUILT = all(_has_cuda_kernel(op) for op in OPS)

needs_cuda = pytest.mark.skipif(not (HAS_CUDA and CUDA_BUILT), reason="needs a CUDA device and the CUDA kernels")
cuda = [pytest.mark.cuda, needs_cuda]


# -------------------------------------------------------------- helpers ----


def rand(shape, dtype, seed, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def make_scale(n, seed=0, dtype=torch.float32, device="cuda"):
    """Distinct per-sample values (so a wrong sample index shows), about half of them 0 (dropped)."""
    g = torch.Generator().manual_seed(seed + 1000)
    keep = torch.rand(n, generator=g) < 0.5
    if n >= 2:
        keep[0], keep[-1] = True, False
    elif n == 1:
        keep[0] = True
    vals = 0.5 + torch.rand(n, generator=g, dtype=torch.float64) * 1.5
    return torch.where(keep, vals, torch.zeros((), dtype=torch.float64)).to(device=device, dtype=dtype)


def out_strides(x, dtype):
    return torch.empty_like(x, dtype=dtype).stride()


def check_add(r, b, scale, dim, alpha=1.25, exact=False):
    out = ops.scaled_residual_add(r, b, scale, dim, alpha)
    exp = R.scaled_residual_add(r, b, scale, dim, alpha)
    assert out.dtype == exp.dtype == torch.promote_types(r.dtype, b.dtype)
    assert out.shape == r.shape and out.device == r.device
    if out.numel():
        assert out.stride() == out_strides(r, out.dtype)
    if exact:
        assert torch.equal(out, exp)
    else:
        assert_close(out, exp)
    return out


def check_scale(x, scale, dim, alpha=1.25, dtype=None, exact=False):
    out = ops.sample_scale(x, scale, dim, alpha, dtype)
    exp = R.sample_scale(x, scale, dim, alpha, dtype)
    assert out.dtype == exp.dtype == (dtype or x.dtype)
    assert out.shape == x.shape and out.device == x.device
    if out.numel():
        assert out.stride() == out_strides(x, out.dtype)
    if exact:
        assert torch.equal(out, exp)
    else:
        assert_close(out, exp)
    return out


# ------------------------------------------------- shapes, dtypes, dims ----

SHAPES = [
    (1, 5000),  # one sample
    (1, 1),
    (6, 42, 123, 431),  # odd sizes: inner % 8 != 0, straddling vectors
    (64, 3),  # tiny rows
    (3, 2**20 + 5),  # long rows with a tail
    (8, 197, 768),  # ViT block: aligned rows
    (7, 1),
    (2, 13, 1),
]


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(shape, dtype):
    if dtype == torch.float64 and shape == (6, 42, 123, 431):
        pytest.skip("covered in fp32/fp16/bf16; keeps the fp64 reference small")
    r, b = rand(shape, dtype, 1), rand(shape, dtype, 2)
    scale = make_scale(shape[0], 3)
    check_add(r, b, scale, 0)
    check_scale(b, scale, 0)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("rdt", DTYPES, ids=str)
@pytest.mark.parametrize("bdt", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(4, 37, 29), (8, 16, 64)], ids=str)
def test_mixed_dtypes(rdt, bdt, shape):
    r, b = rand(shape, rdt, 4), rand(shape, bdt, 5)
    scale = make_scale(shape[0], 6)
    check_add(r, b, scale, 0)
    # sample_scale reads one dtype and writes another (the branch gradient of a mixed add).
    check_scale(r, scale, 0, 0.75, bdt)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1, -2, -3, -4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_sample_dims(dim, dtype):
    shape = (5, 6, 7, 8)
    r, b = rand(shape, dtype, 7), rand(shape, dtype, 8)
    scale = make_scale(shape[dim], 9)
    check_add(r, b, scale, dim)
    check_scale(b, scale, dim)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_seq_first(dtype):
    # [S, B, H] with the batch (sample) dim 1: inner = H, rows alternate samples.
    S, B, H = 197, 8, 768
    r, b = rand((S, B, H), dtype, 10), rand((S, B, H), dtype, 11)
    scale = make_scale(B, 12)
    check_add(r, b, scale, 1)
    check_scale(b, scale, 1)
    check_add(r, b, scale, -2)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("branch_cl", [True, False])
def test_channels_last(dim, branch_cl):
    shape = (6, 32, 14, 14)
    r = rand(shape, torch.float32, 13).to(memory_format=torch.channels_last)
    b = rand(shape, torch.bfloat16, 14)
    if branch_cl:
        b = b.to(memory_format=torch.channels_last)
    scale = make_scale(shape[dim], 15)
    out = check_add(r, b, scale, dim)
    assert out.is_contiguous(memory_format=torch.channels_last)
    out = check_scale(b, scale, dim, dtype=torch.float32)
    assert out.is_contiguous(memory_format=torch.channels_last) == branch_cl


@pytest.mark.cuda
@needs_cuda
def test_strided_inputs():
    base_r, base_b = rand((12, 10, 66), torch.float32, 16), rand((12, 10, 66), torch.float16, 17)
    scale = make_scale(12, 18)
    # Every other column: not dense.
    check_add(base_r[:, :, ::2], base_b[:, :, ::2], scale, 0)
    check_scale(base_b[:, :, ::2], scale, 0)
    # Transposed residual (dense, another layout), contiguous branch.
    rt = rand((10, 12, 66), torch.float32, 19).transpose(0, 1)
    check_add(rt, base_b, scale, 0)
    check_add(base_b, rt, scale, 0)
    scale10 = make_scale(10, 20)
    check_add(rt, base_b, scale10, 1)
    # A broadcast (stride 0) branch.
    bb = rand((1, 10, 66), torch.bfloat16, 21).expand(12, 10, 66)
    check_add(base_r, bb, scale, 0)
    check_scale(bb, scale, 0)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("offset", [1, 2, 3])
@pytest.mark.parametrize("which", ["residual", "branch", "both"])
def test_misaligned_inputs(offset, which):
    shape = (4, 8, 64)  # inner % 8 == 0: would be vectorized if aligned
    numel = 4 * 8 * 64

    def shifted(dtype, seed):
        return rand((numel + offset,), dtype, seed)[offset:].view(shape)

    r = shifted(torch.float32, 22) if which in ("residual", "both") else rand(shape, torch.float32, 22)
    b = shifted(torch.bfloat16, 23) if which in ("branch", "both") else rand(shape, torch.bfloat16, 23)
    assert (r.data_ptr() % 16 != 0) or (b.data_ptr() % 16 != 0)
    scale = make_scale(4, 24)
    check_add(r, b, scale, 0)
    check_scale(b, scale, 0, dtype=torch.float32)
    check_scale(r, scale, 0)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("shape,dim", [((6, 40, 16), 0), ((6, 37, 11), 0), ((9, 5, 4), -1), ((4, 3, 33), 1)], ids=str)
@pytest.mark.parametrize("rdt,bdt", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float16, torch.float16)], ids=str)
def test_nan_in_dropped_branch_never_reaches_out(shape, dim, rdt, bdt):
    r, b = rand(shape, rdt, 25), rand(shape, bdt, 26)
    scale = make_scale(shape[dim], 27)
    dropped = (scale == 0).nonzero().flatten()
    assert len(dropped) > 0
    b.index_fill_(dim, dropped, float("nan"))
    b.index_fill_(dim, dropped[:1], float("inf"))
    out = check_add(r, b, scale, dim)
    assert torch.isfinite(out).all()
    assert torch.equal(out.index_select(dim, dropped), r.index_select(dim, dropped).to(out.dtype))
    y = check_scale(b, scale, dim)
    assert torch.isfinite(y).all()
    assert (y.index_select(dim, dropped) == 0).all()
    assert not torch.signbit(y.index_select(dim, dropped)).any()  # +0, not -0 from -nan * 0


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("value", [0.0, 1.7])
@pytest.mark.parametrize("shape", [(6, 37, 11), (5, 64)], ids=str)
def test_single_scale_broadcasts(value, shape):
    r, b = rand(shape, torch.float16, 28), rand(shape, torch.float16, 29)
    scale = torch.tensor([value], device="cuda")
    if value == 0.0:
        b.fill_(float("nan"))
    out = check_add(r, b, scale, 0)
    y = check_scale(b, scale, 0)
    if value == 0.0:
        assert torch.equal(out, r) and (y == 0).all()
    check_add(r, b, scale.reshape(()), 1)  # 0-dim scale too


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_straddling_rows(dtype):
    # inner not a multiple of the vector width: vectors over a row boundary go element by element.
    for inner in range(1, 18):
        for n in (2, 3, 5):
            shape = (3, n, inner)
            r, b = rand(shape, dtype, inner), rand(shape, dtype, 100 + inner)
            scale = make_scale(n, inner * 7 + n)
            b.index_fill_(1, (scale == 0).nonzero().flatten(), float("nan"))
            check_add(r, b, scale, 1, exact=True)
            check_scale(b, scale, 1, exact=True)


@pytest.mark.cuda
@needs_cuda
def test_scale_dtypes():
    r, b = rand((5, 33), torch.float32, 30), rand((5, 33), torch.float32, 31)
    s64 = make_scale(5, 32, torch.float64)
    check_add(r, b, s64, 0)  # fp64 scale rounded to fp32 math
    check_scale(r, s64, 0)
    rd, bd = r.double(), b.double()
    check_add(rd, bd, s64.float(), 0)
    check_add(rd, bd, s64, 0, alpha=1 / 3)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("shape,dim", [((0, 5), 0), ((3, 0, 2), 0), ((3, 0, 2), 1), ((0,), 0)], ids=str)
def test_zero_elements(shape, dim):
    r, b = torch.empty(shape, device="cuda"), torch.empty(shape, device="cuda", dtype=torch.bfloat16)
    n = shape[dim]
    for scale in ([torch.ones(n, device="cuda")] if n else []) + [torch.ones(1, device="cuda")]:
        out = ops.scaled_residual_add(r, b, scale, dim, 2.0)
        assert out.shape == r.shape and out.dtype == torch.float32 and out.is_cuda
        y = ops.sample_scale(b, scale, dim, 2.0, torch.float16)
        assert y.shape == r.shape and y.dtype == torch.float16


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_bitwise_equal_to_reference(dtype):
    # Multiply and add are rounded separately (no FMA contraction), as the
    # reference's eager ops do, so the kernel matches it bit for bit.
    shape = (6, 42, 123, 31)
    r, b = rand(shape, dtype, 33), rand(shape, dtype, 34)
    scale = make_scale(6, 35)
    check_add(r, b, scale, 0, alpha=1 / 0.7, exact=True)
    check_scale(b, scale, 0, alpha=1 / 0.7, exact=True)


@pytest.mark.cuda
@needs_cuda
def test_deterministic():
    shape = (16, 197, 384)
    r, b = rand(shape, torch.float32, 36), rand(shape, torch.bfloat16, 37)
    scale = make_scale(16, 38)
    first = ops.scaled_residual_add(r, b, scale, 0, 1.1)
    first_s = ops.sample_scale(b, scale, 0, 1.1, None)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(3):
            assert torch.equal(ops.scaled_residual_add(r, b, scale, 0, 1.1), first)
            assert torch.equal(ops.sample_scale(b, scale, 0, 1.1, None), first_s)
    finally:
        torch.use_deterministic_algorithms(prev)


@pytest.mark.cuda
@needs_cuda
def test_current_stream():
    shape = (8, 4096)
    r, b = rand(shape, torch.float32, 39), rand(shape, torch.float32, 40)
    scale = make_scale(8, 41)
    exp = R.scaled_residual_add(r, b, scale, 0, 2.0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = ops.scaled_residual_add(r, b, scale, 0, 2.0)
        y = ops.sample_scale(b, scale, 0, 2.0, None)
    side.synchronize()
    assert_close(out, exp)
    assert_close(y, R.sample_scale(b, scale, 0, 2.0))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_device_guard_second_gpu():
    r, b = rand((4, 100), torch.float32, 42, "cuda:1"), rand((4, 100), torch.float16, 43, "cuda:1")
    scale = make_scale(4, 44, device="cuda:1")
    with torch.cuda.device(0):
        out = check_add(r, b, scale, 0)
        y = check_scale(b, scale, 0)
    assert out.device == y.device == torch.device("cuda:1")


@pytest.mark.cuda
@needs_cuda
def test_bad_inputs():
    r = rand((4, 5), torch.float32, 45)
    scale = torch.ones(4, device="cuda")
    with pytest.raises(ValueError, match="branch"):
        ops.scaled_residual_add(r, r.cpu(), scale, 0, 1.0)
    with pytest.raises(ValueError, match="scale"):
        ops.scaled_residual_add(r, r, scale.cpu(), 0, 1.0)
    with pytest.raises(ValueError, match="scale"):
        ops.scaled_residual_add(r, r, torch.ones(3, device="cuda"), 0, 1.0)
    with pytest.raises(ValueError, match="shape"):
        ops.scaled_residual_add(r, r[:, :4], scale, 0, 1.0)
    with pytest.raises(IndexError, match="sample_dim"):
        ops.scaled_residual_add(r, r, scale, 2, 1.0)
    with pytest.raises(TypeError, match="branch"):
        ops.scaled_residual_add(r, r.to(torch.int32), scale, 0, 1.0)
    with pytest.raises(TypeError, match="scale"):
        ops.scaled_residual_add(r, r, scale.half(), 0, 1.0)
    with pytest.raises(TypeError, match="dtype"):
        ops.sample_scale(r, scale, 0, 1.0, torch.int64)
    with pytest.raises(ValueError, match="scale"):
        ops.sample_scale(r, torch.ones(5, device="cuda"), 0, 1.0, None)
    if hasattr(torch, "float8_e4m3fn"):
        with pytest.raises(TypeError):
            ops.sample_scale(r.to(torch.float8_e4m3fn), scale, 0, 1.0, None)


# --------------------------------------------------------- > 2^31 elements ----


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("layout", ["rows", "sample_last"])
def test_more_than_2_31_elements(layout):
    n, inner = 3, 715827895  # 2147483685 elements; inner % 8 == 7: straddling vectors
    numel = n * inner
    assert numel > 2**31
    chunk = 2**26
    need = 3 * numel * 2 + 8 * chunk * 4 + (1 << 30)  # three fp16 tensors + the reference's fp32 chunks
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    shape, dim = ((n, inner), 0) if layout == "rows" else ((inner, n), 1)
    g = torch.Generator(device="cuda").manual_seed(46)
    r = torch.empty(shape, dtype=torch.float16, device="cuda").uniform_(-1, 1, generator=g)
    b = torch.empty(shape, dtype=torch.float16, device="cuda").uniform_(-1, 1, generator=g)
    scale = torch.tensor([1.5, 0.0, 0.75], device="cuda")
    alpha = 1.25

    def chunks():
        # Slices of at most `chunk` elements covering the whole tensor, the end past 2^31 included.
        if dim == 0:
            for s in range(n):
                for lo in range(0, inner, chunk):
                    yield (slice(s, s + 1), slice(lo, min(lo + chunk, inner))), scale[s : s + 1]
        else:
            rows = chunk // n
            for lo in range(0, inner, rows):
                yield (slice(lo, min(lo + rows, inner)), slice(None)), scale

    out = ops.scaled_residual_add(r, b, scale, dim, alpha)
    for idx, sc in chunks():
        assert torch.equal(out[idx], R.scaled_residual_add(r[idx], b[idx], sc, dim, alpha)), idx
    del out
    y = ops.sample_scale(b, scale, dim, alpha, None)
    for idx, sc in chunks():
        assert torch.equal(y[idx], R.sample_scale(b[idx], sc, dim, alpha)), idx


# ------------------------------------------------------- no GPU needed ----


def test_cuda_build_registers_both_ops():
    """A CUDA build registers every core op for CUDA, not only some of them."""
    registered = [op for op in OPS if _has_cuda_kernel(op)]
    if not registered:
        pytest.skip("the extension was built without CUDA kernels")
    assert registered == list(OPS)
    from sdkernels import _ext

    assert _ext.has_kernel("scaled_residual_add", "CUDA")


@pytest.mark.skipif(os.environ.get("SDKERNELS_EXPECT_CUDA_BUILD") != "1", reason="set SDKERNELS_EXPECT_CUDA_BUILD=1 (CI does) to require the CUDA kernels")
def test_cuda_kernels_were_built():
    assert CUDA_BUILT, "SDKERNELS_EXPECT_CUDA_BUILD=1 but the extension has no CUDA kernels (was nvcc found?)"


def _cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    cands = []
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            cands.append(os.path.join(home, "bin", "cuobjdump"))
    try:
        import triton

        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except Exception:
        pass
    return next((c for c in cands if os.path.isfile(c) and os.access(c, os.X_OK)), None)


# Mangled-name fragments of the kernels whose vector path must use 128-bit accesses:
# template arguments (residual, branch, out, math, VEC) / (x, out, math, VEC).
VECTOR_KERNELS = {
    "add fp32": "scaled_residual_add_kernelIffffLi4E",
    "add bf16": "scaled_residual_add_kernelIN3c108BFloat16ES3_S3_fLi8E",
    "add fp32+bf16": "scaled_residual_add_kernelIfN3c108BFloat16EffLi8E",
    "scale fp32": "sample_scale_kernelIfffLi4E",
    "scale bf16": "sample_scale_kernelIN3c108BFloat16ES3_fLi8E",
}


def test_vector_path_uses_128_bit_accesses():
    """The compiled kernels load and store 16 bytes at a time (LDG.E.128 / STG.E.128) for fp32 and bf16."""
    if not CUDA_BUILT:
        pytest.skip("the extension was built without CUDA kernels")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or the triton wheel provides it)")
    from sdkernels import _C

    so = _C.__file__
    res = subprocess.run([tool, "-sass", so], capture_output=True, text=True, timeout=300)
    if res.returncode != 0 or "Function :" not in res.stdout:
        pytest.skip(f"cuobjdump could not read SASS from {so}: {res.stderr.strip()[:200]}")
    archs = {}
    for elf in res.stdout.split("Fatbin elf code:")[1:]:
        m = re.search(r"arch = (sm_\d+)", elf)
        if m:
            # One cubin per object file and arch: collect the functions of every one.
            archs.setdefault(m.group(1), []).extend(re.split(r"\n\s*Function : ", elf)[1:])
    assert archs, "no cubin in the extension"
    for arch, funcs in archs.items():
        for what, frag in VECTOR_KERNELS.items():
            bodies = [f for f in funcs if frag in f.split("\n", 1)[0]]
            assert len(bodies) == 1, f"{arch}: kernel {what} ({frag}) not found once"
            assert "LDG.E.128" in bodies[0], f"{arch}: {what} has no 128-bit load"
            assert "STG.E.128" in bodies[0], f"{arch}: {what} has no 128-bit store"
