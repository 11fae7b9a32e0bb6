"""Pass (on the capacity model): make ops that mix channels ignore empty slots.

In the compiled sparse step a group may have fewer kept channels than slots; the empty
slots hold exact zeros in every weight, so they contribute nothing through convs and
linears. An op whose statistics run over the channel dim (LayerNorm over channels)
would still count them: it is replaced by a masked form that reads a validity vector
(1 = real channel) from a buffer the sparse step refreshes every step.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxsparse.elements import varying_dims
from fxsparse.rules.context import IDS, SHAPE


def masked_layer_norm(x, valid, dim, normalized_ndim, weight, bias, eps):
    """LayerNorm over the last ``normalized_ndim`` dims counting only valid channels along ``dim``."""
    dims = tuple(range(x.dim() - normalized_ndim, x.dim()))
    shape = [1] * x.dim()
    shape[dim] = -1
    m = valid.view(shape).to(x.dtype)
    cnt = (m * torch.ones_like(x)).sum(dims, keepdim=True)
    mean = (x * m).sum(dims, keepdim=True) / cnt
    var = (((x - mean) * m) ** 2).sum(dims, keepdim=True) / cnt
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * m


torch.fx.wrap("masked_layer_norm")

_FILL = {"amax": float("-inf"), "max": float("-inf"), "amin": float("inf"), "min": float("inf"),
         "softmax": float("-inf"), "log_softmax": float("-inf")}


def _op_name(op):
    return op if isinstance(op, str) else getattr(op, "__name__", str(op))


def masked_channel_op(_op, _valid, _channel_dim, x, *args, **kwargs):
    """``op(x, *args, **kwargs)`` (a reduction or softmax over the channel dim ``dim``) with
    empty slots left out: mean counts real channels only, max/min/softmax never pick them.
    (Own parameters are underscored: the wrapped call's keywords include ``dim``.)"""
    op = _op
    shape = [1] * x.dim()
    shape[_channel_dim] = -1
    m = _valid.view(shape).to(x.dtype)
    name = _op_name(op)
    call = (lambda t, *a, **k: getattr(t, op)(*a, **k)) if isinstance(op, str) else op
    if name == "mean":
        dims = args[0] if args else kwargs.get("dim")
        keepdim = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
        dims = tuple(range(x.dim())) if dims is None else dims
        total = (x * m).sum(dims, keepdim=keepdim)
        return total / (m * torch.ones_like(x)).sum(dims, keepdim=keepdim)
    if name == "sum":
        return call(x * m, *args, **kwargs)
    if name in _FILL:
        out = call(x.masked_fill(m == 0, _FILL[name]), *args, **kwargs)
        if name in ("softmax", "log_softmax"):
            out = torch.where(m > 0, out, torch.zeros((), dtype=out.dtype))
        return out
    raise UnsupportedInSparseStep(f"no masked form of {name} over a pruned channel dim")


torch.fx.wrap("masked_channel_op")


class UnsupportedInSparseStep(NotImplementedError):
    pass


def mask_mixing_ops(cap: fx.GraphModule, graph, layout_of) -> dict[str, tuple]:
    """Rewrite mixing nodes of ``cap`` (node names as in ``graph.gm``). Returns
    {buffer name: (node name, dim)} for the validity buffers the step must refresh."""
    mixing = {name for name, _ in graph.mixing}
    buffers = {}
    for node in list(cap.graph.nodes):
        if node.name not in mixing:
            continue
        src = node.args[0]
        ids = src.meta.get(IDS)
        shape = src.meta[SHAPE]
        canon = graph.elements.canonical(ids)
        canon = canon.reshape((1,) * (len(shape) - canon.ndim) + canon.shape)
        vd = varying_dims(canon)
        if not vd or not layout_of(src.name, vd[0]).any_prunable:
            continue
        dim = vd[0]
        if node.op == "call_module" and isinstance(cap.get_submodule(node.target), nn.LayerNorm):
            mod = cap.get_submodule(node.target)
            args = (src, None, dim, len(mod.normalized_shape), f"{node.target}.weight" if mod.weight is not None else None,
                    f"{node.target}.bias" if mod.bias is not None else None, mod.eps)
        elif node.op == "call_function" and node.target is F.layer_norm:
            k = len(node.args[1]) if isinstance(node.args[1], (list, tuple)) else 1
            w = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
            b = node.args[3] if len(node.args) > 3 else node.kwargs.get("bias")
            eps = node.args[4] if len(node.args) > 4 else node.kwargs.get("eps", 1e-5)
            args = (src, None, dim, k, w, b, eps)
        elif _op_name(node.target) in ("mean", "sum", *_FILL) and node.op in ("call_method", "call_function"):
            args = None
        else:
            raise UnsupportedInSparseStep(
                f"node '{node.name}' ({node.target}) mixes pruned channels (softmax/mean/max over a channel dim); "
                "the compiled sparse step does not support it yet. Use fxsparse.export for this model, or make "
                "the op a leaf (leaf_modules) so its channels are not pruned.")
        name = f"_fxsparse_valid_{node.name}"
        cap.register_buffer(name, torch.ones(shape[dim]), persistent=False)
        if args is None:  # a reduction or softmax: wrap the original call
            with cap.graph.inserting_before(node):
                valid = cap.graph.get_attr(name)
                new = cap.graph.call_function(masked_channel_op, (node.target, valid, dim, src) + tuple(node.args[1:]),
                                              dict(node.kwargs))
                new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            cap.graph.erase_node(node)
            buffers[name] = (src.name, dim)
            continue
        with cap.graph.inserting_before(node):
            valid = cap.graph.get_attr(name)
            params = []
            for p in args[4:6]:
                params.append(cap.graph.get_attr(p) if isinstance(p, str) else p)
            new = cap.graph.call_function(masked_layer_norm, (src, valid, dim, args[3], params[0], params[1], args[6]))
            new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        cap.graph.erase_node(node)
        buffers[name] = (src.name, dim)
    cap.recompile()
    return buffers
