"""Whether one capacity model can serve every kept-channel count (dynamic capacities), and
the rewrites that make it so.

The dynamic step runs the whole model's capacity model on tensors gathered at each step's
exact counts. That is the exported model of the step's mask only when nothing in the graph
or its modules depends on a channel count other than the shapes of the tensors it is
given. Two exports (every channel, and about half) tell: their code and their modules'
settings must be the same, up to

- sizes that only describe a module's own tensors (``SHAPE_ONLY``: the step passes them in);
- modules the capacity model calls through their masked form (a LayerNorm over pruned
  channels: see :mod:`fxsparse.passes.masked_mixing`), which reads no count;
- the ``groups`` of a depthwise convolution: the capacity model reads it from its input's
  channel count (:class:`fxsparse.passes.opaque_conv.OpaqueConvolutions`; its padding must
  be one constant per dim, as ``'same'`` is for an odd kernel);
- one size of a ``view``/``reshape`` (heads of an attention, a flattened width): the
  capacity model infers it (``-1``);
- the sizes of a ``split`` into separately pruned pieces (ShuffleNet's halves): the
  capacity model reads each from the length of a per-step buffer (a :class:`Piece`);
- a channel shuffle's permutation (a buffer of the fused ``channel_permute``): the step
  passes the permutation of its kept channels (a :class:`Permutation`).

What is left (a ``narrow`` or slice of pruned channels, a constant in arithmetic, another
buffer whose length is a channel count) pins a count, and the model keeps static capacities.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.analysis.masks import random_keep
from fxsparse.rewrite.export import export
from fxsparse.passes.opaque_conv import can_be_opaque
from fxsparse.rules.shapes import channel_permute

# module attributes that only describe the shapes of the module's own tensors, which the
# step passes in (their values never reach the computation)
_CONV_SIZES = ("in_channels", "out_channels")
SHAPE_ONLY = {
    nn.Conv1d: _CONV_SIZES, nn.Conv2d: _CONV_SIZES, nn.Conv3d: _CONV_SIZES,
    nn.ConvTranspose1d: _CONV_SIZES, nn.ConvTranspose2d: _CONV_SIZES, nn.ConvTranspose3d: _CONV_SIZES,
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",), nn.BatchNorm2d: ("num_features",), nn.BatchNorm3d: ("num_features",),
}
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_RESHAPES = {"view", "reshape", torch.reshape}
_CONV_FUNCTIONS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}
_SPLITS = {"split", torch.split}


@dataclass(frozen=True)
class Piece:
    """One piece of a split whose sizes are kept counts: positions ``start:stop`` of the
    split's input ``source`` along ``dim`` (every channel kept). Its buffer's length is the
    piece's size in a step: the step passes a vector of as many positions."""
    source: str
    dim: int
    start: int
    stop: int


@dataclass(frozen=True)
class Permutation:
    """A channel shuffle (``channel_permute`` node ``node`` of ``source`` along ``dim``) whose
    buffer the step replaces by the permutation of the positions it runs; ``full``: the
    permutation with every channel kept (output position j reads input position full[j])."""
    source: str
    node: str
    dim: int
    full: torch.Tensor = field(compare=False)


@dataclass
class ShapeFree:
    """``reason``: what pins a kept count (None: one capacity model serves every count).
    ``inferred_sizes``: {view/reshape node: position of its one count-dependent size};
    ``groups_from_shapes``: depthwise convolution nodes; ``split_dims``: {split node whose
    sizes are kept counts: its dim}; ``step_buffers``: {capacity-model buffer: the
    :class:`Piece` or :class:`Permutation` the step passes in it} (see the module docstring)."""
    reason: str | None = None
    inferred_sizes: dict[str, int] = field(default_factory=dict)
    groups_from_shapes: set[str] = field(default_factory=set)
    split_dims: dict[str, int] = field(default_factory=dict)
    step_buffers: dict[str, Piece | Permutation] = field(default_factory=dict)

    def apply(self, cap: fx.GraphModule) -> None:
        """Rewrite ``cap`` (the export with every channel kept): ``-1`` at each inferred size,
        and each count-dependent split reads its sizes from the lengths of buffers of its own
        (recorded in ``step_buffers``)."""
        for node in list(cap.graph.nodes):
            if node.name in self.inferred_sizes:
                sizes, write = _reshape_sizes(node)
                sizes[self.inferred_sizes[node.name]] = -1
                write(sizes)
            elif node.name in self.split_dims:
                self._split_by_buffers(cap, node)
        cap.recompile()

    def _split_by_buffers(self, cap, node):
        source, sizes = node.args[0], list(node.args[1])
        lengths, start = [], 0
        for i, size in enumerate(sizes):
            name = f"_fxsparse_piece_{node.name}_{i}"
            cap.register_buffer(name, torch.zeros(size, dtype=torch.long), persistent=False)
            self.step_buffers[name] = Piece(source.name, self.split_dims[node.name], start, start + size)
            start += size
            with cap.graph.inserting_before(node):
                lengths.append(cap.graph.call_method("size", (cap.graph.get_attr(name), 0)))
        node.args = (source, lengths, *node.args[2:])


