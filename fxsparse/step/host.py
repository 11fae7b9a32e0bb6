"""The interface between the compiled step and the model it trains: a step asks its host
(:class:`fxsparse.step.sparse.SparseModel`) for :class:`StepInputs` once per call, and reads
nothing else of it but the :class:`StepHost` members."""
from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

import torch
import torch.nn as nn

from fxsparse.step.build import CapacityBuild
from fxsparse.step.compiler import StepCompiler
from fxsparse.step.index import StepIndex


@dataclasses.dataclass(frozen=True)
class StepInputs:
    """What one step call reads, fixed for that call: the build of the current capacities, the
    index of the current masks on the inputs' device, the dense model's tensors as they are now,
    and whether the model is in training mode (running statistics are written back)."""
    build: CapacityBuild
    index: StepIndex
    dense: dict[str, torch.Tensor]
    training: bool


class StepHost(Protocol):
    """What a step needs of the model it trains. ``reduce_mean``: data parallel, fn(tensors)
    averaging them in place over the processes (None: one process)."""
    model: nn.Module
    compiler: StepCompiler
    reduce_mean: Callable[[list[torch.Tensor]], None] | None

    def step_inputs(self, inputs: Sequence) -> StepInputs: ...


def device_of(inputs) -> torch.device:
    """The device of the first tensor input (the CPU when there is none)."""
    return next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
