"""The build of one capacity set: the capacity model (the exported model for a keep pattern that
fills every slot, with the masked forms of the ops that mix channels), the dense tensors it
gathers and how (its :class:`~fxsparse.step.index.StepIndexer`), and its compiled step
functions."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.core.broadcast import left_pad
from fxsparse.passes.pipelines import mask_mixing_ops, opaque_convolutions
from fxsparse.rewrite.export import export, tied_names
from fxsparse.rewrite.layout import Plan
from fxsparse.rewrite.shape_free import Piece, ShapeFree
from fxsparse.rules.meta_keys import IDS, SHAPE
from fxsparse.step.compiler import StepCompiler
from fxsparse.step.index import StepIndexer, StepPart


@dataclasses.dataclass(frozen=True, eq=False)
class CapacityBuild:
    """``caps``: the capacities it is for; ``model``: the capacity model (not a registered
    submodule: its own capacity-sized weights are empty placeholders, every step passes gathered
    ones, and DDP / state_dict / optimizers must see the dense model's parameters only);
    ``buffer_names``: the dense model's buffers it uses; ``valid_buffers``: {capacity-model
    buffer: (node, dim)} of the masked mixing ops' validity vectors; ``compiled_fns``: the
    compiled step functions of this capacity set, by key, and ``codes`` their code objects."""
    caps: tuple[int, ...]
    model: nn.Module
    indexer: StepIndexer
    buffer_names: tuple[str, ...]
    valid_buffers: dict[str, tuple[str, int]]
    tensor_refs: tuple  # (name, owning module's tensor dict, key): the dense tensors by two look-ups each
    compiled_fns: dict = dataclasses.field(default_factory=dict)
    codes: set = dataclasses.field(default_factory=set)

    @property
    def members(self) -> dict[str, tuple[int, ...]]:
        """{dense tensor: the dims the step gathers}."""
        return self.indexer.members

    def function(self, key, make, compiler: StepCompiler):
        """The step function ``key`` of this capacity set: ``make(self)``, compiled when the
        compiler is enabled, made once."""
        fn = self.compiled_fns.get(key)
        if fn is None:
            fn = make(self)
            fn = self.compiled_fns[key] = compiler.compile(fn, self.codes) if compiler.enabled else fn
        return fn

    def dense_tensors(self) -> dict[str, torch.Tensor]:
        """{name: the dense model's parameter or (capacity-model) buffer}, as they are now."""
        return {name: owner[key] for name, owner, key in self.tensor_refs}

    def to(self, device) -> None:
        """Capacity-model buffers that are not dense-model buffers (shuffle indices) follow the inputs."""
        for mod in self.model.modules():
            for name, b in mod._buffers.items():
                if b is not None and b.device != device:
                    mod._buffers[name] = b.to(device)


def build_capacity_model(model: nn.Module, graph: ChannelGraph, plan: Plan, shape_free: ShapeFree,
                         dynamic: bool) -> CapacityBuild:
    """The build for the plan's current capacities (not run here: the caller checks it on the
    example inputs, as its steps will run it)."""
    cap = export(model, graph, plan.cap_keep(), check=False)
    if dynamic:  # sizes and groups that follow the counts are read from the tensors
        shape_free.apply(cap)
    layout_of = _tensor_layout_of(cap, graph, plan)
    valid_buffers = mask_mixing_ops(cap, graph, layout_of)
    # the layouts of the validity vectors and step buffers, read now: they name nodes of this graph
    validity = {buf: layout_of(node, dim) for buf, (node, dim) in valid_buffers.items()}
    step_layouts = _step_buffer_layouts(shape_free, layout_of)
    if dynamic:  # inductor would read every convolution's channel counts as constants
        opaque_convolutions(cap, shape_free.groups_from_shapes)
    else:  # only those whose channels-last weight gradient oneDNN gets wrong
        opaque_convolutions(cap, only_onednn_hazards=True)
    placeholders = {}  # one per tensor: tied weights stay tied (functional_call fills them by one name)
    for mod in cap.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = placeholders.setdefault(
                    id(p), nn.Parameter(torch.empty(0, device="meta"), requires_grad=False))
    cap_buffers = dict(cap.named_buffers())
    buffer_names = tuple(n for n, _ in model.named_buffers() if n in cap_buffers)
    refs = [(n, *_owner_of(model, n, "_parameters")) for n, _ in model.named_parameters()]
    refs += [(n, *_owner_of(model, n, "_buffers")) for n in buffer_names]
    indexer = StepIndexer(_members(model, graph, plan), validity, shape_free.step_buffers, step_layouts)
    if dynamic:  # the lengths no count changes: at the fewest present slots as at the most
        slot_class, slot_valid = plan.slot_classes(plan.cap_keep())
        indexer.find_fixed_lengths(slot_class, plan.present_slots(np.zeros_like(slot_valid)),
                                   plan.present_slots(np.ones_like(slot_valid)))
    return CapacityBuild(tuple(plan.caps), cap, indexer, buffer_names, valid_buffers, tuple(refs))


def _members(model, graph, plan) -> dict:
    """{dense tensor: [(dim, layout)] in dim order} of the tensors with a prunable gathered dim."""
    dense = dict(model.named_parameters())
    dense.update(dict(model.named_buffers()))
    members: dict[str, dict] = {}
    first = {alias: name for name, names in tied_names(model).items() for alias in names}
    for (param, dim), ids in graph.raw_members.items():
        param = first.get(param, param)  # a tied weight is gathered once, by its first name
        if param in dense:
            members.setdefault(param, {})[dim] = plan.dim_layout(graph.elements.canonical(ids))
    return {k: sorted(v.items(), key=lambda t: t[0]) for k, v in members.items()
            if any(layout.any_prunable for layout in v.values())}


def _step_buffer_layouts(shape_free: ShapeFree, layout_of) -> dict:
    """Dynamic capacities: {StepPart: layout} of the positions each per-step buffer of the
    shape-free rewrite reads (a split's piece, a shuffle's input and output)."""
    layouts = {}
    for buf, spec in shape_free.step_buffers.items():
        if isinstance(spec, Piece):
            layouts[StepPart(buf, "piece")] = layout_of(spec.source, spec.dim).part(spec.start, spec.stop)
        else:
            layouts[StepPart(buf, "in")] = layout_of(spec.source, spec.dim)
            layouts[StepPart(buf, "out")] = layout_of(spec.node, spec.dim)
    return layouts


def _tensor_layout_of(cap, graph, plan):
    nodes = {n.name: n for n in cap.graph.nodes}  # one look-up per member dim: a scan each was quadratic

    def layout_of(node_name, dim):
        node = nodes.get(node_name)
        if node is None or getattr(node, "_erased", False):  # the graph changed since the table was read:
            nodes.clear()  # MaskMixingOps inserts masked forms (layer_norm_masked) and replaces nodes
            nodes.update((n.name, n) for n in cap.graph.nodes)
            node = nodes[node_name]
        ids = graph.elements.canonical(node.meta[IDS])
        shape = node.meta[SHAPE]
        ids = left_pad(ids, len(shape))
        line = np.moveaxis(np.broadcast_to(ids, shape), dim, 0).reshape(shape[dim], -1)[:, 0]
        return plan.dim_layout(line)

    return layout_of


def _owner_of(model, name, kind):
    """(the owning module's ``kind`` dict, key) of a dotted tensor name."""
    prefix, _, key = name.rpartition(".")
    return getattr(model.get_submodule(prefix), kind), key
