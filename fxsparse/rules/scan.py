"""The ops of a state-space model's selective scan (Mamba) that no other family has.

The scan itself needs no rule of its own: it is written with element-wise ops over the
inner channels (each channel its own recurrence), an outer product with the state dim
(``pointwise.combine``), a product with ``C`` that sums the state dim out (``matmul``),
and a stack over time. What is left: cutting the sequence into a part scanned at once and
a part stepped (``tensor_split`` along time) and the running sums of a chunked scan
(``cumsum``). torch.export's aten forms of softplus, masked_fill and cumsum become the
torch-level calls the rules know (:mod:`fxsparse.rules.aten_ops`); ``tensor_split`` has
none there, so its aten overloads are registered here.
"""
from __future__ import annotations

import torch

from fxsparse.core.elements import varying_dims
from .context import node_arg
from .registry import register_rule

aten = torch.ops.aten


def tensor_split_rule(ctx, node):
    """``torch.tensor_split(x, indices_or_sections, dim)``: pieces along a dim without channels
    carry ``x``'s channels; a cut through a channel dim cannot follow pruning (its indices
    are positions in the dense tensor)."""
    src = node.args[0]
    dim = node_arg(node, 2, "dim", 0) % len(ctx.shape(src))
    cuts = node_arg(node, 1, "indices", node_arg(node, 1, "sections", node_arg(node, 1, "tensor_indices_or_sections")))
    pieces = len(cuts) + 1 if isinstance(cuts, (list, tuple)) else cuts
    if not isinstance(pieces, int):
        ctx.opaque(node, f"tensor_split at {ctx.where(node)} with cuts computed in the graph")
        return None
    ids = ctx.padded_ids(src)
    if ids is not None and dim in varying_dims(ids):
        ctx.unprunable(ids, f"tensor_split at {ctx.where(node)} cuts dim {dim}, which carries channels, at fixed positions")
        return tuple(None for _ in range(pieces))
    refs = ctx.free(src)
    if refs is not None and ids is None:
        ctx.set_free(node, refs)
    return tuple(ids for _ in range(pieces)) if ids is not None else tuple(None for _ in range(pieces))


register_rule(torch.tensor_split, "tensor_split", aten.tensor_split.indices, aten.tensor_split.sections)(tensor_split_rule)

def cumsum_rule(ctx, node):
    """``x.cumsum(dim)``: a running sum along time (the summed decays of a chunked scan)
    keeps the other dims' channels; along a channel dim it would add channels together."""
    src = node.args[0]
    dim = node_arg(node, 1, "dim") % len(ctx.shape(src))
    ids = ctx.padded_ids(src)
    if ids is not None and dim in varying_dims(ids):
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "cumsum").split(".")[0]
        ctx.unprunable(ids, f"torch.{name} at {ctx.where(node)} runs along dim {dim}, which carries channels: it "
                            "adds channels together")
        return None
    refs = ctx.free(src)
    if refs is not None and ids is None:
        ctx.set_free(node, refs)
    return ids


# torch.export's aten.cumsum / cumprod reach this rule as torch.cumsum / cumprod (rules/aten_ops.py)
register_rule(torch.cumsum, "cumsum", torch.cumprod, "cumprod")(cumsum_rule)

__all__ = ["tensor_split_rule"]
