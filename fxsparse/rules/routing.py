"""Mixture-of-experts routing and expert layers.

A router picks, per token, k of its logits (``topk``; one logit per expert): those are
choices, not channels, so the router's output dim is never pruned. Tokens then travel to
their experts and back by row gathers (``x[idx]``, the indexing rule), ``index_add`` or a
sort, none of which touches the channel dim: the widths inside the experts prune like a
dense MLP's. Experts kept as one 3-D parameter [experts, out, in] and run by a grouped
matrix product share the positions of their channels: channel j of every expert is one
unit there (a 3-D tensor can only lose whole slices); experts kept as separate layers
(a ``ModuleList``) are each their own unit.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from fxsparse.core.elements import varying_dims
from .context import node_arg
from .layers import param_dim
from .registry import register_rule


def _picked_dim(ctx, node, dim_index, dim_name, default=-1):
    """(ids of the input, the dim an op picks or orders along) with the input's channels
    along that dim made unprunable: values ranked against each other are not channels."""
    src = node.args[0]
    shape = ctx.shape(src)
    dim = node_arg(node, dim_index, dim_name, default) % len(shape)
    ids = ctx.padded_ids(src)
    if ids is not None and dim in varying_dims(ids):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        ctx.unprunable(ids, f"{name} at {ctx.where(node)} ranks the values along dim {dim} against each other (a "
                            "router's expert logits): they are choices, not channels")
        return None, dim
    return ids, dim


@register_rule(torch.topk, "topk")
def topk_rule(ctx, node):
    """``values, indices = x.topk(k, dim)``: the other dims keep their channels."""
    ids, _ = _picked_dim(ctx, node, 2, "dim")
    return ids, ids


@register_rule(torch.sort, "sort")
def sort_rule(ctx, node):
    ids, _ = _picked_dim(ctx, node, 1, "dim")
    return ids, ids


@register_rule(torch.argsort, "argsort")
def argsort_rule(ctx, node):
    return _picked_dim(ctx, node, 1, "dim")[0]


def like_rule(ctx, node):
    """``torch.zeros_like(x)`` and alike: a fresh tensor of ``x``'s shape, so its sizes follow
    ``x``'s channels (an accumulator for the experts' outputs)."""
    return ctx.ids(node.args[0])


register_rule(torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
              torch.randn_like)(like_rule)


def repeat_interleave_rule(ctx, node):
    """``x.repeat_interleave(k, dim)``: each token copied once per expert it goes to (the
    channels of the other dims pass through), or each KV head once per query head it serves
    (a channel's copies are that channel: they go with it).

    A value shared by all (size 1 along ``dim``: Mamba2's B and C with one group, copied to
    every head) has no channel there to follow: its ``k`` copies get channels of their own,
    which couple with the heads they meet, and a pruned copy is left out of the repeat
    (export lowers ``k``). The copies and the value's own channels along another dim (the
    state) would be an outer product, which one ids array cannot hold: the copies keep theirs
    (they meet the heads), the value's stay."""
    src, repeats = node.args[0], node_arg(node, 1, "repeats")
    dim = node_arg(node, 2, "dim")
    ids = ctx.padded_ids(src)
    if dim is None or not isinstance(repeats, int):
        if ids is not None:
            ctx.unprunable(ids, f"repeat_interleave at {ctx.where(node)} without a dim or with per-item repeats")
        return None
    shape = ctx.shape(src)
    dim %= len(shape)
    if _copies_of_a_shared_value(shape, dim, repeats):
        copies = ctx.new_elements(repeats)
        if ids is not None:
            ctx.unprunable(ids, f"repeat_interleave at {ctx.where(node)} copies a value shared by all along dim {dim} "
                                f"{repeats} times: an outer product of the copies and the value's channels; one ids "
                                "array holds one of them, and the copies keep theirs (they meet the heads)")
        return ctx.along(len(shape), dim, copies)
    if ids is None:
        return None
    if dim in varying_dims(ids):
        return np.repeat(ids, repeats, axis=dim)
    return np.take(ids, [0], axis=dim)


def _copies_of_a_shared_value(shape, dim, repeats) -> bool:
    return shape[dim] == 1 and repeats > 1