def shape_free(model: nn.Module, graph: ChannelGraph, seed: int = 0) -> ShapeFree:
    """How the capacity model of every count is one model (or the reason it cannot be)."""
    full = export(model, graph, {g.id: torch.ones(g.size, dtype=torch.bool) for g in graph.groups})
    half = export(model, graph, random_keep(graph, 0.5, torch.Generator().manual_seed(seed)))
    result = ShapeFree()
    result.reason = (_code_dependence(full, half, result) or _module_dependence(model, graph, full, half, result)
                     or _groups_fixed(full, result))
    return result


def _groups_fixed(full, result) -> str | None:
    """A depthwise convolution whose groups must follow its input but that the capacity model
    cannot call with groups read from it (its padding is no constant per dim, its padding
    mode not zeros): its groups pin its channel count."""
    for node in full.graph.nodes:
        if node.name in result.groups_from_shapes and not can_be_opaque(full, node):
            return f"the depthwise convolution {node.name!r} cannot take its groups from its input (its padding)"
    return None


def count_dependence(model: nn.Module, graph: ChannelGraph, seed: int = 0) -> str | None:
    """None when the capacity model does not depend on the kept counts beyond its tensors'
    shapes (after :class:`ShapeFree`'s rewrites), else what does (for the error or the log)."""
    return shape_free(model, graph, seed).reason


def _reshape_sizes(node):
    """(the target sizes of a view/reshape node as a list, a function writing them back)."""
    if node.op == "call_function" or (len(node.args) == 2 and isinstance(node.args[1], (list, tuple))):
        def write(sizes):
            node.args = (node.args[0], sizes, *node.args[2:])
        return list(node.args[1]), write

    def write(sizes):
        node.args = (node.args[0], *sizes)
    return list(node.args[1:]), write


def _code_dependence(full, half, result) -> str | None:
    halves = dict(half.named_modules())
    for name, mod in full.named_modules():
        if not isinstance(mod, fx.GraphModule):
            continue
        other = halves.get(name)
        if not isinstance(other, fx.GraphModule):
            return f"module {name!r} differs between two exports"
        other_nodes = {n.name: n for n in other.graph.nodes}
        for node in mod.graph.nodes:
            twin = other_nodes.get(node.name)
            if twin is None or twin.target != node.target:
                return f"submodule {name!r} holds a constant that depends on a channel count (node {node.name})"
            if _by_name(node) == _by_name(twin):
                continue
            # the rewrites name nodes of the top graph (OpaqueConvolutions and apply run there)
            if not name and _differs_in_groups_only(node, twin):
                result.groups_from_shapes.add(node.name)  # a functional depthwise convolution
                continue
            split_dim = _split_dim(node, twin) if not name else None
            if split_dim is not None:
                result.split_dims[node.name] = split_dim
                continue
            position = _one_differing_size(node, twin) if not name else None
            if position is None:
                where = f" in submodule {name!r}" if name else ""
                return (f"the call {_call_text(node)}{where} holds a constant that depends on a channel count "
                        f"(with other channels kept: {_call_text(twin)})")
            result.inferred_sizes[node.name] = position
    return None


