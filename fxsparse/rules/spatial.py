"""Ops that work within each channel (pooling, resizing, padding) and reductions/softmax.

A spatial op is channel-transparent only when no channel runs along the dims it mixes.
A reduction or softmax over a channel dim is allowed, but it mixes channels: removing a
channel then differs from zeroing it. Such a node is marked mixing, and the rule's masked
form computes the op over the kept channels only (used by the masked reference and the
capacity model of the compiled step). A sum is not mixing: a zero adds nothing.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from fxsparse.core.elements import varying_dims
from .registry import call_op, register_rule

_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d,
)
_POOL_FUNCTIONS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate, F.upsample, F.lp_pool1d, F.lp_pool2d,
    # what ``return_indices=True`` dispatches to: (values, indices), both with the input's channels
    F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices,
    F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool3d_with_indices,
)


def spatial_rule(ctx, node):
    """Channels on dims 0-1 pass; channels on the mixed (spatial) dims cannot be pruned."""
    ids = ctx.padded_ids(node.args[0])
    if ids is None:
        return None
    nd = ids.ndim
    if any(d >= 2 for d in varying_dims(ids)):
        ctx.unprunable(ids, f"spatial op at {ctx.where(node)} mixes a dim that carries channels")
        return None
    out_shape = ctx.shape(node)
    if isinstance(out_shape, tuple) and out_shape and isinstance(out_shape[0], tuple):
        return tuple(ids[(slice(None), slice(None)) + (slice(0, 1),) * (len(s) - 2)] if len(s) == nd else None
                     for s in out_shape)
    return ids


register_rule(*_POOL_MODULES, *_POOL_FUNCTIONS)(spatial_rule)


@register_rule(F.pad)
def pad_rule(ctx, node):
    pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
    ids = ctx.padded_ids(node.args[0])
    if ids is None:
        return None
    nd = ids.ndim
    padded = {nd - 1 - i // 2 for i, p in enumerate(pad) if p}
    if padded & set(varying_dims(ids)):
        ctx.unprunable(ids, f"pad at {ctx.where(node)} pads a dim that carries channels")
        return None
    return ids


def _dims_arg(node, ndim):
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dim is None:
        return list(range(ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted(d % ndim for d in dims)


_NOT_MIXING = {"sum", torch.sum}  # a removed channel adds nothing to a sum, like a zeroed one


def reduction_rule(ctx, node):
    if len(node.args) > 1 and isinstance(node.args[1], torch.fx.Node) and ctx.shape(node.args[1]) is not None:
        from .pointwise import nary  # torch.max(a, b) is element-wise

        return nary(ctx, node)
    ids = ctx.padded_ids(node.args[0])
    if ids is None:
        return None
    nd = ids.ndim
    if _op_name(node.target) in _VARIANCES:  # (dim, unbiased, keepdim) or (dim, *, correction, keepdim)
        dim, _, keepdim = _variance_args(node.args[1:], node.kwargs)
        dims = list(range(nd)) if dim is None else sorted(d % nd for d in ([dim] if isinstance(dim, int) else dim))
    else:
        dims = _dims_arg(node, nd)
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 and isinstance(node.args[2], bool) else False)
    vd = varying_dims(ids)
    if set(dims) & set(vd):
        if node.target not in _NOT_MIXING:
            ctx.mark_mixing(node, f"{node.target} over a channel dim")
        else:
            ctx.mark_summing(node, [node.args[0]], f"{node.target} over a channel dim")
        out = None
    else:
        out = ids
        if not keepdim and dims:
            for d in sorted(dims, reverse=True):
                out = np.take(out, 0, axis=d)
    out_shape = ctx.shape(node)
    if isinstance(out_shape, tuple) and out_shape and isinstance(out_shape[0], tuple):  # (values, indices)
        return (out, out)
    if out is not None and out.ndim != len(out_shape or ()):
        return None
    return out


def _op_name(op) -> str:
    return op if isinstance(op, str) else getattr(op, "__name__", type(op).__name__)


_VARIANCES = ("var", "std", "var_mean", "std_mean")  # var_mean / std_mean: a (variance, mean) pair

# reductions whose masked form is the plain op with removed channels replaced by a neutral value
_NEUTRAL = {"amax": float("-inf"), "max": float("-inf"), "amin": float("inf"), "min": float("inf"),
            "logsumexp": float("-inf"), "prod": 1.0, "sum": 0.0, "any": 0.0, "all": float("inf")}


def _variance_args(args, kwargs):
    """(dim, correction, keepdim) of var/std: ``(dim, unbiased, keepdim)``, ``(unbiased)``
    or ``(dim, *, correction, keepdim)``."""
    args = list(args)
    if args and isinstance(args[0], bool):
        return None, int(args[0]), kwargs.get("keepdim", False)
    dim = args.pop(0) if args else kwargs.get("dim")
    correction = int(kwargs["unbiased"]) if "unbiased" in kwargs else kwargs.get("correction", 1)
    if args:
        correction = int(args.pop(0))
    keepdim = args.pop(0) if args else kwargs.get("keepdim", False)
    return dim, 1 if correction is None else correction, keepdim


def _neutral(name, dtype):
    """``_NEUTRAL[name]`` in ``dtype``: a boolean or integer tensor has no infinity, so max/min
    ignore a removed channel set to the dtype's lowest / highest value (False / True)."""
    value = _NEUTRAL[name]
    if dtype.is_floating_point or dtype.is_complex or abs(value) != float("inf"):
        return value
    if dtype == torch.bool:
        return value > 0
    info = torch.iinfo(dtype)
    return info.max if value > 0 else info.min


