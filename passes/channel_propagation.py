"""Pass: walk the graph in order and let each op's rule move, create and couple channels.

Writes ``node.meta['fxsparse_ids']`` for every node. Inputs carry no prunable channel;
everything that reaches the model's output is unprunable; an op without a rule is
opaque (what enters it is unprunable). Afterwards, a size read off a channel dim that
feeds anything but a shape argument (``scale = x.size(-1) ** -0.5``) makes that dim's
channels unprunable, because removing channels would silently change the value.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx

from fxsparse.elements import ElementTable, varying_dims
from fxsparse.rules.context import FREE, IDS, AnalysisContext, FreeRef, finish, where
from fxsparse.rules.registry import describe_target, lookup

# Ops whose size arguments the export rewrites: a channel count read into them is safe.
_SHAPE_CONSUMERS = {"view", "reshape", "expand", "repeat", "new_zeros", "new_ones", "new_empty", "flatten",
                    "unflatten", torch.reshape, torch.flatten, torch.unflatten}
_INT_ARITHMETIC = {operator.floordiv, operator.mul, operator.add, operator.sub, operator.getitem, getattr}


def channel_propagation(gm: fx.GraphModule, extra_rules=None) -> AnalysisContext:
    ctx = AnalysisContext(gm, ElementTable())
    for node in gm.graph.nodes:
        node.meta[IDS] = None
        if node.op == "placeholder":
            continue
        if node.op == "get_attr":
            value = ctx.param(node.target)
            if isinstance(value, torch.Tensor):
                node.meta[FREE] = [FreeRef(node.target, tuple(range(value.dim())))]
            continue
        if node.op == "output":
            why = f"reaches the model output ({where(node)})"
            for arg in ctx.tensor_args(node):
                _mark_all(ctx, arg.meta.get(IDS), why)
                for ref in arg.meta.get(FREE) or ():
                    pass  # a parameter returned as is: nothing to prune
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


def _shape(node):
    s = node.meta.get("fxsparse_shape")
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
        channel_dims = set(varying_dims(ids.reshape((1,) * (nd - ids.ndim) + ids.shape)))
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


CHANNEL_COUNT = "fxsparse_channel_count"  # node.meta: this int was computed from a channel count


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
