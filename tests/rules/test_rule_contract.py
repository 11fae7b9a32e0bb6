"""The rule contract (fxsparse.rules.contract) and the pass manager that runs the passes.

A toy op added through the contract alone (a rule and, for torch.export, an aten form) is
analysed and exported under both captures, checked against the masked reference; a pass
run before the facts it needs is rejected before anything runs."""
from __future__ import annotations

import importlib
import pkgutil
import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.infra.pass_base import PassBase

import fxsparse
import fxsparse.passes
from fxsparse.passes.channel_propagation import ChannelPropagation
from fxsparse.passes.fuse_channel_shuffle import FuseChannelShuffle
from fxsparse.passes.manager import TORCH_LEVEL, PassManager, PassOrderError
from fxsparse.passes.pipelines import SHAPED
from fxsparse.passes.shape_prop import ShapeProp
from fxsparse.rules import contract
from fxsparse.rules.analysis_context import AnalysisContext
from fxsparse.rules.export_context import ExportContext
from fxsparse.rules.pointwise import passthrough
from harness import check_export


# ----- the pass manager --------------------------------------------------------------------
class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def test_pass_manager_rejects_a_pass_whose_requires_are_unmet():
    inputs = (torch.randn(2, 3, 8, 8),)
    # before anything runs: channel propagation needs the shapes no earlier pass gives
    with pytest.raises(PassOrderError, match=r"ChannelPropagation needs \['fxsparse_shape', 'fxsparse_value'\]"):
        PassManager([ChannelPropagation()], given={TORCH_LEVEL})
    with pytest.raises(PassOrderError, match=r"FuseChannelShuffle needs \['fxsparse_shape'\]"):
        PassManager([FuseChannelShuffle(), ShapeProp(inputs)], given={TORCH_LEVEL})
    with pytest.raises(PassOrderError, match="torch_level_calls"):  # an aten graph: rules cannot read it
        PassManager([ShapeProp(inputs), ChannelPropagation()])
    with pytest.raises(TypeError, match="needs"):  # a pass that declares nothing is not run blind

        class Undeclared(PassBase):
            def call(self, gm):
                raise AssertionError("never run")

        PassManager([Undeclared()])
    # a pipeline told a fact the graph lacks: the pass's own requires stops it, its type kept
    gm = fx.symbolic_trace(TinyNet())
    with pytest.raises(AssertionError, match="shape_prop") as failure:
        PassManager([ChannelPropagation()], given=SHAPED)(gm)
    assert any("ChannelPropagation" in note for note in getattr(failure.value, "__notes__", ["ChannelPropagation"]))
    # in order, it runs and says whether any pass changed the graph
    propagation = ChannelPropagation()
    manager = PassManager([ShapeProp(inputs), FuseChannelShuffle(), propagation], given={TORCH_LEVEL})
    result = manager(gm)
    assert result.graph_module is gm and not result.modified and propagation.context.members
    assert manager.facts >= {TORCH_LEVEL, "fxsparse_ids"}


def test_every_pass_declares_what_it_needs_and_gives():
    found = []
    for info in pkgutil.iter_modules(fxsparse.passes.__path__):
        module = importlib.import_module(f"fxsparse.passes.{info.name}")
        found += [obj for obj in vars(module).values() if isinstance(obj, type) and issubclass(obj, PassBase)
                  and obj is not PassBase and obj.__module__ == module.__name__]
    assert len(found) >= 9
    for cls in found:
        assert isinstance(cls.needs, frozenset) and isinstance(cls.gives, frozenset), cls
        assert cls.requires is not PassBase.requires or cls.ensures is not PassBase.ensures, cls


# ----- the contract: one module names it all ---------------------------------------------
def test_the_contract_module_names_every_context_helper():
    doc = contract.__doc__
    for cls in (AnalysisContext, ExportContext):
        assert getattr(contract, cls.__name__) is cls
        for name in dir(cls):
            if not name.startswith("_"):
                assert f"``{name}" in doc, f"{cls.__name__}.{name} is not in fxsparse.rules.contract's docstring"
    assert all(getattr(contract, name) is not None for name in contract.__all__)


# ----- a toy op through the contract alone, under both captures -----------------------------
class SincNet(nn.Module):
    """``torch.sinc`` between two convs: fxsparse has no rule for it and torch.export records
    ``aten.sinc``, which has no torch-level form."""

    def __init__(self, untraceable=False):
        super().__init__()
        self.untraceable = untraceable
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        x = torch.sinc(self.c1(x))
        if self.untraceable and x.shape[-1] > 0:  # a Python branch on a size: symbolic tracing fails
            x = x + 1
        return self.c3(torch.relu(self.c2(x)))


