"""What a rule reads the graph through: :class:`GraphValues` (shapes and size values,
the base of both contexts), and the values rules pass around (parameter views, tuple items).

A rule sees the graph through the context it is called with
(:class:`~fxsparse.rules.analysis_context.AnalysisContext` for ``analyze``,
:class:`~fxsparse.rules.export_context.ExportContext` for ``export``; the whole contract is in
:mod:`fxsparse.rules.contract`): those read and write ``node.meta``
(:mod:`fxsparse.rules.meta_keys`), so a rule never touches a meta key (see ``tests/rules/test_rules.py``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.fx as fx

from fxsparse.core.elements import NO_ELEMENT, ElementTable, compress, has_elements, varying_dims

from .meta_keys import SHAPE, VALUE


@dataclasses.dataclass(frozen=True)
class FreeRef:
    """A parameter (or buffer) seen through shape-only ops: ``dims[d]`` is the parameter
    dim that tensor dim ``d`` comes from, or None where it does not come from one dim."""

    qualname: str
    dims: tuple


def operand_paths(node: fx.Node, operands) -> tuple:
    """Where each of ``operands`` sits in ``node``'s arguments, as paths such as ``("args", 0)``,
    ``("args", 1, 2)`` (an item of a list argument) or ``("kwargs", "input")``. Unlike a
    position among the node's fx.Node arguments, a path still points at the same operand in a
    later graph where another argument became a node (a symbolic size): read it back with
    :func:`operands_at`."""
    paths = []

    def walk(value, path):
        if isinstance(value, fx.Node):
            if any(value is o for o in operands):
                paths.append(path)
        elif isinstance(value, (tuple, list)):
            for i, v in enumerate(value):
                walk(v, path + (i,))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + (k,))

    walk(tuple(node.args), ("args",))
    walk(dict(node.kwargs), ("kwargs",))
    return tuple(paths)


def operands_at(node: fx.Node, paths) -> list:
    """The fx.Node arguments of ``node`` at ``paths`` (from :func:`operand_paths`); a path that
    no longer leads to a node is skipped."""
    found = []
    for path in paths:
        value = node.args if path[0] == "args" else node.kwargs
        for key in path[1:]:
            try:
                value = value[key]
            except (IndexError, KeyError, TypeError):
                value = None
                break
        if isinstance(value, fx.Node):
            found.append(value)
    return found


def where(node: fx.Node) -> str:
    """'file:line' of the user code that created the node, when FX recorded it; else the
    module it runs in (torch.export records that even without stack traces)."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
    lines = [ln for ln in lines if not _internal_line(ln)] or lines
    if lines:
        last = lines[-1]
        try:
            path = last.split('"')[1]
            lineno = last.split("line ")[1].split(",")[0]
            return f"{path}:{lineno}"
        except IndexError:
            return last
    modules = node.meta.get("nn_module_stack")
    if modules:
        path, cls = list(modules.values())[-1]
        cls = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", cls)
        return f"node '{node.name}' in module '{path}' ({cls})" if path else f"node '{node.name}' ({cls})"
    return f"node '{node.name}'"


def _internal_line(line: str) -> bool:
    """Whether a traceback line ('File "path", line N, in f') is in torch's or fxsparse's own code."""
    from fxsparse.core.tracing import is_internal

    parts = line.split('"')
    return len(parts) > 1 and is_internal(parts[1])


@dataclasses.dataclass(frozen=True)
class TupleItem:
    """Item i of a tuple-valued node (``rows = x.unbind(2)``; ``torch.stack(rows[::-1])``)."""

    node: fx.Node
    index: int

    @property
    def name(self):
        return f"{self.node.name}[{self.index}]"


class GraphValues:
    """Reads what the shape_prop pass recorded: shapes of graph values and concrete values
    of size arguments. The contexts rules are called with extend it."""

    @staticmethod
    def shape(arg):
        if isinstance(arg, TupleItem):
            return arg.node.meta[SHAPE][arg.index]
        if isinstance(arg, fx.Node):
            return arg.meta.get(SHAPE)
        if isinstance(arg, torch.Tensor):
            return tuple(arg.shape)
        return None

    @classmethod
    def value(cls, arg):
        """Concrete value of a shape argument (a size node, or a list / slice of them)."""
        if isinstance(arg, fx.Node):
            return arg.meta.get(VALUE)
        if isinstance(arg, slice):
            return slice(cls.value(arg.start), cls.value(arg.stop), cls.value(arg.step))
        if isinstance(arg, (list, tuple)):
            return type(arg)(cls.value(a) for a in arg)
        return arg

    @staticmethod
    def is_tuple_valued(arg) -> bool:
        shape = arg.meta.get(SHAPE) if isinstance(arg, fx.Node) else None
        return isinstance(shape, tuple) and bool(shape) and isinstance(shape[0], tuple)

    def sequence_items(self, arg):
        """The tensors of a list argument: a python list of values, or a tuple-valued node."""
        if self.is_tuple_valued(arg):
            return [TupleItem(arg, i) for i in range(len(arg.meta[SHAPE]))]
        return list(arg)


def node_arg(node: fx.Node, i: int, name: str, default=None):
    """Argument ``i`` of a call, positional or given by keyword ``name``."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def finish(elements: ElementTable, ids):
    """Canonicalise and compress a rule's output; make multi-dim channel grids rectangular."""
    if ids is None:
        return None
    if isinstance(ids, (tuple, list)):
        return type(ids)(finish(elements, i) for i in ids)
    ids = elements.canonical(np.asarray(ids, dtype=np.int64))
    if not has_elements(ids):
        return None
    vd = varying_dims(ids)
    if len(vd) > 1:
        ids = rectangularize(elements, ids, vd)
    return compress(ids)


def rectangularize(elements: ElementTable, ids: np.ndarray, vd: list[int]) -> np.ndarray:
    """Channels spread over several dims (a [heads, head_dim] grid) can only be removed as
    whole slices of one dim. The unit is the dim just outside the innermost one (heads
    outside head_dim, q/k/v outside heads, groups of a maxout): everything within a
    slice of it is tied together."""
    unit = vd[-2]
    moved = np.moveaxis(ids, unit, 0)
    for row in moved.reshape(moved.shape[0], -1):
        elements.union_all(row)
        if (row < 0).any():
            # part of the slice is a fixed (unprunable) channel: the slice cannot go
            elements.mark_unprunable(row, "channel grid slice mixes prunable and fixed channels")
    return elements.canonical(ids)


__all__ = ["FreeRef", "GraphValues", "TupleItem", "finish", "node_arg", "where", "NO_ELEMENT"]
