"""Data-parallel training in several processes (``torchrun``; ``fxsparse train --nproc N``).

Every process holds the whole model and trains on its share of each global batch
(``--batch-size`` is the global batch; process r of W takes the r-th W-th of it, in the
order of the run's seeded sampler, so the split is as resumable as the order). Gradients,
losses and the structure search's K sample losses are averaged over the processes before
anything decides or updates on them, so every process takes the same steps, draws the same
masks from the same seeded generators and holds the same weights and scores: process 0
alone writes the checkpoints and the logs, and every process resumes from them.

The averaging: the fixed-mask and dense phases wrap the trained module in
``DistributedDataParallel``; the sparse step and the score forwards average through
``SparseModel.reduce_mean`` (``fxsparse.step``), as the VR-PGE estimate is linear in the
losses: averaging the K losses of the shards equals averaging the shards' estimates.
BatchNorm statistics are per process (as with plain DDP), so only a model without BN
trains exactly as one process on the concatenated batch.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) that ``torchrun`` set; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


class Group:
    """The process group of a run (``world == 1``: no group, every call a no-op)."""

    def __init__(self, device: torch.device):
        self.rank, self.world, self.local_rank = world_from_env()
        self.started = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started = True

    @property
    def active(self) -> bool:
        return self.world > 1

    def reduce_mean(self, tensors) -> None:
        """Average ``tensors`` in place over the processes."""
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()
            self.started = False


class ShardBatches(Sampler):
    """The global batches of ``sampler`` (``batch_size`` samples, the last partial one
    dropped), each cut to process ``rank``'s share of ``batch_size // world``."""

    def __init__(self, sampler, batch_size: int, rank: int, world: int):
        if batch_size % world:
            raise ValueError(f"--batch-size {batch_size} is the global batch: it must split evenly over the "
                             f"{world} processes; use a multiple of {world}")
        self.sampler, self.batch_size, self.rank, self.share = sampler, batch_size, rank, batch_size // world

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        items = list(self.sampler)
        for start in range(0, len(items) - self.batch_size + 1, self.batch_size):
            yield items[start + self.rank * self.share:start + (self.rank + 1) * self.share]

    def __len__(self):
        return len(self.sampler) // self.batch_size


def shard_loader(loader: DataLoader, rank: int, world: int) -> DataLoader:
    """``loader`` (batched, with a ``set_epoch`` sampler) reading only process ``rank``'s share of each batch."""
    return DataLoader(loader.dataset, batch_sampler=ShardBatches(loader.sampler, loader.batch_size, rank, world),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator)
