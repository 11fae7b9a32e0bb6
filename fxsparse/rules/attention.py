"""Matrix products and attention.

``a @ b`` contracts a's last dim with b's second-to-last: channels there are coupled
(q and k share head_dim). Batch dims meet like in an add (heads of q, k and v). The
remaining dims carry their channels into the output. Attention heads become the unit
through the reshape rule ([E] -> [heads, head_dim] keeps heads as the unit).
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from fxsparse.core.broadcast import along, left_pad, padded_shape
from fxsparse.core.elements import NO_ELEMENT, varying_dims
from .einsum import general_einsum
from .outer import keep_one_axis
from .context import node_arg
from .layers import linear_channels, param_dim
from .registry import register_rule


def product_ids(ctx, node, a, b, a_shape, b_shape, a_ids, b_ids, what):
    """Channels of ``a @ b`` for tensors of >= 2 dims (ids already aligned to their shapes)."""
    loc = f"{what} at {ctx.where(node)}"
    nd = max(len(a_shape), len(b_shape))
    a_shape, b_shape = padded_shape(a_shape, nd), padded_shape(b_shape, nd)
    A = None if a_ids is None else left_pad(a_ids, nd)
    B = None if b_ids is None else left_pad(b_ids, nd)
    va = [] if A is None else varying_dims(A)
    vb = [] if B is None else varying_dims(B)
    k_a, k_b = nd - 1, nd - 2
    # contracted dim
    if k_a in va or k_b in vb:
        if k_a in va and k_b in vb:
            la = np.moveaxis(A, k_a, 0).reshape(A.shape[k_a], -1)[:, 0]
            lb = np.moveaxis(B, k_b, 0).reshape(B.shape[k_b], -1)[:, 0]
            fixed = (la < 0) | (lb < 0)
            ctx.couple(la[~fixed], lb[~fixed])
            ctx.unprunable(la[fixed], f"{loc}: contracted with fixed values")
            ctx.unprunable(lb[fixed], f"{loc}: contracted with fixed values")
            ctx.mark_summing(node, [a, b], f"{loc}: contracted over channels")
        else:
            ctx.unprunable(A if k_a in va else B, f"{loc}: contracted with a tensor whose channels cannot be removed")
    out = np.full((1,) * nd, NO_ELEMENT, dtype=np.int64)
    # batch dims meet position by position
    for d in range(nd - 2):
        sides = [(X, s) for X, s, v in ((A, a_shape, va), (B, b_shape, vb)) if X is not None and d in v]
        if not sides:
            continue
        for X, s in sides:
            other_shape = b_shape if s is a_shape else a_shape
            other = B if X is A else A
            if other_shape[d] > 1 and (other is None or d not in varying_dims(other)):
                ctx.unprunable(X, f"{loc}: batch dim {d} meets a tensor whose channels there cannot be removed")
        if len(sides) == 2:
            la = np.moveaxis(A, d, 0).reshape(A.shape[d], -1)[:, 0]
            lb = np.moveaxis(B, d, 0).reshape(B.shape[d], -1)[:, 0]
            ctx.couple(la, lb)
        line = np.moveaxis(sides[0][0], d, 0).reshape(sides[0][0].shape[d], -1)[:, 0]
        out = np.maximum(out, along(line, d, nd))
    rows = np.moveaxis(A, nd - 2, 0).reshape(A.shape[nd - 2], -1)[:, 0] if nd - 2 in va else None
    cols = np.moveaxis(B, nd - 1, 0).reshape(B.shape[nd - 1], -1)[:, 0] if nd - 1 in vb else None
    if rows is not None and cols is not None:
        # an outer product of two channel axes (EfficientViM's x [C, L] @ (a*b)^T [L, N]: the
        # stream times a state dim): one ids array holds one of them
        kept = keep_one_axis(ctx, [("the rows of the first factor", rows), ("the columns of the second", cols)], loc)
        rows, cols = (rows, None) if kept == 0 else (None, cols)
    if rows is not None:  # rows of a
        out = np.maximum(out, along(rows, nd - 2, nd))
    if cols is not None:  # columns of b
        line = cols
        o, l = np.broadcast_arrays(out, along(line, nd - 1, nd))
        if ((o >= 0) & (l >= 0)).any():
            ctx.unprunable(np.concatenate([o.ravel(), l.ravel()]), f"{loc}: both factors carry channels into the output")
            return None
        out = np.maximum(o, l)
    return out


@register_rule(operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm", "__matmul__")
def matmul_rule(ctx, node):
    a, b = node.args[:2]
    a_shape, b_shape = ctx.shape(a), ctx.shape(b)
    if a_shape is None or b_shape is None or len(a_shape) < 2 or len(b_shape) < 2:
        ctx.opaque(node, f"matmul of a vector at {ctx.where(node)}")
        return None
    # x @ W with W a parameter [in, out]: a linear layer written by hand; W may be batched
    # ([tokens, in, out]: each token's expert weights gathered from a 3-D parameter)
    if ctx.ids(b) is None and param_dim(ctx, b, -2) and param_dim(ctx, b, -1) and (len(b_shape) == 2 or _no_batch_channels(ctx, a)):
        return linear_channels(ctx, node, a, param_dim(ctx, b, -1), param_dim(ctx, b, -2), None)
    # W @ x with W a (batched) parameter [out, in]: the same, x's channels on its rows
    if ctx.ids(a) is None and param_dim(ctx, a, -2) and param_dim(ctx, a, -1) and ctx.ids(b) is not None:
        return weight_times_x(ctx, node, b, param_dim(ctx, a, -2), param_dim(ctx, a, -1))
    return product_ids(ctx, node, a, b, a_shape, b_shape, ctx.ids(a), ctx.ids(b), "matmul")


def _no_batch_channels(ctx, x):
    """Whether ``x``'s channels (if any) run along its last dim only."""
    ids = ctx.ids(x)
    return ids is None or all(d == ids.ndim - 1 for d in varying_dims(ids))


