"""Pass: ops whose behaviour depends on the training mode follow the GraphModule's own
``training`` flag instead of the constant ``torch.export`` recorded.

``torch.export`` runs the model's Python once, in one mode, and records the flags it saw as
constants: ``F.dropout(x, p, False)``, ``F.batch_norm(..., False, ...)``. A captured graph
that kept them would train without dropout and batch statistics (or evaluate with them):
a silent wrong result. This pass replaces every recorded flag that equals the mode of the
capture with a read of ``self.training`` (one ``get_attr`` node), so ``.train()`` /
``.eval()`` on the captured graph, the exported model and the capacity model switch them
as on the original model.

A flag that differs from the capture mode (``F.dropout(x, p, training=True)`` written in
the model, batch norm without running statistics) is the model's own constant: kept.
Python-level branches on ``self.training`` (stochastic depth, an attention dropout
probability chosen in Python) are not ops with a flag: the graph holds the branch of the
capture mode. Writes no ``node.meta`` key.
"""
from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .aten_to_torch import require_torch_level
from .manager import TORCH_LEVEL

TRAINING = "training"  # the GraphModule attribute the rewritten flags read

# function -> (position, keyword) of its training flag
_FLAG = {
    F.dropout: (2, "training"),
    F.alpha_dropout: (2, "training"),
    F.feature_alpha_dropout: (2, "training"),
    F.dropout1d: (2, "training"),
    F.dropout2d: (2, "training"),
    F.dropout3d: (2, "training"),
    F.batch_norm: (5, "training"),
}


class FollowTrainingMode(PassBase):
    """``FollowTrainingMode(captured_training)(gm)``: ``captured_training`` is the mode the
    graph was captured in (see the module docstring)."""

    needs = frozenset({TORCH_LEVEL})  # its flags are read off F.dropout / F.batch_norm calls
    gives = frozenset()

    def __init__(self, captured_training: bool):
        self.captured_training = bool(captured_training)

    def requires(self, graph_module):
        require_torch_level(graph_module, "training_mode")

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, gm: fx.GraphModule) -> PassResult:
        flag_node = None

        def training_node():
            nonlocal flag_node
            if flag_node is None:
                first = next(n for n in gm.graph.nodes if n.op != "placeholder")
                with gm.graph.inserting_before(first):
                    flag_node = gm.graph.create_node("get_attr", TRAINING, name="training_mode")
            return flag_node

        for node in list(gm.graph.nodes):
            if node.op != "call_function":
                continue
            if node.target in _FLAG:
                self._follow_flag(node, training_node)
        if flag_node is not None:
            gm.recompile()
        return PassResult(gm, flag_node is not None)

    def _follow_flag(self, node, training_node):
        position, keyword = _FLAG[node.target]
        if node.target is F.batch_norm and _arg(node, 1, "running_mean") is None:
            return  # no running statistics: batch statistics in every mode
        value = _arg(node, position, keyword, default=True)
        if isinstance(value, bool) and value == self.captured_training:
            _set_arg(node, position, keyword, training_node())


def _arg(node, position, keyword, default=None):
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(keyword, default)


def _set_arg(node, position, keyword, value):
    if len(node.args) > position:
        args = list(node.args)
        args[position] = value
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, keyword: value}
