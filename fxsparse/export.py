"""``fxsparse.export``: the physically smaller model for a keep pattern.

Every member parameter is sliced to its kept indices, module attributes that name a
channel count are updated, and graph arguments that name one (view sizes, split sizes,
the channel-shuffle permutation) are rewritten from the pruned shapes. The result is a
new ``torch.fx.GraphModule``; the original model is not touched.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .elements import varying_dims
from .errors import ExportError
from .graph import ChannelGraph
from .masks import kept_indices, normalize_keep, tied_names  # noqa: F401  (kept_indices: re-exported)
from .rules.context import IDS, SHAPE, where
from .rules.registry import lookup
from .run_check import check_runs, inputs_on_device_of


class ExportContext:
    """What an export hook sees: pruned sizes of graph values and the new module tree."""

    def __init__(self, gm: fx.GraphModule, graph: ChannelGraph, class_kept: dict[int, bool]):
        self.gm = gm
        self.graph = graph
        self.class_kept = class_kept
        self._cache: dict[str, np.ndarray] = {}

    def shape(self, arg):
        return arg.meta.get(SHAPE) if isinstance(arg, fx.Node) else None

    def kept_mask(self, node: fx.Node):
        """Bool array (broadcastable to the node's shape) of kept positions, or None."""
        if node.name in self._cache:
            return self._cache[node.name]
        ids = node.meta.get(IDS)
        mask = None
        if isinstance(ids, np.ndarray):
            canon = self.graph.elements.canonical(ids)
            values, inverse = np.unique(canon, return_inverse=True)
            kept = np.array([self.class_kept.get(int(v), True) for v in values])
            shape = self.shape(node)
            mask = kept[inverse].reshape(canon.shape)
            mask = mask.reshape((1,) * (len(shape) - mask.ndim) + mask.shape)
        self._cache[node.name] = mask
        return mask

    def kept_along(self, node: fx.Node, dim: int) -> np.ndarray:
        shape = self.shape(node)
        mask = self.kept_mask(node)
        dim %= len(shape)
        if mask is None or mask.shape[dim] == 1:
            return np.ones(shape[dim], dtype=bool)
        return np.moveaxis(mask, dim, 0).reshape(mask.shape[dim], -1).any(axis=1)

    def pruned_shape(self, node: fx.Node) -> list:
        """Per dim: the pruned size where channels run along it, else None (unchanged)."""
        shape = self.shape(node)
        mask = self.kept_mask(node)
        if mask is None:
            return [None] * len(shape)
        ids = self.graph.elements.canonical(node.meta[IDS])
        ids = ids.reshape((1,) * (len(shape) - ids.ndim) + ids.shape)
        vd = varying_dims(ids)
        out = [None] * len(shape)
        product = np.ones([1] * len(shape), dtype=bool)
        for d in vd:
            line = self.kept_along(node, d)
            out[d] = int(line.sum())
            product = product & line.reshape([-1 if i == d else 1 for i in range(len(shape))])
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


def export(model, graph: ChannelGraph, keep=None) -> fx.GraphModule:
    """A new, physically smaller module keeping the channels ``keep`` selects.

    ``model``: the module ``graph`` was built from (used to check they match), or a
    SparseModel. ``keep``: {group id: bool mask or index tensor}; groups not named are
    kept whole.
    """
    if hasattr(model, "channel_graph"):  # a SparseModel: its graph and current masks
        graph = graph or model.channel_graph
        keep = model.masks if keep is None else keep
        model = model.model
    if not isinstance(graph, ChannelGraph):
        raise TypeError("export(model, graph, keep): graph must be the ChannelGraph returned by fxsparse.analyze")
    masks = normalize_keep(graph, keep or {})
    _check_same_model(model, graph)
    class_kept = {}
    for g in graph.groups:
        for cls, k in zip(g.classes.tolist(), masks[g.id].tolist()):
            class_kept[cls] = bool(k)
    with torch.no_grad():  # the traced graph shares the model's modules: it sees trained weights
        gm = copy.deepcopy(graph.gm)
    ectx = ExportContext(gm, graph, class_kept)
    _slice_members(gm, graph, masks)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        rule = lookup(node, modules)
        if rule is not None and rule.export is not None:
            rule.export(ectx, node)
    gm.recompile()
    if graph.example_inputs:  # a model that would crash in its first forward is reported now
        inputs = inputs_on_device_of(gm, graph.example_inputs)
        # gm.forward, not gm(...): fx strips the traceback that names the failing node
        check_runs(lambda: gm.forward(*inputs), gm, "the exported model")
    return gm


def _check_same_model(model, graph):
    if model is None or model is graph.gm:
        return
    names = {n for n, _ in model.named_parameters()}
    missing = [p for p, _ in graph.raw_members if p not in names and p in dict(graph.gm.named_parameters())]
    if missing:
        raise ExportError(f"the model has no parameter '{missing[0]}': was the graph built from another model?")


def _slice_members(gm: fx.GraphModule, graph: ChannelGraph, masks):
    aliases = tied_names(gm)
    for name, per_dim in kept_indices(graph, masks).items():
        owner, _, attr = name.rpartition(".")
        old = getattr(gm.get_submodule(owner) if owner else gm, attr)
        new = old.detach()
        for dim in sorted(per_dim):
            new = torch.index_select(new, dim, per_dim[dim])
        new = nn.Parameter(new.clone(), requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new.clone()
        for alias in aliases.get(name, [name]):  # tied names stay one tensor
            owner, _, attr = alias.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            (mod._parameters if isinstance(old, nn.Parameter) else mod._buffers)[attr] = new