def weight_times_x(ctx, node, x, w_out, w_in):
    """``W @ x``: x's rows (dim -2) are W's input channels, the output's rows W's output channels."""
    xin = ctx.axis(x, -2, f"matmul at {ctx.where(node)}: input channels also vary along another dim")
    if xin is not None:
        ctx.member(*w_in, xin)
    out_shape = ctx.shape(node)
    out = ctx.new_elements(out_shape[-2])
    ctx.member(*w_out, out)
    return ctx.along(len(out_shape), -2, out)


def _einsum_operands(args):
    """``(equation, [operands])`` of ``torch.einsum(eq, a, b)`` or ``torch.einsum(eq, [a, b])``."""
    eq, rest = args[0], args[1:]
    return eq, list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)


def _einsum_as_matmul(eq: str):
    """``(a_order, b_order, out_order)`` that turn a two-operand einsum into a batched ``a @ b``
    (``a`` as [batch, a-row, contracted], ``b`` as [batch, contracted, b-column], the product
    as [batch, a-row, b-column]; -1 stands for an inserted size-1 dim), or None for an
    equation that is no such product (ellipsis, repeated or summed-out letters, several
    row / column / contracted letters)."""
    eq = eq.replace(" ", "")
    if "..." in eq or "->" not in eq:
        return None
    ins, out = eq.split("->")
    if ins.count(",") != 1:
        return None
    a, b = ins.split(",")
    if any(len(set(t)) != len(t) for t in (a, b, out)) or set(out) - set(a + b) or (set(a) ^ set(b)) - set(out):
        return None
    batch = [c for c in out if c in a and c in b]
    contracted = [c for c in a if c in b and c not in out]
    rows, cols = [c for c in a if c not in b], [c for c in b if c not in a]
    if len(contracted) != 1 or len(rows) > 1 or len(cols) > 1:
        return None
    a_order = [a.index(c) for c in batch] + [a.index(rows[0]) if rows else -1, a.index(contracted[0])]
    b_order = [b.index(c) for c in batch] + [b.index(contracted[0]), b.index(cols[0]) if cols else -1]
    product = batch + [rows[0] if rows else None, cols[0] if cols else None]
    return a_order, b_order, [product.index(c) for c in out]


def _reordered(ids, shape, order):
    """ids (aligned to ``shape``) and shape with the dims in ``order`` (-1: a new size-1 dim)."""
    full = left_pad(ids, len(shape)) if ids is not None else None
    new_shape = tuple(1 if d < 0 else shape[d] for d in order)
    if full is None:
        return None, new_shape
    picked = [d for d in order if d >= 0]
    moved = np.transpose(full, picked)
    for i, d in enumerate(order):
        if d < 0:
            moved = np.expand_dims(moved, i)
    return moved, new_shape


