"""Ops that reorder the channel dim by a fixed pattern: pixel shuffle and unshuffle (channels
to and from blocks of pixels) and channel shuffle (ShuffleNet's interleaving of groups).

Their arguments name no channel count (an upscale factor, a number of groups), so the
pruned model calls them as they are; each rule couples what must be removed together for
that call to stay the same permutation of the kept channels.
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from .context import node_arg
from .registry import register_rule


def _factor(ctx, node, attr, name):
    """An upscale/downscale factor or a number of groups: of the module, or the call's 2nd argument."""
    if node.op == "call_module":
        return getattr(ctx.modules[node.target], attr)
    return ctx.value(node_arg(node, 1, name))


def _tie_rows(ctx, rows, why):
    """Each row of channels is removed or kept as one; a row mixing fixed and prunable channels cannot go."""
    for row in rows:
        ctx.elements.union_all(row)
        if (row < 0).any():
            ctx.unprunable(row, why)


def pixel_shuffle_rule(ctx, node):
    """PixelShuffle(r): output channel c is built from input channels c*r*r .. c*r*r+r*r-1."""
    line = ctx.axis(node.args[0], 1, f"pixel shuffle at {ctx.where(node)}")
    if line is None:
        return None
    r = _factor(ctx, node, "upscale_factor", "upscale_factor")
    blocks = line.reshape(-1, r * r)
    _tie_rows(ctx, blocks, f"pixel shuffle at {ctx.where(node)}: block mixes fixed and prunable channels")
    return ctx.along(len(ctx.shape(node)), 1, ctx.elements.canonical(blocks[:, 0]))


register_rule(nn.PixelShuffle, F.pixel_shuffle)(pixel_shuffle_rule)


def pixel_unshuffle_rule(ctx, node):
    """PixelUnshuffle(r): input channel c becomes output channels c*r*r .. c*r*r+r*r-1 (its
    r*r pixel phases), which are removed together with it."""
    line = ctx.axis(node.args[0], 1, f"pixel unshuffle at {ctx.where(node)}")
    if line is None:
        return None
    r = _factor(ctx, node, "downscale_factor", "downscale_factor")
    return ctx.along(len(ctx.shape(node)), 1, np.repeat(line, r * r))


register_rule(nn.PixelUnshuffle, F.pixel_unshuffle)(pixel_unshuffle_rule)


def channel_shuffle_rule(ctx, node):
    """ChannelShuffle(g): the channels as g groups of C/g, interleaved (output channel j is
    input channel (j % g) * C/g + j // g). The pruned model shuffles its kept channels with the
    same g, which is the same permutation only if every group keeps the same positions: the
    channels at one position of every group are removed together."""
    line = ctx.axis(node.args[0], 1, f"channel shuffle at {ctx.where(node)}")
    if line is None:
        return None
    g = _factor(ctx, node, "groups", "groups")
    by_group = line.reshape(g, -1)
    _tie_rows(ctx, by_group.T, f"channel shuffle at {ctx.where(node)}: a position mixes fixed and prunable channels")
    return ctx.along(len(ctx.shape(node)), 1, by_group.T.reshape(-1))


register_rule(nn.ChannelShuffle, F.channel_shuffle, F.native_channel_shuffle)(channel_shuffle_rule)
