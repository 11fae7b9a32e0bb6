"""The masked reference: the dense model with every tensor of every group multiplied by
its keep mask (of any dtype: a removed channel of a boolean or integer tensor is False / 0).
For channel-wise ops that equals the physically pruned model. Ops that are *mixing* (they
mix the channels of one tensor: LayerNorm over channels, softmax or mean over a channel
dim) are evaluated in their rule's masked form (``Rule.masked``, statistics over kept
channels only; the same function the compiled step uses), which is what removing the
channels computes. Used by the tests as the reference that ``export`` must match.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from fxsparse.analysis.masks import kept_indices
from fxsparse.core.broadcast import along
from fxsparse.rewrite.export import class_kept
from fxsparse.analysis.graph import ChannelGraph
from fxsparse.passes.shape_prop import mutable
from fxsparse.rules.export_context import ExportContext
from fxsparse.rules.meta_keys import IDS, SHAPE


class MaskedInterpreter(fx.Interpreter):
    def __init__(self, graph: ChannelGraph, keep):
        super().__init__(graph.gm)
        self.ectx = ExportContext(graph.gm, graph.elements, class_kept(graph, keep), kept_indices(graph, keep))
        # every mixing op's masked form, found now: an op without one fails here, by name
        self.masked = {name: graph.masked_form(name, "the masked reference") for name, _ in graph.mixing}

    def call_function(self, target, args, kwargs):
        return target(*mutable(args), **mutable(kwargs))

    def _mask(self, node, dtype, device):
        m = self.ectx.kept_mask(node)
        return None if m is None else torch.as_tensor(m, device=device).to(dtype)

    def _zero_removed(self, node, out):
        """``out`` with its removed channels set to zero, of every dtype: the export has no such
        channel, and 0 (False for a boolean) is what an absent channel adds to a sum or any()
        over channels; other reductions over channels use their masked forms."""
        m = self._mask(node, torch.bool, out.device)
        if m is None:
            return out
        return torch.where(m, out, torch.zeros((), dtype=out.dtype))  # inf * 0 would be NaN

    def run_node(self, n):
        if n.name in self.masked:
            out = self._masked_mixing(n)
        else:
            out = super().run_node(n)
        ids = n.meta.get(IDS)
        if isinstance(out, torch.Tensor) and ids is not None and not isinstance(ids, (tuple, list)):
            out = self._zero_removed(n, out)
        elif isinstance(out, (tuple, list)) and isinstance(ids, (tuple, list)):
            items = []
            for o, i in zip(out, ids):
                if isinstance(o, torch.Tensor) and i is not None:
                    fake = fx.Node.__new__(fx.Node)
                    fake.name, fake.meta = f"{n.name}.item{len(items)}", {IDS: i, SHAPE: tuple(o.shape)}
                    o = self._zero_removed(fake, o)
                items.append(o)
            out = type(out)(items) if not hasattr(out, "_fields") else type(out)(*items)
        return out

    def _parameter_mask(self, node, dtype, device):
        """The kept entries of a parameter seen through shape-only ops (``v`` of a weight
        norm): those whose index along every member dim is kept; None where none is pruned."""
        shape = self.ectx.shape(node)
        if not isinstance(node, fx.Node) or not self.ectx.free(node) or shape is None:
            return None
        kept = [self.ectx.kept_along_param(node, d) for d in range(len(shape))]
        if all(k is None or k.all() for k in kept):
            return None
        m = np.ones(shape, dtype=bool)
        for d, k in enumerate(kept):
            if k is not None:
                m = m & along(k, d, len(shape))
        return torch.as_tensor(m, device=device).to(dtype)

    def _masked_mixing(self, n):
        _, op, masked = self.masked[n.name]
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        x = args[0]
        m = self._mask(n.args[0], x.dtype, x.device)
        if m is None:  # a parameter argument: its kept entries
            m = self._parameter_mask(n.args[0], x.dtype, x.device)
        m = torch.ones_like(x) if m is None else m.expand_as(x)
        return masked(op, m, *mutable(args), **mutable(kwargs))


def masked_reference(graph: ChannelGraph, keep, *inputs):
    """Output of the dense model with pruned channels zeroed everywhere (see module doc)."""
    return MaskedInterpreter(graph, keep).run(*inputs)