@register_rule(torch.einsum)
def einsum_rule(ctx, node):
    """A two-operand einsum that is a batched matrix product (attention written with einsum,
    as in torchvision's MaxViT): the rule of ``a @ b`` on the operands reordered."""
    eq, operands = _einsum_operands(node.args)
    orders = _einsum_as_matmul(eq) if len(operands) == 2 and all(isinstance(o, fx.Node) for o in operands) else None
    if orders is None:
        return general_einsum(ctx, node, eq, operands)
    (a, b), (a_order, b_order, out_order) = operands, orders
    a_ids, a_shape = _reordered(ctx.ids(a), ctx.shape(a), a_order)
    b_ids, b_shape = _reordered(ctx.ids(b), ctx.shape(b), b_order)
    out = product_ids(ctx, node, a, b, a_shape, b_shape, a_ids, b_ids, f"einsum '{eq}'")
    if out is None:
        return None
    n = len(a_order)
    inserted = [i for i in range(n) if i not in out_order]  # the size-1 row / column dims
    out = np.transpose(left_pad(out, n), out_order + inserted)
    return out.reshape(out.shape[:len(out_order)])


def sdpa_rule(ctx, node):
    q, k, v = node.args[:3]
    qs, ks, vs = ctx.shape(q), ctx.shape(k), ctx.shape(v)
    nd = len(qs)
    kt_ids = ctx.ids(k)
    if kt_ids is not None:
        kt_ids = left_pad(kt_ids, nd)
        kt_ids = np.swapaxes(kt_ids, -1, -2)
    kt_shape = tuple(ks[:-2]) + (ks[-1], ks[-2])
    scores = product_ids(ctx, node, q, k, qs, kt_shape, ctx.ids(q), kt_ids, "attention scores")
    score_shape = tuple(qs[:-1]) + (ks[-2],)
    mask = node_arg(node, 3, "attn_mask")
    # a mask node may hold None (timm passes an optional ``attn_mask`` input through)
    if isinstance(mask, fx.Node) and ctx.shape(mask) is not None:
        scores = _scores_plus_mask(ctx, node, scores, score_shape, mask)
    return product_ids(ctx, node, None, v, score_shape, vs, scores, ctx.ids(v), "attention output")


class _Scores:
    """The attention logits, an operand of ``scores + mask`` that is no graph node."""

    name = "attention scores"

    def __init__(self, ids, shape):
        self.ids, self.shape = ids, shape


class _WithScores:
    """The analysis context, seeing :class:`_Scores` as a value with its shape and ids."""

    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def shape(self, op):
        return op.shape if isinstance(op, _Scores) else self._ctx.shape(op)

    def ids(self, op):
        return op.ids if isinstance(op, _Scores) else self._ctx.ids(op)

    def free(self, op):
        return None if isinstance(op, _Scores) else self._ctx.free(op)


def _scores_plus_mask(ctx, node, scores, score_shape, mask):
    """A float mask is added to the logits: a per-head bias (relative positions from a small
    MLP with one output per head) is coupled to the heads like an add; a fixed one keeps them."""
    from .pointwise import combine

    if ctx.ids(mask) is None and scores is None:
        return None
    ids = combine(_WithScores(ctx), node, [_Scores(scores, score_shape), mask], score_shape, what="attention mask")
    return None if ids is None or (ids < 0).all() else ids


def sdpa_export(ectx, node):
    """Removing head_dim channels must not change the softmax temperature."""
    q = node.args[0]
    if node_arg(node, 6, "scale") is None:
        node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(ectx.shape(q)[-1])}


register_rule(F.scaled_dot_product_attention, export=sdpa_export)(sdpa_rule)



def multihead_attention_module(ctx, node):
    """nn.MultiheadAttention keeps q/k/v in one packed parameter and needs embed_dim to equal
    its input and output width, so removing channels would need a different module: its
    channels stay (hand-written attention, q/k/v linears + SDPA, is pruned by heads)."""
    ctx.opaque(node, f"nn.MultiheadAttention '{node.target}' at {ctx.where(node)}: its packed in_proj and "
                     "embed_dim == input width are not pruned (hand-written attention is, by heads)")
    return None


register_rule(torch.nn.MultiheadAttention)(multihead_attention_module)