def repeat_interleave_export(ectx, node):
    """Copies of a shared value: repeat only the kept ones. ``output_size``, where given, is
    the kept count (copies of sliced channels are fewer too)."""
    repeats, dim = node_arg(node, 1, "repeats"), node_arg(node, 2, "dim")
    shape = ectx.shape(node.args[0])
    if dim is None or not isinstance(repeats, int):
        return
    kept = ectx.pruned_size(node, dim)
    shared = _copies_of_a_shared_value(shape, dim % len(shape), repeats)
    args, kwargs = list(node.args), dict(node.kwargs)
    for i, name, new in ((1, "repeats", kept if shared else repeats), (3, "output_size", kept)):
        if len(args) > i:
            args[i] = new
        elif name in kwargs:
            kwargs[name] = new
    node.args, node.kwargs = tuple(args), kwargs


register_rule(torch.repeat_interleave, "repeat_interleave", export=repeat_interleave_export)(repeat_interleave_rule)


def _meet(ctx, node, a, b, what):
    """Couple two aligned ids arrays position by position; a channel that meets fixed values
    (a tensor without channels there) cannot go."""
    loc = f"{what} at {ctx.where(node)}"
    if a is None or b is None:
        for x in (a, b):
            if x is not None:
                ctx.unprunable(x, f"{loc}: meets values whose channels cannot be removed")
        return None
    a, b = np.broadcast_arrays(a, b)
    fixed = (a < 0) | (b < 0)
    ctx.couple(a[~fixed], b[~fixed])
    ctx.unprunable(np.concatenate([a[fixed], b[fixed]]), f"{loc}: meets values whose channels cannot be removed")
    return np.where(a >= 0, a, b)


def index_add_rule(ctx, node):
    """``out.index_add_(dim, index, source)``: each source row is added to a row of ``out``;
    the other dims meet position by position (the experts' outputs summed into the tokens)."""
    dest = node.args[0]
    dim = node_arg(node, 1, "dim") % len(ctx.shape(dest))
    source = node_arg(node, 3, "source")
    a = ctx.padded_ids(dest)
    b = ctx.padded_ids(source) if isinstance(source, fx.Node) else None
    if (a is not None and dim in varying_dims(a)) or (b is not None and dim in varying_dims(b)):
        for x in (a, b):
            if x is not None:
                ctx.unprunable(x, f"index_add at {ctx.where(node)} adds rows along dim {dim}, which carries channels")
        return None
    a = None if a is None else np.take(a, [0], axis=dim)
    b = None if b is None else np.take(b, [0], axis=dim)
    return _meet(ctx, node, a, b, "index_add")


register_rule(torch.index_add, "index_add", "index_add_")(index_add_rule)


def grouped_mm_rule(ctx, node):
    """``grouped_mm(x [tokens, in], W [experts, in, out], offs)``: each row of ``x`` goes
    through the expert its offsets put it in; for the channels that is ``x @ W[e]`` for every
    expert at once, so ``in`` and ``out`` are channels of ``W``'s dims 1 and 2 shared by all
    experts (the expert dim is not a channel dim)."""
    x, w = node.args[0], node_arg(node, 1, "mat_b", node_arg(node, 1, "weight"))
    loc = f"grouped matrix product at {ctx.where(node)}"
    x_shape, w_shape = ctx.shape(x), ctx.shape(w)
    if len(x_shape) != 2 or len(w_shape) != 3:
        ctx.opaque(node, f"{loc}: only [tokens, in] x [experts, in, out] products are supported")
        return None
    w_in, w_out = param_dim(ctx, w, 1), param_dim(ctx, w, 2)
    if w_in is None or w_out is None:
        ctx.unprunable(ctx.ids(x), f"{loc}: its weight is computed in the graph, not a parameter")
        return None
    xin = ctx.axis(x, -1, f"{loc}: input channels also vary along the token dim")
    if xin is not None:
        ctx.member(*w_in, xin)
    out = ctx.new_elements(w_shape[2])
    ctx.member(*w_out, out)
    return ctx.along(2, -1, out)


# transformers' CPU fallback is a custom op, known by name (transformers need not be imported)
_GROUPED_MM = ["transformers::grouped_mm_fallback", "aten::_grouped_mm"]
_GROUPED_MM += [f for f in (getattr(torch, "_grouped_mm", None), getattr(F, "grouped_mm", None)) if f is not None]
register_rule(*_GROUPED_MM)(grouped_mm_rule)


__all__ = ["repeat_interleave_rule", "topk_rule", "sort_rule", "argsort_rule", "like_rule", "index_add_rule", "grouped_mm_rule"]
