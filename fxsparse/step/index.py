"""The per-step index of the capacity model: for the current masks, which dense entries each
gathered dim reads (:class:`Slots`) and the values of the capacity model's per-step buffers.

The layouts are looked up by typed keys (:class:`MemberDim`, :class:`Validity`,
:class:`StepPart`) in one :class:`fxsparse.rewrite.layout.GatherIndex` per capacity set; what a
step gets is a :class:`StepIndex`, keyed by the names of real tensors only.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import torch

from fxsparse.rewrite.layout import DimLayout, GatherIndex, kept_permutation
from fxsparse.rewrite.shape_free import Permutation, Piece


class MemberDim(NamedTuple):
    """A gathered dim of a dense tensor (a parameter or a running statistic)."""
    name: str
    dim: int


class Validity(NamedTuple):
    """The validity vector a masked mixing op reads (a capacity-model buffer, see
    ``passes/masked_mixing.py``)."""
    buffer: str


class StepPart(NamedTuple):
    """Dynamic capacities: the positions a shape-free per-step buffer is computed from: a split's
    ``"piece"``, a shuffle's ``"in"`` or ``"out"`` (see :mod:`fxsparse.rewrite.shape_free`)."""
    buffer: str
    part: str


class Slots(NamedTuple):
    """One gathered dim: capacity position p reads dense entry ``index[p]`` along ``dim``;
    ``real[p]`` (bool) and ``valid[p]`` (1.0 / 0.0) say whether it holds a kept channel or is
    an empty slot (a distinct pruned channel, multiplied by 0)."""
    dim: int
    index: torch.Tensor
    real: torch.Tensor
    valid: torch.Tensor
    varies: bool = True  # dynamic capacities: whether its length can change (else a static size when compiled)


@dataclasses.dataclass(frozen=True)
class StepIndex:
    """What one step reads for its masks. ``slots``: {dense tensor: its gathered dims in dim
    order}; ``buffers``: {capacity-model buffer: its value this step} (validity vectors; with
    dynamic capacities, a split's piece and a shuffle's permutation of the kept counts);
    ``empty``: the tensors with an empty slot in some dim (the others need no zeroing);
    ``fixed_buffers``: the buffers whose length never changes (see :attr:`Slots.varies`)."""
    slots: dict[str, tuple[Slots, ...]]
    buffers: dict[str, torch.Tensor]
    empty: frozenset[str]
    fixed_buffers: frozenset[str] = frozenset()

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor once (keys of equal layouts share tensors)."""
        every = [t for dims in self.slots.values() for s in dims for t in (s.index, s.real, s.valid)]
        return list({id(t): t for t in every + list(self.buffers.values())}.values())

    def to(self, device) -> "StepIndex":
        """On ``device`` (this index where it is there already); shared tensors stay shared."""
        if all(t.device == device for t in self.tensors()):
            return self
        moved = {}

        def move(t):
            if id(t) not in moved:
                moved[id(t)] = t.to(device, non_blocking=True)
            return moved[id(t)]

        slots = {name: tuple(s._replace(index=move(s.index), real=move(s.real), valid=move(s.valid)) for s in dims)
                 for name, dims in self.slots.items()}
        return StepIndex(slots, {buf: move(t) for buf, t in self.buffers.items()}, self.empty, self.fixed_buffers)


class StepIndexer:
    """Built once per capacity set: every layout of the capacity model in one
    :class:`~fxsparse.rewrite.layout.GatherIndex`, and how its vectors make a :class:`StepIndex`.

    ``members``: {dense tensor: [(dim, layout)]}; ``validity``: {validity buffer: layout};
    ``step_buffers``: the shape-free rewrite's {buffer: Piece or Permutation}, and
    ``step_layouts`` the layouts of their parts."""

    def __init__(self, members: dict[str, list[tuple[int, DimLayout]]], validity: dict[str, DimLayout],
                 step_buffers: dict[str, Piece | Permutation], step_layouts: dict[StepPart, DimLayout]):
        self.members = {name: tuple(dim for dim, _ in dims) for name, dims in members.items()}
        self.validity = tuple(validity)
        self.step_buffers = step_buffers
        self.layouts: dict[MemberDim | Validity | StepPart, DimLayout] = {
            MemberDim(name, dim): layout for name, dims in members.items() for dim, layout in dims}
        self.layouts.update({Validity(buf): layout for buf, layout in validity.items()})
        self.layouts.update(step_layouts)
        self.gather_index = GatherIndex(self.layouts)
        self.fixed: frozenset = frozenset()  # the keys whose length never changes (see find_fixed_lengths)

    def find_fixed_lengths(self, slot_class, fewest, most) -> None:
        """Dynamic capacities: note the keys whose length is the same with the ``fewest`` and the
        ``most`` present slots (bool per global slot): every block they span is no larger than the
        alignment, so every step runs all of its slots. Their sizes stay static in the compiled
        graphs: each symbolic size costs tracing and lowering time (a ResNet-20's 16-channel
        stage at align 16: 7 of 21 counts)."""
        valid = np.ones(len(slot_class), dtype=bool)
        small, large = self.gather_index(slot_class, valid, fewest), self.gather_index(slot_class, valid, most)
        self.fixed = frozenset(k for k in self.layouts if len(small[k][0]) == len(large[k][0]))

    def __call__(self, slot_class, slot_valid, present=None) -> StepIndex:
        """The index for the plan's slot assignment (:meth:`fxsparse.rewrite.layout.Plan.slot_classes`);
        ``present``: dynamic capacities, the slots this step runs."""
        got = self.gather_index(slot_class, slot_valid, present)
        slots, empty = {}, set()
        for name, dims in self.members.items():
            per_dim = []
            for dim in dims:
                index, valid, real, full = got[MemberDim(name, dim)]
                per_dim.append(Slots(dim, index, real, valid, MemberDim(name, dim) not in self.fixed))
                if not full:
                    empty.add(name)
            slots[name] = tuple(per_dim)
        buffers = {buf: got[Validity(buf)][1] for buf in self.validity}
        for buf, spec in self.step_buffers.items():
            if isinstance(spec, Piece):  # only its length is read: the piece's size
                buffers[buf] = got[StepPart(buf, "piece")][0]
            else:
                buffers[buf] = kept_permutation(spec.full, got[StepPart(buf, "in")][0], got[StepPart(buf, "out")][0])
        fixed_buffers = frozenset(buf for buf in buffers if Validity(buf) in self.fixed or StepPart(buf, "piece") in self.fixed
                                  or {StepPart(buf, "in"), StepPart(buf, "out")} <= self.fixed)
        return StepIndex(slots, buffers, frozenset(empty), fixed_buffers)
