"""Mode "batch" under DistributedDataParallel: two CPU processes on gloo.

Each rank passes a generator seeded alike, so every rank drops the same
batches; a dropped batch leaves the branch's parameters unused, which DDP
accepts with ``find_unused_parameters=True``.  After a few real training
steps (some dropped, some kept) the ranks' parameters must be equal, and each
rank's own decisions (whether its branch ran, seen in its forward: gradients
are averaged across ranks and cannot tell) must match the other's and the
generator's draws.  Ranks seeded differently fail it (checked by hand: a rank
that dropped a step sees its branch weights moved by the other's gradient).
"""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sdkernels

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

STEPS = 8


class Net(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        self.inp = torch.nn.Linear(16, 16)
        self.branch = torch.nn.Sequential(torch.nn.LayerNorm(16), torch.nn.Linear(16, 32), torch.nn.GELU(),
                                          torch.nn.Linear(32, 16))
        self.block = sdkernels.nn.StochasticResidual(self.branch, 0.5, mode="batch",
                                                     generator=torch.Generator().manual_seed(seed))
        self.out = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.out(self.block(self.inp(x)))


def _worker(rank: int, world: int, port: int, result_path: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial parameters (DDP also broadcasts rank 0's)
        model = Net(seed=3)  # keeps: 1 1 0 1 0 0 1 1
        init = [p.detach().clone() for p in model.parameters()]
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        data = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        # This rank's own decision, seen in its forward (a gradient would not do: DDP averages it over ranks).
        calls = []
        model.branch.register_forward_hook(lambda mod, args, out: calls.append(1))
        kept = []
        for _ in range(STEPS):
            x = torch.randn(8, 16, generator=data)
            y = torch.randn(8, 4, generator=data)
            before = model.branch[1].weight.detach().clone()
            opt.zero_grad()
            n_calls = len(calls)
            loss = torch.nn.functional.mse_loss(ddp(x), y)
            assert len(calls) - n_calls in (0, 1), "the branch must run at most once per step"
            kept.append(len(calls) > n_calls)
            loss.backward()
            opt.step()
            if not kept[-1]:
                assert torch.equal(model.branch[1].weight.detach(), before)
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        decisions = [None] * world
        dist.all_gather_object(decisions, kept)
        if rank == 0:
            moved = [not torch.equal(a, p.detach()) for a, p in zip(init, model.parameters())]
            torch.save({"params": gathered, "decisions": decisions, "moved": moved}, result_path)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_batch_mode_two_ranks_stay_in_sync():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
        res = torch.load(path)
    d0, d1 = res["decisions"]
    assert d0 == d1, f"ranks took different batch decisions: {d0} and {d1}"
    # ... and they are the generator's draws: Bernoulli(1 - p) from a CPU generator seeded 3, one per step.
    g = torch.Generator().manual_seed(3)
    expected = [bool(sdkernels.reference.draw_keep(1, 0.5, "batch", "cpu", g).item()) for _ in range(STEPS)]
    assert d0 == expected
    assert any(d0) and not all(d0), f"want both kept and dropped steps, got {d0}"
    p0, p1 = res["params"]
    assert torch.equal(p0, p1), "parameters diverged across ranks"
    assert all(res["moved"]), "every parameter should have been trained"