def _analyze(model, inputs, rules=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export keeps the image size (PinnedSizeWarning)
        return fxsparse.analyze(model, inputs, rules=rules)


def _captured_by_export(graph) -> bool:
    return not any(n.op == "call_module" for n in graph.gm.graph.nodes)  # torch.export inlines modules


@pytest.fixture
def sinc_through_the_contract():
    """What a rule author writes for torch.sinc (the contract's own example); removed after."""
    from fxsparse.rules.aten_ops import _TABLE
    from fxsparse.rules.registry import _RULES

    try:
        contract.register_rule(torch.sinc, "sinc")(passthrough)
        contract.register_aten(torch.ops.aten.sinc.default, torch.sinc)
        yield
    finally:
        _RULES.pop(torch.sinc, None)
        _RULES.pop("sinc", None)
        _TABLE.pop(torch.ops.aten.sinc.default, None)


def _sizes(graph):
    return sorted(g.size for g in graph.prunable_groups)


@pytest.mark.parametrize("untraceable", [False, True], ids=["symbolic_trace", "torch_export"])
def test_a_toy_op_added_through_the_contract_prunes_under_both_captures(untraceable, sinc_through_the_contract):
    torch.manual_seed(0)
    model, inputs = SincNet(untraceable).eval(), (torch.randn(2, 3, 8, 8),)
    graph = _analyze(model, inputs)
    assert _captured_by_export(graph) == untraceable
    assert _sizes(graph) == [6, 8]  # the 8 channels of c1 go through sinc
    check_export(model, inputs, n_masks=3, graph=graph)


def test_without_its_aten_form_torch_export_leaves_the_toy_op_opaque():
    from fxsparse.rules.registry import _RULES

    model, inputs = SincNet(untraceable=True).eval(), (torch.randn(2, 3, 8, 8),)
    try:
        contract.register_rule(torch.sinc)(passthrough)
        graph = _analyze(model, inputs)
    finally:
        _RULES.pop(torch.sinc, None)
    assert _captured_by_export(graph) and _sizes(graph) == [6]
    (blocked,) = [g for g in graph.groups if g.size == 8]
    assert "sinc" in blocked.reason


@torch.library.custom_op("fxsparse_contract_test::gate", mutates_args=())
def _gate(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


@_gate.register_fake
def _gate_fake(x):
    return torch.empty_like(x)


def _gate_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    s = torch.sigmoid(x)
    return grad * (s + x * s * (1 - s))


_gate.register_autograd(_gate_backward, setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]))


class GateNet(SincNet):
    def forward(self, x):
        x = torch.ops.fxsparse_contract_test.gate(self.c1(x))
        if self.untraceable and x.shape[-1] > 0:
            x = x + 1
        return self.c3(torch.relu(self.c2(x)))


@pytest.mark.parametrize("untraceable", [False, True], ids=["symbolic_trace", "torch_export"])
def test_a_custom_op_needs_its_rule_under_its_qualified_name_only(untraceable):
    torch.manual_seed(0)
    model, inputs = GateNet(untraceable).eval(), (torch.randn(2, 3, 8, 8),)
    graph = _analyze(model, inputs, rules={"fxsparse_contract_test::gate": passthrough})
    assert _captured_by_export(graph) == untraceable
    assert _sizes(graph) == [6, 8]
    check_export(model, inputs, n_masks=3, graph=graph)



def test_operand_paths_survive_an_argument_that_becomes_a_node():
    # mark_summing keeps a summed operand's path in the node's arguments; the masked-mixing pass reads
    # it back on the capacity model, where an int argument may have become a node (a symbolic size).
    # A position among fx.Node arguments would then point at the size, a path still at the operand.
    from fxsparse.rules.context import operand_paths, operands_at

    graph = fx.Graph()
    x, y, size = graph.placeholder("x"), graph.placeholder("y"), graph.placeholder("size")
    node = graph.call_function(torch.einsum, ("bc,bc->b", [x, y]), {"out": None})
    assert operand_paths(node, [y]) == (("args", 1, 1),)
    summed = graph.call_function(torch.narrow, (x, 1, 0, 4))
    paths = operand_paths(summed, [x])
    assert paths == (("args", 0),)
    summed.args = (x, 1, size, 4)  # the start became a node
    assert operands_at(summed, paths) == [x]
    summed.args = (size,)  # a path that leads nowhere is skipped, not an error
    assert operands_at(summed, (("args", 3),)) == []
    kw = graph.call_function(torch.sum, (), {"input": y, "dim": 1})
    assert operands_at(kw, operand_paths(kw, [y])) == [y]
