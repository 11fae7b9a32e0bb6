"""The channel dependency graph that ``fxsparse.analyze`` returns.

A :class:`ChannelGroup` is a set of channels that are kept or pruned together: channel j
of the group is index ``member.index[j]`` of every member (a parameter and one of its
dims; a block of indices when a channel feeds a flatten). Groups whose channels touch
the same members are one group; a group that must never be pruned says why.
"""
from __future__ import annotations

import dataclasses
import json

import networkx as nx
import numpy as np
import torch
import torch.fx as fx
from tabulate import tabulate

from fxsparse.analysis.flops import layer_of
from fxsparse.core.elements import ElementTable
from fxsparse.rules.registry import Rule, as_rule, describe_target, lookup


@dataclasses.dataclass
class Member:
    param: str  # qualified parameter / buffer name, e.g. "layer1.0.conv1.weight"
    dim: int
    index: list  # index[j]: the indices of channel j along `dim` (np.ndarray of ints)

    @property
    def layer(self) -> str:
        return self.param.rsplit(".", 1)[0] if "." in self.param else self.param

    def pattern(self) -> str:
        """'offset+stride*j (block b)' when regular, else 'irregular'."""
        starts = np.array([ix[0] for ix in self.index])
        blocks = {len(ix) for ix in self.index}
        block = blocks.pop() if len(blocks) == 1 else None
        if len(starts) > 1:
            steps = np.diff(starts)
            stride = int(steps[0]) if (steps == steps[0]).all() else None
        else:
            stride = 1
        if stride is None or block is None or any(not np.array_equal(ix, np.arange(ix[0], ix[0] + block)) for ix in self.index):
            return "irregular"
        text = f"{int(starts[0])}+{stride}j"
        return text + (f" (block {block})" if block != 1 else "")

    def to_dict(self):
        """Compact: ``start``/``stride``/``block`` when channel j is indices
        ``[start + stride*j, start + stride*j + block)`` of ``dim``; otherwise ``index``: a flat
        list (``index[j]``, block 1) or a list of lists (``index[j]``: channel j's indices)."""
        out = {"param": self.param, "dim": self.dim}
        regular = self._regular()
        if regular is not None:
            out.update(zip(("start", "stride", "block"), regular))
        elif all(len(ix) == 1 for ix in self.index):
            out["index"] = [int(ix[0]) for ix in self.index]
        else:
            out["index"] = [ix.tolist() for ix in self.index]
        return out

    def _regular(self):
        """(start, stride, block) when channel j is a contiguous block at start + stride*j, else None."""
        starts = np.array([ix[0] for ix in self.index])
        blocks = {len(ix) for ix in self.index}
        if len(blocks) != 1:
            return None
        block = blocks.pop()
        stride = int(starts[1] - starts[0]) if len(starts) > 1 else 1
        if len(starts) > 1 and not (np.diff(starts) == stride).all():
            return None
        if any(not np.array_equal(ix, np.arange(ix[0], ix[0] + block)) for ix in self.index):
            return None
        return int(starts[0]), stride, int(block)


@dataclasses.dataclass
class ChannelGroup:
    id: int
    size: int
    members: list
    prunable: bool
    reason: str = ""
    flops_share: float = 0.0
    classes: np.ndarray = dataclasses.field(default=None, repr=False)  # element class of channel j

    @property
    def layers(self) -> list[str]:
        seen = []
        for m in self.members:
            if m.layer not in seen:
                seen.append(m.layer)
        return seen

    def to_dict(self):
        return {"id": self.id, "size": self.size, "prunable": self.prunable, "reason": self.reason,
                "flops_share": self.flops_share, "layers": self.layers, "members": [m.to_dict() for m in self.members]}


