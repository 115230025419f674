"""The Triton LayerScale ops on CPU tensors under the Triton interpreter (issue 13).

Run in its own process: ``TRITON_INTERPRET=1 pytest -m triton_interpret``.  The
tests of ``test_layer_scale.py`` run here with backend "triton" (the
``device_backend`` fixture below), plus the kernel shapes the small tensors of
that file do not reach: several column blocks, several row groups per column
block, and the per-row kernel's column loop.
"""
import pytest

from _interpret import triton_ops_under_interpreter

pytestmark = pytest.mark.triton_interpret

T, K = triton_ops_under_interpreter()

import torch  # noqa: E402

import sdkernels  # noqa: E402
import test_layer_scale  # noqa: E402
from sdkernels import reference as R  # noqa: E402
from sdkernels.ops import layer_scale as ls_ops  # noqa: E402
from sdkernels.triton_kernels import layer_scale as LS  # noqa: E402
from _tolerances import assert_close  # noqa: E402
from test_layer_scale import (  # noqa: E402,F401  (collected here with backend "triton")
    _gamma, _rand, _reduction_check,
    test_backward_matches_reference, test_backward_saves_scale_gamma_and_branch_only_when_gamma_requires_grad,
    test_bf16_close_to_eager_timm, test_convnext_timm_and_torchvision_patterns_bitwise, test_deterministic_bits,
    test_eval_and_p_zero_are_the_eager_expression, test_forward_matches_reference,
    test_gamma_grad_few_rows_odd_channels, test_gamma_shapes_that_broadcast_along_channel_dim,
    test_gradcheck_gradgradcheck_fp64_ops, test_gradcheck_public_functions_fixed_seed,
    test_grad_residual_is_grad_out_itself, test_mixed_dtypes, test_modes, test_nan_in_dropped_samples_stays_out,
    test_p_one_gives_residual, test_skip_path_with_layer_scale, test_vit_block_bitwise_eager_timm_fp32,
    test_zero_elements,
)


test_layer_scale.GRADCHECK_FAST = True  # every interpreted launch costs milliseconds


@pytest.fixture
def device_backend():
    return ("cpu", "triton")


def test_backend_has_the_layer_scale_ops():
    be = sdkernels.functional.LAYER_SCALE["triton"]
    twin = ls_ops.TRITON
    assert be.residual_add_ls is twin["residual_add_ls"] and be.sample_scale_ls is twin["sample_scale_ls"]
    assert twin["ops"] == (torch.ops.sdkernels.scaled_residual_add_ls_triton.default,
                           torch.ops.sdkernels.sample_scale_ls_triton.default,
                           torch.ops.sdkernels.layer_scale_grads_triton.default)
    assert T.layer_scale_grads is torch.ops.sdkernels.layer_scale_grads_triton.default


@pytest.mark.parametrize("shape,sd,cd", [((3, 9, 40), 0, -1), ((2, 3, 7, 5), 0, 1), ((3, 4, 6), 1, 0)], ids=str)
def test_many_programs(monkeypatch, shape, sd, cd):
    """Small tiles: many column blocks and row groups, the per-row kernel's column loop, partial groups."""
    monkeypatch.setattr(LS, "_TILE", 16)
    monkeypatch.setattr(LS, "_MAX_COLS", 8)
    monkeypatch.setattr(LS, "MAX_PROGRAMS", 64)
    r, b, go = (_rand(shape, torch.float32, s, "cpu") for s in (1, 2, 3))
    g = _gamma(shape[cd], torch.float32, 4, "cpu")
    keep = (torch.arange(shape[sd]) % 3 != 1).float()
    assert_close(T.scaled_residual_add_ls(r, b, keep, g, sd, cd, 1.5),
                 R.scaled_residual_add_ls(r, b, keep, g, sd, cd, 1.5))
    assert_close(T.sample_scale_ls(b, keep, g, sd, cd, 1.5, None), R.sample_scale_ls(b, keep, g, sd, cd, 1.5))
    gb, gg = T.layer_scale_grads(go, b, keep, g, sd, cd, 1.5)
    assert_close(gb, R.sample_scale_ls(go, keep, g, sd, cd, 1.5, torch.float32))
    _reduction_check(gg, go, b, keep, g, sd, cd, 1.5)
    v = LS.ls_view(torch.empty(shape), sd % len(shape), cd % len(shape), keep.numel())
    lp = LS.ls_launch_params(v.rows, v.L, True, v.gamma_cols)
    assert lp.grid > 1


