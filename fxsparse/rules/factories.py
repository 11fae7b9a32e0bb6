"""Fresh tensors of one value made from literal sizes (``torch.zeros(batch, 64, 16)``: the
initial state of a recurrence, an accumulator).

Every slice of such a tensor holds the same values, so it can meet channels along any dim:
it is seen as a parameter view that binds nothing (an empty list of free references), which
the element-wise rule lets take the channels it meets. At export, each literal size that
met channels becomes the kept count of those channels, read off the element-wise op the
tensor feeds (through casts and copies), or the cat it is a piece of. A fill used any other
way keeps fixed values (what meets it stays).
"""
from __future__ import annotations

import torch
import torch.fx as fx

from .pointwise import BINARY_FUNCTIONS, BINARY_METHODS
from .registry import register_rule

aten = torch.ops.aten

_SIZE_FIRST = (torch.zeros, torch.ones, torch.empty, torch.full, aten.zeros.default, aten.ones.default,
               aten.empty.memory_format, aten.full.default)
_ELEMENTWISE = set(BINARY_FUNCTIONS) | set(BINARY_METHODS)
_CAT = {torch.cat, torch.concat, torch.concatenate}
_PASS = {"to", "float", "half", "double", "bfloat16", "type_as", "contiguous", "clone", "detach"}


def _sizes(node):
    """The size argument as a list, and whether it was given as separate ints."""
    if node.args and isinstance(node.args[0], (list, tuple)):
        return list(node.args[0]), False
    if node.args:
        end = len(node.args) - (1 if node.target in (torch.full, aten.full.default) else 0)
        return list(node.args[:end]), True
    return list(node.kwargs.get("size", ())), False


def fill_rule(ctx, node):
    """A constant-valued tensor: no channels of its own, free to take those it meets where
    export can follow (it feeds one element-wise op or cat); else its values are fixed."""
    if _consumer(node) is not None:
        ctx.set_free(node, [])
    return None


def _consumer(node: fx.Node):
    """(the element-wise op or cat this fill feeds, through one-input casts and copies, the
    cat dim or None), or None."""
    for _ in range(8):
        users = list(node.users)
        if len(users) != 1:
            return None
        user = users[0]
        if user.target in _ELEMENTWISE:
            return user, None
        if user.target in _CAT:
            dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
            return (user, dim) if isinstance(dim, int) else None
        if user.target not in _PASS or user.args[0] is not node:
            return None
        node = user
    return None


def fill_export(ectx, node):
    """Each literal size along which the fill met channels becomes their kept count."""
    found = _consumer(node)
    if found is None:
        return
    user, cat_dim = found
    sizes, spread = _sizes(node)
    pruned, shape, out = ectx.pruned_shape(user), ectx.shape(node), ectx.shape(user)
    lead = len(pruned) - len(shape)
    cat_dim = None if cat_dim is None else cat_dim % len(out)
    new = list(sizes)
    for d, size in enumerate(sizes):
        at = lead + d
        if at < 0 or at == cat_dim or pruned[at] is None or not isinstance(size, int) or size == 1:
            continue
        if size == out[at]:  # aligned with the consumer's channels there (not broadcast)
            new[d] = pruned[at]
    if new == sizes:
        return
    if spread:
        rest = node.args[len(sizes):]
        node.args = (*new, *rest)
    elif node.args:
        node.args = (new, *node.args[1:])
    else:
        node.kwargs = {**node.kwargs, "size": new}


register_rule(*_SIZE_FIRST, export=fill_export)(fill_rule)

__all__ = ["fill_rule", "fill_export"]
