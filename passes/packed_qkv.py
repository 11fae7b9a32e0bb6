"""Pass: ``nn.MultiheadAttention``'s packed in-projection, as ``torch.export`` records it,
becomes a plain three-way split, so q, k and v keep their own channels.

``F.multi_head_attention_forward`` separates q, k and v of self-attention with
``proj.unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()`` and
then picks rows 0, 1 and 2. The analysis would see a [3, E] channel grid there and make
each of q, k and v one unit (a grid is pruned by the slices of its outer dim), which the
row picks then block: no head could go. ``proj.chunk(3, -1)[i].contiguous()`` is the same
tensor, and through it each head of q, k and v prunes like hand-written attention.

Writes no ``node.meta`` key (run before shape propagation).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .aten_to_torch import require_torch_level
from .manager import TORCH_LEVEL


def _only_user(node: fx.Node, target, args_tail) -> fx.Node | None:
    """The single user of ``node`` if it is ``target(node, *args_tail)``, else None."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.target != target or user.kwargs or tuple(user.args[1:]) != args_tail:
        return None
    return user


def _row(node: fx.Node) -> int | None:
    """The row a ``packed[(i,)]`` / ``packed[i]`` pick takes, else None."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return None
    index = node.args[1]
    index = index[0] if isinstance(index, tuple) and len(index) == 1 else index
    return index if isinstance(index, int) and 0 <= index < 3 else None


class SplitPackedQKV(PassBase):
    """Rewrites the packed in-projections of a graph in place (see the module docstring)."""

    needs = frozenset({TORCH_LEVEL})
    gives = frozenset()

    def requires(self, graph_module):
        require_torch_level(graph_module, "packed_qkv")

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, gm: fx.GraphModule) -> PassResult:
        changed = False
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target is not torch.unflatten or node.kwargs:
                continue
            if len(node.args) != 3 or node.args[1] != -1 or list(node.args[2])[:1] != [3] or len(node.args[2]) != 2:
                continue
            chain = [node]
            for target, tail in ((torch.unsqueeze, (0,)), (torch.transpose, (0, -2)), (torch.squeeze, (-2,)),
                                 ("contiguous", ())):
                nxt = _only_user(chain[-1], target, tail)
                if nxt is None:
                    break
                chain.append(nxt)
            if len(chain) != 5 or not chain[-1].users or any(_row(u) is None for u in chain[-1].users):
                continue
            proj = node.args[0]
            with gm.graph.inserting_after(proj):
                pieces = gm.graph.call_function(torch.chunk, (proj, 3, -1))
            for pick in list(chain[-1].users):
                with gm.graph.inserting_before(pick):
                    piece = gm.graph.call_function(operator.getitem, (pieces, _row(pick)))
                    dense = gm.graph.call_method("contiguous", (piece,))
                dense.meta.update(pick.meta)
                pick.replace_all_uses_with(dense)
                gm.graph.erase_node(pick)
            for dead in reversed(chain):
                gm.graph.erase_node(dead)
            changed = True
        if changed:
            gm.recompile()
        return PassResult(gm, changed)