def test_row_view_matches_index_math():
    """Every element's (sample, channel) as the row view gives them, for dense layouts of every kind."""
    import itertools

    for shape in [(3, 4, 5), (2, 3, 4, 5), (4, 1, 6)]:
        nd = len(shape)
        for perm in itertools.permutations(range(nd)):
            base = torch.empty([shape[p] for p in perm]).permute([perm.index(d) for d in range(nd)])
            for sd, cd in itertools.permutations(range(nd), 2):
                for one in (False, True):
                    v = LS.ls_view(base, sd, cd, 1 if one else shape[sd])
                    idx = torch.arange(base.numel()).reshape(base.shape)  # logical index of each element
                    # memory offset -> (sample, channel) through the logical index
                    offs = torch.as_strided(torch.arange(base.numel()), base.shape, base.stride())
                    for off, lin in zip(offs.flatten().tolist(), idx.flatten().tolist()):
                        coords = torch.unravel_index(torch.tensor(lin), base.shape)
                        row, col = divmod(off, v.L)
                        s = 0 if v.n == 1 else (row // v.s_div) % v.n
                        c = col if v.gamma_cols else (row // v.c_div) % v.C
                        assert s == (0 if one or shape[sd] == 1 else int(coords[sd])), (shape, perm, sd, cd)
                        assert c == int(coords[cd]), (shape, perm, sd, cd, v)


def test_compile_fullgraph_on_cpu_under_interpreter():
    torch._dynamo.reset()
    g = torch.nn.Parameter(torch.linspace(0.5, 1.5, 40))

    def f(r, b):
        y = sdkernels.drop_path_add(r, b, 0.5, backend="triton", sample_dim=1, layer_scale=g)
        return sdkernels.drop_path(y, 0.25, backend="triton", layer_scale=g) * 2

    r = torch.randn(8, 4, 40, requires_grad=True)
    b = torch.randn(8, 4, 40, requires_grad=True)
    torch.manual_seed(11)
    out = torch.compile(f, fullgraph=True)(r, b)
    go = torch.randn_like(out)
    got = torch.autograd.grad(out, (r, b, g), go)
    torch.manual_seed(11)
    exp = R.drop_path(R.drop_path_add(r, b, 0.5, sample_dim=1, layer_scale=g), 0.25, layer_scale=g) * 2
    want = torch.autograd.grad(exp, (r, b, g), go)
    assert_close(out, exp)
    for a, e in zip(got, want):
        assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_opcheck_triton_ops_on_cpu():
    for shape, sd, cd, cl in [((4, 3, 8), 0, -1, False), ((2, 6, 3, 4), 0, 1, True), ((2, 6, 3, 4), 0, 1, False),
                              ((5, 4, 8), 1, -1, False)]:
        r = _rand(shape, torch.float32, 1, "cpu", cl).requires_grad_()
        b = _rand(shape, torch.bfloat16, 2, "cpu", cl).requires_grad_()
        g = _gamma(shape[cd], torch.float32, 3, "cpu").requires_grad_()
        keep = (torch.arange(shape[sd]) % 3 != 1).float()
        torch.library.opcheck(T.scaled_residual_add_ls, (r, b, keep, g, sd, cd, 1.25))
        torch.library.opcheck(T.sample_scale_ls, (b, keep, g, sd, cd, 1.25, None))
        go = torch.randn(shape).requires_grad_()
        torch.library.opcheck(T.layer_scale_grads, (go, b, keep, g, sd, cd, 1.25))
