"""``fxsparse.analyze``: trace, normalise, propagate channels, group them."""
from __future__ import annotations

import torch
import torch.nn as nn

from .graph import ChannelGraph, assign_flops, build_groups, count_flops
from .passes.channel_propagation import channel_propagation
from .passes.fuse_channel_shuffle import fuse_channel_shuffle
from .passes.shape_prop import shape_prop
from .tracing import trace


def analyze(model: nn.Module, example_inputs, *, leaf_modules=(), rules=None, flops=True) -> ChannelGraph:
    """Find the channel groups of ``model``.

    ``example_inputs``: a tensor or a tuple of tensors the model is called with.
    ``leaf_modules``: module paths or classes not to trace into (their channels stay).
    ``rules``: extra channel rules for this call only ({target: analyze_fn or Rule}).
    The model is not modified (mode, buffers and RNG state are as before).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"analyze() takes an nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    gm, auto_leaves = trace(model, leaf_modules)
    shape_prop(gm, example_inputs)
    fuse_channel_shuffle(gm)
    ctx = channel_propagation(gm, rules)
    groups = build_groups(ctx.elements, ctx.members)
    total, per_module = (0.0, {}) if not flops else count_flops(gm, example_inputs)
    shapes = {name: tuple(ctx.param(name).shape) for name, _ in ctx.members}
    assign_flops(groups, per_module, total, shapes)
    return ChannelGraph(gm, ctx.elements, ctx.members, groups, ctx.non_zero_preserving, auto_leaves,
                        flops={"total": total, "per_module": per_module}, example_inputs=example_inputs)
