"""The interface every training method implements, and the state it sees.

A method decides masks at initialisation, during training, or both, over either channel
groups (``level = "channel"``: the trainer runs them through the sparse step or the
exported model, so they get the real speed-up) or individual weights (``level =
"weight"``: applied with ``torch.nn.utils.parametrize``; their cost is dense and reported
as such). The trainer calls the hooks in this order:

    method.init(state)                       # once, before the first step
    per step:  forward/backward
               method.after_backward(state)  # e.g. slimming's L1 subgradient, RigL's |grad|
               optimizer.step()
               method.after_step(state)      # e.g. DropBack reset, RigL drop/grow
    per epoch: method.end_epoch(state)       # e.g. SET

Methods keep everything they need to resume in ``state_dict()``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn

from ..graph import ChannelGraph


@dataclasses.dataclass
class TrainState:
    """What a method may read (and, for the model's weights, write)."""
    model: nn.Module                     # the dense model being trained
    graph: Optional[ChannelGraph]        # its channel dependency graph (None if not analysed)
    loss_fn: Callable                    # loss_fn(output, target) -> scalar
    batches: Callable[[], Iterator]      # fresh iterator over (inputs, targets) training batches
    num_classes: int
    example_inputs: tuple                # one input batch, for data-free methods' shapes
    generator: torch.Generator           # seeded; the only randomness a method may use
    optimizer: Optional[torch.optim.Optimizer] = None
    step: int = 0                        # optimizer steps taken so far
    epoch: int = 0
    steps_per_epoch: int = 1
    total_steps: int = 1


class Method:
    """Base class. Subclasses set ``name``, ``level`` and ``paper`` and override hooks."""
    name: str = ""
    level: str = "channel"               # "channel" or "weight"
    paper: str = ""

    def __init__(self, keep: float = 0.5, **options):
        if not isinstance(keep, (int, float)) or keep != keep or not 0 < keep <= 1:
            raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")
        self.keep = float(keep)
        self.options = options

    # ----- hooks ---------------------------------------------------------------------
    def init(self, state: TrainState) -> None:
        """Decide the initial masks (prune-at-init methods do all their work here)."""

    def after_backward(self, state: TrainState) -> None:
        """Gradients exist, the optimizer has not stepped."""

    def after_step(self, state: TrainState) -> None:
        """The optimizer has stepped."""

    def end_epoch(self, state: TrainState) -> None:
        """An epoch of training finished."""

    # ----- results -------------------------------------------------------------------
    def channel_keep(self) -> Optional[dict]:
        """{group id: bool mask} for channel methods whose masks are fixed from now on, else None."""
        return None

    def weight_masks(self) -> Optional[dict]:
        """{parameter name: bool mask} for weight-level methods, else None."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self):
        return f"{type(self).__name__}(keep={self.keep}, level={self.level!r})"
