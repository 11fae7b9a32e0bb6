"""Pass: export's rewrite. Slices every member parameter to its kept indices and lets each
op's export hook fix what names a channel count: module attributes (``out_channels``...)
and graph arguments (view sizes, split sizes, the channel-shuffle permutation), from the
pruned shapes.

Requires the annotations of the analysis (:data:`~fxsparse.rules.meta_keys.SHAPE`,
:data:`~fxsparse.rules.meta_keys.IDS`); writes no ``node.meta`` key. Export hooks are called
with an :class:`~fxsparse.rules.export_context.ExportContext`. The
graph module is changed in place (``fxsparse.export`` hands it a copy).
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxsparse.core.elements import ElementTable
from fxsparse.rules.export_context import ExportContext
from fxsparse.rules.meta_keys import CHANNEL_COUNT, FREE, IDS, SHAPE, VALUE
from fxsparse.rules.registry import lookup

from .manager import require_meta


def tied_names(gm) -> dict[str, list[str]]:
    """{first name of a tensor: every name of it}: tied weights (an LM head sharing the
    input embedding) are one tensor under several names."""
    names: dict[int, list[str]] = {}
    tensors = list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False))
    for name, t in tensors:
        names.setdefault(id(t), []).append(name)
    return {group[0]: group for group in names.values()}


class SliceChannels(PassBase):
    """``kept``: {parameter or buffer name: {dim: kept indices}} (a tied tensor under its first
    name); ``class_kept``: {element class: kept?}; ``rules``: per-call rules of the analysis
    (their export hooks win over the registry's). After the call :attr:`context` is the
    :class:`ExportContext` the hooks saw."""

    needs = frozenset({SHAPE, VALUE, IDS, FREE, CHANNEL_COUNT})  # what ExportContext reads
    gives = frozenset()

    def __init__(self, elements: ElementTable, class_kept: dict[int, bool], kept: dict, rules=None):
        self.elements = elements
        self.class_kept = class_kept
        self.kept = kept
        self.rules = rules
        self.context: ExportContext | None = None

    def requires(self, graph_module):
        require_meta(graph_module, IDS, "slice_channels", "the channel ids of the channel_propagation pass")

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.context = ExportContext(gm, self.elements, self.class_kept, self.kept)
        _slice_members(gm, self.kept)
        modules = dict(gm.named_modules())
        for node in list(gm.graph.nodes):
            if node.op not in ("call_module", "call_function", "call_method"):
                continue
            rule = lookup(node, modules, self.rules)
            if rule is not None and rule.export is not None:
                rule.export(self.context, node)
        gm.recompile()
        return PassResult(gm, True)


def _slice_members(gm: fx.GraphModule, kept: dict):
    aliases = tied_names(gm)
    for name, per_dim in kept.items():
        owner, _, attr = name.rpartition(".")
        old = getattr(gm.get_submodule(owner) if owner else gm, attr)
        new = old.detach()
        for dim in sorted(per_dim):
            new = torch.index_select(new, dim, per_dim[dim])
        if not per_dim:  # index_select already made a tensor of its own: a second copy is only time
            new = new.clone()
        new = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
        for alias in aliases.get(name, [name]):  # tied names stay one tensor
            owner, _, attr = alias.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            (mod._parameters if isinstance(old, nn.Parameter) else mod._buffers)[attr] = new
