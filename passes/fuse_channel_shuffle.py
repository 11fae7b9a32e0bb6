"""Pass: recognise a channel shuffle and make it one explicit permutation op.

ShuffleNet writes ``x.view(b, g, c // g, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)``.
As three ops it only stays valid after pruning if every group keeps the same number of
channels; as one permutation of the channel dim any keep pattern works. The pattern is
matched on shapes recorded by ``shape_prop`` (not on names): a view that splits dim d
into (g, c/g), a swap of those two dims, and a view that merges them back. The fused op is
:func:`fxsparse.rules.shapes.channel_permute` (its channel rule lives there); its index is
a non-persistent buffer ``_fxsparse_shuffle_<k>``. Writes no ``node.meta`` key of its own
(the new node copies the replaced view's meta). :attr:`FuseChannelShuffle.fused` counts
the shuffles fused by the last call.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxsparse.rules.meta_keys import SHAPE
from fxsparse.rules.shapes import channel_permute

from .manager import TORCH_LEVEL, require_meta

_VIEWS = {"view", "reshape"}
_SWAPS = {"transpose", "permute"}
_NOOPS = {"contiguous"}


def _is_view(n):
    return isinstance(n, fx.Node) and (
        (n.op == "call_method" and n.target in _VIEWS) or (n.op == "call_function" and n.target in (torch.reshape,))
    )


def _only_user(n):
    users = list(n.users)
    return users[0] if len(users) == 1 else None


def _split_dim(in_shape, out_shape):
    """If out_shape splits exactly one dim of in_shape into two, return (dim, g, c/g)."""
    if in_shape is None or out_shape is None or len(out_shape) != len(in_shape) + 1:
        return None
    for d in range(len(in_shape)):
        if (
            tuple(in_shape[:d]) == tuple(out_shape[:d])
            and tuple(in_shape[d + 1 :]) == tuple(out_shape[d + 2 :])
            and out_shape[d] * out_shape[d + 1] == in_shape[d]
            and out_shape[d] > 1
            and out_shape[d + 1] > 1
        ):
            return d, out_shape[d], out_shape[d + 1]
    return None


def _swaps(n, d):
    if n.op != "call_method" or n.target not in _SWAPS:
        return False
    args = [a for a in n.args[1:]]
    if n.target == "transpose":
        ndim = len(n.meta[SHAPE])
        dims = sorted(a % ndim for a in args)
        return dims == [d, d + 1]
    perm = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    expect = list(range(len(perm)))
    expect[d], expect[d + 1] = expect[d + 1], expect[d]
    return [p % len(perm) for p in perm] == expect


class FuseChannelShuffle(PassBase):
    """Replaces each view-swap-view channel shuffle by one ``channel_permute`` node."""

    needs = frozenset({TORCH_LEVEL, SHAPE})  # matches view / transpose calls on recorded shapes
    gives = frozenset()  # the fused node copies the replaced view's meta

    fused = 0

    def requires(self, graph_module):
        require_meta(graph_module, SHAPE, "fuse_channel_shuffle", "the shapes of the shape_prop pass", op="call_method")

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.fused = _fuse(gm)
        return PassResult(gm, self.fused > 0)


def _fuse(gm: fx.GraphModule) -> int:
    fused = 0
    for split in list(gm.graph.nodes):
        if not _is_view(split) or split.op != "call_method":
            continue
        src = split.args[0]
        hit = _split_dim(src.meta.get(SHAPE) if isinstance(src, fx.Node) else None, split.meta.get(SHAPE))
        if hit is None:
            continue
        d, g, per = hit
        swap = _only_user(split)
        if swap is None or not _swaps(swap, d):
            continue
        last = _only_user(swap)
        while last is not None and last.op == "call_method" and last.target in _NOOPS:
            last = _only_user(last)
        if last is None or not _is_view(last) or tuple(last.meta.get(SHAPE) or ()) != tuple(src.meta[SHAPE]):
            continue
        # output channel j = (j % g) * per + j // g  of the input
        index = torch.arange(g * per).view(g, per).t().reshape(-1)
        name = f"_fxsparse_shuffle_{fused}"
        while hasattr(gm, name):
            name += "_"
        gm.register_buffer(name, index, persistent=False)
        with gm.graph.inserting_before(last):
            idx = gm.graph.get_attr(name)
            idx.meta[SHAPE] = (g * per,)
            new = gm.graph.call_function(channel_permute, (src, d, idx))
            new.meta = dict(last.meta)
        last.replace_all_uses_with(new)
        chain = [last]
        n = _only_user(swap)
        while n is not last:
            chain.append(n)
            n = _only_user(n)
        for dead in chain + [swap, split]:
            if not dead.users:
                gm.graph.erase_node(dead)
        fused += 1
    if fused:
        gm.recompile()
    return fused

