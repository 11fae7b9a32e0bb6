"""Ops that move channels around without computing on them: view/reshape/flatten,
permute/transpose, (un)squeeze, expand/repeat, cat/stack, split/chunk/unbind,
indexing, narrow, the fused channel shuffle, and reading a size off a tensor.

After pruning, any size argument that names a channel count is stale; each rule's
export hook rewrites those arguments from the pruned shapes.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from fxsparse.core.broadcast import left_pad
from fxsparse.core.elements import NO_ELEMENT, varying_dims
from .context import FreeRef, rectangularize
from .pointwise import combine
from .registry import register_rule


def _full(ids, shape):
    return np.broadcast_to(left_pad(ids, len(shape)), shape)


def _dim_map(in_shape, out_shape):
    """For a reshape: out dim -> in dim where that dim passes through unchanged, else None."""
    mapping = [None] * len(out_shape)
    i = j = 0
    while i < len(in_shape) and j < len(out_shape):
        if in_shape[i] != out_shape[j] and 1 in (in_shape[i], out_shape[j]):  # a unit dim added or dropped
            i, j = (i + 1, j) if in_shape[i] == 1 else (i, j + 1)
            continue
        if in_shape[i] == out_shape[j]:
            mapping[j] = i
            i += 1
            j += 1
            continue
        pi, pj = in_shape[i], out_shape[j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj and i < len(in_shape):
                pi *= in_shape[i]
                i += 1
            elif j < len(out_shape):
                pj *= out_shape[j]
                j += 1
            else:
                break
    return mapping


def _refs_through(refs, mapping):
    return [FreeRef(r.qualname, tuple(None if m is None or m >= len(r.dims) else r.dims[m] for m in mapping)) for r in refs]


def _pass_free(ctx, node, src, mapping):
    refs = ctx.free(src)
    if refs is not None and ctx.ids(src) is None:
        ctx.set_free(node, _refs_through(refs, mapping))


# ----- view / reshape / flatten / unflatten ---------------------------------------------
def reshape_rule(ctx, node):
    src = node.args[0]
    in_shape, out_shape = ctx.shape(src), ctx.shape(node)
    _pass_free(ctx, node, src, _dim_map(in_shape, out_shape))
    ids = ctx.ids(src)
    if ids is None:
        return None
    out = np.ascontiguousarray(_full(ids, in_shape)).reshape(out_shape)
    vd = varying_dims(ctx.elements.canonical(out))
    if len(vd) > 2:
        out = rectangularize(ctx.elements, out, [_grid_unit(node, vd, len(out_shape)), vd[-1]])
    return out


def _grid_unit(node, vd, ndim):
    """The unit of a channel grid a reshape makes ([kv groups, q heads + k + v, head_dim]):
    by default the dim just outside the innermost (``context.rectangularize``), but the
    outermost dim no user picks from where users pick single slices (``fused[..., -2]``
    takes the k slot of every group: the slot cannot be the unit, the group can)."""
    picked = _picked_dims(node, ndim)
    free = [d for d in vd[:-1] if d not in picked]
    return vd[-2] if vd[-2] in free or not free else free[0]


# ops that cut a tensor along a dim: the position of that dim in their arguments
_CUTS = {"split": 2, torch.split: 2, "chunk": 2, torch.chunk: 2, "narrow": 1, torch.narrow: 1,
         "select": 1, torch.select: 1, "unbind": 1, torch.unbind: 1}


def _picked_dims(node, ndim):
    """Dims that users of ``node`` index into (an int, a partial slice, a tensor) or cut."""
    dims = set()
    for user in node.users:
        if not user.args or user.args[0] is not node:
            continue
        if user.target is operator.getitem:
            d = 0
            for it in index_items(user.args[1], ndim):
                if it is None:
                    continue
                if not (isinstance(it, slice) and it == slice(None)):
                    dims.add(d)
                d += 1
        else:
            i = _CUTS.get(user.target)
            dim = None if i is None else user.args[i] if len(user.args) > i else user.kwargs.get("dim", 0)
            if isinstance(dim, int):
                dims.add(dim % ndim)
    return dims


def _pruned_from_params(ectx, node):
    """A parameter reshaped with constant sizes (``self.scale.reshape(320, 1, 1)``) carries no
    channel ids itself: the sizes of the dims it maps one to one come from the sliced parameter."""
    shape = ectx.shape(node)
    out = [None] * len(shape)
    for ref in ectx.free(node) or ():
        now = ectx.buffer(ref.qualname).shape
        for d, pdim in enumerate(ref.dims[: len(shape)]):
            if pdim is not None and now[pdim] != shape[d]:
                out[d] = int(now[pdim])
    return out


def _scaled_symbolic_size(node, size, before: int, after: int):
    """A dim that merges the batch with channels (``view(L, batch * heads, hd)`` in
    ``F.multi_head_attention_forward``): its size ``batch * heads`` is a graph value. The
    constant factor scales with the pruning (``batch * kept_heads``) so the batch stays
    symbolic; where the size is no such product, the pruned size is fixed (as recorded)."""
    if size.op == "call_function" and size.target is operator.mul and not size.kwargs and len(size.args) == 2:
        a, b = size.args
        sym, factor = (a, b) if isinstance(b, int) else (b, a)
        if isinstance(factor, int) and isinstance(sym, fx.Node) and factor * after % before == 0:
            with node.graph.inserting_before(node):
                return node.graph.call_function(operator.mul, (sym, factor * after // before))
    return after


def reshape_export(ectx, node):
    """Rewrite the target shape: channel dims get their pruned size, other dims keep the
    original argument (so a dynamic batch size stays dynamic)."""
    pruned = ectx.pruned_shape(node)
    if all(p is None for p in pruned):
        pruned = _pruned_from_params(ectx, node)
    if node.op == "call_function" and node.target is torch.reshape:
        orig = list(node.args[1])
    elif len(node.args) == 2 and isinstance(node.args[1], (list, tuple)):
        orig = list(node.args[1])
    else:
        orig = list(node.args[1:])
    if len(orig) != len(pruned):
        return
    static = ectx.shape(node)
    # a size computed from a channel count (C // heads) is stale after pruning: use the
    # recorded size there; other sizes (the batch) stay symbolic
    # a pruned size given as a graph value (batch * heads) is scaled, not fixed
    new = [(_scaled_symbolic_size(node, o, static[d], p) if isinstance(o, fx.Node) else p) if p is not None
           else (static[d] if ectx.reads_channel_count(o) else o) for d, (p, o) in enumerate(zip(pruned, orig))]
    if node.op == "call_function":
        node.args = (node.args[0], new)
    else:
        node.args = (node.args[0], *new)


register_rule("view", "reshape", torch.reshape, export=reshape_export)(reshape_rule)
register_rule("reshape_as", "view_as")(reshape_rule)  # to another value's (pruned) shape: no constant
register_rule(torch.flatten, "flatten", nn.Flatten)(reshape_rule)


def unflatten_export(ectx, node):
    dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
    sizes = list(node.args[2] if len(node.args) > 2 else node.kwargs["sizes"])
    pruned = ectx.pruned_shape(node)
    dim = dim % len(ectx.shape(node.args[0]))
    new = [p if p is not None else s for p, s in zip(pruned[dim : dim + len(sizes)], sizes)]
    node.args = (node.args[0], dim, new)
    node.kwargs = {}


register_rule("unflatten", torch.unflatten, export=unflatten_export)(reshape_rule)


def _unflatten_module_export(ectx, node):
    mod = ectx.module(node.target)
    pruned = ectx.pruned_shape(node)
    dim = mod.dim % len(pruned)
    mod.unflattened_size = tuple(p if p is not None else s for p, s in zip(pruned[dim : dim + len(mod.unflattened_size)], mod.unflattened_size))


register_rule(nn.Unflatten, export=_unflatten_module_export)(reshape_rule)


# ----- permute / transpose / squeeze / unsqueeze ------------------------------------------
def _permutation(node, ndim):
    if node.target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes):
        a, b = (x % ndim for x in node.args[1:3])
        perm = list(range(ndim))
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    if node.target in ("t",) or node.target is torch.t:
        return list(reversed(range(ndim)))
    if node.target in ("movedim", torch.movedim):
        src, dst = node.args[1] % ndim, node.args[2] % ndim
        order = [d for d in range(ndim) if d != src]
        order.insert(dst, src)
        return order
    args = node.args[1:]
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = args[0]
    if not args:
        args = node.kwargs.get("dims")
    return [a % ndim for a in args]


def permute_rule(ctx, node):
    src = node.args[0]
    ndim = len(ctx.shape(src))
    perm = _permutation(node, ndim)
    _pass_free(ctx, node, src, perm)
    ids = ctx.ids(src)
    if ids is None:
        return None
    return np.transpose(left_pad(ids, ndim), perm)


register_rule("permute", torch.permute, "transpose", torch.transpose, "swapaxes", torch.swapaxes, "t", torch.t,
              "movedim", torch.movedim)(permute_rule)


def _permute_attr(ctx, node):
    src = node.args[0]
    ndim = len(ctx.shape(src))
    perm = list(reversed(range(ndim))) if node.args[1] in ("T",) else list(range(ndim - 2)) + [ndim - 1, ndim - 2]
    _pass_free(ctx, node, src, perm)
    ids = ctx.ids(src)
    return None if ids is None else np.transpose(left_pad(ids, ndim), perm)


def squeeze_like(ctx, node):
    """squeeze / unsqueeze / expand / expand_as / broadcast_to: sizes change only where size is 1."""
    src = node.args[0]
    in_shape, out_shape = ctx.shape(src), ctx.shape(node)
    if node.target in ("expand", "expand_as", "broadcast_to", torch.broadcast_to):
        lead = len(out_shape) - len(in_shape)
        mapping = [None] * lead + list(range(len(in_shape)))
    elif node.target in ("unsqueeze", torch.unsqueeze):
        d = (node.args[1] if len(node.args) > 1 else node.kwargs["dim"]) % len(out_shape)
        mapping = list(range(len(in_shape)))
        mapping.insert(d, None)
    elif node.target in ("squeeze", torch.squeeze):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = range(len(in_shape)) if dims is None else ([dims] if isinstance(dims, int) else dims)
        gone = {d % len(in_shape) for d in dims if in_shape[d % len(in_shape)] == 1}
        mapping = [i for i in range(len(in_shape)) if i not in gone]
    else:
        mapping = _dim_map(in_shape, out_shape)
    _pass_free(ctx, node, src, mapping)
    ids = ctx.ids(src)
    if ids is None:
        return None
    ids = left_pad(ids, len(in_shape))
    shape = [1] * len(out_shape)
    for j, i in enumerate(mapping):
        if i is not None:
            shape[j] = ids.shape[i]
    kept = [i for i in mapping if i is not None]
    out = ids.reshape([ids.shape[i] for i in range(len(in_shape)) if i in kept] or [1])
    return out.reshape(shape) if out.size == math.prod(shape) else None


def expand_export(ectx, node):
    if node.target == "expand_as":
        return
    pruned = ectx.pruned_shape(node)
    if all(p is None for p in pruned):  # a parameter expanded to constant sizes (not its broadcast dims)
        src_shape = ectx.shape(node.args[0])
        src_shape = (1,) * (len(pruned) - len(src_shape)) + tuple(src_shape)
        pruned = [p if src_shape[d] != 1 else None for d, p in enumerate(_pruned_from_params(ectx, node))]
    args = list(node.args[1:])
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    static = ectx.shape(node)
    new = [(static[d] if ectx.reads_channel_count(o) else o) if p is None or o == -1 else p for d, (p, o) in enumerate(zip(pruned, args))]
    node.args = (node.args[0], *new)


register_rule("squeeze", torch.squeeze, "unsqueeze", torch.unsqueeze, "expand_as")(squeeze_like)
register_rule("expand", export=expand_export)(squeeze_like)


def repeat_rule(ctx, node):
    src = node.args[0]
    ids = ctx.ids(src)
    if ids is None:
        return None
    reps = node.args[1:] if not isinstance(node.args[1], (list, tuple)) else node.args[1]
    reps = [int(ctx.value(r)) for r in reps]
    in_shape = ctx.shape(src)
    full = left_pad(_full(ids, in_shape), len(reps))
    return np.tile(full, reps)


register_rule("repeat")(repeat_rule)


# ----- cat / stack ----------------------------------------------------------------------------
def cat_rule(ctx, node):
    tensors = ctx.sequence_items(node.args[0] if node.args else node.kwargs["tensors"])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    out_shape = ctx.shape(node)
    nd = len(out_shape)
    dim %= nd
    # along the other dims the pieces meet position by position, like an add
    parts = []
    for t in tensors:
        shape = list(ctx.shape(t))
        ids = ctx.ids(t)
        parts.append((t, shape, ids))
    # couple along non-cat dims: compare each piece with a cat-dim-collapsed view
    for t, shape, ids in parts:
        if ids is not None and dim in varying_dims(ids) and any(d != dim for d in varying_dims(ids)):
            ctx.unprunable(ids, f"cat at {ctx.where(node)}: channels vary along several dims")
    collapsed = []
    for t, shape, ids in parts:
        refs = ctx.free(t)
        collapsed.append((t, ids, refs))
    template = _couple_across_pieces(ctx, node, collapsed, out_shape, dim)
    pieces = []
    for t, shape, ids in parts:
        ids = ctx.ids(t)
        if ids is None:
            # a parameter (class token) takes the channels it was bound to; a fixed tensor
            # made them unprunable above, so the same ids keep the layout rectangular
            piece = template if template is not None else np.full([1] * nd, NO_ELEMENT, dtype=np.int64)
            piece = np.broadcast_to(ctx.elements.canonical(piece), [shape[dim] if d == dim else piece.shape[d] for d in range(nd)])
        else:
            full_shape = [1] * nd
            full_shape[dim] = shape[dim]
            for d in varying_dims(ids):
                full_shape[d] = shape[d]
            piece = np.broadcast_to(ids, full_shape)
        pieces.append(piece)
    target = [max(p.shape[d] for p in pieces) if d != dim else None for d in range(nd)]
    pieces = [np.broadcast_to(p, [p.shape[d] if d == dim else target[d] for d in range(nd)]) for p in pieces]
    return np.concatenate(pieces, axis=dim)


def _couple_across_pieces(ctx, node, pieces, out_shape, dim):
    """Pieces of a cat share every dim except ``dim``: channels there meet like in an add."""
    proxies = []
    for t, ids, refs in pieces:
        if ids is None and refs is None:
            proxies.append(_Proxy(t, None, ctx.shape(t), None, dim))
        else:
            proxies.append(_Proxy(t, ids, ctx.shape(t), refs, dim))
    if sum(p.ids is not None for p in proxies) == 0:
        return None
    return combine(_CollapsedCtx(ctx, proxies), node, proxies, tuple(1 if d == dim else s for d, s in enumerate(out_shape)),
            what="cat")


class _Proxy:
    """A cat piece seen with its cat dim collapsed to size 1 (only other dims matter)."""

    def __init__(self, node, ids, shape, refs, dim):
        self.name = getattr(node, "name", "a constant")
        if ids is not None:
            ids = left_pad(ids, len(shape))
            ids = np.take(ids, [0], axis=dim) if dim not in varying_dims(ids) else None
        self.ids = ids
        self.shape = tuple(1 if d == dim else s for d, s in enumerate(shape))
        self.refs = None if refs is None else [FreeRef(r.qualname, tuple(None if d == dim else r.dims[d] if d < len(r.dims) else None for d in range(len(shape)))) for r in refs]


class _CollapsedCtx:
    def __init__(self, ctx, proxies):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def shape(self, op):
        return op.shape if isinstance(op, _Proxy) else self._ctx.shape(op)

    def ids(self, op):
        return op.ids if isinstance(op, _Proxy) else self._ctx.ids(op)

    def free(self, op):
        return op.refs if isinstance(op, _Proxy) else self._ctx.free(op)


register_rule(torch.cat, torch.concat, torch.concatenate)(cat_rule)


@register_rule(torch.stack)
def stack_rule(ctx, node):
    tensors = ctx.sequence_items(node.args[0] if node.args else node.kwargs["tensors"])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    in_shape = ctx.shape(tensors[0])
    out = combine(ctx, node, list(tensors), tuple(in_shape), what="stack")
    dim %= len(in_shape) + 1
    return np.expand_dims(out, dim)


# ----- split / chunk / unbind / narrow / indexing --------------------------------------------
def split_pieces(values, node, size):
    """Original [start, stop) ranges of split/chunk/tensor_split outputs along the dim
    (``values``: a context whose ``value()`` reads recorded sizes)."""
    if node.target in ("chunk", torch.chunk):
        n = node.args[1] if len(node.args) > 1 else node.kwargs["chunks"]
        step = math.ceil(size / n)
        bounds = list(range(0, size, step)) + [size]
    else:
        arg = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections", node.kwargs.get("split_size"))
        arg = values.value(arg)
        if isinstance(arg, int):
            bounds = list(range(0, size, arg)) + [size]
        else:
            bounds = [0] + list(np.cumsum(arg))
    return list(zip(bounds[:-1], bounds[1:]))


def split_dim(node):
    """The dim a split / chunk cuts."""
    if len(node.args) > 2:
        return node.args[2]
    return node.kwargs.get("dim", 0)


def split_rule(ctx, node):
    src = node.args[0]
    shape = ctx.shape(src)
    dim = split_dim(node) % len(shape)
    ids = ctx.ids(src)
    ranges = split_pieces(ctx, node, shape[dim])
    refs = ctx.free(src)
    if refs is not None and ids is None:
        ctx.set_free(node, refs)
    if ids is None:
        return tuple(None for _ in ranges)
    if dim not in varying_dims(ids):
        return tuple(ids for _ in ranges)
    return tuple(np.take(ids, range(a, b), axis=dim) for a, b in ranges)


def split_export(ectx, node):
    src = node.args[0]
    dim = split_dim(node) % len(ectx.shape(src))
    if ectx.pruned_shape(src)[dim] is None:
        return
    kept = ectx.kept_along(src, dim)
    sizes = [int(kept[a:b].sum()) for a, b in split_pieces(ectx, node, len(kept))]
    node.target = "split" if node.op == "call_method" else torch.split
    node.args = (src, sizes, dim)
    node.kwargs = {}


register_rule("split", torch.split, "chunk", torch.chunk, export=split_export)(split_rule)


@register_rule("unbind", torch.unbind)
def unbind_rule(ctx, node):
    src = node.args[0]
    shape = ctx.shape(src)
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % len(shape)
    ids = ctx.ids(src)
    mapping = [d for d in range(len(shape)) if d != dim]
    refs = ctx.free(src)
    if refs is not None and ids is None:
        ctx.set_free(node, _refs_through(refs, mapping))
    if ids is None:
        return tuple(None for _ in range(shape[dim]))
    ids = left_pad(ids, len(shape))
    if dim in varying_dims(ids):
        ctx.unprunable(ids, f"unbind at {ctx.where(node)} turns each channel into its own output")
        return tuple(None for _ in range(shape[dim]))
    return tuple(np.take(ids, 0, axis=dim) for _ in range(shape[dim]))


def index_items(index, ndim):
    """The items of an index expression with ``...`` expanded to full slices."""
    items = list(index) if isinstance(index, tuple) else [index]
    n_real = sum(1 for it in items if it is not None and it is not Ellipsis)
    out = []
    for it in items:
        if it is Ellipsis:
            out += [slice(None)] * (ndim - n_real)
        else:
            out.append(it)
    return out


def getitem_rule(ctx, node):
    return index_rule(ctx, node, *node.args)


def index_rule(ctx, node, src, index):
    meta = ctx.item_ids(src)
    if meta is not None:  # picking an output of a split / a tuple-returning op
        if ctx.free(src) is not None:
            ctx.set_free(node, ctx.free(src))
        if isinstance(index, slice):  # a slice of a tuple is a tuple
            return tuple(None if i is None else ctx.elements.canonical(i) for i in meta[index])
        item = meta[index] if isinstance(index, int) and -len(meta) <= index < len(meta) else None
        return None if item is None else ctx.elements.canonical(item)
    shape = ctx.shape(src)
    if shape is None or not isinstance(shape, tuple) or (shape and isinstance(shape[0], tuple)):
        if ctx.free(src) is not None:
            ctx.set_free(node, ctx.free(src))
        return None
    ids = ctx.ids(src)
    refs = ctx.free(src)
    items = index_items(index, len(shape))
    full = None if ids is None else _full(ids, shape)
    vd = [] if ids is None else varying_dims(left_pad(ids, len(shape)))
    np_index, mapping, d = [], [], 0
    gathers = []  # (dim, index rank) of each tensor index
    for it in items:
        if it is None:
            np_index.append(None)
            mapping.append(None)
            continue
        if isinstance(it, slice):
            np_index.append(ctx.value(it))
            mapping.append(d)
        elif isinstance(it, int) or (isinstance(it, fx.Node) and isinstance(ctx.value(it), int)):
            np_index.append(int(ctx.value(it)))
            if d in vd:  # the picked channel must stay
                ctx.unprunable(np.take(full, [int(ctx.value(it))], axis=d), f"indexing at {ctx.where(node)} picks one channel")
        else:  # a tensor / list index
            index_ids = ctx.ids(it) if isinstance(it, fx.Node) else None
            if index_ids is not None:  # a boolean mask picks a data-dependent set: not element-wise
                ctx.unprunable(index_ids, f"indexing at {ctx.where(node)} with an index (a boolean mask) that carries channels")
                ctx.unprunable(ids, f"indexing at {ctx.where(node)} with an index (a boolean mask) that carries channels")
                return None
            if d in vd:
                ctx.unprunable(ids, f"tensor indexing at {ctx.where(node)} along a channel dim")
                return None
            np_index.append(slice(None))
            ishape = ctx.shape(it) if isinstance(it, fx.Node) else np.shape(it)
            gathers.append((d, len(ishape) if ishape else 0))
            mapping += [None] * (len(ishape) - 1) if ishape else []
            mapping.append(None)
            d += 1
            continue
        d += 1
    mapping += list(range(d, len(shape)))
    if refs is not None and ids is None:
        ctx.set_free(node, _refs_through(refs, mapping))
    if ids is None:
        return None
    out_shape = ctx.shape(node)
    if any(not isinstance(i, (slice, int)) and i is not None for i in np_index):
        return None
    if gathers:
        return _gathered(ctx, node, left_pad(ids, len(shape)), items, gathers, out_shape)
    out = full[tuple(np_index)]
    return out.reshape(out_shape) if out.size == math.prod(out_shape) else None


def _gathered(ctx, node, ids, items, gathers, out_shape):
    """Ids of ``x[..., idx, ...]`` with one tensor ``idx`` along a dim without channels (tokens
    routed to an expert, rows put back in order): that dim becomes the index's dims, the
    channels of every other dim pass through."""
    if len(gathers) > 1:
        ctx.unprunable(ids, f"indexing with several tensors at {ctx.where(node)}")
        return None
    sel, pos, out_dims, d = [], None, 0, 0
    for it in items:
        if it is None:
            sel.append(None)
            out_dims += 1
            continue
        if d == gathers[0][0]:
            sel.append(slice(0, 1))  # no channel there: the ids are the same along the dim
            pos = out_dims
            out_dims += 1
        elif isinstance(it, slice):
            sel.append(slice(None) if ids.shape[d] == 1 else ctx.value(it))
            out_dims += 1
        else:
            sel.append(0 if ids.shape[d] == 1 else int(ctx.value(it)))
        d += 1
    out = ids[tuple(sel)]
    out = out.reshape(out.shape[:pos] + (1,) * gathers[0][1] + out.shape[pos + 1:])
    if out.ndim != len(out_shape) or any(o not in (1, s) for o, s in zip(out.shape, out_shape)):
        ctx.unprunable(ids, f"tensor indexing at {ctx.where(node)}: cannot follow its channels")
        return None
    return out


def getitem_export(ectx, node):
    src, index = node.args
    if not isinstance(src, fx.Node) or ectx.is_tuple_valued(src):
        return
    shape = ectx.shape(src)
    if shape is None or not isinstance(shape, tuple):
        return
    pruned = ectx.pruned_shape(src)
    items = index_items(index, len(shape))
    new, d, changed = [], 0, False
    for it in items:
        if it is None:
            new.append(it)
            continue
        # a constant index into a dim whose channels were pruned, of a value or of a parameter
        # read through shape-only ops (Swin V2 zeroes the key part of its qkv bias by slice)
        kept = None
        if d < len(shape) and (isinstance(it, (slice, int)) or isinstance(ectx.value(it), int)):
            kept = ectx.kept_along(src, d) if pruned[d] is not None else ectx.kept_along_param(src, d)
        if kept is not None:
            pos = np.cumsum(kept) - 1  # original index -> index in the pruned tensor
            if isinstance(it, slice):
                sel = np.arange(shape[d])[ectx.value(it)]
                sel = pos[sel[kept[sel]]]
                if len(sel) and np.array_equal(sel, np.arange(sel[0], sel[0] + len(sel))):
                    it = slice(int(sel[0]), int(sel[0]) + len(sel))
                else:
                    it = [int(s) for s in sel]
            else:
                it = int(pos[int(ectx.value(it))])
            changed = True
        new.append(it)
        d += 1
    if changed:
        node.args = (src, tuple(new) if isinstance(index, tuple) or len(new) > 1 else new[0])


register_rule(operator.getitem, export=getitem_export)(getitem_rule)


def narrow_rule(ctx, node):
    src, dim, start, length = node.args[:4]
    shape = ctx.shape(src)
    dim %= len(shape)
    index = tuple([slice(None)] * dim + [slice(ctx.value(start), ctx.value(start) + ctx.value(length))])
    return index_rule(ctx, node, src, index)


def narrow_export(ectx, node):
    src, dim, start, length = node.args[:4]
    dim %= len(ectx.shape(src))
    if ectx.pruned_shape(src)[dim] is None:
        return
    kept = ectx.kept_along(src, dim)
    a, b = ectx.value(start), ectx.value(start) + ectx.value(length)
    node.args = (src, dim, int(kept[:a].sum()), int(kept[a:b].sum()))


register_rule("narrow", torch.narrow, export=narrow_export)(narrow_rule)


def channel_permute(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``x`` with its ``dim`` reordered by ``index``: the one op a channel shuffle is fused
    into (by the fuse_channel_shuffle pass), so any keep pattern stays valid."""
    return torch.index_select(x, dim, index.to(x.device))


