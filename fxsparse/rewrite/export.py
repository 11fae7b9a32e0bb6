"""``fxsparse.export``: the physically smaller model for a keep pattern.

A copy of the analysed graph goes through the slice_channels pass
(:mod:`fxsparse.passes.slice_channels`): every member parameter is sliced to its kept
indices, module attributes that name a channel count are updated, and graph arguments
that name one (view sizes, split sizes, the channel-shuffle permutation) are rewritten
from the pruned shapes, by the export hooks of the graph's rules (per-call rules of
``analyze`` included). The result is a new ``torch.fx.GraphModule``; the original model
is not touched.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from fxsparse.core.errors import ExportError
from fxsparse.analysis.graph import ChannelGraph
from fxsparse.analysis.masks import kept_indices, normalize_keep
from fxsparse.passes.pipelines import slice_channels
from fxsparse.passes.slice_channels import tied_names
from fxsparse.rewrite.input_check import check_fixed_inputs
from fxsparse.rewrite.recipe import record
from fxsparse.rewrite.run_check import check_runs, inputs_on_device_of

__all__ = ["export", "kept_indices", "tied_names", "class_kept"]


def export(model, graph: ChannelGraph, keep=None, *, check: bool = True) -> fx.GraphModule:
    """A new, physically smaller module keeping the channels ``keep`` selects.

    ``model``: the module ``graph`` was built from (used to check they match), or a
    SparseModel. ``keep``: {group id: bool mask or index tensor}; groups not named are
    kept whole. ``check``: run the result once on the graph's example inputs (a caller that
    runs it itself right after, as ``fxsparse.compile`` does, saves a forward: ~8 s on a ViT-H).
    """
    if hasattr(model, "channel_graph"):  # a SparseModel: its graph and current masks
        graph = graph or model.channel_graph
        keep = model.masks if keep is None else keep
        model = model.model
    if not isinstance(graph, ChannelGraph):
        raise TypeError("export(model, graph, keep): graph must be the ChannelGraph returned by fxsparse.analyze")
    masks = normalize_keep(graph, keep or {})
    _check_same_model(model, graph)
    gm = _copy_graph(graph.gm)
    slice_channels(gm, graph.elements, class_kept(graph, masks), kept_indices(graph, masks), graph.rules)
    _own_parameters(gm, graph.gm)
    check_fixed_inputs(gm, graph.gm)  # a size the capture fixed is named, not a failure deep inside
    if check and graph.example_inputs:  # a model that would crash in its first forward is reported now
        inputs = inputs_on_device_of(gm, graph.example_inputs)
        # gm.forward, not gm(...): fx strips the traceback that names the failing node
        check_runs(lambda: gm.forward(*inputs), gm, "the exported model")
    record(gm, model if model is not None else graph.gm, graph, masks, "export")  # what fxsparse.save writes
    return gm


def _copy_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of the analysed graph (which shares the model's modules: it sees trained
    weights) whose parameters still share the model's storage: most are sliced right after,
    into tensors of their own, and a deep copy would copy each one twice (a ViT-H: 2.5 GB
    per export). :func:`_own_parameters` copies the ones left shared."""
    memo = {}
    for p in gm.parameters():
        if type(p) is nn.Parameter:  # subclasses keep their own __deepcopy__
            memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
    with torch.no_grad():
        return copy.deepcopy(gm, memo)


def _own_parameters(gm: fx.GraphModule, original: fx.GraphModule) -> None:
    """Copies of the parameters of ``gm`` that still share storage with ``original``'s (those
    no slicing replaced), so the export never writes into the model (tied ones stay tied)."""
    shared = {p.untyped_storage().data_ptr() for p in original.parameters() if p.numel()}
    copies = {}
    for mod in gm.modules():
        for name, p in mod._parameters.items():
            if p is not None and p.numel() and p.untyped_storage().data_ptr() in shared:
                if id(p) not in copies:
                    copies[id(p)] = nn.Parameter(p.detach().clone(memory_format=torch.preserve_format),
                                                 requires_grad=p.requires_grad)
                mod._parameters[name] = copies[id(p)]


def _check_same_model(model, graph):
    if model is None or model is graph.gm:
        return
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}  # every name of a tied one
    missing = [p for p, _ in graph.raw_members if p not in names and p in dict(graph.gm.named_parameters())]
    if missing:
        raise ExportError(f"the model has no parameter '{missing[0]}': was the graph built from another model?")


def class_kept(graph: ChannelGraph, keep) -> dict[int, bool]:
    """{element class: kept?} for a keep pattern (what the export hooks and the masked
    reference read through ExportContext)."""
    masks = normalize_keep(graph, keep or {})
    out = {}
    for g in graph.groups:
        for cls, k in zip(g.classes.tolist(), masks[g.id].tolist()):
            out[cls] = bool(k)
    return out
