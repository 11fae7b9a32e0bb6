"""Whether one capacity model can serve every kept-channel count (dynamic capacities).

The dynamic step runs the whole model's capacity model on tensors gathered at each step's
exact counts. That is the exported model of the step's mask only when nothing in the graph
or its modules depends on a channel count other than the shapes of the tensors it is
given: no constant reshape size (LeNet's ``view(-1, 16 * 5 * 5)``), no ``groups`` of a
depthwise convolution, no ``normalized_shape`` of a LayerNorm, no buffer of its own whose
length is a channel count. Two exports (every channel, and about half) tell: their code and
their modules' settings must be the same, up to the sizes listed in ``SHAPE_ONLY``.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.analysis.masks import random_keep
from fxsparse.rewrite.export import export

# module attributes that only describe the shapes of the module's own tensors, which the
# step passes in (their values never reach the computation)
SHAPE_ONLY = {
    nn.Conv1d: ("in_channels", "out_channels"), nn.Conv2d: ("in_channels", "out_channels"),
    nn.Conv3d: ("in_channels", "out_channels"), nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",), nn.BatchNorm2d: ("num_features",), nn.BatchNorm3d: ("num_features",),
}


def count_dependence(model: nn.Module, graph: ChannelGraph, seed: int = 0) -> str | None:
    """None when the capacity model does not depend on the kept counts beyond its tensors'
    shapes, else what does (the first difference found, for the error or the log)."""
    full = export(model, graph, {g.id: torch.ones(g.size, dtype=torch.bool) for g in graph.groups})
    half = export(model, graph, random_keep(graph, 0.5, torch.Generator().manual_seed(seed)))
    dense = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    halves = dict(half.named_modules())
    for name, mod in full.named_modules():
        other = halves.get(name)
        if isinstance(mod, fx.GraphModule):  # (a class of its own per instance)
            if not isinstance(other, fx.GraphModule) or mod.code != other.code:
                return f"submodule {name!r} holds a constant that depends on a channel count"
            continue
        if type(other) is not type(mod):
            return f"module {name!r} differs between two exports"
        skip = SHAPE_ONLY.get(type(mod), ())
        for key, value in vars(mod).items():
            if key.startswith("_") or key in skip or key == "training":
                continue
            if not _same(value, getattr(other, key, None)):
                return f"{type(mod).__name__} {name!r} has {key}={value!r}, which depends on its channel count"
        for key, buf in mod._buffers.items():
            full_name = f"{name}.{key}" if name else key
            if buf is not None and full_name not in dense and buf.shape != other._buffers[key].shape:
                return f"buffer {full_name!r} of the rewritten model has a channel-count length"
    return None


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
    try:
        return bool(a == b)
    except Exception:  # an attribute without a plain equality: treat as different
        return a is b
