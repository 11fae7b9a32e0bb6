"""Pass (on the capacity model): make ops that mix channels ignore empty slots.

In the compiled sparse step a group may have fewer kept channels than slots; the empty
slots hold exact zeros in every weight, so they contribute nothing through convs and
linears. An op that mixes the channels of one tensor (LayerNorm over channels, softmax or
mean over a channel dim; the nodes the analysis marked mixing) would still count them:
each such node is replaced by its rule's masked form (``Rule.masked``, the same function
the masked reference uses), fed a 0/1 mask built from a validity vector (1 = real
channel) held in a non-persistent buffer ``_fxsparse_valid_<node>`` that the sparse step
refreshes every step. :attr:`MaskMixingOps.valid_buffers` maps each buffer to
``(node name, channel dim)``.

Writes no ``node.meta`` key (replacement nodes copy the replaced node's meta).
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxsparse.core.broadcast import along, left_pad
from fxsparse.core.elements import varying_dims
from fxsparse.rules.meta_keys import IDS, SHAPE


class UnsupportedInSparseStep(NotImplementedError):
    pass


def slot_mask(valid: torch.Tensor, dim: int, x: torch.Tensor) -> torch.Tensor:
    """The validity vector laid along ``dim`` of ``x`` as a 0/1 mask of ``x``'s shape."""
    return along(valid.to(x.dtype), dim, x.dim()).expand_as(x)


def _graph_callable(masked, op, name: str):
    """``masked`` as a graph target taking ``(op, m, *args)``. FX prints call arguments as
    source code, which a function cannot be: a function ``op`` is bound into the target
    (its graph argument is None); a module comes as a get_attr node, a method as its name."""
    if isinstance(op, str) or not callable(op):
        return masked

    def call(_, m, *args, **kwargs):
        return masked(op, m, *args, **kwargs)

    call.__name__ = call.__qualname__ = f"masked_{name}"
    return call


class MaskMixingOps(PassBase):
    """``graph``: the ChannelGraph the capacity model was exported from (mixing nodes, their
    rules, per-call ones included; node names are those of ``graph.gm``); ``layout_of(node
    name, dim)``: the slot layout of a tensor dim. Raises :class:`UnsupportedInSparseStep`
    naming the op when a mixing op over prunable slots has no masked form."""

    needs = frozenset({SHAPE, IDS})
    gives = frozenset()

    def __init__(self, graph, layout_of):
        self.graph = graph
        self.layout_of = layout_of
        self.valid_buffers: dict[str, tuple[str, int]] = {}

    def _targets(self, gm):
        """(node, channel dim, op, masked form) of each mixing node over prunable slots."""
        mixing = {name for name, _ in self.graph.mixing}
        found = []
        for node in gm.graph.nodes:
            if node.name not in mixing:
                continue
            src = node.args[0]
            shape = src.meta[SHAPE]
            if src.meta.get(IDS) is None:
                # a parameter argument (the ``v`` of a weight norm): its empty slots are exact
                # zeros in the capacity model's gathered tensors, so the op leaves them out as is
                continue
            vd = varying_dims(left_pad(self.graph.elements.canonical(src.meta.get(IDS)), len(shape)))
            if not vd or not self.layout_of(src.name, vd[0]).any_prunable:
                continue
            _, op, masked = self.graph.masked_form(node.name, "the compiled sparse step (fxsparse.compile)",
                                                   UnsupportedInSparseStep)
            found.append((node, vd[0], op, masked))
        return found

    def requires(self, graph_module):
        self._targets(graph_module)  # raises for a mixing op without a masked form

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, cap: fx.GraphModule) -> PassResult:
        self.valid_buffers = {}
        found = self._targets(cap)
        for node, dim, op, masked in found:
            src = node.args[0]
            name = f"_fxsparse_valid_{node.name}"
            cap.register_buffer(name, torch.ones(src.meta[SHAPE][dim]), persistent=False)
            with cap.graph.inserting_before(node):
                valid = cap.graph.get_attr(name)
                m = cap.graph.call_function(slot_mask, (valid, dim, src))
                if node.op == "call_module":
                    target, fn = cap.graph.get_attr(node.target), masked
                else:
                    target, fn = (op if isinstance(op, str) else None), _graph_callable(masked, op, node.name)
                new = cap.graph.call_function(fn, (target, m) + tuple(node.args), dict(node.kwargs))
                new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            cap.graph.erase_node(node)
            self.valid_buffers[name] = (src.name, dim)
        cap.recompile()
        return PassResult(cap, bool(found))
