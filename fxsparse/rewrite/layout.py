"""Capacity layouts: where each kept channel sits in the compiled sparse step.

Every block of channels (see ``passes/capacity_blocks.py``) has a capacity of ``slots`` slots. Slot s of
a block holds the block's s-th kept channel, or, when fewer are kept, a distinct pruned
channel whose weights are multiplied by 0 (an *empty slot*). A :class:`DimLayout`
records, for one dim of one parameter or tensor in the capacity model, which
(block, slot, occurrence) each position holds, so that the per-step gather index and
validity vector are two numpy lookups.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Hashable

import numpy as np
import torch

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.rewrite.capacity_blocks import Block, capacity_blocks


@dataclasses.dataclass
class DimLayout:
    gslot: np.ndarray  # global slot per position (-1: a fixed position that is always there)
    occ: np.ndarray  # which occurrence of the slot's channel (a channel may span several positions)
    fixed: np.ndarray  # original position, for fixed entries
    rows: dict  # class -> sorted original positions of that class in this dim
    any_prunable: bool

    def __len__(self):
        return len(self.gslot)

    def part(self, start: int, stop: int) -> "DimLayout":
        """The layout of positions ``start:stop`` only (a piece of a split)."""
        return dataclasses.replace(self, gslot=self.gslot[start:stop], occ=self.occ[start:stop],
                                   fixed=self.fixed[start:stop])

    def signature(self) -> tuple:
        """Equal for layouts that gather the same positions at every step (a conv's output dim,
        its bias and the BN after it): one index serves them all."""
        classes, pos = self.table()
        return tuple(a.tobytes() for a in (self.gslot, self.occ, self.fixed, classes, pos)) + (pos.shape,)

    def table(self):
        """(sorted classes, [class row, occurrence] -> position), built once."""
        if getattr(self, "_table", None) is None:
            classes = np.array(sorted(self.rows), dtype=np.int64)
            width = max((len(v) for v in self.rows.values()), default=1)
            pos = np.zeros((len(classes), width), dtype=np.int64)
            for r, c in enumerate(classes.tolist()):
                pos[r, : len(self.rows[c])] = self.rows[c]
            self._table = (classes, pos)
        return self._table


class Plan:
    """Blocks, their capacities, and the slot -> channel assignment for the current masks."""

    def __init__(self, graph: ChannelGraph, caps: dict[int, int] | None = None, align: int = 1):
        self.graph = graph
        self.align = align  # slot counts are rounded up to a multiple of this (never past the block size)
        self.blocks: list[Block] = capacity_blocks(graph)
        self.prunable = [graph.groups[b.group].prunable for b in self.blocks]
        self.block_index = [torch.as_tensor(b.channels) for b in self.blocks]  # built once: used every step
        self.caps = [len(b.classes) for b in self.blocks]
        if caps:
            for i, c in caps.items():
                self.caps[i] = c
        self.block_of = {}
        self.slot_of = {}
        for i, b in enumerate(self.blocks):
            for s, c in enumerate(b.classes.tolist()):
                self.block_of[c] = i
                self.slot_of[c] = s
        self.set_caps(self.caps)

    def set_caps(self, caps) -> None:
        """Set the capacities (slots per block) and the global slot offsets that follow."""
        self.caps = list(caps)
        self.offsets = np.concatenate([[0], np.cumsum(self.caps)]).astype(np.int64)

    # ----- the capacity policy -------------------------------------------------------
    def round_cap(self, n, size: int) -> int:
        """``n`` slots rounded up to ``align``, at least 1, at most ``size``."""
        return int(min(size, max(1, math.ceil(n / self.align) * self.align)))

    def set_initial_caps(self, keep: float, capacity="auto", headroom: float = 3.0) -> None:
        """``capacity``: "auto" (the expected kept count of a Bernoulli(keep) mask plus
        ``headroom`` standard deviations), "exact" (round(keep * size)), {block: slots}, or
        "dynamic" (every slot: the capacity model is the whole model, and each step keeps
        only its real slots, see :class:`GatherIndex`)."""
        caps = list(self.caps)
        for i, b in enumerate(self.blocks):
            n = len(b.classes)
            if not self.prunable[i]:
                continue
            if capacity == "dynamic":
                want = n
            elif capacity == "auto":
                want = keep * n + headroom * math.sqrt(n * keep * (1 - keep))
            elif capacity == "exact":
                want = round(keep * n)
            elif isinstance(capacity, dict):
                want = capacity.get(i, n)
            else:
                raise ValueError(f"capacity must be 'auto', 'exact', 'dynamic' or {{block: slots}}, got {capacity!r}")
            caps[i] = self.round_cap(math.ceil(want), n)
        self.set_caps(caps)

    def fits(self, masks) -> bool:
        """Whether ``masks`` ({group: bool}) fit the current capacities."""
        return all(c <= slots for c, slots in zip(self.block_counts(masks), self.caps))

    def grown_caps(self, counts) -> list[int] | None:
        """Capacities for blocks that now keep ``counts`` channels: a block that overflows
        grows to at least 25% more slots (so counts that creep up cost a few rebuilds, not one
        per step); None when every block fits."""
        caps, grew = list(self.caps), False
        for i, c in enumerate(counts):
            if c > caps[i]:
                caps[i] = self.round_cap(max(c, math.ceil(caps[i] * 1.25)), len(self.blocks[i].classes))
                grew = True
        return caps if grew else None

    def block_moments(self, probs: dict[int, torch.Tensor], spread: dict[int, float] | None = None
                      ) -> list[tuple[float, float]]:
        """Per block: mean and standard deviation of the kept count of a Bernoulli(probs) mask
        (the std times ``spread[group]`` where the masks vary more than independent draws)."""
        out = []
        for b, index in zip(self.blocks, self.block_index):
            p = probs.get(b.group)
            if p is None:
                out.append((float(len(index)), 0.0))
                continue
            p = p.detach().double().cpu()[index].clamp(0, 1)
            factor = (spread or {}).get(b.group, 1.0)
            out.append((float(p.sum()), factor * math.sqrt(float((p * (1 - p)).sum()))))
        return out

    def planned_caps(self, probs, headroom: float = 3.0, slack: float = 0.02, moments=None) -> list[int]:
        """Capacities for Bernoulli(probs) masks: mean + ``headroom`` std + ``slack`` x block size
        (``moments``: :meth:`block_moments` of ``probs`` when the caller already has them)."""
        caps = list(self.caps)
        for i, (mean, std) in enumerate(moments or self.block_moments(probs)):
            if self.prunable[i]:
                n = len(self.blocks[i].classes)
                caps[i] = self.round_cap(math.ceil(mean + headroom * std + slack * n), n)
        return caps

    def fitted_caps(self, probs, masks, cost, *, headroom: float = 3.5, grow_at: float = 3.0, slack: float = 0.02,
                    shrink_gain: float = 0.1, shrink: bool = True, spread: dict[int, float] | None = None
                    ) -> tuple[list[int] | None, bool]:
        """(new capacities or None to keep them, whether a shrink passed the cost test) for masks drawn from
        Bernoulli(``probs``), never below what the current ``masks`` need. Grow when a block's
        expected count plus ``grow_at`` std no longer fits (the blocks that need it, by at
        least 25%; the others keep theirs); else, with ``shrink``, set every block to its
        planned capacity when that cuts ``cost(caps)`` (the capacity model's FLOPs) by
        ``shrink_gain`` (``spread``: see :meth:`block_moments`)."""
        moments = self.block_moments(probs, spread)
        needs = [self.prunable[i] and m + grow_at * sd > slots and slots < len(self.blocks[i].classes)
                 for i, ((m, sd), slots) in enumerate(zip(moments, self.caps))]  # a full block cannot grow
        grow = any(needs)
        if not grow and not shrink:
            return None, False
        planned = self.planned_caps(probs, headroom, slack, moments)
        if grow:
            planned = [self.round_cap(max(p, math.ceil(1.25 * slots)), len(b.classes)) if need else max(p, slots)
                       for p, slots, need, b in zip(planned, self.caps, needs, self.blocks)]
        else:
            if planned == self.caps:
                return None, False
            if cost(planned) > (1 - shrink_gain) * cost(self.caps):
                return None, False
        planned = [max(p, c) for p, c in zip(planned, self.block_counts(masks))]  # never below the masks' need
        return (None if planned == self.caps else planned), not grow

    def cap_keep(self, caps=None) -> dict[int, torch.Tensor]:
        """The keep pattern whose exported model is the capacity model: first ``slots`` slots of
        each block (of ``caps``, default the current capacities)."""
        keep = {g.id: torch.zeros(g.size, dtype=torch.bool) for g in self.graph.groups}
        for b, index, slots in zip(self.blocks, self.block_index, caps or self.caps):
            keep[b.group][index[:slots]] = True
        return keep

    def block_counts(self, masks) -> list[int]:
        """Kept channels per block (a group missing from ``masks`` keeps all)."""
        return [int(masks[b.group][index].sum()) if b.group in masks else len(index)
                for b, index in zip(self.blocks, self.block_index)]

    def slot_classes(self, masks) -> tuple[np.ndarray, np.ndarray]:
        """Per global slot: the channel class it holds now, and 1.0/0.0 (real/empty)."""
        classes = np.empty(self.offsets[-1], dtype=np.int64)
        valid = np.zeros(self.offsets[-1], dtype=np.float32)
        for i, b in enumerate(self.blocks):
            keep = masks[b.group].numpy()[b.channels]
            kept, pruned = b.classes[keep], b.classes[~keep]
            slots = self.caps[i]
            if len(kept) > slots:
                raise OverflowError(i)
            fill = np.concatenate([kept, pruned[: slots - len(kept)]])
            classes[self.offsets[i] : self.offsets[i] + slots] = fill
            valid[self.offsets[i] : self.offsets[i] + len(kept)] = 1.0
        return classes, valid

    def present_slots(self, slot_valid: np.ndarray) -> np.ndarray:
        """Dynamic capacities: per global slot, whether this step runs it, from
        :meth:`slot_classes`' validity (kept slots come first in each block): each block's
        kept count rounded up to ``align`` and to at least 2 (the rest are empty slots), at
        most the block's size. torch.compile specialises sizes 0 and 1 (a graph of their
        own): an empty slot for a count below 2 costs less than a recompile."""
        counts = np.add.reduceat(slot_valid, self.offsets[:-1]) if len(slot_valid) else np.zeros(0)
        caps = np.asarray(self.caps)
        run = np.minimum(caps, np.ceil(np.maximum(counts, 2) / self.align) * self.align).astype(np.int64)
        within = np.arange(self.offsets[-1]) - np.repeat(self.offsets[:-1], caps)  # slot index within its block
        return within < np.repeat(run, caps)

    def _class_table(self):
        """Per class id (a dense table up to the largest class of a block): its block (-1:
        none), its slot in the block, and whether the current capacities keep it. Built once
        per capacity set: :meth:`dim_layout` runs once per member dim, and rebuilding the
        kept set each time made the layouts quadratic in the model's size (a ViT-H: ~1 s per
        8 layers)."""
        caps = tuple(self.caps)
        table = getattr(self, "_class_table_cache", None)
        if table is not None and table[0] == caps:
            return table[1]
        size = max((int(b.classes.max()) + 1 for b in self.blocks if len(b.classes)), default=0)
        block = np.full(size, -1, dtype=np.int64)
        slot = np.zeros(size, dtype=np.int64)
        kept = np.zeros(size, dtype=bool)
        for i, b in enumerate(self.blocks):
            block[b.classes] = i  # as block_of / slot_of: a class in two blocks counts in the last
            slot[b.classes] = np.arange(len(b.classes))
        for b, slots in zip(self.blocks, caps):
            kept[b.classes[:slots]] = True
        self._class_table_cache = (caps, (block, slot, kept))
        return self._class_table_cache[1]

    def dim_layout(self, dense_classes: np.ndarray) -> DimLayout:
        """Layout of a capacity-model dim whose dense (unpruned) dim holds ``dense_classes``."""
        block_of, slot_of, cap_kept = self._class_table()
        classes = np.asarray(dense_classes, dtype=np.int64).reshape(-1)
        known = np.flatnonzero((classes >= 0) & (classes < len(block_of)))  # classes some block holds
        block = np.full(len(classes), -1, dtype=np.int64)
        block[known] = block_of[classes[known]]
        in_cap = np.zeros(len(classes), dtype=bool)
        in_cap[known] = cap_kept[classes[known]]
        here = (classes < 0) | in_cap  # a class the capacity model removed has no position in it
        fixed = np.flatnonzero(here)
        c, blk = classes[fixed], block[fixed]
        slotted = blk >= 0
        gslot = np.full(len(fixed), -1, dtype=np.int64)
        gslot[slotted] = self.offsets[blk[slotted]] + slot_of[c[slotted]]
        # occurrence: how many earlier present positions hold the same class
        occ = np.zeros(len(fixed), dtype=np.int64)
        where_slotted = np.flatnonzero(slotted)
        if len(where_slotted):
            order = where_slotted[np.argsort(c[where_slotted], kind="stable")]
            sorted_c = c[order]
            starts = np.flatnonzero(np.r_[True, sorted_c[1:] != sorted_c[:-1]])
            run_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
            occ[order] = np.arange(len(order)) - run_start
        # rows: every position of each class, the removed ones included
        positions = np.flatnonzero(classes >= 0)
        order = positions[np.argsort(classes[positions], kind="stable")]
        values, first = np.unique(classes[order], return_index=True)
        ends = np.r_[first[1:], len(order)].tolist()
        rows = {c: order[a:b] for c, a, b in zip(values.tolist(), first.tolist(), ends)}  # (np.split: 10x slower)
        in_blocks = block[positions]
        prunable = np.asarray(self.prunable, dtype=bool)
        any_prunable = bool(prunable[in_blocks[in_blocks >= 0]].any()) if len(prunable) else False
        return DimLayout(gslot=gslot, occ=occ, fixed=fixed.astype(np.int64), rows=rows, any_prunable=any_prunable)

class GatherIndex:
    """Per step, for every layout at once: per position of the capacity dim, the dense
    index to gather, its validity (1.0 real slot / 0.0 empty) and the same as bool. One
    vectorised numpy pass; the per-layout vectors are views of three tensors (a loop over
    dims cost ~2 ms per step on a VGG-11). Keys whose layouts are equal share one set of
    tensors (VGG-11: 57 keys, 9 distinct layouts; 3.0 -> 0.5 ms per step with dynamic
    capacities, where each vector is a tensor of its own).

    ``layouts``: {key: DimLayout}; the keys are the caller's, returned as given (the sparse
    step's are typed: ``fxsparse.step.index.MemberDim``, ``Validity``, ``StepPart``)."""

    def __init__(self, layouts: dict[Hashable, DimLayout]):
        self.keys = list(layouts)
        distinct = {}
        self.which = [distinct.setdefault(l.signature(), (len(distinct), l))[0] for l in layouts.values()]
        parts = [l for _, l in distinct.values()]
        self.lengths = [len(l) for l in parts]
        self.fixed = np.concatenate([l.fixed for l in parts]) if parts else np.zeros(0, np.int64)
        gslot = np.concatenate([l.gslot for l in parts]) if parts else np.zeros(0, np.int64)
        self.live = np.flatnonzero(gslot >= 0)
        self.segment = np.repeat(np.arange(len(parts)), self.lengths)  # the layout of each position
        self.gslot = gslot[self.live]
        occ = np.concatenate([l.occ for l in parts])[self.live] if parts else np.zeros(0, np.int64)
        # one sorted key per (layout, class) row of every layout's table: key = layout * K + class
        tables = [l.table() for l in parts]
        width = max((t[1].shape[1] for t in tables), default=1)
        self.K = int(max((int(t[0].max()) + 1 for t in tables if len(t[0])), default=1))
        keys, rows = [], []
        for i, (classes, pos) in enumerate(tables):
            keys.append(i * self.K + classes)
            rows.append(np.pad(pos, ((0, 0), (0, width - pos.shape[1]))))
        self.row_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        self.rows = np.concatenate(rows).reshape(-1) if rows else np.zeros(0, np.int64)
        owner = self.segment[self.live]
        self.owner_key = owner * self.K
        self.width, self.occ = width, occ
        # first position of each layout (clipped for empty ones), for the per-layout "all real" flags
        self.starts = np.minimum(np.concatenate([[0], np.cumsum(self.lengths)[:-1]]), max(len(self.fixed) - 1, 0)).astype(np.int64)
        # a direct lookup table over each layout's class range (its classes are near
        # contiguous ids): one gather per step instead of a binary search (0.55 -> ~0.05 ms
        # on a VGG-11); kept only when it is small next to the rows it indexes
        lows = np.array([int(t[0].min()) if len(t[0]) else 0 for t in tables], dtype=np.int64)
        spans = np.array([int(t[0].max()) - lo + 1 if len(t[0]) else 0 for t, lo in zip(tables, lows)], dtype=np.int64)
        self.lut = None
        if spans.sum() <= 4 * max(len(self.row_keys), 1):
            bases = np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
            self.lut = np.full(int(spans.sum()), -1, dtype=np.int64)
            first_row = np.concatenate([[0], np.cumsum([len(t[0]) for t in tables])[:-1]]).astype(np.int64)
            for i, (classes, _) in enumerate(tables):
                self.lut[bases[i] + classes - lows[i]] = first_row[i] + np.arange(len(classes))
            self.owner_shift = (bases - lows)[owner]

    def __call__(self, slot_class: np.ndarray, slot_valid: np.ndarray, present: np.ndarray | None = None
                 ) -> dict[Hashable, tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]]:
        """{key: (gather index, validity, real, full)}: int64 / float32 / bool tensors, and
        whether every slot is real (a Python bool). ``present`` (bool per global slot): only
        the positions of present slots (dynamic capacities: each layout's length is then its
        blocks' present counts)."""
        idx = self.fixed.copy()
        valid = np.ones(len(idx), dtype=np.float32)
        if len(self.live):
            if self.lut is not None:
                row = self.lut[self.owner_shift + slot_class[self.gslot]]
            else:
                row = np.searchsorted(self.row_keys, self.owner_key + slot_class[self.gslot])
            idx[self.live] = self.rows[row * self.width + self.occ]
            valid[self.live] = slot_valid[self.gslot]
        if present is not None:
            keep = np.ones(len(idx), dtype=bool)
            keep[self.live] = present[self.gslot]
            lengths = np.bincount(self.segment[keep], minlength=len(self.lengths))
            cuts = np.cumsum(lengths)[:-1]
            # tensors of their own, not views: a view's storage offset would be one more
            # symbolic size for torch.compile (and views of one storage alias each other)
            parts = []
            for i, v in zip(np.split(idx[keep], cuts), np.split(valid[keep], cuts)):
                parts.append((torch.from_numpy(i.copy()), torch.from_numpy(v.copy()),
                              torch.from_numpy(v > 0), bool(v.all())))
        else:
            idx_t, valid_t = torch.from_numpy(idx), torch.from_numpy(valid)
            full = [True] * len(self.lengths)
            if len(valid):
                full = [n == 0 or bool(m) for n, m in zip(self.lengths, np.minimum.reduceat(valid, self.starts) > 0)]
            parts = list(zip(idx_t.split(self.lengths), valid_t.split(self.lengths),
                             (valid_t > 0).split(self.lengths), full))
        return {key: parts[i] for key, i in zip(self.keys, self.which)}


def kept_permutation(full: torch.Tensor, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """A channel shuffle's permutation of the positions a step runs: ``full`` reads input
    position full[j] at output position j (every channel kept); ``source`` and ``output``
    are the full positions the step runs in the input and the output, in their order."""
    where = np.full(len(full), -1, dtype=np.int64)
    where[source.numpy()] = np.arange(len(source))
    perm = where[full.numpy()[output.numpy()]]
    if len(source) != len(output) or (perm < 0).any():
        raise AssertionError("fxsparse: a channel shuffle's input and output run different channels "
                             "(a bug in fxsparse's capacity layouts, please report it)")
    return torch.from_numpy(perm)
