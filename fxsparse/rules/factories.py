"""Fresh tensors of one value made from literal sizes (``torch.zeros(batch, 64, 16)``: the
initial state of a recurrence, an accumulator).

Every slice of such a tensor holds the same values, so it can meet channels along any dim:
it is seen as a parameter view that binds nothing (an empty list of free references), which
the element-wise rule lets take the channels it meets. At export, each literal size that
met channels becomes the kept count of those channels, read off the element-wise op the
tensor feeds (through casts and other one-input ops).
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
    """A constant-valued tensor: no channels of its own, free to take those it meets."""
    ctx.set_free(node, [])
    return None


def _consumer(node: fx.Node):
    """The element-wise op this fill feeds, through one-input casts and copies, or None."""
    seen = 0
    while seen < 8:
        seen += 1
        users = list(node.users)
        if len(users) != 1:
            return None
        user = users[0]
        if user.target in _ELEMENTWISE:
            return user
        if user.target not in _PASS or user.args[0] is not node:
            return None
        node = user
    return None


def fill_export(ectx, node):
    """Each literal size along which the fill met channels becomes their kept count."""
    user = _consumer(node)
    if user is None:
        return
    sizes, spread = _sizes(node)
    pruned, shape = ectx.pruned_shape(user), ectx.shape(node)
    lead = len(pruned) - len(shape)
    new = list(sizes)
    for d, size in enumerate(sizes):
        p = pruned[lead + d] if lead + d >= 0 else None
        if p is not None and isinstance(size, int) and size == shape[d] and size != 1:
            new[d] = p
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