def channel_permute_rule(ctx, node):
    src, dim, index_node = node.args
    ids = ctx.ids(src)
    if ids is None:
        return None
    perm = ctx.param(index_node.target).numpy()
    shape = ctx.shape(src)
    return np.take(_full(ids, shape), perm, axis=dim % len(shape))


def channel_permute_export(ectx, node):
    src, dim, index_node = node.args
    if ectx.pruned_shape(src)[dim] is None:
        return
    kept_in = ectx.kept_along(src, dim)
    pos = np.cumsum(kept_in) - 1
    perm = ectx.buffer(index_node.target).numpy()
    new = pos[perm[kept_in[perm]]]
    ectx.set_buffer(index_node.target, torch.as_tensor(new, dtype=torch.long))


register_rule(channel_permute, export=channel_permute_export)(channel_permute_rule)


@register_rule("flip", torch.flip)
def flip_rule(ctx, node):
    src = node.args[0]
    dims = node.args[1] if len(node.args) > 1 else node.kwargs["dims"]
    dims = [dims] if isinstance(dims, int) else dims
    ids = ctx.ids(src)
    if ids is None:
        return None
    full = _full(ids, ctx.shape(src))
    return np.flip(full, [d % full.ndim for d in dims])


@register_rule("roll", torch.roll)
def roll_rule(ctx, node):
    src = node.args[0]
    ids = ctx.ids(src)
    if ids is None:
        return None
    dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dims")
    nd = len(ctx.shape(src))
    dims = list(range(nd)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    ids = left_pad(ids, nd)
    if any(d % nd in varying_dims(ids) for d in dims):
        ctx.unprunable(ids, f"roll at {ctx.where(node)} shifts along a channel dim")
        return None
    return ids


# ----- sizes read off tensors -----------------------------------------------------------------
def size_rule(ctx, node):
    src = node.args[0]
    shape = ctx.shape(src)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = list(range(len(shape))) if dim is None else [dim % len(shape)]
    ctx.size_reads.append((node, src, dims))
    return None


register_rule("size")(size_rule)


@register_rule(getattr)
def getattr_rule(ctx, node):
    src, attr = node.args[:2]
    if attr == "shape":
        ctx.size_reads.append((node, src, list(range(len(ctx.shape(src))))))
        return None
    if attr in ("T", "mT"):
        return _permute_attr(ctx, node)
    if attr in ("real", "data"):
        return ctx.ids(src)
    return None
