"""Normalisation layers.

BatchNorm and InstanceNorm are per channel. GroupNorm normalises within groups of
channels, so a whole group is the unit. LayerNorm over the channel dim, and GroupNorm with
one group (PoolFormer's norm), mix channels through their statistics: removing a channel
is then a different model from zeroing it; their masked forms compute the statistics over
the kept channels only (what the exported model computes).
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxsparse.core.elements import varying_dims
from .context import node_arg
from .layers import param_dim
from .registry import register_rule

_PER_CHANNEL = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def per_channel_norm(ctx, node):
    mod, t = ctx.modules[node.target], node.target
    line = ctx.axis(node.args[0], 1, f"{type(mod).__name__} at {ctx.where(node)}: channels must run along dim 1")
    if line is not None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(mod, name, None) is not None:
                ctx.member(f"{t}.{name}", 0, line)
    return ctx.ids(node.args[0])


def per_channel_norm_export(ectx, node):
    mod = ectx.module(node.target)
    mod.num_features = ectx.pruned_size(node.args[0], 1)


register_rule(*_PER_CHANNEL, export=per_channel_norm_export)(per_channel_norm)


@register_rule(F.batch_norm, F.instance_norm)
def per_channel_norm_function(ctx, node):
    line = ctx.axis(node.args[0], 1, f"batch/instance norm at {ctx.where(node)}: channels must run along dim 1")
    if line is not None:
        for i, name in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
            arg = node_arg(node, i, name)
            if isinstance(arg, fx.Node):
                pd = param_dim(ctx, arg, 0)
                if pd is None:
                    ctx.unprunable(line, f"norm at {ctx.where(node)}: its '{name}' is not a plain parameter")
                else:
                    ctx.member(*pd, line)
    return ctx.ids(node.args[0])


def group_norm(ctx, node):
    mod, t = ctx.modules[node.target], node.target
    params = [f"{t}.weight", f"{t}.bias"] if mod.affine else []
    return _group_norm(ctx, node, node.args[0], mod.num_groups, params, "GroupNorm")


def _group_norm(ctx, node, x, num_groups, params, what):
    """``params``: qualnames of the per-channel weight and bias (tied along the channels)."""
    loc = f"{what} at {ctx.where(node)}"
    line = ctx.axis(x, 1, f"{loc}: channels must run along dim 1")
    if line is None:
        return None
    if num_groups == 1:  # channel by channel, with statistics over the kept ones
        ctx.mark_mixing(node, "GroupNorm with one group normalises over all channels together")
    else:
        for row in line.reshape(num_groups, -1):
            ctx.elements.union_all(row)  # a group is the unit
            if (row < 0).any():
                ctx.unprunable(row, f"{loc}: a group mixes fixed and prunable channels")
    for qualname in params:
        ctx.member(qualname, 0, line)
    return ctx.ids(x)


def _group_norm_signature(input, num_groups, weight=None, bias=None, eps=1e-5):
    return input, num_groups, weight, bias, eps


def masked_standardize(x, m, dims, eps):
    """``(x - mean) / sqrt(var + eps)`` with mean and variance over the entries of ``dims``
    where the 0/1 mask ``m`` (``x``'s shape) is 1: the statistics of the pruned model."""
    cnt = m.sum(dims, keepdim=True)
    mean = (x * m).sum(dims, keepdim=True) / cnt
    var = (((x - mean) * m) ** 2).sum(dims, keepdim=True) / cnt
    return (x - mean) * torch.rsqrt(var + eps)


def group_norm_masked(op, m, *args, **kwargs):
    """GroupNorm with one group (module or ``F.group_norm``) with its statistics over the
    channels where ``m`` is 1 only."""
    if isinstance(op, nn.Module):
        x, weight, bias, eps = args[0], op.weight, op.bias, op.eps
    else:
        x, _, weight, bias, eps = _group_norm_signature(*args, **kwargs)
    m = m.to(x.dtype)
    y = masked_standardize(x, m, tuple(range(1, x.dim())), eps)
    per_channel = (-1,) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(per_channel)
    if bias is not None:
        y = y + bias.reshape(per_channel)
    return y * m


def group_norm_function(ctx, node):
    x, num_groups, weight, bias, _ = _group_norm_signature(*node.args, **node.kwargs)
    params = []
    for name, arg in (("weight", weight), ("bias", bias)):
        if isinstance(arg, fx.Node):
            refs = ctx.free(arg)
            if not refs or len(refs) != 1 or ctx.ids(arg) is not None:
                ctx.unprunable(ctx.ids(x), f"group norm at {ctx.where(node)}: '{name}' is not a plain parameter")
                return ctx.ids(x)
            params.append(refs[0].qualname)
    return _group_norm(ctx, node, x, num_groups, params, "group norm")


def group_norm_function_export(ectx, node):
    x, num_groups, *_ = _group_norm_signature(*node.args, **node.kwargs)
    per_group = ectx.shape(x)[1] // num_groups
    groups = 1 if num_groups == 1 else ectx.pruned_size(x, 1) // per_group
    if len(node.args) > 1:
        node.args = (node.args[0], groups) + tuple(node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "num_groups": groups}


register_rule(F.group_norm, export=group_norm_function_export, masked=group_norm_masked)(group_norm_function)


def group_norm_export(ectx, node):
    mod = ectx.module(node.target)
    per_group = mod.num_channels // mod.num_groups
    mod.num_channels = ectx.pruned_size(node.args[0], 1)
    mod.num_groups = 1 if mod.num_groups == 1 else mod.num_channels // per_group


register_rule(nn.GroupNorm, export=group_norm_export, masked=group_norm_masked)(group_norm)


def _layer_norm(ctx, node, x, ndims_normed, params, what="LayerNorm"):
    """params: qualnames of the parameters over the normalised dims, tied to the channels of
    the normalised dim that carries them (LayerNorm's and RMSNorm's weight and bias)."""
    ids, shape = ctx.ids(x), ctx.shape(x)
    if ids is None:
        return None
    nd = len(shape)
    normed = set(range(nd - ndims_normed, nd))
    vd = varying_dims(ids)
    inside = [d for d in vd if d in normed]
    if not inside:
        return ids
    d = inside[0]
    ctx.mark_mixing(node, f"{what} over a prunable dim")
    line = ctx.axis(x, d, f"{what} at {ctx.where(node)}")
    if line is None:
        return ctx.ids(x)
    pdim = d - (nd - ndims_normed)
    for qual in params:
        ctx.member(qual, pdim, line)
    return ctx.ids(x)


def layer_norm_args(args, kwargs):
    """``(input, normalized_shape, weight, bias, eps)`` of an ``F.layer_norm`` call (graph
    values or tensors): the one place its arguments are parsed."""
    return _layer_norm_signature(*args, **kwargs)


def _layer_norm_signature(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    return input, normalized_shape, weight, bias, eps


def _normalized_ndim(normalized_shape) -> int:
    return len(normalized_shape) if isinstance(normalized_shape, (list, tuple, torch.Size)) else 1


def layer_norm_masked(op, m, *args, **kwargs):
    """LayerNorm (module or ``F.layer_norm``) with its statistics over the channels where
    ``m`` is 1 only: what the model with the other channels removed computes."""
    if isinstance(op, nn.Module):
        x, k, weight, bias, eps = args[0], len(op.normalized_shape), op.weight, op.bias, op.eps
    else:
        x, normalized_shape, weight, bias, eps = layer_norm_args(args, kwargs)
        k = _normalized_ndim(normalized_shape)
    m = m.to(x.dtype)
    y = masked_standardize(x, m, tuple(range(x.dim() - k, x.dim())), eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * m


def layer_norm_module(ctx, node):
    mod, t = ctx.modules[node.target], node.target
    params = [f"{t}.{n}" for n in ("weight", "bias") if getattr(mod, n, None) is not None]
    return _layer_norm(ctx, node, node.args[0], len(mod.normalized_shape), params)


def layer_norm_export(ectx, node):
    mod = ectx.module(node.target)
    k = len(mod.normalized_shape)
    mod.normalized_shape = tuple(ectx.pruned_size(node.args[0], d) for d in range(-k, 0))


register_rule(nn.LayerNorm, export=layer_norm_export, masked=layer_norm_masked)(layer_norm_module)


def layer_norm_function(ctx, node):
    x, normalized_shape, weight, bias, _ = layer_norm_args(node.args, node.kwargs)
    params = _plain_params(ctx, node, x, "layer norm", weight=weight, bias=bias)
    if params is None:
        return ctx.ids(x)
    return _layer_norm(ctx, node, x, _normalized_ndim(normalized_shape), params)


def _plain_params(ctx, node, x, what, **args):
    """The parameter names of a functional norm's affine arguments, or None (the channels of
    ``x`` blocked, with the reason) where one is computed in the graph rather than a parameter."""
    params = []
    for name, arg in args.items():
        if isinstance(arg, fx.Node):
            refs = ctx.free(arg)
            if not refs or len(refs) != 1:
                ctx.unprunable(ctx.ids(x), f"{what} at {ctx.where(node)}: '{name}' is not a plain parameter")
                return None
            params.append(refs[0].qualname)
    return params


def layer_norm_function_export(ectx, node):
    x, normalized_shape, *_ = layer_norm_args(node.args, node.kwargs)
    new = [ectx.pruned_size(x, d) for d in range(-_normalized_ndim(normalized_shape), 0)]
    if len(node.args) > 1:
        node.args = (node.args[0], new) + tuple(node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "normalized_shape": new}


register_rule(F.layer_norm, export=layer_norm_function_export, masked=layer_norm_masked)(layer_norm_function)


# RMSNorm: LayerNorm without the centring and the bias; over the channel dim its masked form
# takes the mean square over the kept channels only.
def rms_norm_args(args, kwargs):
    """``(input, normalized_shape, weight, eps)`` of an ``F.rms_norm`` call."""
    return _rms_norm_signature(*args, **kwargs)


def _rms_norm_signature(input, normalized_shape, weight=None, eps=None):
    return input, normalized_shape, weight, eps


def rms_norm_masked(op, m, *args, **kwargs):
    """RMSNorm (module or ``F.rms_norm``) with its mean square over the entries where ``m`` is
    1 only: what the model with the other channels removed computes."""
    if isinstance(op, nn.Module):
        x, k, weight, eps = args[0], len(op.normalized_shape), op.weight, op.eps
    else:
        x, normalized_shape, weight, eps = rms_norm_args(args, kwargs)
        k = _normalized_ndim(normalized_shape)
    eps = torch.finfo(x.dtype).eps if eps is None else eps  # F.rms_norm's default
    m = m.to(x.dtype)
    dims = tuple(range(x.dim() - k, x.dim()))
    y = x * torch.rsqrt((x * x * m).sum(dims, keepdim=True) / m.sum(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y * m


def rms_norm_module(ctx, node):
    mod, t = ctx.modules[node.target], node.target
    params = [f"{t}.weight"] if mod.weight is not None else []
    return _layer_norm(ctx, node, node.args[0], len(mod.normalized_shape), params, "RMSNorm")


def rms_norm_function(ctx, node):
    x, normalized_shape, weight, _ = rms_norm_args(node.args, node.kwargs)
    params = _plain_params(ctx, node, x, "rms norm", weight=weight)
    if params is None:
        return ctx.ids(x)
    return _layer_norm(ctx, node, x, _normalized_ndim(normalized_shape), params, "RMSNorm")


register_rule(nn.RMSNorm, export=layer_norm_export, masked=rms_norm_masked)(rms_norm_module)
# F.layer_norm's export hook serves: it reads the input and normalized_shape only, at the same positions
register_rule(F.rms_norm, export=layer_norm_function_export, masked=rms_norm_masked)(rms_norm_function)