class ChannelGraph:
    """Groups, the annotated FX graph they came from, and views of both."""

    def __init__(self, gm: fx.GraphModule, elements: ElementTable, members: dict, groups: list,
                 mixing: list, auto_leaves: list, flops: dict | None = None, example_inputs=None,
                 rules: dict | None = None, summing: list | None = None):
        self.gm = gm
        self.elements = elements
        self.raw_members = members
        self.groups = groups
        self.mixing = mixing  # (node name, why): nodes where zeroing a channel differs from removing it
        # (node name, operand positions, why): sums over a channel dim of those operands, equal to
        # removing the channel where one of them is zero there (the compiled step checks)
        self.summing = summing or []
        # the per-call rules of analyze({target: Rule}): export, the masked reference and the
        # compiled step use them like the analysis did
        self.rules: dict[object, Rule] = {k: as_rule(v) for k, v in (rules or {}).items()}
        self.auto_leaves = auto_leaves
        self.flops = flops or {}
        self.example_inputs = example_inputs

    # ----- queries ------------------------------------------------------------------
    def __iter__(self):
        return iter(self.groups)

    def __len__(self):
        return len(self.groups)

    def __getitem__(self, gid) -> ChannelGroup:
        return self.groups[gid]

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def num_prunable_channels(self) -> int:
        return sum(g.size for g in self.prunable_groups)

    @property
    def zero_preserving(self) -> bool:
        """True when no op is mixing: zeroing a channel everywhere equals removing it."""
        return not self.mixing

    def masked_form(self, node_name: str, what: str, error=NotImplementedError):
        """(node, op it calls, masked form) of mixing node ``node_name``. Raises naming the op
        and what to supply when its rule has no masked form (``what``: who needs it)."""
        node = next(n for n in self.gm.graph.nodes if n.name == node_name)
        modules = dict(self.gm.named_modules())
        rule = lookup(node, modules, self.rules)
        if rule is None or rule.masked is None:
            raise error(
                f"{describe_target(node, modules)} (node '{node.name}') mixes channels of one tensor, so zeroing a "
                f"channel there is not removing it, and {what} needs its masked form: register the op's rule with "
                "masked=fn (fxsparse.register_rule(target, masked=fn), or fxsparse.Rule(analyze=..., masked=fn) "
                "in analyze(rules=...)), where fn(op, m, *args, **kwargs) computes the op over the channels "
                "where m is 1 only; or make the op a leaf (leaf_modules) so its channels are not pruned")
        op = modules[node.target] if node.op == "call_module" else node.target
        return node, op, rule.masked

    def networkx(self) -> nx.Graph:
        """Layers (modules owning pruned parameters) as nodes, coupling groups as edges."""
        g = nx.MultiGraph()
        for grp in self.groups:
            layers = grp.layers
            for layer in layers:
                g.add_node(layer)
            for i in range(len(layers)):
                for j in range(i + 1, len(layers)):
                    g.add_edge(layers[i], layers[j], group=grp.id, size=grp.size, prunable=grp.prunable)
            if len(layers) == 1:
                g.nodes[layers[0]].setdefault("groups", []).append(grp.id)
        return g

    # ----- views -------------------------------------------------------------------
    def summary(self, max_layers: int = 4) -> str:
        rows = []
        for grp in self.groups:
            layers = grp.layers
            shown = ", ".join(layers[:max_layers]) + (f", ... (+{len(layers) - max_layers})" if len(layers) > max_layers else "")
            rows.append([grp.id, grp.size, shown, "yes" if grp.prunable else f"no: {grp.reason}", f"{100 * grp.flops_share:.1f}%"])
        table = tabulate(rows, headers=["group", "size", "member layers", "prunable", "FLOPs touched"], tablefmt="simple",
                         maxcolwidths=[None, None, 60, 60, None])
        head = (f"{len(self.groups)} channel groups, {len(self.prunable_groups)} prunable "
                f"({self.num_prunable_channels} prunable channels). FLOPs touched: share of the model's FLOPs "
                "in layers the group slices (a layer counts for its input and its output group, so the column "
                "sums to more than 100%; pruning a fraction r of both removes about 1-(1-r)^2 of them)")
        if self.auto_leaves:
            head += f"; untraceable submodules kept whole: {', '.join(self.auto_leaves)}"
        return head + "\n" + table

    def to_dict(self) -> dict:
        """The groups as plain data; see :meth:`to_json` for the schema."""
        return {"schema": JSON_SCHEMA, "groups": [g.to_dict() for g in self.groups], "auto_leaves": self.auto_leaves,
                "zero_preserving": self.zero_preserving, "mixing_nodes": [n for n, _ in self.mixing]}

    def to_json(self, path=None) -> str:
        """The channel groups as JSON (written to ``path`` when given). Schema ``fxsparse.groups/2``::

            {"schema": "fxsparse.groups/2",
             "groups": [{"id": 0, "size": 16,                 # channels in the group
                         "prunable": true, "reason": "",      # why not, when not prunable
                         "flops_share": 0.12,                 # FLOPs of the layers it slices / model FLOPs
                         "layers": ["conv1", "bn1"],          # modules owning its members, in graph order
                         "members": [                         # channel j of the group is, in each member:
                            {"param": "conv1.weight", "dim": 0, "start": 0, "stride": 1, "block": 1},
                                                              # indices [start + stride*j, ... + block) of dim
                            {"param": "fc.weight", "dim": 1, "index": [3, 0, 7]}]}],
                                                              # or explicitly: index[j] (a list when block > 1)
             "auto_leaves": [],                               # untraceable submodules kept whole
             "zero_preserving": true,                         # no op mixes the channels of one tensor
             "mixing_nodes": []}                              # the ops that do
        """
        text = json.dumps(self.to_dict(), separators=(",", ":"))
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def dataflow(self) -> nx.DiGraph:
        """The layers in data-flow order: nodes are the model input, the modules with parameters
        (and parameters used directly) and the output, in graph order; an edge a -> b when a's
        output reaches b through parameter-free ops. Node attribute ``groups``: the channel groups
        of the node's output channels (more than one after a concatenation; empty for the input
        and output); edge attribute ``groups`` likewise for the channels that flow along it."""
        out_group = self._output_groups()
        g = nx.DiGraph()
        upstream: dict = {}
        modules = dict(self.gm.named_modules())
        for node in self.gm.graph.nodes:
            preds = set().union(*(upstream.get(a, set()) for a in node.all_input_nodes)) if node.all_input_nodes else set()
            name = None
            if node.op == "placeholder":
                name = f"input {node.target}"
            elif node.op == "output":
                name = "output"
            elif node.op == "call_module" and any(True for _ in modules[node.target].parameters(recurse=False)):
                name = node.target
            elif node.op == "get_attr" and isinstance(_attr(self.gm, node.target), torch.nn.Parameter):
                name = node.target
            if name is None:
                upstream[node] = preds
                continue
            g.add_node(name, groups=out_group.get(name, []), order=len(g))
            for p in sorted(preds, key=lambda n: g.nodes[n]["order"]):
                g.add_edge(p, name, groups=g.nodes[p]["groups"])
            upstream[node] = {name}
        return g

    def _output_groups(self) -> dict:
        """layer (or directly used parameter) -> the ids of the groups holding its output channels."""
        found = {}
        modules = dict(self.gm.named_modules())
        for grp in self.groups:
            for m in grp.members:
                mod = modules.get(m.layer)
                out_dim = 1 if isinstance(mod, torch.nn.modules.conv._ConvTransposeNd) else 0
                if mod is not None and m.param.endswith(".weight") and m.dim == out_dim:
                    key = m.layer
                elif mod is None and m.dim == _last_dim(self.gm, m.param):  # a parameter used directly
                    key = m.param
                else:
                    continue
                if grp.id not in found.setdefault(key, []):
                    found[key].append(grp.id)
        return found

    def to_dot(self, path=None) -> str:
        """Graphviz DOT of the data flow (``dot -Tsvg groups.dot -o groups.svg``): layers as
        boxes from top to bottom in graph order, an edge where one layer's output reaches the
        next; a box is filled with the colour of the group of its output channels, an edge is
        coloured and labelled with the group that flows along it (``g3 (16)``: group 3, 16
        channels); grey: unprunable (the legend lists why)."""
        flow = self.dataflow()
        palette = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
                   "#bc80bd", "#ccebc5", "#ffed6f", "#a6cee3"]

        def colours(gids, darker=False):
            cs = ["#dddddd" if not self.groups[i].prunable else palette[i % len(palette)] for i in gids] or ["#dddddd"]
            return ":".join(_darker(c) if darker else c for c in cs)

        def label(gids):
            return " + ".join(f"g{i} ({self.groups[i].size})" for i in gids)

        lines = ["digraph dataflow {", "  rankdir=TB;", '  node [shape=box, style="filled", fontsize=10];',
                 "  edge [fontsize=8, penwidth=1.5];"]
        for name, data in flow.nodes(data=True):
            gids = data["groups"]
            text = name + (f"\\n{label(gids)}" if gids else "")
            style = ", shape=ellipse" if not gids else (', style="striped"' if len(gids) > 1 else "")
            lines.append(f'  "{name}" [label="{text}", fillcolor="{colours(gids)}"{style}];')
        for a, b, data in flow.edges(data=True):
            gids = data["groups"]
            lines.append(f'  "{a}" -> "{b}" [label="{label(gids)}", color="{colours(gids, darker=True)}"];')
        unprunable = [g for g in self.groups if not g.prunable]
        if unprunable:
            text = "\\l".join(f"g{g.id}: {g.reason[:80]}" for g in unprunable) + "\\l"
            lines.append(f'  legend [shape=note, fillcolor="#dddddd", label="unprunable (grey)\\l{_escape(text)}"];')
        lines.append("}")
        text = "\n".join(lines)
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def __repr__(self):
        return f"ChannelGraph({len(self.groups)} groups, {len(self.prunable_groups)} prunable)"


