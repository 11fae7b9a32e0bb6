"""The context an export hook is called with (``Rule.export(ectx, node)``): the pruned sizes
of graph values, the kept positions along their dims, and the module tree being sliced. The
slice_channels pass builds one per export; the masked reference reads kept masks through
one too. :mod:`fxsparse.rules.contract` is the whole rule contract.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from fxsparse.core.broadcast import along, left_pad
from fxsparse.core.elements import ElementTable, varying_dims
from fxsparse.core.errors import ExportError

from .context import GraphValues, where
from .meta_keys import CHANNEL_COUNT, FREE, IDS


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
