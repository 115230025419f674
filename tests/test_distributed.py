"""DTensor sharding rules, checked in one process with a fake two-rank process group.

Each op, fed DTensors with the placements of its rules, must (a) give the placements the rule says,
(b) compute on the local shard exactly what the op computes on the global tensor's slice, and
(c) communicate nothing but the mask's small broadcast in the forward (CommDebugMode).  The public
functions take DTensors end to end, forward and backward, and compile with fullgraph=True.
The multi-process checks (sequence parallel on two ranks, FSDP2 x TP on four) are in
tests/test_distributed_multiproc.py.
"""
import pytest
import torch
import torch.distributed as dist

import sdkernels
from sdkernels import reference as R
from _tolerances import assert_close

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

WORLD = 2


@pytest.fixture(scope="module")
def mesh():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=WORLD)
    try:
        yield init_device_mesh("cpu", (WORLD,))
    finally:
        dist.destroy_process_group()


def _dt(t, mesh, placement):
    from torch.distributed.tensor import DTensor, Partial, distribute_tensor

    if isinstance(placement, Partial):  # each rank holds an addend: here rank 0 holds t / WORLD
        return DTensor.from_local(t / WORLD, mesh, [placement], run_check=False)
    return distribute_tensor(t, mesh, [placement])


def _local_slice(t, placement, rank=0):
    from torch.distributed.tensor import Shard

    if isinstance(placement, Shard):
        return t.chunk(WORLD, placement.dim)[rank]
    return t


def _placements():
    from torch.distributed.tensor import Replicate, Shard

    return [Replicate(), Shard(0), Shard(1), Shard(2)]


def _comms(fn):
    from torch.distributed.tensor.debug import CommDebugMode

    with CommDebugMode() as cm:
        out = fn()
    counts = {str(k).split(".")[-1]: v for k, v in cm.get_comm_counts().items()}
    return out, counts


def _no_gather(counts):
    heavy = {k: v for k, v in counts.items() if "broadcast" not in k}
    assert not heavy, f"activations were communicated: {counts}"


def test_rules_registered_for_every_op():
    names = set(sdkernels.distributed.registered())
    for op in ("scaled_residual_add", "sample_scale", "scaled_index_add", "index_scale"):
        assert op in names
    if "triton" in sdkernels.available_backends():
        assert {"scaled_residual_add_triton", "sample_scale_triton"} <= names


@pytest.mark.parametrize("pi", range(4))
def test_residual_add_op_placements_and_values(mesh, pi):
    place = _placements()[pi]
    torch.manual_seed(pi)
    r, b = torch.randn(8, 6, 4), torch.randn(8, 6, 4)
    scale = torch.empty(8).bernoulli_(0.5)
    rd, bd = _dt(r, mesh, place), _dt(b, mesh, place)
    sd = sdkernels.rng.replicated_agreed(scale, rd)
    out, counts = _comms(lambda: torch.ops.sdkernels.scaled_residual_add(rd, bd, sd, 0, 2.0))
    _no_gather(counts)
    assert out.placements == (place,)
    expect = R.scaled_residual_add(r, b, scale, 0, 2.0)
    assert_close(out.to_local(), _local_slice(expect, place))


def test_partial_inputs_give_partial_output(mesh):
    from torch.distributed.tensor import Partial

    r, b = torch.randn(8, 6, 4), torch.randn(8, 6, 4)
    scale = torch.empty(8).bernoulli_(0.5)
    rd, bd = _dt(r, mesh, Partial()), _dt(b, mesh, Partial())
    sd = sdkernels.rng.replicated_agreed(scale, rd)
    out, counts = _comms(lambda: torch.ops.sdkernels.scaled_residual_add(rd, bd, sd, 0, 2.0))
    assert out.placements == (Partial(),) and not counts
    assert_close(out.to_local(), R.scaled_residual_add(r / WORLD, b / WORLD, scale, 0, 2.0))
    x = _dt(r, mesh, Partial())
    y = torch.ops.sdkernels.sample_scale(x, sd, 0, 2.0)
    assert y.placements == (Partial(),)
    assert_close(y.to_local(), R.sample_scale(r / WORLD, scale, 0, 2.0))


