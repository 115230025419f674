"""The CUDA kernels' index and tail math, run on the host.

csrc/common/drop_path_index.h holds the grid-stride loop, the vector/tail
plan and the sample cursor of csrc/cuda/core.cu as __host__ __device__
functions; csrc/testing/index_math.cpp exposes the very same functions as
test-only ops (``torch.ops.sdkernels_testing.index_*``).  These tests check them
against plain Python integer math, so an indexing bug of the CUDA backend
(32-bit overflow, a lost tail, a vector that straddles two samples, an
element visited twice) fails here on a CPU-only machine.
"""
import itertools
import random

import numpy as np
import pytest
import torch

import sdkernels  # noqa: F401  (loads the extension and its ops)

ops = torch.ops.sdkernels_testing

pytestmark = pytest.mark.skipif(
    not hasattr(ops, "index_emulate"), reason="sdkernels extension without the index test hooks"
)

BIG = [2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, 2**32 + 1, 2**33 + 12345, 2**40 + 7, 2**62 - 1]


def py_sample(offset, inner, n):
    return 0 if n <= 1 else (offset // inner) % n


# ------------------------------------------------------------ sample_of ----


@pytest.mark.parametrize("inner", [1, 2, 3, 7, 431, 65536, 2**31 - 1, 2**31 + 5, 2**33 + 1])
@pytest.mark.parametrize("n", [1, 2, 3, 6, 1023, 2**20 + 1])
def test_sample_of_matches_python(inner, n):
    rng = random.Random(inner * 1000003 + n)
    offsets = BIG + [0, 1, inner - 1, inner, inner * n - 1, inner * n, inner * n + inner]
    offsets += [rng.randrange(0, 2**62) for _ in range(50)]
    offsets = [o for o in offsets if 0 <= o < 2**63]
    got = ops.index_sample_of(offsets, inner, n)
    assert got == [py_sample(o, inner, n) for o in offsets]


def test_sample_of_past_32_bits_is_not_wrapped():
    # A 32-bit offset would see 2**32 + 5 as 5 (sample 1 of inner 3, n 4): the true answer differs.
    o = 2**32 + 5
    assert ops.index_sample_of([o], 3, 4) == [(o // 3) % 4]
    assert (o // 3) % 4 != (5 // 3) % 4
    o = 2**31 + 3  # an int32 offset would be negative
    assert ops.index_sample_of([o], 5, 7) == [(o // 5) % 7]


# ----------------------------------------------------- vec width, align ----


def test_vec_width():
    assert ops.index_vec_width([2]) == 8  # fp16 / bf16
    assert ops.index_vec_width([4]) == 4  # fp32
    assert ops.index_vec_width([8]) == 2  # fp64
    assert ops.index_vec_width([4, 2, 4]) == 8  # fp32 residual + bf16 branch -> 8 elements
    assert ops.index_vec_width([8, 2]) == 8
    assert ops.index_vec_width([3]) == 1
    assert ops.index_vec_width([32]) == 1


def test_aligned():
    assert ops.index_aligned([0, 16, 2**40 + 32])
    assert not ops.index_aligned([16, 8])
    assert not ops.index_aligned([2**33 + 4])
    assert ops.index_aligned([])


# ------------------------------------------------------------- vec plan ----


def expected_plan(numel, inner, n, vec, aligned):
    use = aligned and vec > 1 and numel >= vec
    v = vec if use else 1
    nvec = numel // vec if use else 0
    row_aligned = n == 1 or inner % v == 0
    return [int(nvec > 0), int(row_aligned), v, nvec, nvec * v]


@pytest.mark.parametrize("vec", [1, 2, 4, 8])
@pytest.mark.parametrize("aligned", [True, False])
def test_vec_plan(vec, aligned):
    cases = [(0, 1, 1), (1, 1, 1), (7, 7, 1), (8, 8, 1), (9, 9, 1), (103, 10, 3), (24, 3, 8), (6 * 2226546, 2226546, 6)]
    cases += [(b, b, 1) for b in BIG[:-1]] + [(2**33 + 3, (2**33 + 3), 1), (3 * (2**31 + 1), 2**31 + 1, 3)]
    for numel, inner, n in cases:
        got = ops.index_vec_plan(numel, inner, n, vec, aligned)
        assert got == expected_plan(numel, inner, n, vec, aligned), (numel, inner, n)
        vectorized, _, v, nvec, tail = got
        # The tail is shorter than one vector and everything is covered.
        assert 0 <= numel - tail < max(v, 1) or not vectorized
        assert tail == nvec * v and tail <= numel


def test_vec_plan_unaligned_is_all_scalar():
    assert ops.index_vec_plan(1000, 10, 100, 4, False) == [0, 1, 1, 0, 0]


def test_vec_plan_tail_past_2_32():
    numel = 2**32 + 13
    vectorized, row_aligned, vec, nvec, tail = ops.index_vec_plan(numel, numel, 1, 8, True)
    assert (vectorized, row_aligned, vec) == (1, 1, 8)
    assert nvec == numel // 8 and tail == nvec * 8 == 2**32 + 8


# ----------------------------------------------------------------- grid ----


def test_grid_blocks():
    g = ops.index_grid_blocks
    assert g(0, 1, 1, 4, True, 256, 1056) == 1  # zero elements still a valid launch config
    assert g(1, 1, 1, 4, True, 256, 1056) == 1
    assert g(4 * 256, 4 * 256, 1, 4, True, 256, 1056) == 1
    assert g(4 * 256 + 4, 4 * 256 + 4, 1, 4, True, 256, 1056) == 2
    assert g(4 * 256 + 1, 4 * 256 + 1, 1, 4, True, 256, 1056) == 1  # one vector + 1 tail element per thread
    assert g(1000, 1000, 1, 4, False, 256, 1056) == 4  # scalar: one element per thread
    assert g(2**40, 2**40, 1, 8, True, 256, 1056) == 1056  # capped at the resident blocks
    assert g(2**62, 2**62, 1, 1, False, 1, 2**40) == 2**31 - 1  # never above the grid.x limit


# --------------------------------------------------------------- cursor ----


@pytest.mark.parametrize(
    "start,step,inner,n",
    [
        (0, 1, 3, 4),
        (5, 1, 1, 7),
        (0, 1, 7, 1),
        (0, 8, 3, 5),
        (2**31 - 40, 8, 431, 6),
        (2**32 - 100, 7, 10, 3),
        (2**32 - 5, 2**20, 2226546, 6),
        (2**33, 135168 * 4, 2**31 + 5, 3),
        (0, 2**31 + 7, 3, 2**20),
        (17, 256 * 1056 * 8, 12345, 999),
        (0, 3, 2**40, 1),
    ],
)
def test_cursor_walk_matches_division(start, step, inner, n):
    count = 4000
    got = ops.index_cursor_walk(start, step, count, inner, n).numpy()
    offsets = start + step * np.arange(count, dtype=object)
    want_rem = [int(o % inner) for o in offsets]
    want_s = [int((o // inner) % n) for o in offsets]
    assert got[:, 0].tolist() == want_rem
    assert got[:, 1].tolist() == want_s


# ------------------------------------------------------------- emulated grid ----


def emulate(numel, inner, n, vec, aligned, nblocks, nthreads, tid_begin=0, tid_end=-1):
    vo, vs, eo, es = ops.index_emulate(numel, inner, n, vec, aligned, nblocks, nthreads, tid_begin, tid_end)
    return vo.numpy(), vs.numpy(), eo.numpy(), es.numpy()


def check_full_grid(numel, inner, n, vec, aligned, nblocks, nthreads):
    vectorized, row_aligned, v, nvec, tail = ops.index_vec_plan(numel, inner, n, vec, aligned)
    vo, vs, eo, es = emulate(numel, inner, n, vec, aligned, nblocks, nthreads)
    ctx = dict(numel=numel, inner=inner, n=n, vec=vec, aligned=aligned, grid=(nblocks, nthreads))
    # Vectors: whole, aligned to their width, inside [0, numel) and inside one sample row.
    if len(vo):
        assert vectorized and v == vec, ctx
        assert (vo % vec == 0).all(), ctx
        assert vo.min() >= 0 and (vo + vec).max() <= numel, ctx
        assert ((vo // inner) == ((vo + vec - 1) // inner)).all() or n == 1, ctx
        assert (vs == np.where(n > 1, (vo // inner) % n, 0)).all(), ctx
    # Elements done alone: the tail, or vectors that straddle two rows.
    if len(eo):
        assert eo.min() >= 0 and eo.max() < numel, ctx
        assert (es == ((eo // inner) % n if n > 1 else 0)).all(), ctx
        body = eo[eo < tail]
        if len(body):
            assert not row_aligned, ctx  # only a straddling vector is split
            starts = body - body % vec
            assert ((starts // inner) != ((starts + vec - 1) // inner)).all(), ctx
    # Every element exactly once.
    counts = np.zeros(numel, dtype=np.int64)
    if len(vo):
        np.add.at(counts, (vo[:, None] + np.arange(vec)[None, :]).ravel(), 1)
    np.add.at(counts, eo, 1)
    assert (counts == 1).all(), (ctx, np.flatnonzero(counts != 1)[:10])
    # Vectorized whenever allowed: only the tail (< vec) and straddling vectors go scalar.
    if aligned and vec > 1 and numel >= vec and row_aligned:
        assert len(eo) == numel - (numel // vec) * vec, ctx
    if not aligned:
        assert len(vo) == 0, ctx


LAYOUTS = [
    # (outer, n, inner)
    (1, 1, 1),
    (1, 1, 7),
    (1, 1, 64),
    (1, 1, 1001),
    (3, 1, 5),
    (1, 2, 3),
    (1, 6, 431),
    (2, 3, 8),
    (4, 5, 12),
    (1, 7, 1),  # sample dim innermost: every vector straddles
    (5, 3, 1),
    (3, 4, 2),
    (2, 9, 17),
    (1, 64, 6),
    (7, 2, 33),
    (1, 3, 1000),
]
GRIDS = [(1, 1), (1, 32), (3, 7), (5, 64), (64, 256)]


@pytest.mark.parametrize("outer,n,inner", LAYOUTS)
@pytest.mark.parametrize("vec", [1, 2, 4, 8])
def test_grid_covers_every_element_once(outer, n, inner, vec):
    numel = outer * n * inner
    for aligned, (nblocks, nthreads) in itertools.product([True, False], GRIDS):
        check_full_grid(numel, inner, n, vec, aligned, nblocks, nthreads)
        # One scale for all samples: the kernels plan n=1, inner=numel.
        check_full_grid(numel, max(numel, 1), 1, vec, aligned, nblocks, nthreads)


def test_grid_random_layouts():
    rng = random.Random(1234)
    for _ in range(150):
        outer, n, inner = rng.randint(1, 6), rng.randint(1, 12), rng.randint(1, 70)
        vec = rng.choice([2, 4, 8])
        nblocks, nthreads = rng.randint(1, 9), rng.choice([1, 3, 32, 128])
        check_full_grid(outer * n * inner, inner, n, vec, rng.random() < 0.8, nblocks, nthreads)


def test_grid_with_zero_elements():
    vo, vs, eo, es = emulate(0, 1, 1, 8, True, 1, 256)
    assert len(vo) == len(eo) == 0


def test_grid_sized_like_the_cuda_launch_covers_everything():
    # The launch picks grid_blocks(work_items) blocks of 256; a capped grid loops.
    for numel, inner, n, vec in [(1000, 100, 10, 4), (6 * 42 * 123, 42 * 123, 6, 8), (12345, 12345, 1, 2)]:
        for cap in (1, 3, 1000):
            nblocks = ops.index_grid_blocks(numel, inner, n, vec, True, 256, cap)
            check_full_grid(numel, inner, n, vec, True, nblocks, 256)


# ------------------------------------------------------- past 2^31 / 2^32 ----


@pytest.mark.parametrize(
    "numel,inner,n,vec",
    [
        (2**32 + 13, 2**32 + 13, 1, 8),  # one sample, tail past 2^32
        (3 * (2**31 + 1), 2**31 + 1, 3, 4),  # rows longer than 2^31, inner % vec != 0
        (6 * 715827883, 715827883, 6, 8),  # numel > 2^32, straddling vectors
        (2**33, 2**33 // 1024, 1024, 8),  # many samples, row-aligned
        ((2**31 + 7) * 2, 2, 2**31 + 7, 2),  # sample dim with 2^31 + 7 samples, inner 2
    ],
)
def test_grid_offsets_past_32_bits(numel, inner, n, vec):
    nblocks, nthreads = 1056, 256  # 132 SMs x 8 blocks of 256, as on an H100
    total = nblocks * nthreads
    vectorized, row_aligned, v, nvec, tail = ops.index_vec_plan(numel, inner, n, vec, True)
    # The first, a middle and the last threads of the grid, and the tail owner(s).
    tids = [0, 1, total // 2 + 3, total - 1] + [t % total for t in range(tail, numel)][:8]
    # The owners of the vectors at 2^31 and 2^32 and of the last vector.
    tids += [w % total for w in (2**31 // vec - 1, 2**31 // vec, 2**32 // vec - 1, 2**32 // vec, nvec - 1) if 0 <= w < nvec]
    for t in sorted(set(tids)):
        vo, vs, eo, es = emulate(numel, inner, n, vec, True, nblocks, nthreads, t, t + 1)
        vo_l = [int(o) for o in vo]
        # This thread's vectors: w = t, t + total, ... (< nvec), a straddling one done as elements.
        ws = list(range(t, nvec, total))
        all_starts = sorted(vo_l + sorted({int(o) - int(o) % vec for o in eo if o < tail}))
        assert all_starts == [w * vec for w in ws]
        assert max(vo_l, default=0) < numel
        assert [int(s) for s in vs] == [py_sample(o, inner, n) for o in vo_l]
        assert [int(s) for s in es] == [py_sample(int(o), inner, n) for o in eo]
        for o in vo_l:
            assert o // inner == (o + vec - 1) // inner
        tail_elems = [int(o) for o in eo if o >= tail]
        assert tail_elems == list(range(tail + t, numel, total))
    assert numel > 2**32 and nvec * vec >= 2**32
