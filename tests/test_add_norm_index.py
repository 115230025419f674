"""The add + norm CUDA kernels' index math (csrc/common/add_norm_index.h), run on the host.

The CUDA kernels cannot run here; the functions they index with can, through the
test hooks of csrc/testing/add_norm_index.cpp: every column of a row is covered
exactly once by the threads' chunks, the launch plan stays inside the kernels'
bounds, a row's sample matches torch's own view of the layout, and the backward's
programs share out every row exactly once (extra programs get none).
"""
import random

import pytest
import torch

import sdkernels  # noqa: F401  (registers the ops)
from sdkernels._ext import HAS_EXT

pytestmark = pytest.mark.skipif(not HAS_EXT, reason="compiled extension missing")

OPS = torch.ops.sdkernels_testing
MAX_THREADS = 512  # __launch_bounds__ of the kernels (ai::kMaxThreads)


def _row_lengths():
    rng = random.Random(0)
    hs = [1, 2, 3, 7, 8, 31, 64, 192, 768, 1000, 1024, 3000, 4096, 8192, 12288, 16384, 65536, 65544]
    return hs + [rng.randrange(1, 20000) for _ in range(40)]


@pytest.mark.parametrize("vec", [1, 2, 4, 8])
@pytest.mark.parametrize("max_chunks", [1, 2, 4, 8, 16])
def test_every_column_covered_once(vec, max_chunks):
    for H in _row_lengths():
        if H % vec:
            continue
        v, threads, chunks, streaming = OPS.add_norm_plan_row(H, vec, max_chunks)
        assert v == vec and 32 <= threads <= MAX_THREADS and threads & (threads - 1) == 0
        assert streaming == (chunks > max_chunks)
        if not streaming:  # the smallest block that keeps the row in registers
            assert threads * chunks * vec >= H
            assert threads == 32 or (threads // 2) * min(4, max_chunks) * vec < H
        cover = OPS.add_norm_cover(H, vec, max_chunks)
        assert torch.equal(cover, torch.ones(H, dtype=torch.long)), (H, vec, max_chunks)


def test_streaming_only_past_the_register_budget():
    # 512 threads x 8 chunks x 8 bf16 = 32768 elements in registers (forward), then streaming
    assert OPS.add_norm_plan_row(32768, 8, 8)[3] == 0
    assert OPS.add_norm_plan_row(32776, 8, 8)[3] == 1
    assert OPS.add_norm_plan_row(768, 8, 8)[:3] == [8, 32, 3]


def _memory_row_samples(x: torch.Tensor, dim: int):
    """The sample of each memory row of x, read from torch itself."""
    idx = torch.arange(x.shape[dim]).view([-1 if d == dim else 1 for d in range(x.dim())]).expand(x.shape)
    laid = torch.empty_strided(x.shape, x.stride(), dtype=torch.long)
    laid.copy_(idx)
    flat = torch.as_strided(laid, (laid.numel(),), (1,))  # memory order
    return flat[:: x.shape[-1]].tolist()


@pytest.mark.parametrize("shape,dim,perm", [
    ((4, 5, 8), 0, None), ((4, 5, 8), 1, None), ((5, 4, 8), 0, (1, 0, 2)),  # seq-first storage, sample_dim 0
    ((3, 4, 5, 6), 2, None), ((3, 4, 5, 6), 0, (2, 0, 1, 3)), ((7, 1, 3), 0, None), ((2, 3, 1), 1, None),
])
def test_sample_of_row_matches_torch(shape, dim, perm):
    x = torch.empty(shape)
    if perm is not None:  # a dense tensor whose dims lie in memory in another order
        inv = [perm.index(d) for d in range(len(shape))]
        x = torch.empty([shape[p] for p in perm]).permute(inv)
        assert x.shape == shape
    H = shape[-1]
    n = shape[dim]
    inner = x.stride(dim) if n > 1 else 1
    rows = list(range(x.numel() // H))
    got = OPS.add_norm_sample_of_row(rows, H, inner, n)
    assert got == _memory_row_samples(x, dim)
    assert OPS.add_norm_sample_of_row(rows, H, inner, 1) == [0] * len(rows)  # one scale for all


def test_row_vec_width():
    assert OPS.add_norm_row_vec_width(768, 2, True) == 8  # bf16
    assert OPS.add_norm_row_vec_width(768, 4, True) == 4
    assert OPS.add_norm_row_vec_width(1000, 2, True) == 8
    assert OPS.add_norm_row_vec_width(1001, 2, True) == 1  # rows would start misaligned
    assert OPS.add_norm_row_vec_width(12, 2, True) == 1
    assert OPS.add_norm_row_vec_width(768, 2, False) == 1
    assert OPS.add_norm_row_vec_width(768, 8, True) == 2


@pytest.mark.parametrize("programs,rows", [(1, 7), (4, 7), (7, 7), (40, 7), (132, 16384), (3, 0), (5, 1)])
def test_rows_of_program(programs, rows):
    counts = OPS.add_norm_rows_of_program(programs, rows)
    assert sum(counts) == rows
    expected = [len(range(b, rows, programs)) for b in range(programs)]
    assert counts == expected
    assert all(c == 0 for c in counts[rows:])  # programs past the rows get none (and still write zeros)