@pytest.mark.parametrize("pi", range(4))
@pytest.mark.parametrize("sample_dim", [0, 1])
def test_public_functions_take_dtensors(mesh, pi, sample_dim):
    """drop_path_add / drop_path on DTensors: the placements kept, the reference's values under one seed,
    gradients with the same placements, nothing gathered."""
    place = _placements()[pi]
    torch.manual_seed(10 + pi)
    r, b = torch.randn(8, 6, 4), torch.randn(8, 6, 4)
    rd = _dt(r, mesh, place).requires_grad_()
    bd = _dt(b, mesh, place).requires_grad_()
    torch.manual_seed(1)
    out, counts = _comms(lambda: sdkernels.drop_path_add(rd, bd, 0.5, sample_dim=sample_dim))
    _no_gather(counts)
    torch.manual_seed(1)
    expect = R.drop_path_add(r, b, 0.5, sample_dim=sample_dim)  # the global draw: the same mask
    assert out.placements == (place,)
    assert_close(out.to_local(), _local_slice(expect, place))
    g = torch.randn(8, 6, 4)
    (gd,) = [_dt(g, mesh, place)]
    _, counts = _comms(lambda: out.backward(gd))
    _no_gather(counts)
    assert rd.grad.placements == (place,) and bd.grad.placements == (place,)
    assert_close(rd.grad.to_local(), _local_slice(g, place))
    torch.manual_seed(1)
    mask = R.draw_keep(r.shape[sample_dim], 0.5, "row", "cpu")
    expect_gb = R.sample_scale(g, mask, sample_dim, R.keep_scale(0.5, True))
    assert_close(bd.grad.to_local(), _local_slice(expect_gb, place))
    torch.manual_seed(2)
    y = sdkernels.drop_path(bd.detach(), 0.3, sample_dim=sample_dim)
    torch.manual_seed(2)
    assert y.placements == (place,)
    assert_close(y.to_local(), _local_slice(R.drop_path(b, 0.3, sample_dim=sample_dim), place))


def test_batch_mode_and_modules(mesh):
    from torch.distributed.tensor import Shard

    r, b = torch.randn(8, 6, 4), torch.randn(8, 6, 4)
    rd, bd = _dt(r, mesh, Shard(1)), _dt(b, mesh, Shard(1))
    for seed in range(4):
        torch.manual_seed(seed)
        out = sdkernels.nn.DropPathAdd(0.5, mode="batch")(rd, bd)
        torch.manual_seed(seed)
        assert_close(out.to_local(), _local_slice(R.drop_path_add(r, b, 0.5, mode="batch"), Shard(1)))
    out = sdkernels.nn.DropPath(0.5)(bd)
    assert out.placements == (Shard(1),)


@pytest.mark.parametrize("count", ["fixed", "bernoulli"])
def test_skip_path_on_a_sequence_shard(mesh, count):
    from torch.distributed.tensor import Shard

    torch.manual_seed(0)
    x = torch.randn(8, 6, 4)
    xd = _dt(x, mesh, Shard(1)).requires_grad_()

    def fn(t):
        return torch.tanh(t) * 2.0

    torch.manual_seed(3)
    out, counts = _comms(lambda: sdkernels.drop_path_residual(xd, fn, 0.5, count=count))
    _no_gather(counts)
    torch.manual_seed(3)
    expect = sdkernels.drop_path_residual(x, fn, 0.5, count=count)
    assert out.placements == (Shard(1),)
    assert_close(out.to_local(), _local_slice(expect, Shard(1)))
    out.backward(_dt(torch.randn(8, 6, 4), mesh, Shard(1)))
    assert xd.grad.placements == (Shard(1),)


def test_compile_fullgraph_of_a_dtensor_call(mesh):
    from torch.distributed.tensor import Shard

    r, b = torch.randn(8, 6, 4), torch.randn(8, 6, 4)
    rd, bd = _dt(r, mesh, Shard(1)), _dt(b, mesh, Shard(1))

    def f(a, c):
        return sdkernels.drop_path_add(a, c, 0.5)

    torch.manual_seed(4)
    expect = f(rd, bd)
    torch.manual_seed(4)
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(rd, bd)
    assert got.placements == expect.placements
    assert_close(got.to_local(), expect.to_local())


# ---- LayerScale ops (issue 13) ----------------------------------------------------------------

@pytest.mark.parametrize("pi", range(4))
def test_layer_scale_ops_placements_and_values(mesh, pi):
    """Shard(channel) shards gamma alike; gamma's gradient is Partial where another dim is sharded."""
    from torch.distributed.tensor import Partial, Replicate, Shard

    place = _placements()[pi]
    torch.manual_seed(20 + pi)
    r, b, g = torch.randn(8, 6, 4), torch.randn(8, 6, 4), torch.randn(8, 6, 4)
    gamma = torch.randn(4)
    scale = torch.empty(8).bernoulli_(0.5)
    rd, bd, gd = (_dt(t, mesh, place) for t in (r, b, g))
    gamma_place = Shard(0) if place == Shard(2) else Replicate()
    gam = _dt(gamma, mesh, gamma_place)
    sd = sdkernels.rng.replicated_agreed(scale, rd)
    out, counts = _comms(lambda: torch.ops.sdkernels.scaled_residual_add_ls(rd, bd, sd, gam, 0, 2, 2.0))
    _no_gather(counts)
    assert out.placements == (place,)
    assert_close(out.to_local(), _local_slice(R.scaled_residual_add_ls(r, b, scale, gamma, 0, 2, 2.0), place))
    (gb, gg), counts = _comms(lambda: torch.ops.sdkernels.layer_scale_grads(gd, bd, sd, gam, 0, 2, 2.0))
    _no_gather(counts)
    assert gb.placements == (place,)
    assert gg.placements == ((Replicate(),) if place == Replicate() else (Shard(0),) if place == Shard(2)
                             else (Partial(),))
    # the local values: the reference on this rank's shard (a Partial holds this rank's addend)
    gl, bl = _local_slice(g, place), _local_slice(b, place)
    sl = _local_slice(scale, Shard(0)) if place == Shard(0) else scale
    gam_l = _local_slice(gamma, Shard(0)) if place == Shard(2) else gamma
    eb, eg = R.layer_scale_grads(gl, bl, sl, gam_l, 0, 2, 2.0)
    assert_close(gb.to_local(), eb)
    torch.testing.assert_close(gg.to_local(), eg, rtol=1e-5, atol=1e-6)


