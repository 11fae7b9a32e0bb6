"""The masked reference: the dense model with every tensor of every group multiplied by
its keep mask. For channel-wise, zero-preserving ops that equals the physically pruned
model. Ops that mix the channels of one tensor (LayerNorm over channels, softmax or mean
over a channel dim) are evaluated in their masked form (statistics over kept channels
only), which is what removing the channels computes. Used by the tests as the reference
that ``export`` must match.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .export import ExportContext
from .graph import ChannelGraph
from .masks import normalize_keep
from .passes.shape_prop import mutable
from .rules.context import IDS


class MaskedInterpreter(fx.Interpreter):
    def __init__(self, graph: ChannelGraph, keep):
        super().__init__(graph.gm)
        masks = normalize_keep(graph, keep or {})
        class_kept = {}
        for g in graph.groups:
            for cls, k in zip(g.classes.tolist(), masks[g.id].tolist()):
                class_kept[cls] = bool(k)
        self.ectx = ExportContext(graph.gm, graph, class_kept)
        self.mixing = {name for name, _ in graph.mixing}

    def call_function(self, target, args, kwargs):
        return target(*mutable(args), **mutable(kwargs))

    def _mask(self, node, dtype, device):
        m = self.ectx.kept_mask(node)
        return None if m is None else torch.as_tensor(m, device=device).to(dtype)

    def run_node(self, n):
        if n.name in self.mixing:
            out = self._masked_mixing(n)
        else:
            out = super().run_node(n)
        ids = n.meta.get(IDS)
        if isinstance(out, torch.Tensor) and ids is not None and not isinstance(ids, (tuple, list)):
            m = self._mask(n, out.dtype, out.device)
            if m is not None and out.is_floating_point():
                out = torch.where(m > 0, out, torch.zeros((), dtype=out.dtype))  # inf * 0 would be NaN
        elif isinstance(out, (tuple, list)) and isinstance(ids, (tuple, list)):
            items = []
            for o, i in zip(out, ids):
                if isinstance(o, torch.Tensor) and i is not None and o.is_floating_point():
                    fake = fx.Node.__new__(fx.Node)
                    fake.name, fake.meta = f"{n.name}.item{len(items)}", {IDS: i, "fxsparse_shape": tuple(o.shape)}
                    o = torch.where(self._mask(fake, o.dtype, o.device) > 0, o, torch.zeros((), dtype=o.dtype))
                items.append(o)
            out = type(out)(items) if not hasattr(out, "_fields") else type(out)(*items)
        return out

    def _input_mask(self, node, x):
        src = node.args[0]
        m = self._mask(src, x.dtype, x.device)
        return torch.ones_like(x) if m is None else m.expand_as(x)

    def _masked_mixing(self, n):
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        x = args[0]
        m = self._input_mask(n, x)
        if n.op == "call_module" and isinstance(self.module.get_submodule(n.target), nn.LayerNorm):
            mod = self.module.get_submodule(n.target)
            return _masked_layer_norm(x, m, len(mod.normalized_shape), mod.weight, mod.bias, mod.eps)
        if n.op == "call_function" and n.target is F.layer_norm:
            shape = args[1]
            k = len(shape) if isinstance(shape, (list, tuple)) else 1
            w = args[2] if len(args) > 2 else kwargs.get("weight")
            b = args[3] if len(args) > 3 else kwargs.get("bias")
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            return _masked_layer_norm(x, m, k, w, b, eps)
        if n.target in ("mean", torch.mean):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            dims = tuple(range(x.dim())) if dim is None else dim
            return (x * m).sum(dims, keepdim=keepdim) / m.sum(dims, keepdim=keepdim)
        if n.target in ("amax", torch.amax, "max", torch.max, "amin", torch.amin, "min", torch.min):
            fill = float("-inf") if n.target in ("amax", torch.amax, "max", torch.max) else float("inf")
            return n.target(x.masked_fill(m == 0, fill), *args[1:], **kwargs) if callable(n.target) else \
                getattr(x.masked_fill(m == 0, fill), n.target)(*args[1:], **kwargs)
        if n.target in (F.softmax, torch.softmax, "softmax"):
            dim = args[1] if len(args) > 1 else kwargs["dim"]
            return torch.softmax(x.masked_fill(m == 0, float("-inf")), dim)
        raise NotImplementedError(f"no masked form for node '{n.name}' ({n.target}); compare against a hand-built model")


def _masked_layer_norm(x, m, k, weight, bias, eps):
    dims = tuple(range(x.dim() - k, x.dim()))
    cnt = m.sum(dims, keepdim=True)
    mean = (x * m).sum(dims, keepdim=True) / cnt
    var = (((x - mean) * m) ** 2).sum(dims, keepdim=True) / cnt
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * m


def masked_reference(graph: ChannelGraph, keep, *inputs):
    """Output of the dense model with pruned channels zeroed everywhere (see module doc)."""
    return MaskedInterpreter(graph, keep).run(*inputs)
