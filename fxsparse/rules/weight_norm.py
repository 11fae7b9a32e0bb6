"""Weight normalisation: ``w = g * v / ||v||``, the norm of each slice of ``v`` along ``dim``
taken over all its other dims (``torch.nn.utils.parametrizations.weight_norm``; transformers'
Wav2Vec2 / HuBERT positional conv uses ``dim=2``: one norm per kernel tap over every
(out, in) channel pair; ``dim=0``, the default, one per output channel over its inputs;
``dim=-1``: one norm over the whole tensor).

``w`` is a view of the parameters ``v`` and ``g`` for the layer that reads it (a conv or
linear slices ``v``'s channel dims, and ``g`` with them where ``g`` has that dim). Removing
a channel of ``v`` takes its entries out of the norm of every slice it crosses, so zeroing
is not removing: the op is mixing, and its masked form takes the norm over the kept entries
only (like a LayerNorm over the kept channels), which is what the pruned model computes.

Both captures meet the same call: torch.export records ``aten._weight_norm(v, g, dim)``
(registered below as :func:`weight_norm`); torch.fx keeps a parametrized module as one
node, so a model with parametrized modules is captured with torch.export
(``fxsparse.analysis.capture``), and the conv and linear rules refuse a parametrized module
met as a leaf (``fxsparse.rules.layers``).
"""
from __future__ import annotations

import torch

from .aten_ops import register_aten
from .context import FreeRef, node_arg
from .registry import register_rule


def _norm_dims(ndim: int, dim: int):
    """The dims each norm runs over: all but ``dim`` (all of them for ``dim == -1``, as in
    ``torch._weight_norm``)."""
    if dim == -1:
        return tuple(range(ndim))
    return tuple(d for d in range(ndim) if d != dim % ndim)


def weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``torch._weight_norm(v, g, dim)``, with a slice whose norm is 0 (every entry of it
    removed: an empty slot of the compiled step's capacity model) giving 0, not NaN."""
    norm = torch.linalg.vector_norm(v, 2, dim=_norm_dims(v.dim(), dim), keepdim=True)
    nonzero = norm > 0
    return v * (g / torch.where(nonzero, norm, torch.ones_like(norm)) * nonzero)


def weight_norm_masked(op, m, v, g, dim=0):
    """The weight with each norm over the entries of ``v`` where ``m`` is 1 only (the pruned
    model's norm); removed entries come out 0."""
    return weight_norm(v * m.to(v.dtype), g, dim)


def weight_norm_rule(ctx, node):
    """``weight_norm(v, g, dim)``: no channels of its own; a view of ``v`` (every dim) and of
    ``g`` (the dims where it is not broadcast) for the layer that reads it."""
    v, g = node_arg(node, 0, "v"), node_arg(node, 1, "g")
    dim = node_arg(node, 2, "dim", 0)
    loc = f"weight norm at {ctx.where(node)}"
    refs = []
    for name, arg in (("v", v), ("g", g)):
        free = ctx.free(arg)
        if ctx.ids(arg) is not None or not free or len(free) != 1:
            ctx.opaque(node, f"{loc}: its '{name}' is not a parameter")
            return None
        refs.append(free[0])
    v_shape, g_shape = ctx.shape(v), ctx.shape(g)
    if len(g_shape) not in (0, len(v_shape)) or not isinstance(dim, int):
        ctx.opaque(node, f"{loc}: '{name}' of shape {tuple(g_shape)} for 'v' of shape {tuple(v_shape)}")
        return None
    v_ref, g_ref = refs
    g_dims = tuple(None if g_shape[d] == 1 and v_shape[d] != 1 else g_ref.dims[d] for d in range(len(g_shape)))
    ctx.set_free(node, [v_ref] + ([FreeRef(g_ref.qualname, g_dims)] if any(d is not None for d in g_dims) else []))
    ctx.mark_mixing(node, "weight norm: removing a channel of 'v' changes the norm of every slice it crosses")
    return None


register_rule(weight_norm, torch._weight_norm, masked=weight_norm_masked)(weight_norm_rule)
register_aten(torch.ops.aten._weight_norm.default, weight_norm)

WEIGHT_NORM_FUNCTIONS = (weight_norm, torch._weight_norm)

__all__ = ["weight_norm", "weight_norm_masked", "weight_norm_rule", "WEIGHT_NORM_FUNCTIONS"]