def test_public_function_with_a_plain_gamma(mesh):
    from torch.distributed.tensor import Shard

    r, b = torch.randn(8, 6, 4), torch.randn(8, 6, 4)
    gamma = torch.randn(4, requires_grad=True)
    rd, bd = _dt(r, mesh, Shard(1)), _dt(b, mesh, Shard(1)).requires_grad_()
    torch.manual_seed(6)
    out, counts = _comms(lambda: sdkernels.drop_path_add(rd, bd, 0.5, layer_scale=gamma))
    _no_gather(counts)
    torch.manual_seed(6)
    expect = R.drop_path_add(r, b, 0.5, layer_scale=gamma.detach())
    assert out.placements == (Shard(1),)
    assert_close(out.to_local(), _local_slice(expect, Shard(1)))
    out.sum().backward()
    assert gamma.grad is not None and bd.grad.placements == (Shard(1),)


# ---- add + norm (issue 14) ------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_add_norm_on_a_sequence_shard(mesh, norm):
    """Seq-first [S, B, H] sharded on S (sequence parallelism): x and h stay sharded, nothing gathered; the
    normalised last dim is never sharded; weight's gradient is the sum over both ranks' rows."""
    from torch.distributed.tensor import Shard

    torch.manual_seed(1)
    r, b = torch.randn(8, 6, 16), torch.randn(8, 6, 16)
    w, bias = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
    bias_arg = bias if norm == "layer" else None
    rd = _dt(r, mesh, Shard(0)).requires_grad_()
    bd = _dt(b, mesh, Shard(0)).requires_grad_()
    torch.manual_seed(2)
    (x, h), counts = _comms(lambda: sdkernels.drop_path_add_norm(rd, bd, 0.5, w, bias_arg, 1e-6, norm=norm,
                                                                 sample_dim=1))
    _no_gather(counts)
    torch.manual_seed(2)
    ex, eh = R.drop_path_add_norm(r, b, 0.5, w.detach(), None if bias_arg is None else bias.detach(), 1e-6,
                                  norm=norm, sample_dim=1)
    assert x.placements == h.placements == (Shard(0),)
    assert_close(x.to_local(), _local_slice(ex, Shard(0)))
    torch.testing.assert_close(h.to_local(), _local_slice(eh, Shard(0)), rtol=1e-5, atol=1e-5)
    g = torch.randn(8, 6, 16)
    gd = _dt(g, mesh, Shard(0))
    _, counts = _comms(lambda: h.backward(gd))
    assert rd.grad.placements == bd.grad.placements == (Shard(0),)
    assert set(counts) <= {"all_reduce"}, counts  # only the weight gradient's sum over ranks
    torch.manual_seed(2)
    rl, bl, wl = (t.detach().requires_grad_() for t in (r, b, w))
    _, eh = R.drop_path_add_norm(rl, bl, 0.5, wl, None if bias_arg is None else bias.detach(), 1e-6,
                                 norm=norm, sample_dim=1)
    eh.backward(g)  # a row's residual gradient depends on that row alone: rank 0's rows match
    torch.testing.assert_close(rd.grad.to_local(), _local_slice(rl.grad, Shard(0)), rtol=1e-5, atol=1e-5)


def test_add_norm_rules_never_shard_the_normalised_dim(mesh):
    from torch.distributed.tensor import Shard

    # Inputs sharded on the normalised dim are redistributed first: every local row is whole.  (The fake
    # process group moves no data, so values are checked in tests/test_distributed_multiproc.py.)
    r, b = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    rd, bd = _dt(r, mesh, Shard(2)).requires_grad_(), _dt(b, mesh, Shard(2)).requires_grad_()
    torch.manual_seed(0)
    x, h = sdkernels.drop_path_add_norm(rd, bd, 0.5, None, None, 1e-5)
    assert Shard(2) not in x.placements and Shard(2) not in h.placements
    assert x.to_local().shape[-1] == h.to_local().shape[-1] == 8
    h.backward(torch.ones_like(h))
    assert rd.grad is not None and rd.grad.shape == r.shape
