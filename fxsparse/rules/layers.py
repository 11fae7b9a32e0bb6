"""Layers that create channels: convolutions (incl. grouped, depthwise, transposed),
linear layers and embeddings. Their output channels are new elements; their input
channels are tied to the channels of the tensor they consume."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .context import node_arg
from .registry import Rule, register_rule
from .weight_norm import WEIGHT_NORM_FUNCTIONS

CONV_META = "fxsparse_conv"  # node.meta: "dense" | "depthwise" | "grouped"


def param_dim(ctx, arg, d):
    """(qualname, param dim) when tensor dim ``d`` of graph value ``arg`` is one dim of one parameter."""
    if not isinstance(arg, fx.Node) or ctx.ids(arg) is not None:
        return None
    refs = ctx.free(arg)
    if not refs or len(refs) != 1:
        return None
    ref = refs[0]
    d = d % len(ref.dims)
    return None if ref.dims[d] is None else (ref.qualname, ref.dims[d])


def weight_dims(ctx, w, d):
    """What dim ``d`` of a layer's weight ``w`` slices: ``[(qualname, param dim)]``, one
    parameter's dim, or for a weight-normed weight (``weight_norm(v, g, dim)``) ``v``'s dim
    and ``g``'s where ``g`` has it; None when it is no parameter dim."""
    if isinstance(w, fx.Node) and w.op == "call_function" and w.target in WEIGHT_NORM_FUNCTIONS:
        refs = ctx.free(w) if ctx.ids(w) is None else None
        if not refs or d % len(refs[0].dims) >= len(refs[0].dims) or refs[0].dims[d % len(refs[0].dims)] is None:
            return None
        return [(r.qualname, r.dims[d % len(r.dims)]) for r in refs if r.dims[d % len(r.dims)] is not None]
    pd = param_dim(ctx, w, d)
    return None if pd is None else [pd]


def _bind(ctx, pd, ids):
    """Tie ``ids`` to a (qualname, dim) pair or to each of a list of them."""
    for qualname, dim in (pd if isinstance(pd, list) else [pd]):
        ctx.member(qualname, dim, ids)


def _refuse_parametrized(ctx, node, mod, kind):
    """A parametrized module met as one node (a torch.fx leaf): its weight is computed in its
    forward (weight norm...), so slicing ``weight`` would slice nothing. The capture reads such
    a model with torch.export, which sees the computation; where that failed, its channels stay."""
    if not torch.nn.utils.parametrize.is_parametrized(mod):
        return False
    ctx.unprunable(ctx.ids(node.args[0]), f"{kind} '{node.target}' at {ctx.where(node)}: its weight is computed by a "
                                          "parametrization (torch.nn.utils.parametrize) inside the module")
    return True


def conv_channels(ctx, node, x, w_out, w_in, bias, groups):
    """Shared by nn.ConvNd, nn.ConvTransposeNd and F.convNd: ``w_out``/``w_in``/``bias``
    are (parameter, dim) pairs (None when the weight is not a plain parameter)."""
    loc = f"conv at {ctx.where(node)}"
    x_shape, out_shape = ctx.shape(x), ctx.shape(node)
    cin, cout = x_shape[1], out_shape[1]
    # a depthwise weight's input dim has size 1 and is never sliced (it may be squeezed away
    # and back, as in a causal conv1d that takes the weight as [channels, kernel])
    if w_out is None or (w_in is None and not (groups > 1 and cin == groups)):
        ctx.unprunable(ctx.ids(x), f"{loc}: its weight is computed in the graph, not a parameter")
        return None
    xin = ctx.axis(x, 1, f"{loc}: input channels also vary along spatial dims")
    if groups == 1:
        node.meta[CONV_META] = "dense"
        out = ctx.new_elements(cout)
        if xin is not None:
            _bind(ctx, w_in, xin)
    elif cin == groups:
        # depthwise with multiplier m: output channel c*m+k reads input channel c only,
        # so it lives and dies with it
        node.meta[CONV_META] = "depthwise"
        m = cout // groups
        if xin is None:
            xin = np.full(cin, -1, dtype=np.int64)
        fixed = xin < 0
        own = ctx.new_elements(cin)
        ctx.unprunable(own[fixed], f"{loc}: depthwise conv over an input channel that cannot be pruned")
        out = np.repeat(np.where(fixed, own, xin), m)
    else:
        # grouped: prune the same positions in every group, so it stays a `groups`-group conv
        node.meta[CONV_META] = "grouped"
        per_in, per_out = cin // groups, cout // groups
        if xin is not None:
            grid = xin.reshape(groups, per_in)
            for j in range(per_in):
                ctx.elements.union_all(grid[:, j])
                if (grid[:, j] < 0).any():
                    ctx.unprunable(grid[:, j], f"{loc}: grouped conv column mixes fixed and prunable channels")
            _bind(ctx, w_in, ctx.elements.canonical(grid[0]))
        out = np.tile(ctx.new_elements(per_out), groups)
    _bind(ctx, w_out, out)
    if bias is not None:
        _bind(ctx, bias, out)
    return ctx.along(len(out_shape), 1, out)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def conv_module(ctx, node):
    mod, t = ctx.modules[node.target], node.target
    if _refuse_parametrized(ctx, node, mod, "conv"):
        return None
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    w_out, w_in = (f"{t}.weight", 1 if transposed else 0), (f"{t}.weight", 0 if transposed else 1)
    bias = (f"{t}.bias", 0) if mod.bias is not None else None
    if transposed and mod.groups > 1:
        ctx.unprunable(ctx.ids(node.args[0]), f"grouped transposed conv '{t}' at {ctx.where(node)} is not supported yet")
        return None
    return conv_channels(ctx, node, node.args[0], w_out, w_in, bias, mod.groups)


