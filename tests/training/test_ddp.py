"""DistributedDataParallel (gloo, 2 CPU processes): the same masks on every rank, gradients
averaged, and the result equal to one process on the concatenated batch (no BN)."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import fxsparse


class NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.c2 = nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(x + self.c2(x))
        return self.fc(x.mean((2, 3)))


STEPS = 4


def data():
    g = torch.Generator().manual_seed(123)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)


def train(model, x, y, rank=None, world=1):
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, seed=7)  # same seed: same masks everywhere
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    net = sp if rank is None else nn.parallel.DistributedDataParallel(sp)
    for _ in range(STEPS):
        sp.sample_masks(0.5)
        opt.zero_grad()
        if rank is None:
            F.cross_entropy(net(x), y).backward()
        else:
            half = x.shape[0] // world
            xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
            F.cross_entropy(net(xs), ys).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank, world, port, path):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = NoBN()
    x, y = data()
    state = train(model, x, y, rank, world)
    if rank == 0:
        torch.save(state, path)
    dist.barrier()  # a rank that destroys its group while a peer still talks to it aborts (gloo)
    dist.destroy_process_group()


def test_ddp_matches_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "ddp_state.pt")
    mp.spawn(_worker, args=(2, port, path), nprocs=2, join=True)
    torch.manual_seed(0)
    model = NoBN()
    x, y = data()
    single = train(model, x, y)
    ddp = torch.load(path)
    for k in single:
        assert torch.allclose(single[k], ddp[k], rtol=1e-5, atol=1e-6), k
