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

A sum over a channel dim (a sum, a p-norm, a contraction such as ``q @ k^T``; the nodes
the analysis marked summing) is not mixing: an empty slot adds its value, which is zero
where an op with f(0) = 0 made it (:mod:`fxsparse.passes.zero_slots`). Where none of its
operands is zero there (``(h + 1).sum(1)``, ``(h <= 0.1).sum(1)``), the first of them is
zero-filled at its empty slots (:func:`fill_empty_slots`, validity buffers
``_fxsparse_zero_<node>_<dim>``), which is the masked reference's value of it. An
element-wise op that would make an empty slot's zero inf or NaN, in its value or its
gradient (``log(h.abs())``, ``1 / h``, ``sqrt``), gets one there instead (buffers
``_fxsparse_one_<node>_<dim>``): the next layer's zero weights would otherwise multiply the
inf into NaN that the exported model never sees.

Writes no ``node.meta`` key (replacement nodes copy the replaced node's meta).
"""
from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

import numpy as np

from fxsparse.core.broadcast import along, left_pad
from fxsparse.core.elements import varying_dims
from fxsparse.passes.zero_slots import ZeroSlots
from fxsparse.rules.context import operands_at
from fxsparse.rules.meta_keys import IDS, SHAPE


class UnsupportedInSparseStep(NotImplementedError):
    pass


def slot_mask(valid: torch.Tensor, dim: int, x: torch.Tensor) -> torch.Tensor:
    """The validity vector laid along ``dim`` of ``x`` as a 0/1 mask of ``x``'s shape."""
    return along(valid.to(x.dtype), dim, x.dim()).expand_as(x)


def fill_empty_slots(x: torch.Tensor, valid: tuple, dims: tuple, value: float = 0.0) -> torch.Tensor:
    """``x`` with ``value`` at the empty slots of ``dims`` (where ``valid``, one validity
    vector per dim, is 0): zero, what an absent channel adds to a sum; one, where an op
    would make a zero inf or NaN (its gradient there is zero either way)."""
    keep = None
    for v, d in zip(valid, dims):
        k = along(v, d, x.dim()) > 0
        keep = k if keep is None else keep & k
    return torch.where(keep, x, torch.full((), value, dtype=x.dtype, device=x.device))


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

    def _prunable_dims(self, node):
        """The dims of ``node``'s output with prunable slots; None for a tuple of tensors."""
        ids, shape = node.meta.get(IDS), node.meta.get(SHAPE)
        if ids is None:
            return ()
        if not isinstance(ids, np.ndarray) or not isinstance(shape, tuple) or (shape and isinstance(shape[0], tuple)):
            return None
        if 0 in shape:  # an empty tensor: no entry, so no slot
            return ()
        vd = varying_dims(left_pad(self.graph.elements.canonical(ids), len(shape)))
        return [d for d in vd if self.layout_of(node.name, d).any_prunable]

    def _fill_slots(self, cap) -> bool:
        """Walks the capacity model once: zero-fills the first operand with prunable slots of
        each summing node none of whose summed operands is zero at its empty slots, and fills
        with one the operands an element-wise op would make inf or NaN there
        (:meth:`ZeroSlots.unsafe_operands`); True when it filled any."""
        summing = {name: paths for name, paths, _ in self.graph.summing}
        zero = ZeroSlots(cap, self._prunable_dims, mixing=[name for name, _ in self.graph.mixing])
        filled = False
        for node in list(cap.graph.nodes):
            for src in zero.unsafe_operands(node):
                filled |= self._fill(cap, node, src, 1.0, f"_fxsparse_one_{node.name}") is not None
            operands = operands_at(node, summing[node.name]) if node.name in summing else ()
            if operands and not any(zero.zero.get(a, False) for a in operands):
                # the first operand with empty slots (_fill: None for one without)
                new = next(filter(None, (self._fill(cap, node, a, 0.0, f"_fxsparse_zero_{node.name}")
                                         for a in operands)), None)
                if new is not None:
                    zero.zero[new] = filled = True
            zero.visit(node)
        return filled

    def _fill(self, cap, node, src, value, prefix):
        """Replaces ``src`` in ``node``'s inputs by ``src`` with ``value`` at its empty slots
        (validity buffers ``{prefix}_{dim}``); the new node, or None when ``src`` has none."""
        dims = self._prunable_dims(src)
        if not dims:
            return None
        names = []
        for d in dims:
            names.append(f"{prefix}_{d}")
            cap.register_buffer(names[-1], torch.ones(src.meta[SHAPE][d]), persistent=False)
            self.valid_buffers[names[-1]] = (src.name, d)
        with cap.graph.inserting_before(node):
            valid = tuple(cap.graph.get_attr(n) for n in names)
            new = cap.graph.call_function(fill_empty_slots, (src, valid, tuple(dims), value))
            new.meta = dict(src.meta)
        node.replace_input_with(src, new)
        return new

    def requires(self, graph_module):
        self._targets(graph_module)  # raises for a mixing op without a masked form

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, cap: fx.GraphModule) -> PassResult:
        self.valid_buffers = {}
        filled = self._fill_slots(cap)
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
        return PassResult(cap, bool(found) or filled)
