"""The context an analysis rule is called with (``Rule.analyze(ctx, node)``): shapes, the
channel ids of the op's inputs, and the element table, behind helpers, so that a rule never
touches the union-find or ``node.meta``. The channel_propagation pass builds one per graph
and walks the graph with it; :mod:`fxsparse.rules.contract` is the whole rule contract.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from fxsparse.core.broadcast import along, left_pad
from fxsparse.core.elements import ElementTable, has_elements, varying_dims

from .context import GraphValues, TupleItem, operand_paths, where
from .meta_keys import FREE, IDS


class AnalysisContext(GraphValues):
    """What an analysis rule sees: shapes, the channel ids of its inputs, and the element
    table. Rules call these helpers instead of touching the union-find or ``node.meta``."""

    def __init__(self, gm: fx.GraphModule, elements: ElementTable):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.elements = elements
        self.members: dict[tuple[str, int], np.ndarray] = {}
        self.member_layer: dict[str, str] = {}
        self.mixing: list[tuple[str, str]] = []  # (node name, why): see mark_mixing
        self.summing: list[tuple[str, tuple, str]] = []  # (node name, operand paths, why): see mark_summing
        self.size_reads: list[tuple[fx.Node, fx.Node, int]] = []

    # ----- reading -----------------------------------------------------------------
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

    def padded_ids(self, arg):
        """:meth:`ids` left-padded to the argument's rank (so dims index the tensor's), or None."""
        ids = self.ids(arg)
        shape = self.shape(arg)
        return None if ids is None or shape is None else left_pad(ids, len(shape))

    @staticmethod
    def free(arg):
        if isinstance(arg, TupleItem):
            return arg.node.meta.get(FREE)
        if not isinstance(arg, fx.Node):
            return None
        return arg.meta.get(FREE)

    @staticmethod
    def set_free(node, refs) -> None:
        """Record that ``node``'s value is a view of parameters (``refs``: FreeRefs)."""
        node.meta[FREE] = refs

    @staticmethod
    def item_ids(arg):
        """The per-item ids of a tuple-valued node (a split), or None."""
        ids = arg.meta.get(IDS) if isinstance(arg, fx.Node) else None
        return ids if isinstance(ids, (tuple, list)) else None

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
        self.mixing.append((node.name, why))

    def mark_summing(self, node: fx.Node, operands, why: str) -> None:
        """Record that this op sums over a channel dim of ``operands`` (a sum, a norm, a
        contraction): a zeroed channel adds nothing, so it is not mixing, but a channel that
        is neither removed nor zero would add its value. Kept as the operands' paths in the
        node's arguments (:func:`~fxsparse.rules.context.operand_paths`)."""
        paths = operand_paths(node, operands)
        if paths:
            self.summing.append((node.name, paths, why))

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
        return along(np.asarray(ids1d, dtype=np.int64), dim % ndim, ndim)

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