def reduction_masked(op, m, x, *args, **kwargs):
    """A reduction over the channels where ``m`` is 1 only: removed channels are left out of a
    mean's count and a variance's statistics, and never picked by max/min."""
    name = _op_name(op)
    m = m.to(x.dtype)
    if name in _NEUTRAL:
        return call_op(op, x.masked_fill(m == 0, _neutral(name, x.dtype)), *args, **kwargs)
    if name == "mean":
        dim = args[0] if args else kwargs.get("dim")
        keepdim = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
        dims = tuple(range(x.dim())) if dim is None else dim
        return (x * m).sum(dims, keepdim=keepdim) / m.sum(dims, keepdim=keepdim)
    if name in _VARIANCES:
        dim, correction, keepdim = _variance_args(args, kwargs)
        dims = tuple(range(x.dim())) if dim is None else dim
        mean = (x * m).sum(dims, keepdim=True) / m.sum(dims, keepdim=True)
        var = (((x - mean) * m) ** 2).sum(dims, keepdim=keepdim) / (m.sum(dims, keepdim=keepdim) - correction)
        spread = var.sqrt() if name.startswith("std") else var
        return (spread, mean if keepdim else mean.squeeze(dims)) if name.endswith("_mean") else spread
    raise NotImplementedError(f"no masked form of {name}")


register_rule("mean", torch.mean, "sum", torch.sum, "amax", torch.amax, "amin", torch.amin, "max", torch.max,
              "min", torch.min, "std", torch.std, "var", torch.var, "logsumexp", torch.logsumexp,
              "prod", torch.prod, torch.var_mean, torch.std_mean, "any", torch.any, "all", torch.all,
              masked=reduction_masked)(reduction_rule)


def softmax_rule(ctx, node):
    ids = ctx.padded_ids(node.args[0])
    if ids is None:
        return None
    nd = ids.ndim
    if node.op == "call_module":
        dim = ctx.modules[node.target].dim
    else:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dim is None or dim % nd in varying_dims(ids):
        ctx.mark_mixing(node, "softmax over a channel dim")
    return ids


def softmax_masked(op, m, x, *args, **kwargs):
    """Softmax (or log-softmax) over the channels where ``m`` is 1 only."""
    m = m.to(x.dtype)
    out = call_op(op, x.masked_fill(m == 0, float("-inf")), *args, **kwargs)
    return torch.where(m > 0, out, torch.zeros((), dtype=out.dtype))


register_rule(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax",
              nn.Softmax, nn.LogSoftmax, masked=softmax_masked)(softmax_rule)




def _zero_free_order(p) -> bool:
    """Whether a p-norm ignores zero entries (p > 0, inf): the norm over kept channels is the
    norm with removed channels zeroed, so a norm over a channel dim is not mixing."""
    return isinstance(p, (int, float)) and p > 0


def vector_norm_rule(ctx, node):
    """``torch.linalg.vector_norm(x, ord, dim, keepdim)`` / ``torch.norm`` / ``x.norm``: a
    reduction whose zeroed channels add nothing (ord > 0), like a sum."""
    ids = ctx.padded_ids(node.args[0])
    if ids is None:
        return None
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("ord", node.kwargs.get("p", 2))
    p = 2 if p in (None, "fro") else p
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    keepdim = node.args[3] if len(node.args) > 3 else node.kwargs.get("keepdim", False)
    nd = ids.ndim
    dims = list(range(nd)) if dim is None else sorted(d % nd for d in ([dim] if isinstance(dim, int) else dim))
    if set(dims) & set(varying_dims(ids)):
        if not _zero_free_order(p):
            ctx.unprunable(ids, f"{p}-norm at {ctx.where(node)} over a channel dim")
        else:
            ctx.mark_summing(node, [node.args[0]], f"{p}-norm over a channel dim")
        return None
    out = ids
    if not keepdim:
        for d in sorted(dims, reverse=True):
            out = np.take(out, 0, axis=d)
    return out


register_rule(torch.linalg.vector_norm, torch.norm, "norm")(vector_norm_rule)


def normalize_rule(ctx, node):
    """``F.normalize(x, p, dim)``: x divided by its p-norm along ``dim``; channels pass, and
    over a channel dim a removed channel changes the norm no more than a zeroed one (p > 0)."""
    ids = ctx.ids(node.args[0])
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 2.0)
    if ids is not None and not _zero_free_order(p):
        ctx.unprunable(ids, f"normalize with p={p} at {ctx.where(node)}")
        return None
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 1)
    full = ctx.padded_ids(node.args[0])
    if full is not None and dim % full.ndim in varying_dims(full):
        ctx.mark_summing(node, [node.args[0]], "normalize over a channel dim")
    return ids


register_rule(F.normalize)(normalize_rule)