JSON_SCHEMA = "fxsparse.groups/2"


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _last_dim(gm, param: str) -> int:
    p = _attr(gm, param)
    return p.dim() - 1 if isinstance(p, torch.Tensor) else -1


def _darker(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#%02x%02x%02x" % (int(r * 0.6), int(g * 0.6), int(b * 0.6))


def _escape(text: str) -> str:
    return text.replace('"', '\\"')


def _member_rows(elements: ElementTable, members: dict):
    """One row per (member, position) that holds an element: member number, canonical
    class and position, sorted by class, then member (graph order), then position."""
    canon = [elements.canonical(np.asarray(ids).ravel()) for ids in members.values()]
    member = np.repeat(np.arange(len(canon)), [len(c) for c in canon])
    cls = np.concatenate(canon) if canon else np.zeros(0, dtype=np.int64)
    pos = np.concatenate([np.arange(len(c)) for c in canon]) if canon else cls
    held = cls >= 0
    member, cls, pos = member[held], cls[held], pos[held]
    order = np.lexsort((pos, member, cls))
    return member[order], cls[order], pos[order]


def _signatures(member, cls_row, n_classes, n_members, reason_codes):
    """Per class, a label shared exactly by the classes that touch the same members and have
    the same reason: the members as a bit row (64 per word) and the reason's code, sorted
    column by column (np.unique over rows sorts a void dtype, 50x slower)."""
    words = np.zeros((n_classes, (n_members + 63) // 64), dtype=np.uint64)
    np.bitwise_or.at(words, (cls_row, member // 64), np.left_shift(np.uint64(1), (member % 64).astype(np.uint64)))
    rows = np.concatenate([words, reason_codes.astype(np.uint64)[:, None]], axis=1)
    order = np.lexsort(rows.T[::-1])
    changed = np.r_[True, (rows[order][1:] != rows[order][:-1]).any(axis=1)]
    label = np.empty(n_classes, dtype=np.int64)
    label[order] = np.cumsum(changed) - 1
    return label


def _reason_codes(elements: ElementTable, classes: np.ndarray):
    """(texts, code per class): code 0 = no reason (prunable)."""
    reasons = elements.reasons()
    texts = [""] + sorted(set(reasons.values()))
    number = {text: i for i, text in enumerate(texts)}
    roots = np.fromiter(reasons, dtype=np.int64, count=len(reasons))
    code = np.fromiter((number[t] for t in reasons.values()), dtype=np.int64, count=len(reasons))
    at = np.clip(np.searchsorted(classes, roots), 0, max(len(classes) - 1, 0))
    found = classes[at] == roots
    codes = np.zeros(len(classes), dtype=np.int64)
    codes[at[found]] = code[found]
    return texts, codes


def build_groups(elements: ElementTable, members: dict) -> list[ChannelGroup]:
    """Classes that touch the same members (and share prunability) form one group. Groups
    come in graph order (of the first member a class touches, then class id); a group's
    channels in the order of their first position in its first member. Vectorised: a
    12-layer transformer has ~10^5 classes over ~200 members."""
    keys = list(members)
    member, cls, pos = _member_rows(elements, members)
    classes, cls_row = np.unique(cls, return_inverse=True)
    if not len(classes):
        return []
    first_row = np.searchsorted(cls, classes)  # each class's first row: its first member, first position
    reason_names, reason_codes = _reason_codes(elements, classes)
    label = _signatures(member, cls_row, len(classes), len(keys), reason_codes)
    # a pair (class, member) is a run of rows: its positions are the channel's indices there
    pair_start = np.flatnonzero(np.r_[True, (cls[1:] != cls[:-1]) | (member[1:] != member[:-1])])
    pair_end = np.r_[pair_start[1:], len(cls)]
    pair_member = member[pair_start]
    pair_bounds = np.searchsorted(cls_row[pair_start], np.arange(len(classes) + 1))  # pairs by class, members in order
    # group order: by the first member a class touches, then class id (classes are sorted)
    labels_in_order = label[np.lexsort((classes, member[first_row]))]
    _, first_seen = np.unique(labels_in_order, return_index=True)
    groups = []
    by_label = np.argsort(label, kind="stable")
    bounds = np.searchsorted(label[by_label], np.arange(label.max() + 2))
    for lab in labels_in_order[np.sort(first_seen)].tolist():
        rows = by_label[bounds[lab]:bounds[lab + 1]]
        rows = rows[np.argsort(pos[first_row[rows]], kind="stable")]  # channel order = layout order
        first = rows[0]
        # every class of the group has one pair per member of the group, members in graph order
        width = pair_bounds[first + 1] - pair_bounds[first]
        table = (pair_bounds[rows][:, None] + np.arange(width)).reshape(len(rows), width)
        mems = []
        for col, m in enumerate(pair_member[table[0]].tolist()):
            starts, ends = pair_start[table[:, col]], pair_end[table[:, col]]
            if (ends - starts == 1).all():
                index = list(pos[starts][:, None])
            else:
                index = [pos[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
            mems.append(Member(param=keys[m][0], dim=keys[m][1], index=index))
        reason = reason_names[reason_codes[first]]
        groups.append(ChannelGroup(id=len(groups), size=len(rows), members=mems, prunable=not reason,
                                   reason=reason, classes=classes[rows].astype(np.int64)))
    return groups


def assign_flops(groups, param_flops: dict, total: float, shapes: dict):
    """A group's share of the FLOPs it touches: for each member weight, the layer's FLOPs
    times the fraction of that weight's dim the group holds (torch.utils.flop_counter).
    A layer counts for every group that slices it (input and output), so the shares sum
    to more than 1; real sub-network FLOPs are in :class:`fxsparse.analysis.flops.SubnetFlops`."""
    if not total:
        return
    for grp in groups:
        share = 0.0
        for m in grp.members:
            layer = layer_of(m.param)
            if layer in param_flops:
                held = sum(len(ix) for ix in m.index)
                share += param_flops[layer] * held / shapes[m.param][m.dim]
        grp.flops_share = share / total


def count_flops(module: torch.nn.Module, example_inputs) -> tuple[float, dict]:
    """Total forward FLOPs and per-module FLOPs (keys: module paths) via FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from fxsparse.core.flop_formulas import register_known

    register_known()  # grouped matrix products (experts) count too
    rng = torch.get_rng_state()
    buffers = {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items() if not isinstance(v, torch.nn.Parameter)}
    # nn.MultiheadAttention's inference fast path (eval, no grad) is one fused op the
    # counter does not count: the dense model would look cheaper than its pruned export
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        try:
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                module(*example_inputs)
        except AssertionError:  # the counter's module hooks under no_grad, on a module called with
            torch.set_rng_state(rng)  # a parameter itself (CaiT's class token): count with grad on
            counter = FlopCounterMode(display=False)
            with counter:
                module(*example_inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        torch.set_rng_state(rng)
        state = module.state_dict(keep_vars=True)
        with torch.no_grad():
            for k, v in buffers.items():
                state[k].copy_(v)
    per = {}
    for name, counts in counter.get_flop_counts().items():
        if name == "Global":
            continue
        path = name.split(".", 1)[1] if "." in name else ""  # keys are 'RootClass.path.to.module'
        per[path] = float(sum(counts.values()))
    return float(counter.get_total_flops()), per