def conv_module_export(ectx, node):
    mod = ectx.module(node.target)
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    if node.meta.get(CONV_META) == "depthwise":
        mod.groups = ectx.pruned_size(node.args[0], 1)
    w = mod.weight
    per_group_out = w.shape[1] if transposed else w.shape[0] // mod.groups
    per_group_in = w.shape[0] // mod.groups if transposed else w.shape[1]
    mod.in_channels = per_group_in * mod.groups
    mod.out_channels = per_group_out * mod.groups


register_rule(*_CONVS, export=conv_module_export)(conv_module)

_F_CONVS = {F.conv1d: False, F.conv2d: False, F.conv3d: False,
            F.conv_transpose1d: True, F.conv_transpose2d: True, F.conv_transpose3d: True}


def conv_function(ctx, node):
    transposed = _F_CONVS[node.target]
    w = node_arg(node, 1, "weight")
    b = node_arg(node, 2, "bias")
    groups = node_arg(node, 6, "groups", 1)  # F.conv*d and F.conv_transpose*d both have groups 7th
    if transposed and groups != 1:
        ctx.unprunable(ctx.ids(node.args[0]), f"grouped transposed conv at {ctx.where(node)} is not supported yet")
        return None
    w_out, w_in = weight_dims(ctx, w, 1 if transposed else 0), weight_dims(ctx, w, 0 if transposed else 1)
    bias = param_dim(ctx, b, 0) if isinstance(b, fx.Node) else None
    if isinstance(b, fx.Node) and bias is None:
        w_out = None  # a computed bias cannot be sliced
    return conv_channels(ctx, node, node.args[0], w_out, w_in, bias, groups)


def conv_function_export(ectx, node):
    if node.meta.get(CONV_META) != "depthwise":
        return
    i = 6  # groups, in F.conv*d and F.conv_transpose*d alike
    groups = ectx.pruned_size(node.args[0], 1)
    if len(node.args) > i:
        node.args = node.args[:i] + (groups,) + node.args[i + 1 :]
    else:
        node.kwargs = {**node.kwargs, "groups": groups}


register_rule(*_F_CONVS, export=conv_function_export)(conv_function)


def linear_channels(ctx, node, x, w_out, w_in, bias):
    loc = f"linear at {ctx.where(node)}"
    if w_out is None or w_in is None:
        ctx.unprunable(ctx.ids(x), f"{loc}: its weight is computed in the graph, not a parameter")
        return None
    out_shape = ctx.shape(node)
    xin = ctx.axis(x, -1, f"{loc}: input channels also vary along a non-feature dim")
    if xin is not None:
        _bind(ctx, w_in, xin)
    out = ctx.new_elements(out_shape[-1])
    _bind(ctx, w_out, out)
    if bias is not None:
        _bind(ctx, bias, out)
    return ctx.along(len(out_shape), -1, out)


def linear_module(ctx, node):
    mod, t = ctx.modules[node.target], node.target
    if _refuse_parametrized(ctx, node, mod, "linear"):
        return None
    bias = (f"{t}.bias", 0) if mod.bias is not None else None
    return linear_channels(ctx, node, node.args[0], (f"{t}.weight", 0), (f"{t}.weight", 1), bias)


def linear_module_export(ectx, node):
    mod = ectx.module(node.target)
    mod.out_features, mod.in_features = mod.weight.shape


register_rule(nn.Linear, export=linear_module_export)(linear_module)


