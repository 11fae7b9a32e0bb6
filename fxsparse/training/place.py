"""Where and how a run computes (:class:`RunPlace`): its device (under ``torchrun``, this
process's GPU), the process group, whether this process writes, the precision, and the
memory format its models and batches take."""
from __future__ import annotations

import torch
import torch.nn as nn

from fxsparse.training.config import TrainConfig
from fxsparse.training.device import Precision, resolve_device, to_device
from fxsparse.training.distributed import Group


class RunPlace:
    def __init__(self, config: TrainConfig):
        device = resolve_device(config.device)
        self.group = Group(device)  # torchrun's processes (one process: no group)
        if self.group.active and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.group.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        self.device = device
        self.channels_last = config.channels_last
        self.precision = Precision(config.precision, device)

    @property
    def writer(self) -> bool:
        """This process writes the run's files and logs."""
        return self.group.rank == 0

    def batch(self, batch):
        """A batch on the run's device, in its memory format."""
        return to_device(batch, self.device, self.channels_last)

    def model(self, model: nn.Module) -> nn.Module:
        """A model on the run's device, in its memory format."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model
