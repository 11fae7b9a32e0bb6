"""Pass: rewrite the aten ops of a ``torch.export`` graph as the torch-level calls fxsparse's
channel rules are written for (the table and :func:`~fxsparse.rules.aten_ops.register_aten`
are in :mod:`fxsparse.rules.aten_ops`).

The rewritten graph still runs (it is what export slices). Ops with no torch-level form
stay as they are: they have no rule, so channels entering them stay unpruned.
Side-effect-only nodes of the export (input guards, metadata asserts) are dropped: they
check the example shapes, which pruning changes on purpose. Writes no ``node.meta`` key.
"""
from __future__ import annotations

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxsparse.rules.aten_ops import is_side_effect_only, torch_level_call

from .manager import TORCH_LEVEL


def require_torch_level(gm: fx.GraphModule, who: str) -> None:
    """The runtime check of :data:`~fxsparse.passes.manager.TORCH_LEVEL`: no aten op with a
    torch-level form is left (for the ``requires`` of passes that match torch-level calls)."""
    left = [n.name for n in gm.graph.nodes if n.op == "call_function" and torch_level_call(n) is not None]
    if left:
        raise AssertionError(f"{who} needs the torch-level calls of the aten_to_torch pass; aten ops left: {left[:3]}")


class AtenToTorch(PassBase):
    """Rewrites a ``torch.export`` graph in place (see the module docstring)."""

    needs = frozenset()
    gives = frozenset({TORCH_LEVEL})

    def ensures(self, graph_module):
        graph_module.graph.lint()
        require_torch_level(graph_module, "aten_to_torch")

    def call(self, gm: fx.GraphModule) -> PassResult:
        return PassResult(gm, _rewrite(gm))


def _rewrite(gm: fx.GraphModule) -> bool:
    modified = False
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
            modified = True
            continue
        if node.op != "call_function":
            continue
        if is_side_effect_only(node) and not node.users:
            gm.graph.erase_node(node)
            modified = True
            continue
        converted = torch_level_call(node)
        if converted is None:
            continue
        target, args, kwargs = converted
        node.op = "call_method" if isinstance(target, str) else "call_function"
        node.target, node.args, node.kwargs = target, tuple(args), kwargs
        modified = True
    gm.recompile()
    return modified
