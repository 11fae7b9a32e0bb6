"""Tied tensors: one parameter under several names (an LM head sharing the input embedding,
two modules holding one ``nn.Parameter``).

A symbolically traced graph reaches a tied tensor under each module's own name, and each
use declares its own member; but the tensor is sliced once and stays one tensor in the
exported model, so every name's channels along a dim are the same channels: they are
coupled here, after the propagation. A name the graph uses without declaring a member along
a dim another name prunes (an op without a channel rule) cannot follow a slice: that dim
stays whole, and the reason names the tie.
"""
from __future__ import annotations

import numpy as np
import torch.fx as fx

from fxsparse.core.elements import ElementTable
from fxsparse.passes.slice_channels import tied_names


def couple_tied_members(gm: fx.GraphModule, members: dict, elements: ElementTable) -> None:
    """Union the element ids of every tied name's member along the same dim (``members``:
    {(qualified name, dim): ids}, as the channel propagation declared them)."""
    used = _names_the_graph_reads(gm)
    for first, aliases in tied_names(gm).items():
        if len(aliases) < 2:
            continue
        dims = {dim for (name, dim) in members if name in aliases}
        for dim in sorted(dims):
            declared = [name for name in aliases if (name, dim) in members]
            for name in declared[1:]:
                elements.union_pairs(members[(declared[0], dim)], members[(name, dim)])
            blind = [name for name in aliases if name in used and (name, dim) not in members]
            if blind:
                elements.mark_unprunable(
                    members[(declared[0], dim)],
                    f"'{declared[0]}' is tied to '{blind[0]}' (one tensor), whose use has no channel rule "
                    f"for its dim {dim}: a slice would change it too")


def _names_the_graph_reads(gm: fx.GraphModule) -> set[str]:
    """Every parameter / buffer name the graph reads: get_attr targets and the tensors of the
    modules it calls (a leaf module reads its submodules' tensors too)."""
    tensors = [name for name, _ in gm.named_parameters(remove_duplicate=False)]
    tensors += [name for name, _ in gm.named_buffers(remove_duplicate=False)]
    read = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users:  # torch.export leaves a dead read of a tie's other name
            read.add(node.target)
        elif node.op == "call_module":
            prefix = f"{node.target}."
            read.update(name for name in tensors if name.startswith(prefix))
    return read


def untied_drops(first: str, per_name: dict[str, dict[int, np.ndarray]]) -> str | None:
    """Why the names of one tied tensor (``per_name``: {name: {dim: dropped indices}}) cannot
    be sliced as one tensor, or None when every name drops the same indices along each dim."""
    names = list(per_name)
    for dim in sorted({d for drops in per_name.values() for d in drops}):
        seen = {name: per_name[name].get(dim, np.empty(0, dtype=np.int64)) for name in names}
        base = names[0]
        for name in names[1:]:
            if not np.array_equal(np.unique(seen[base]), np.unique(seen[name])):
                return (f"'{base}' and '{name}' are one tied tensor ('{first}'), but the keep pattern drops "
                        f"{len(np.unique(seen[base]))} vs {len(np.unique(seen[name]))} different entries of its "
                        f"dim {dim} through them")
    return None
