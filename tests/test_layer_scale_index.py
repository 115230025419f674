"""The CUDA LayerScale kernels' index math, run on the host.

``csrc/common/drop_path_index.h`` (``visit_thread_ch``: the grid-stride loop
with a channel cursor) and ``csrc/common/layer_scale.h`` (the row view, the
backward's column grid) are exposed by ``csrc/testing/index_math.cpp`` as
``torch.ops.sdkernels_testing.index_emulate_ch`` / ``index_ls_cols``.  Checked
against plain integer math on dense layouts of every kind: each element
visited once with its sample and channel, and every partial slot of the
gamma gradient written exactly once, also when a grid has more row groups
than rows.
"""
import itertools
import random

import pytest
import torch

import sdkernels  # noqa: F401  (loads the extension and its ops)

ops = torch.ops.sdkernels_testing

pytestmark = pytest.mark.skipif(not hasattr(ops, "index_emulate_ch"), reason="extension without the LayerScale hooks")


def _layouts():
    """(numel, inner, n, K, C) of dense tensors: every permutation of a few shapes, every (sample, channel) pair."""
    for shape in [(3, 4, 5), (2, 3, 4, 5), (5, 1, 8), (1, 6, 7), (4, 9)]:
        nd = len(shape)
        for perm in itertools.permutations(range(nd)):
            t = torch.empty([shape[p] for p in perm]).permute([perm.index(d) for d in range(nd)])
            for sd, cd in itertools.permutations(range(nd), 2):
                numel, n, C = t.numel(), shape[sd], shape[cd]
                inner = numel if n == 1 else t.stride(sd)
                K = max(numel, 1) if C == 1 else t.stride(cd)
                yield numel, inner, n, K, C


LAYOUTS = sorted(set(_layouts()))


def test_enough_layouts():
    assert len(LAYOUTS) > 100


@pytest.mark.parametrize("vec", [1, 2, 4, 8])
def test_forward_loop_visits_each_element_once_with_its_channel(vec):
    rng = random.Random(vec)
    for numel, inner, n, K, C in LAYOUTS:
        for aligned in (True, False):
            nblocks, nthreads = rng.choice([(1, 1), (2, 3), (3, 32), (1, 256)])
            off, smp, chan = (t.numpy() for t in ops.index_emulate_ch(numel, inner, n, K, C, vec, aligned,
                                                                         nblocks, nthreads))
            ctx = (numel, inner, n, K, C, vec, aligned, nblocks, nthreads)
            assert sorted(off.tolist()) == list(range(numel)), ctx
            assert (smp == (off // inner) % n).all(), ctx
            assert (chan == (off // K) % C).all(), ctx


@pytest.mark.parametrize("vec", [1, 4, 8])
def test_backward_cols_grid_covers_rows_and_writes_every_partial(vec):
    for numel, inner, n, K, C in LAYOUTS:
        for max_blocks in (1, 3, 1000):
            off, smp, gam, slots, grid = (t.numpy() for t in ops.index_ls_cols(numel, inner, n, K, C, vec, 256,
                                                                                 max_blocks))
            if len(grid) == 0:  # gamma per row: the warp-per-row kernel (each row's partial is its own)
                assert not (C > 1 and K == 1)
                continue
            col_tiles, groups, tx, ty = grid.tolist()
            ctx = (numel, inner, n, K, C, vec, max_blocks, grid.tolist())
            assert K == 1 and C > 1, ctx
            assert sorted(off.tolist()) == list(range(numel)), ctx
            assert (smp == (off // inner) % n).all(), ctx
            assert (gam == off % C).all(), ctx
            # every (group, column) partial written once: with more groups than rows too
            assert sorted(slots.tolist()) == list(range(groups * C)), ctx
            assert tx * ty <= 256 and groups <= 65535


def test_more_groups_than_rows():
    # 2 rows of 3000 channels, a device that holds 1000 blocks: groups > rows, empty groups still write.
    off, smp, gam, slots, grid = (t.numpy() for t in ops.index_ls_cols(6000, 6000, 2, 1, 3000, 4, 256, 1000))
    col_tiles, groups, tx, ty = grid.tolist()
    assert sorted(slots.tolist()) == list(range(groups * 3000))
    assert sorted(off.tolist()) == list(range(6000))
