"""Pass: export's rewrite. Slices every member parameter to its kept indices and lets each
op's export hook fix what names a channel count: module attributes (``out_channels``...)
and graph arguments (view sizes, split sizes, the channel-shuffle permutation), from the
pruned shapes.

Requires the annotations of the analysis (:data:`~fxsparse.passes.shape_prop.SHAPE`,
:data:`~fxsparse.passes.channel_propagation.IDS`); writes no ``node.meta`` key. The
graph module is changed in place (``fxsparse.export`` hands it a copy).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxsparse.core.broadcast import along, left_pad
from fxsparse.core.elements import ElementTable, varying_dims
from fxsparse.core.errors import ExportError
from fxsparse.rules.context import where
from fxsparse.rules.registry import lookup

from .channel_propagation import CHANNEL_COUNT, FREE, IDS
from .shape_prop import GraphValues


class ExportContext(GraphValues):
    """What an export hook sees: pruned sizes of graph values and the new module tree.
    ``class_kept``: {element class: kept?} (classes not named are kept)."""

    def __init__(self, gm: fx.GraphModule, elements: ElementTable, class_kept: dict[int, bool],
                 param_kept: dict | None = None):
        self.gm = gm
        self.elements = elements
        self.class_kept = class_kept
        self.param_kept = param_kept or {}  # {parameter name: {dim: kept indices}}
        self._cache: dict[str, np.ndarray] = {}

    @staticmethod
    def free(node):
        return node.meta.get(FREE) if isinstance(node, fx.Node) else None

    @staticmethod
    def reads_channel_count(arg) -> bool:
        """Whether a size argument was computed from a channel count (stale after pruning)."""
        return isinstance(arg, fx.Node) and arg.meta.get(CHANNEL_COUNT, False)

    def kept_mask(self, node: fx.Node):
        """Bool array (broadcastable to the node's shape) of kept positions, or None."""
        if node.name in self._cache:
            return self._cache[node.name]
        ids = node.meta.get(IDS)
        mask = None
        if isinstance(ids, np.ndarray):
            canon = self.elements.canonical(ids)
            values, inverse = np.unique(canon, return_inverse=True)
            kept = np.array([self.class_kept.get(int(v), True) for v in values])
            mask = left_pad(kept[inverse].reshape(canon.shape), len(self.shape(node)))
        self._cache[node.name] = mask
        return mask

    def kept_along(self, node: fx.Node, dim: int) -> np.ndarray:
        shape = self.shape(node)
        mask = self.kept_mask(node)
        dim %= len(shape)
        if mask is None or mask.shape[dim] == 1:
            return np.ones(shape[dim], dtype=bool)
        return np.moveaxis(mask, dim, 0).reshape(mask.shape[dim], -1).any(axis=1)

    def kept_along_param(self, node: fx.Node, dim: int):
        """Kept positions along ``dim`` of a value that is a parameter seen through shape-only
        ops (``qkv_bias.clone()[24:48]``: it has no channel ids, but its dim is a member's), or
        None where no member dim runs along it."""
        dim %= len(self.shape(node))
        for ref in self.free(node) or ():
            pdim = ref.dims[dim] if dim < len(ref.dims) else None
            idx = self.param_kept.get(ref.qualname, {}).get(pdim) if pdim is not None else None
            if idx is not None:
                kept = np.zeros(self.shape(node)[dim], dtype=bool)
                kept[np.asarray(idx)] = True
                return kept
        return None

    def pruned_shape(self, node: fx.Node) -> list:
        """Per dim: the pruned size where channels run along it, else None (unchanged)."""
        shape = self.shape(node)
        mask = self.kept_mask(node)
        if mask is None:
            return [None] * len(shape)
        ids = left_pad(self.elements.canonical(node.meta[IDS]), len(shape))
        vd = varying_dims(ids)
        out = [None] * len(shape)
        product = np.ones([1] * len(shape), dtype=bool)
        for d in vd:
            line = self.kept_along(node, d)
            out[d] = int(line.sum())
            product = product & along(line, d, len(shape))
        if not np.array_equal(np.broadcast_to(mask, np.broadcast_shapes(mask.shape, product.shape)),
                              np.broadcast_to(product, np.broadcast_shapes(mask.shape, product.shape))):
            raise self.error(node, "the kept channels do not form a rectangular block")
        return out

    def pruned_size(self, node: fx.Node, dim: int) -> int:
        dim %= len(self.shape(node))
        p = self.pruned_shape(node)[dim]
        return self.shape(node)[dim] if p is None else p

    def module(self, name: str) -> nn.Module:
        return self.gm.get_submodule(name)

    def buffer(self, name: str) -> torch.Tensor:
        owner, _, attr = name.rpartition(".")
        return getattr(self.gm.get_submodule(owner) if owner else self.gm, attr)

    def set_buffer(self, name: str, value: torch.Tensor):
        owner, _, attr = name.rpartition(".")
        mod = self.gm.get_submodule(owner) if owner else self.gm
        mod._buffers[attr] = value

    @staticmethod
    def error(node, what):
        return ExportError(f"cannot export node '{node.name}' ({where(node)}): {what}. This is an fxsparse bug: "
                           "the analysis should have coupled these channels; please report it with the model.")


def tied_names(gm) -> dict[str, list[str]]:
    """{first name of a tensor: every name of it}: tied weights (an LM head sharing the
    input embedding) are one tensor under several names."""
    names: dict[int, list[str]] = {}
    tensors = list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False))
    for name, t in tensors:
        names.setdefault(id(t), []).append(name)
    return {group[0]: group for group in names.values()}


class SliceChannels(PassBase):
    """``kept``: {parameter or buffer name: {dim: kept indices}} (a tied tensor under its first
    name); ``class_kept``: {element class: kept?}; ``rules``: per-call rules of the analysis
    (their export hooks win over the registry's). After the call :attr:`context` is the
    :class:`ExportContext` the hooks saw."""

    def __init__(self, elements: ElementTable, class_kept: dict[int, bool], kept: dict, rules=None):
        self.elements = elements
        self.class_kept = class_kept
        self.kept = kept
        self.rules = rules
        self.context: ExportContext | None = None

    def requires(self, graph_module):
        if any(IDS not in n.meta for n in graph_module.graph.nodes if n.op != "output"):
            raise AssertionError("slice_channels needs the channel ids of the channel_propagation pass")

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.context = ExportContext(gm, self.elements, self.class_kept, self.kept)
        _slice_members(gm, self.kept)
        modules = dict(gm.named_modules())
        for node in list(gm.graph.nodes):
            if node.op not in ("call_module", "call_function", "call_method"):
                continue
            rule = lookup(node, modules, self.rules)
            if rule is not None and rule.export is not None:
                rule.export(self.context, node)
        gm.recompile()
        return PassResult(gm, True)


def _slice_members(gm: fx.GraphModule, kept: dict):
    aliases = tied_names(gm)
    for name, per_dim in kept.items():
        owner, _, attr = name.rpartition(".")
        old = getattr(gm.get_submodule(owner) if owner else gm, attr)
        new = old.detach()
        for dim in sorted(per_dim):
            new = torch.index_select(new, dim, per_dim[dim])
        if not per_dim:  # index_select already made a tensor of its own: a second copy is only time
            new = new.clone()
        new = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
        for alias in aliases.get(name, [name]):  # tied names stay one tensor
            owner, _, attr = alias.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            (mod._parameters if isinstance(old, nn.Parameter) else mod._buffers)[attr] = new
