"""The registry of op families: how each op moves, creates and couples channels, how it is
sliced at export, and its masked form where it mixes channels (the whole contract a rule
author needs is :mod:`fxsparse.rules.contract`).

A :class:`Rule` is registered for one or more *targets*: an ``nn.Module`` subclass
(matched for ``call_module`` nodes), a function object such as ``torch.add`` or
``F.conv2d`` (``call_function`` nodes), or a method name such as ``"view"``
(``call_method`` nodes; a method is only known by its name), or the qualified name of a
custom op (``"mylib::my_op"``: a ``torch.library`` op is known by its name, so its rule can
be registered without importing the library that defines it). Users add rules for their
own ops with :func:`register_rule`, globally or for one ``fxsparse.analyze`` call
(``rules={target: Rule}``; those travel with the returned ChannelGraph). An op without a
rule is treated as opaque: every channel that enters it becomes unprunable, with the op
named in the reason.
"""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Rule:
    """Everything fxsparse knows about one op family.

    ``analyze(ctx, node)``: the analysis rule. Returns the output's channel ids (an array,
    a tuple of them for tuple outputs, or None) and couples channels through ``ctx``. A
    rule calls ``ctx.mark_mixing(node, why)`` when the op *mixes* the channels of one
    tensor, so that zeroing a channel is not the same as removing it (LayerNorm over
    channels, softmax or mean over a channel dim).

    ``export(ectx, node)`` (optional): fixes up the node after channels were removed:
    module attributes (``out_channels``...) or shape arguments (``view`` sizes...).

    ``masked(op, m, *args, **kwargs)`` (needed by an op the rule marks mixing): the op
    computed as if the channels where ``m == 0`` were removed. ``op`` is what the node
    calls (the module for ``call_module``, the function, or the method name), ``args`` /
    ``kwargs`` its call arguments, and ``m`` a float 0/1 tensor of ``args[0]``'s shape
    (1 = a kept channel; for a parameter argument, such as the ``v`` of a weight norm, 1 = an
    entry whose index along every pruned dim is kept; the compiled step's capacity model does
    not call the masked form of such an op: the empty slots of its parameters are zeros).
    Positions where ``m == 0`` may hold anything in the result.
    Used by the masked reference (``fxsparse.rewrite.reference``) and by the capacity model of
    ``fxsparse.compile`` (empty slots are removed channels there).

    ``name``: shown in messages (defaults to the analysis function's name).
    """

    analyze: Callable
    export: Callable | None = None
    masked: Callable | None = None
    name: str = ""

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", getattr(self.analyze, "__name__", str(self.analyze)))


_RULES: dict[object, Rule] = {}


def as_rule(value) -> Rule:
    """A Rule, or a bare analysis function made into one."""
    return value if isinstance(value, Rule) else Rule(analyze=value)


def register_rule(*targets, export=None, masked=None, override=False):
    """Decorator: ``@register_rule(MyModule)`` / ``@register_rule(my_fn, export=..., masked=...)``
    / ``@register_rule("my_method")``.

    The decorated object is the analysis function ``analyze(ctx, node)`` (``export`` and
    ``masked`` then complete the :class:`Rule`), or a whole :class:`Rule`
    (``register_rule(MyModule)(Rule(analyze=..., masked=...))``). Registering a target twice
    raises unless ``override=True`` (so a typo cannot silently replace a built-in rule).
    Returns the decorated object unchanged.
    """

    def deco(fn):
        if isinstance(fn, Rule):
            if export is not None or masked is not None:
                raise TypeError("register_rule: give export/masked either as keywords or in the Rule, not both")
            rule = fn
        else:
            rule = Rule(analyze=fn, export=export, masked=masked)
        for t in targets:
            if t in _RULES and not override:
                raise ValueError(f"a channel rule for {t!r} is already registered; pass override=True to replace it")
            _RULES[t] = rule
        return fn

    return deco


def lookup(node, modules, extra: dict | None = None) -> Rule | None:
    """The rule for an FX node (``extra``: per-call rules, {target: Rule or analyze fn},
    which win over the registry), or None when fxsparse has none."""
    table = dict(_RULES)
    if extra:
        table.update({k: as_rule(v) for k, v in extra.items()})
    if node.op == "call_module":
        mod = modules[node.target]
        rule = table.get(type(mod))
        if rule is not None:
            return rule
        # A subclass inherits its parent's rule only if it keeps the parent's forward:
        # an overridden forward can do anything.
        for base in type(mod).__mro__[1:]:
            if base in table and type(mod).forward is base.forward:
                return table[base]
        return None
    if node.op == "call_function":
        rule = table.get(node.target)
        if rule is None and custom_op_name(node.target) is not None:
            rule = table.get(custom_op_name(node.target))
        return rule
    if node.op == "call_method":
        return table.get(node.target)
    return None


def custom_op_name(target) -> str | None:
    """``"mylib::my_op"`` of a ``torch.library`` op, called as an overload
    (``torch.ops.mylib.my_op.default``: what torch.export records) or as its packet
    (``torch.ops.mylib.my_op``: what the symbolic trace records); else None."""
    if callable(getattr(target, "name", None)) and hasattr(target, "_schema"):
        return target.name()
    qualified = getattr(target, "_qualified_op_name", None)  # an OpOverloadPacket
    return qualified if isinstance(qualified, str) else None


def registered_targets():
    return list(_RULES)


def describe_target(node, modules) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        t = node.target
        return f"function {getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', repr(t))}".replace("..", ".")
    return f"method .{node.target}()"


def call_op(op, *args, **kwargs):
    """Call what a node calls: a module or function ``op(*args)``, a method name on args[0]."""
    if isinstance(op, str):
        return getattr(args[0], op)(*args[1:], **kwargs)
    return op(*args, **kwargs)


__all__ = ["Rule", "register_rule", "lookup", "registered_targets", "describe_target", "as_rule", "call_op"]