def _call_text(node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    args, kwargs = _by_name(node)
    return f"{target}({', '.join([str(a) for a in args] + [f'{k}={v}' for k, v in kwargs.items()])})"


def _by_name(node):
    """A node's arguments with nodes as their names (comparable across two graphs)."""
    return fx.node.map_arg((node.args, node.kwargs), lambda n: n.name)


def _differs_in_groups_only(node, twin) -> bool:
    """A functional convolution whose two exports differ in ``groups`` only."""
    if node.op != "call_function" or node.target not in _CONV_FUNCTIONS:
        return False

    def without_groups(n):
        args, kwargs = _by_name(n)
        return args[:6], {k: v for k, v in kwargs.items() if k != "groups"}

    return without_groups(node) == without_groups(twin)


def _split_dim(node, twin) -> int | None:
    """The dim of a split (call or method) whose two exports differ in their int sizes only."""
    if node.target not in _SPLITS or len(node.args) < 2 or not isinstance(node.args[1], (list, tuple)):
        return None
    args, kwargs = _by_name(node)
    twin_args, twin_kwargs = _by_name(twin)
    sizes_only = args[0] == twin_args[0] and args[2:] == twin_args[2:] and kwargs == twin_kwargs
    if not sizes_only or not all(isinstance(s, int) for s in [*args[1], *twin_args[1]]):
        return None
    return args[2] if len(args) > 2 else kwargs.get("dim", 0)


def _one_differing_size(node, twin) -> int | None:
    """The position of the only size that differs between two exports of a view/reshape
    (None when it is not one, or another size is already inferred)."""
    if node.target not in _RESHAPES or node.kwargs or twin.kwargs:
        return None
    sizes, twin_sizes = (fx.node.map_arg(_reshape_sizes(n)[0], lambda a: a.name) for n in (node, twin))
    if len(sizes) != len(twin_sizes) or -1 in sizes:
        return None
    differing = [i for i, (a, b) in enumerate(zip(sizes, twin_sizes)) if a != b]
    if len(differing) != 1 or not isinstance(sizes[differing[0]], int):
        return None
    return differing[0]


def _module_dependence(model, graph, full, half, result) -> str | None:
    dense = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    halves = dict(half.named_modules())
    calls = {}  # module name -> the nodes calling it
    for node in full.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node.name)
    mixing = {name for name, _ in graph.mixing}
    permutes = {n.args[2].target: n for n in full.graph.nodes
                if n.op == "call_function" and n.target is channel_permute and n.args[2].op == "get_attr"}
    for name, mod in full.named_modules():
        other = halves.get(name)
        if not _same_kind(mod, other):
            return f"module {name!r} differs between two exports"
        if calls.get(name) and set(calls[name]) <= mixing:
            continue  # called through its masked form only, which reads no count
        if not isinstance(mod, fx.GraphModule):  # a graph's settings are its code (compared above)
            reason = _setting_dependence(name, mod, other, calls, result)
            if reason:
                return reason
        for key, buf in mod._buffers.items():  # a graph's own too: a channel shuffle's permutation
            full_name = f"{name}.{key}" if name else key
            twin = other._buffers.get(key)
            if buf is None or full_name in dense or (twin is not None and buf.shape == twin.shape):
                continue
            if full_name in permutes:  # a channel shuffle's: the step passes it
                node = permutes[full_name]
                result.step_buffers[full_name] = Permutation(node.args[0].name, node.name, node.args[1], buf.clone())
                continue
            return f"buffer {full_name!r} of the rewritten model has a channel-count length"
    return None


def _same_kind(mod, other) -> bool:
    """The same module class (every GraphModule instance has a class of its own)."""
    graphs = isinstance(mod, fx.GraphModule) and isinstance(other, fx.GraphModule)
    return graphs or type(other) is type(mod)


def _setting_dependence(name, mod, other, calls, result) -> str | None:
    """A module setting that differs between the two exports (None: every one follows the
    counts; depthwise groups are recorded in ``result``)."""
    skip = SHAPE_ONLY.get(type(mod), ())
    for key, value in vars(mod).items():
        if key.startswith("_") or key in skip or key == "training" or _same(value, getattr(other, key, None)):
            continue
        if key == "groups" and isinstance(mod, _CONVOLUTIONS) and mod.weight.shape[1] == other.weight.shape[1]:
            result.groups_from_shapes.update(calls.get(name, ()))  # depthwise: as many groups as channels
            continue
        return f"{type(mod).__name__} {name!r} has {key}={value!r}, which depends on its channel count"
    return None


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
    try:
        return bool(a == b)
    except Exception:  # an attribute without a plain equality: treat as different
        return a is b
