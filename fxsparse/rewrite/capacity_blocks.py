"""Cut every channel group into *blocks* that no split, chunk or slice cuts through.

The compiled sparse step gives each block a fixed capacity (a number of channel slots),
so all shapes are static while the kept channels change every step. A block must lie
within one piece of every split along every tensor, otherwise the number of kept
channels in a piece would vary. (ShuffleNet: the channels of a branch land in both
halves of the next block's chunk, so that branch's group becomes two blocks.)
Not a graph pass: it reads the analysed graph and returns a list.
"""
from __future__ import annotations

import dataclasses
import operator

import numpy as np
import torch
import torch.fx as fx

from fxsparse.core.broadcast import left_pad
from fxsparse.core.elements import varying_dims
from fxsparse.analysis.graph import ChannelGraph
from fxsparse.rules.context import GraphValues
from fxsparse.rules.meta_keys import IDS
from fxsparse.rules.shapes import index_items, split_dim, split_pieces

_SPLITS = {"split", "chunk", "tensor_split", "narrow", torch.split, torch.chunk, torch.narrow}


@dataclasses.dataclass
class Block:
    group: int  # ChannelGroup id
    classes: np.ndarray  # element classes in slot order (the group's channel order)
    channels: np.ndarray  # the same, as channel indices within the group


def split_cuts(graph: ChannelGraph):
    """(canonical class ids along the cut dim, piece id per position) for every cut."""
    values = GraphValues()
    cuts = []
    for node in graph.gm.graph.nodes:
        if node.op not in ("call_method", "call_function") or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        ids = src.meta.get(IDS)
        shape = values.shape(src)
        if not isinstance(ids, np.ndarray) or not isinstance(shape, tuple) or values.is_tuple_valued(src):
            continue
        canon = left_pad(graph.elements.canonical(ids), len(shape))
        vd = varying_dims(canon)
        if not vd:
            continue
        d = vd[0]
        line = np.moveaxis(np.broadcast_to(canon, shape), d, 0).reshape(shape[d], -1)[:, 0]
        piece = None
        if node.target in ("split", "chunk", torch.split, torch.chunk) and split_dim(node) % len(shape) == d:
            piece = np.zeros(shape[d], dtype=np.int64)
            for k, (a, b) in enumerate(split_pieces(values, node, shape[d])):
                piece[a:b] = k
        elif node.target in ("narrow", torch.narrow) and node.args[1] % len(shape) == d:
            start, length = values.value(node.args[2]), values.value(node.args[3])
            piece = np.zeros(shape[d], dtype=np.int64)
            piece[start : start + length] = 1
        elif node.target is operator.getitem:
            items = index_items(node.args[1], len(shape))
            real = [it for it in items if it is not None]
            if d < len(real) and isinstance(real[d], slice):
                sl = real[d]
                piece = np.zeros(shape[d], dtype=np.int64)
                piece[np.arange(shape[d])[values.value(sl)]] = 1
        if piece is not None:
            cuts.append((line, piece))
    return cuts


def capacity_blocks(graph: ChannelGraph) -> list[Block]:
    """Blocks of every group (prunable or not), refined by all split cuts."""
    class_piece: dict[int, tuple] = {}
    for line, piece in split_cuts(graph):
        for cls, p in zip(line.tolist(), piece.tolist()):
            if cls >= 0:
                class_piece[cls] = class_piece.get(cls, ()) + (p,)
    blocks = []
    for g in graph.groups:
        keys = [class_piece.get(int(c), ()) for c in g.classes]
        order = {}
        for j, key in enumerate(keys):
            order.setdefault(key, []).append(j)
        for members in order.values():
            idx = np.array(members, dtype=np.int64)
            blocks.append(Block(group=g.id, classes=g.classes[idx], channels=idx))
    return blocks