@register_rule(F.linear)
def linear_function(ctx, node):
    w, b = node_arg(node, 1, "weight"), node_arg(node, 2, "bias")
    bias = param_dim(ctx, b, 0) if isinstance(b, fx.Node) else None
    pieces = concatenated_bias(ctx, b) if isinstance(b, fx.Node) and bias is None else None
    w_out = weight_dims(ctx, w, 0)
    if isinstance(b, fx.Node) and bias is None and pieces is None:
        w_out = None
    out = linear_channels(ctx, node, node.args[0], w_out, weight_dims(ctx, w, 1), bias)
    if out is not None and pieces:
        line, start = np.asarray(out).reshape(-1), 0
        for ref, size in pieces:  # each piece is sliced with the output channels it covers
            ctx.member(*ref, line[start:start + size])
            start += size
    return out


def concatenated_bias(ctx, b):
    """``[((parameter, dim), size)]`` of a 1-D bias concatenated from parameter or buffer views
    (timm's BEiT, EVA and Swin V2 pass ``torch.cat((q_bias, k_bias, v_bias))``, ``k_bias`` a
    zero buffer), or None for any other computed bias."""
    if b.op != "call_function" or b.target not in (torch.cat, torch.concat, torch.concatenate):
        return None
    tensors = b.args[0] if b.args else b.kwargs.get("tensors")
    dim = b.args[1] if len(b.args) > 1 else b.kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or dim not in (0, -1):
        return None
    pieces = []
    for t in tensors:
        ref, shape = param_dim(ctx, t, 0), ctx.shape(t) if isinstance(t, fx.Node) else None
        if ref is None or shape is None or len(shape) != 1:
            return None
        pieces.append((ref, shape[0]))
    return pieces


@register_rule(torch.addmm)
def addmm_function(ctx, node):
    """``torch.addmm(bias, x, W)`` with W a parameter [in, out] (GPT-2's Conv1D)."""
    b, x, w = node.args[:3]
    bias = param_dim(ctx, b, 0) if isinstance(b, fx.Node) else None
    w_out = None if isinstance(b, fx.Node) and bias is None else param_dim(ctx, w, 1)
    return linear_channels(ctx, node, x, w_out, param_dim(ctx, w, 0), bias)


def embedding(ctx, node):
    out_shape = ctx.shape(node)
    out = ctx.new_elements(out_shape[-1])
    ctx.member(f"{node.target}.weight", 1, out)
    return ctx.along(len(out_shape), -1, out)


def embedding_export(ectx, node):
    mod = ectx.module(node.target)
    mod.embedding_dim = mod.weight.shape[1]


register_rule(nn.Embedding, export=embedding_export)(embedding)


@register_rule(F.embedding)
def embedding_function(ctx, node):
    """``F.embedding(indices, weight)``: the output's last dim is the weight's dim 1 (the
    embedding width; the vocabulary side, dim 0, is never pruned)."""
    weight = node.args[1] if len(node.args) > 1 else node.kwargs["weight"]
    width = param_dim(ctx, weight, 1)
    if width is None:
        return None
    out_shape = ctx.shape(node)
    out = ctx.new_elements(out_shape[-1])
    ctx.member(*width, out)
    return ctx.along(len(out_shape), -1, out)


# ----- a conv whose forward transforms its weight (weight standardisation) ----------------
def weight_transformed_conv(ctx, node):
    """A ConvNd subclass whose forward is ``conv(x, f(weight, ...))`` (timm's StdConv2d:
    the weight standardised per output channel). Its channels are those of the conv; ``f``
    mixes each output channel's weights over the input channels, so removing an input
    channel changes the kept weights: zeroing one is not removing it (masked form below)."""
    out = conv_module(ctx, node)
    if ctx.ids(node.args[0]) is not None:
        ctx.mark_mixing(node, "its weight is transformed over its input channels (weight standardisation)")
    mod = ctx.modules[node.target]
    if out is not None:  # per-output-channel parameters of f (ScaledStdConv2d's gain) prune with the output
        line = out.reshape(-1)
        for name, p in mod.named_parameters(recurse=False):
            if name not in ("weight", "bias") and p.dim() >= 1 and p.shape[0] == mod.out_channels == len(line) \
                    and p[0].numel() == 1:
                ctx.member(f"{node.target}.{name}", 0, line)
    return out


def weight_transformed_conv_masked(op, m, x):
    """The conv computed as if the input channels where ``m`` is 0 were removed: the module's
    own forward on the kept input channels and the weight sliced to them (so ``f`` sees
    only kept weights, as in the exported model)."""
    kept = torch.nonzero(m.transpose(0, 1).reshape(m.shape[1], -1).amax(dim=1) > 0).flatten()
    params = dict(op.named_parameters(recurse=False))
    params["weight"] = params["weight"].index_select(1, kept)
    return torch.func.functional_call(op, params, (x.index_select(1, kept),))


WEIGHT_TRANSFORMED_CONV = Rule(analyze=weight_transformed_conv, export=conv_module_export,
                               masked=weight_transformed_conv_masked, name="weight_transformed_conv")
