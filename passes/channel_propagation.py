"""Pass: walk the graph in order and let each op's rule move, create and couple channels.

Inputs carry no prunable channel; everything that reaches the model's output is
unprunable; an op without a rule is opaque (what enters it is unprunable). Afterwards, a size read off a channel dim that
feeds anything but a shape argument (``scale = x.size(-1) ** -0.5``) makes that dim's
channels unprunable, because removing channels would silently change the value.

Requires :data:`~fxsparse.rules.meta_keys.SHAPE` (the shape_prop pass). ``node.meta``
keys written (declared in :mod:`fxsparse.rules.meta_keys`):

* :data:`IDS`: channel ids of the node's output (an array, a tuple of them, or None);
* :data:`FREE`: parameters that reach this value through shape-only ops (FreeRefs);
* :data:`CHANNEL_COUNT`: this int was computed from a channel count (export must not reuse it).

The result of the analysis (elements, members, mixing nodes) is the pass's
:attr:`ChannelPropagation.context`, the
:class:`~fxsparse.rules.analysis_context.AnalysisContext` its rules were called with.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxsparse.core.broadcast import left_pad
from fxsparse.core.elements import ElementTable, varying_dims
from fxsparse.rules.analysis_context import AnalysisContext
from fxsparse.rules.context import FreeRef, finish, where
from fxsparse.rules.meta_keys import CHANNEL_COUNT, FREE, IDS, SHAPE, VALUE
from fxsparse.rules.registry import describe_target, lookup

from .manager import TORCH_LEVEL, require_meta


# Ops whose size arguments the export rewrites: a channel count read into them is safe.
_SHAPE_CONSUMERS = {"view", "reshape", "expand", "repeat", "new_zeros", "new_ones", "new_empty", "flatten",
                    "unflatten", torch.reshape, torch.flatten, torch.unflatten}
_INT_ARITHMETIC = {operator.floordiv, operator.mul, operator.add, operator.sub, operator.getitem, getattr}


class ChannelPropagation(PassBase):
    """Annotates every node with :data:`IDS` (see the module doc); ``rules``: per-call rules
    ({target: Rule or analyze fn}) that win over the registry. Afterwards
    :attr:`context` holds the analysis (elements, members, mixing nodes). The graph's code
    is not changed (``modified`` is False)."""

    needs = frozenset({TORCH_LEVEL, SHAPE, VALUE})
    gives = frozenset({IDS, FREE, CHANNEL_COUNT})

    def __init__(self, rules=None):
        self.rules = rules
        self.context: AnalysisContext | None = None

    def requires(self, graph_module):
        require_meta(graph_module, SHAPE, "channel_propagation", "the shapes of the shape_prop pass")

    def ensures(self, graph_module):
        missing = [n.name for n in graph_module.graph.nodes if IDS not in n.meta]
        if missing:
            raise AssertionError(f"channel_propagation: no channel ids recorded for {missing[:3]}")

    def call(self, gm: fx.GraphModule) -> PassResult:
        self.context = _propagate(gm, self.rules)
        return PassResult(gm, False)


def _propagate(gm: fx.GraphModule, extra_rules=None) -> AnalysisContext:
    ctx = AnalysisContext(gm, ElementTable())
    sliceable = _parameters_and_buffers(gm)
    for node in gm.graph.nodes:
        node.meta[IDS] = None
        if node.op == "placeholder":
            continue
        if node.op == "get_attr":
            value = ctx.param(node.target)
            # a tensor kept as a plain attribute (a cache an earlier forward filled, lifted by
            # torch.export as a constant) is no parameter or buffer: a fixed value, never sliced
            if isinstance(value, torch.Tensor) and node.target in sliceable:
                node.meta[FREE] = [FreeRef(node.target, tuple(range(value.dim())))]
            continue
        if node.op == "output":
            why = f"reaches the model output ({where(node)})"
            for arg in ctx.tensor_args(node):
                _mark_all(ctx, arg.meta.get(IDS), why)
            continue
        rule = lookup(node, ctx.modules, extra_rules)
        if rule is None:
            ctx.opaque(node, f"enters {describe_target(node, ctx.modules)} at {where(node)}, which has no channel rule "
                             "(add one with fxsparse.register_rule)")
            continue
        try:
            out = rule.analyze(ctx, node)
        except Exception as exc:  # a rule that cannot handle this use: be conservative
            ctx.opaque(node, f"rule {rule.name} could not handle {describe_target(node, ctx.modules)} at {where(node)}: {exc}")
            node.meta.pop(FREE, None)
            out = None
        node.meta[IDS] = finish(ctx.elements, out)
        if isinstance(node.meta[IDS], np.ndarray) and node.meta[IDS].ndim != len(_shape(node)):
            ctx.opaque(node, f"internal: rank mismatch at {where(node)}")
            node.meta[IDS] = None
    _check_size_reads(ctx)
    return ctx


def _parameters_and_buffers(gm: fx.GraphModule) -> set[str]:
    """Every name of every parameter and buffer (tied ones under each name)."""
    return ({name for name, _ in gm.named_parameters(remove_duplicate=False)}
            | {name for name, _ in gm.named_buffers(remove_duplicate=False)})


def _shape(node):
    s = node.meta.get(SHAPE)
    return s if isinstance(s, tuple) else ()


def _mark_all(ctx, ids, why):
    for item in ids if isinstance(ids, (tuple, list)) else [ids]:
        if isinstance(item, np.ndarray):
            ctx.unprunable(item, why)


def _check_size_reads(ctx: AnalysisContext):
    for size_node, src, dims in ctx.size_reads:
        ids = ctx.ids(src)
        if ids is None:
            continue
        nd = len(ctx.shape(src))
        channel_dims = set(varying_dims(left_pad(ids, nd)))
        if not set(dims) & channel_dims:
            continue
        reads = [(size_node, dims)]
        if len(dims) > 1:  # x.shape / x.size(): follow which entries are picked
            reads = []
            for user in size_node.users:
                if user.target is operator.getitem and isinstance(user.args[1], (int, slice)):
                    picked = [user.args[1] % nd] if isinstance(user.args[1], int) else list(range(nd))[user.args[1]]
                    reads.append((user, picked))
                else:
                    reads.append((_Single(user), dims))
        for value, picked in reads:
            if not set(picked) & channel_dims:
                continue
            _tag_channel_count(value.user if isinstance(value, _Single) else value)
            bad = value.user if isinstance(value, _Single) else _non_shape_use(value)
            if isinstance(value, _Single) and (value.user.target in _SHAPE_CONSUMERS):
                bad = None
            if bad is not None:
                ctx.unprunable(ids, f"the channel count of '{src.name}' is read at {where(size_node)} and used by "
                                    f"'{bad.name}' ({where(bad)}), so removing channels would change that value")
                break


def _tag_channel_count(node, seen=None):
    """Mark a size value and the int arithmetic on it: export must not reuse it as is."""
    seen = seen if seen is not None else set()
    if node in seen:
        return
    seen.add(node)
    node.meta[CHANNEL_COUNT] = True
    for user in node.users:
        if user.op == "call_function" and user.target in _INT_ARITHMETIC:
            _tag_channel_count(user, seen)


class _Single:
    def __init__(self, user):
        self.user = user


def _non_shape_use(node, seen=None):
    """The first user of a size value that is not (through int arithmetic) a shape argument."""
    seen = seen if seen is not None else set()
    for user in node.users:
        if user in seen:
            continue
        seen.add(user)
        if user.target in _SHAPE_CONSUMERS and user.args and user.args[0] is not node:
            continue
        if user.op == "call_function" and user.target in _INT_ARITHMETIC:
            bad = _non_shape_use(user, seen)
            if bad is not None:
                return bad
            continue
        return user
    return None
