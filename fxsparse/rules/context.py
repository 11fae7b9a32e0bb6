"""What a channel rule sees: shapes, the channel ids of its inputs, and the element table.

Rules call these helpers instead of touching the union-find or ``node.meta`` directly,
so a user-written rule is a few lines (see ``tests/test_rule_registry.py``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.fx as fx

from ..elements import NO_ELEMENT, ElementTable, compress, has_elements, varying_dims

IDS = "fxsparse_ids"  # node.meta key: channel ids of the node's output (array / tuple / None)
FREE = "fxsparse_free"  # node.meta key: parameters that reach this value through shape-only ops
SHAPE = "fxsparse_shape"  # node.meta key: output shape(s), written by the shape_prop pass


@dataclasses.dataclass(frozen=True)
class FreeRef:
    """A parameter (or buffer) seen through shape-only ops: ``dims[d]`` is the parameter
    dim that tensor dim ``d`` comes from, or None where it does not come from one dim."""

    qualname: str
    dims: tuple


def where(node: fx.Node) -> str:
    """'file:line' of the user code that created the node, when FX recorded it."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
    lines = [ln for ln in lines if not _internal_line(ln)] or lines
    if lines:
        last = lines[-1]
        try:
            path = last.split('"')[1]
            lineno = last.split("line ")[1].split(",")[0]
            return f"{path}:{lineno}"
        except IndexError:
            return last
    return f"node '{node.name}'"


def _internal_line(line: str) -> bool:
    """Whether a traceback line ('File "path", line N, in f') is in torch's or fxsparse's own code."""
    from ..tracing import is_internal

    parts = line.split('"')
    return len(parts) > 1 and is_internal(parts[1])


@dataclasses.dataclass(frozen=True)
class TupleItem:
    """Item i of a tuple-valued node (``rows = x.unbind(2)``; ``torch.stack(rows[::-1])``)."""

    node: fx.Node
    index: int

    @property
    def name(self):
        return f"{self.node.name}[{self.index}]"


def sequence_items(arg):
    """The tensors of a list argument: a python list of values, or a tuple-valued node."""
    if isinstance(arg, fx.Node) and isinstance(arg.meta.get(SHAPE), tuple) and arg.meta[SHAPE] \
            and isinstance(arg.meta[SHAPE][0], tuple):
        return [TupleItem(arg, i) for i in range(len(arg.meta[SHAPE]))]
    return list(arg)


