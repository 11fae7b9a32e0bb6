"""The registry of channel rules: how each op moves, creates and couples channels.

A rule is registered for one *target*: an ``nn.Module`` subclass (matched for
``call_module`` nodes), a function object such as ``torch.add`` or ``F.conv2d``
(``call_function`` nodes), or a method name such as ``"view"`` (``call_method`` nodes;
a method is only known by its name). Users add rules for their own ops with
:func:`register_rule`; an op without a rule is treated as opaque: every channel that
enters it becomes unprunable, with the op named in the reason.
"""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Rule:
    """``analyze(ctx, node)`` returns the output's ids (or a tuple of them, or None).

    ``export(ectx, node)`` (optional) fixes up the node after channels were removed:
    module attributes (``out_channels``...) or shape arguments (``view`` sizes...).
    ``zero_preserving`` is False when the op mixes the channels of one tensor in a way
    that zeroing a channel is not the same as removing it (LayerNorm over channels,
    softmax or mean over channels): the masked reference then needs the op's masked form.
    """

    analyze: Callable
    export: Callable | None = None
    name: str = ""


_RULES: dict[object, Rule] = {}


def register_rule(*targets, export=None, override=False):
    """Decorator: ``@register_rule(MyModule)`` / ``@register_rule(my_fn)`` / ``@register_rule("my_method")``.

    The decorated function is ``analyze(ctx, node)``. Registering a target twice raises
    unless ``override=True`` (so a typo cannot silently replace a built-in rule).
    """

    def deco(fn):
        for t in targets:
            if t in _RULES and not override:
                raise ValueError(f"a channel rule for {t!r} is already registered; pass override=True to replace it")
            _RULES[t] = Rule(analyze=fn, export=export, name=getattr(fn, "__name__", str(fn)))
        return fn

    return deco


def lookup(node, modules, extra: dict | None = None) -> Rule | None:
    """The rule for an FX node, or None when fxsparse has none."""
    table = dict(_RULES)
    if extra:
        table.update({k: (v if isinstance(v, Rule) else Rule(analyze=v)) for k, v in extra.items()})
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
        return table.get(node.target)
    if node.op == "call_method":
        return table.get(node.target)
    return None


def registered_targets():
    return list(_RULES)


def describe_target(node, modules) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        t = node.target
        return f"function {getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', repr(t))}".replace("..", ".")
    return f"method .{node.target}()"


__all__ = ["Rule", "register_rule", "lookup", "registered_targets", "describe_target"]
