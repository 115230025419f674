"""The RNG contract and the sharding rules across real processes (CPU, gloo, spawned).

* two ranks, a [8, 6, 4] residual stream sharded on the sequence dim: the masks agree, the output and a
  replicated weight's gradient equal the single-process run under one seed, also when the ranks are
  seeded differently (the first rank's draw is broadcast over the mesh);
* DDP, mode "batch": both ranks drop the same blocks;
* four ranks, FSDP2 x tensor parallel (2 x 2) on a two-block model: the parameters after three SGD
  steps equal a single-process run on the global batch, whose draws the contract reproduces (each
  replica draws the global batch's decisions and takes its slice: sdkernels.rng.set_data_parallel_draws).
"""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sdkernels

pytestmark = [
    pytest.mark.multiproc,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _spawn(fn, world: int, *args):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.pt")
        mp.spawn(fn, args=(world, _free_port(), path) + args, nprocs=world, join=True)
        return torch.load(path, weights_only=False)


# ---- sequence parallel on two ranks -------------------------------------------------------------

def _sp_step(x, norm_w, fc_w, generator_seed):
    """One residual block, x + drop_path(fc(norm(x))), forward and backward; returns out and fc_w's grad."""
    torch.manual_seed(generator_seed)
    h = torch.nn.functional.layer_norm(x, (4,), norm_w)
    out = sdkernels.drop_path_add(x, torch.nn.functional.linear(h, fc_w), 0.5)
    out2 = sdkernels.drop_path(out, 0.5) + out
    return out2


def _sp_worker(rank, world, port, path, seeds):
    _init(rank, world, port)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Replicate, Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)
        x = torch.randn(8, 6, 4)
        norm_w, fc_w = torch.randn(4), torch.randn(4, 4)
        g = torch.randn(8, 6, 4)
        xd = distribute_tensor(x, mesh, [Shard(1)])
        nd = distribute_tensor(norm_w, mesh, [Replicate()]).requires_grad_()
        fd = distribute_tensor(fc_w, mesh, [Replicate()]).requires_grad_()
        out = _sp_step(xd, nd, fd, seeds[rank])
        out.backward(distribute_tensor(g, mesh, [Shard(1)]))
        # the masks this rank used: compare the drop pattern of its shard with the others'
        local_out = out.to_local()
        full_out = out.full_tensor()
        fc_grad = fd.grad.full_tensor()
        gathered = [None] * world
        dist.all_gather_object(gathered, {"local": local_out, "full": full_out, "fc_grad": fc_grad})
        if rank == 0:
            torch.save(gathered, path)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("seeds", [(11, 11), (11, 97)], ids=["seeded-alike", "seeded-differently"])
def test_sequence_parallel_two_ranks(seeds):
    res = _spawn(_sp_worker, 2, seeds)
    torch.manual_seed(0)
    x = torch.randn(8, 6, 4)
    norm_w, fc_w = torch.randn(4), torch.randn(4, 4)
    g = torch.randn(8, 6, 4)
    fw = fc_w.clone().requires_grad_()
    expect = _sp_step(x, norm_w, fw, seeds[0])  # the first rank's stream decides
    expect.backward(g)
    for r in res:
        torch.testing.assert_close(r["full"], expect, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(r["fc_grad"], fw.grad, rtol=1e-5, atol=1e-5)
    # each rank's shard is its slice of the one result: the same samples dropped on both
    torch.testing.assert_close(torch.cat([res[0]["local"], res[1]["local"]], 1), expect, rtol=1e-6, atol=1e-6)


# ---- DDP, mode "batch" ---------------------------------------------------------------------------

def _ddp_worker(rank, world, port, path):
    _init(rank, world, port)
    try:
        torch.manual_seed(0)  # seeded alike: the contract
        branch = torch.nn.Linear(8, 8)
        dpa = sdkernels.nn.DropPathAdd(0.5, mode="batch")
        model = torch.nn.ModuleDict({"branch": branch, "dpa": dpa})
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        data = torch.Generator().manual_seed(100 + rank)
        decisions = []
        for _ in range(8):
            x = torch.randn(4, 8, generator=data)
            b = ddp.module["branch"](x)
            out = ddp.module["dpa"](x, b)
            decisions.append(not torch.equal(out, x))
            out.square().mean().backward()
        gathered = [None] * world
        dist.all_gather_object(gathered, decisions)
        if rank == 0:
            torch.save(gathered, path)
    finally:
        dist.destroy_process_group()


def test_ddp_batch_mode_ranks_drop_the_same_blocks():
    d0, d1 = _spawn(_ddp_worker, 2)
    assert d0 == d1 and any(d0) and not all(d0), (d0, d1)


# ---- FSDP2 x tensor parallel on four ranks ---------------------------------------------------------

DIM, HIDDEN, LOCAL_BATCH, TOKENS, STEPS, DP = 8, 16, 4, 3, 3, 2


class Block(torch.nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.norm = torch.nn.LayerNorm(DIM)
        self.fc1 = torch.nn.Linear(DIM, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, DIM)
        self.dpa = sdkernels.nn.DropPathAdd(p)

    def forward(self, x):
        return self.dpa(x, self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x)))))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(0.3), Block(0.6)])
        self.head = torch.nn.Linear(DIM, 1)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x).mean()


def _batches():
    g = torch.Generator().manual_seed(42)
    return [torch.randn(DP * LOCAL_BATCH, TOKENS, DIM, generator=g) for _ in range(STEPS)]


def _reference_params():
    """One process, the global batch: the draws of the global batch are what every replica slices."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(123)
    for x in _batches():
        # The mean over the global batch is the mean of the replicas' local means (FSDP averages their
        # gradients), and each drop path draws the global batch's decisions, as every replica does.
        loss = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def _fsdp_tp_worker(rank, world, port, path):
    _init(rank, world, port)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        mesh = init_device_mesh("cpu", (DP, world // DP), mesh_dim_names=("dp", "tp"))
        dp_rank = mesh.get_local_rank("dp")
        sdkernels.rng.set_data_parallel_draws(dp_rank, DP)
        torch.manual_seed(0)
        model = Net()
        for blk in model.blocks:
            parallelize_module(blk, mesh["tp"], {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})
            fully_shard(blk, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.manual_seed(123)  # seeded alike on every rank
        for x in _batches():
            loss = model(x[dp_rank * LOCAL_BATCH:(dp_rank + 1) * LOCAL_BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
        full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in model.state_dict().items()}
        if rank == 0:
            torch.save(full, path)
    finally:
        sdkernels.rng.set_data_parallel_draws(None)
        dist.destroy_process_group()


def test_fsdp2_tensor_parallel_four_ranks_match_one_process():
    got = _spawn(_fsdp_tp_worker, 4)
    expect = _reference_params()
    assert got.keys() == expect.keys()
    torch.manual_seed(0)
    init = Net().state_dict()
    for k in expect:
        assert not torch.equal(expect[k], init[k]), f"{k} was not trained"
        torch.testing.assert_close(got[k], expect[k], rtol=1e-5, atol=1e-6, msg=k)