class AnalysisContext:
    def __init__(self, gm: fx.GraphModule, elements: ElementTable):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.elements = elements
        self.members: dict[tuple[str, int], np.ndarray] = {}
        self.member_layer: dict[str, str] = {}
        self.non_zero_preserving: list[tuple[str, str]] = []  # (node name, why)
        self.size_reads: list[tuple[fx.Node, fx.Node, int]] = []

    # ----- reading -----------------------------------------------------------------
    @staticmethod
    def shape(arg):
        if isinstance(arg, TupleItem):
            return arg.node.meta[SHAPE][arg.index]
        if isinstance(arg, fx.Node):
            return arg.meta.get(SHAPE)
        if isinstance(arg, torch.Tensor):
            return tuple(arg.shape)
        return None

    def ids(self, arg):
        """Canonical ids of a tensor argument, or None when it carries no channel."""
        if isinstance(arg, TupleItem):
            ids = arg.node.meta.get(IDS)
            item = ids[arg.index] if isinstance(ids, (tuple, list)) else None
            return None if item is None else self.elements.canonical(item)
        if not isinstance(arg, fx.Node):
            return None
        ids = arg.meta.get(IDS)
        if ids is None or not isinstance(ids, np.ndarray):
            return None
        return self.elements.canonical(ids)

    @staticmethod
    def free(arg):
        if isinstance(arg, TupleItem):
            return arg.node.meta.get(FREE)
        if not isinstance(arg, fx.Node):
            return None
        return arg.meta.get(FREE)

    @staticmethod
    def where(node):
        return where(node)

    def param(self, qualname: str) -> torch.Tensor:
        obj = self.gm
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj

    # ----- writing -----------------------------------------------------------------
    def new_elements(self, count: int) -> np.ndarray:
        return self.elements.new(count)

    def member(self, qualname: str, dim: int, ids1d: np.ndarray, layer: str | None = None) -> None:
        """Declare that index i of ``param.shape[dim]`` belongs to element ids1d[i]."""
        ids1d = np.asarray(ids1d, dtype=np.int64).reshape(-1)
        size = self.param(qualname).shape[dim]
        if ids1d.shape[0] != size:
            raise AssertionError(f"rule bug: member {qualname}[{dim}] has {size} entries, ids {ids1d.shape[0]}")
        key = (qualname, dim)
        if key in self.members:
            self.elements.union_pairs(self.members[key], ids1d)
        else:
            self.members[key] = ids1d
        self.member_layer.setdefault(qualname, layer or qualname.rsplit(".", 1)[0])

    def couple(self, a, b) -> None:
        if a is not None and b is not None:
            self.elements.union_pairs(a, b)

    def unprunable(self, ids, reason: str) -> None:
        self.elements.mark_unprunable(ids, reason)

    def mark_mixing(self, node: fx.Node, why: str) -> None:
        """Record that zeroing a channel is not the same as removing it at this node."""
        self.non_zero_preserving.append((node.name, why))

    # ----- helpers for rules ------------------------------------------------------
    def axis(self, arg, dim: int, reason: str):
        """Ids of ``arg`` along ``dim`` as a 1-D array of the dim's full length.

        None when the tensor carries no channel there. If its channels also vary along
        another dim, the op cannot treat them as one axis: they are marked unprunable.
        """
        ids = self.ids(arg)
        shape = self.shape(arg)
        if ids is None or shape is None:
            return None
        dim = dim % len(shape)
        vd = varying_dims(ids)
        if any(d != dim for d in vd):
            self.unprunable(ids, reason)
            return None
        line = np.broadcast_to(ids, shape)
        index = [0] * len(shape)
        index[dim] = slice(None)
        out = np.array(line[tuple(index)])
        return out if has_elements(out) else None

    @staticmethod
    def along(ndim: int, dim: int, ids1d: np.ndarray) -> np.ndarray:
        """An ids array for an ``ndim`` tensor whose channels run along ``dim``."""
        shape = [1] * ndim
        shape[dim % ndim] = -1
        return np.asarray(ids1d, dtype=np.int64).reshape(shape)

    def tensor_args(self, node: fx.Node):
        """Every fx.Node argument (flattened through lists/tuples/dicts)."""
        found = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
        return found

    def opaque(self, node: fx.Node, why: str) -> None:
        """Conservative default: channels entering this op are never pruned."""
        for arg in self.tensor_args(node):
            ids = arg.meta.get(IDS)
            for item in (ids if isinstance(ids, (tuple, list)) else [ids]):
                if isinstance(item, np.ndarray):
                    self.unprunable(item, why)

    def bind_free(self, refs, dim_in_ref: int, ids1d: np.ndarray) -> bool:
        """Tie dim ``dim_in_ref`` of free parameter views to channels ``ids1d``."""
        ok = True
        for ref in refs:
            pdim = ref.dims[dim_in_ref] if dim_in_ref < len(ref.dims) else None
            if pdim is None or self.param(ref.qualname).shape[pdim] != len(ids1d):
                ok = False
                continue
            self.member(ref.qualname, pdim, ids1d)
        return ok


def finish(elements: ElementTable, ids):
    """Canonicalise and compress a rule's output; make multi-dim channel grids rectangular."""
    if ids is None:
        return None
    if isinstance(ids, (tuple, list)):
        return type(ids)(finish(elements, i) for i in ids)
    ids = elements.canonical(np.asarray(ids, dtype=np.int64))
    if not has_elements(ids):
        return None
    vd = varying_dims(ids)
    if len(vd) > 1:
        ids = rectangularize(elements, ids, vd)
    return compress(ids)


def rectangularize(elements: ElementTable, ids: np.ndarray, vd: list[int]) -> np.ndarray:
    """Channels spread over several dims (a [heads, head_dim] grid) can only be removed as
    whole slices of one dim. The unit is the dim just outside the innermost one (heads
    outside head_dim, q/k/v outside heads, groups of a maxout): everything within a
    slice of it is tied together."""
    unit = vd[-2]
    moved = np.moveaxis(ids, unit, 0)
    for row in moved.reshape(moved.shape[0], -1):
        elements.union_all(row)
        if (row < 0).any():
            # part of the slice is a fixed (unprunable) channel: the slice cannot go
            elements.mark_unprunable(row, "channel grid slice mixes prunable and fixed channels")
    return elements.canonical(ids)


__all__ = ["AnalysisContext", "FreeRef", "IDS", "FREE", "SHAPE", "finish", "where", "NO_ELEMENT"]
