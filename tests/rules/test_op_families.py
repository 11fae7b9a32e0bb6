"""One object per op family (#16): a Rule holds the analysis rule, the export hook and the
masked form of an op that mixes channels. The masked reference and the compiled step's
capacity model both use the masked form; per-call rules (``analyze(rules=...)``) travel
with the ChannelGraph, so export, the reference and ``fxsparse.compile`` use them too."""
from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse.core.errors import ExportError
from fxsparse.rewrite.reference import masked_reference
from fxsparse.rules.pointwise import passthrough
from fxsparse.rules.registry import _RULES

from harness import check_export
from sparse_checks import check_steps


# ----- ops that mix channels: every one has a masked form --------------------------------
MIXING_OPS = {
    "mean": lambda y: y.mean(1, keepdim=True),
    "amax": lambda y: torch.amax(y, 1, keepdim=True),
    "std": lambda y: y.std(1, keepdim=True),
    "std_correction0": lambda y: torch.std(y, dim=1, keepdim=True, correction=0),
    "var": lambda y: torch.var(y, 1, keepdim=True),
    "var_unbiased_positional": lambda y: y.var(1, False, True),
    "logsumexp": lambda y: torch.logsumexp(y, 1, keepdim=True),
    "prod": lambda y: (0.5 + torch.sigmoid(y)).prod(1, keepdim=True),
    "softmax_module": nn.Softmax(dim=1),
    "log_softmax": lambda y: F.log_softmax(y, dim=1),
    "layer_norm_function": lambda y: F.layer_norm(y.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2),
}
SAME_SHAPE = {"softmax_module", "log_softmax", "layer_norm_function"}


class MixNet(nn.Module):
    """conv -> op over the channel dim -> conv -> pooled linear. A reduction's result gates
    the second conv's output; a softmax/norm feeds it."""

    def __init__(self, name):
        super().__init__()
        self.name = name
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Linear(6, 4)
        op = MIXING_OPS[name]
        self.op = op if isinstance(op, nn.Module) else None
        self._fn = None if isinstance(op, nn.Module) else op

    def forward(self, x):
        y = self.c1(x)
        s = self.op(y) if self.op is not None else self._fn(y)
        z = self.c2(s) if self.name in SAME_SHAPE else self.c2(y) * s
        return self.fc(z.mean((2, 3)))


def _inputs():
    return (torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0)),)


@pytest.mark.parametrize("name", sorted(MIXING_OPS))
def test_mixing_op_masked_form_equals_export(name):
    """The masked reference (the rule's masked form) equals the physically smaller model."""
    torch.manual_seed(0)
    model, inputs = MixNet(name).double(), tuple(x.double() for x in _inputs())
    graph = fxsparse.analyze(model, inputs)
    assert not graph.zero_preserving and graph.mixing
    assert any(g.size == 8 and g.prunable for g in graph.groups)
    check_export(model, inputs, n_masks=4, graph=graph, atol=1e-9)


@pytest.mark.parametrize("name", ["std", "prod", "logsumexp", "softmax_module", "layer_norm_function"])
def test_mixing_op_sparse_step_equals_export(name):
    """The capacity model's masked-mixing pass uses the same masked form: the sparse step
    equals the exported model (outputs, loss, gradients)."""
    torch.manual_seed(0)
    model = MixNet(name)
    inputs = _inputs()
    check_steps(model, inputs, torch.tensor([0, 3]), F.cross_entropy, steps=2, keep=0.6, dtype=torch.float64,
                tol=1e-9)


def test_sum_over_channels_is_not_mixing():
    """Removing a channel from a sum equals zeroing it: sum is not marked mixing, and the
    plain zero-masked model (no masked form) equals the export."""

    class SumNet(MixNet):
        def __init__(self):
            nn.Module.__init__(self)
            self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Linear(6, 4)

        def forward(self, x):
            y = self.c1(x)
            return self.fc((self.c2(y) * y.sum(1, keepdim=True)).mean((2, 3)))

    model, inputs = SumNet().double(), tuple(x.double() for x in _inputs())
    graph = fxsparse.analyze(model, inputs)
    assert graph.zero_preserving and not graph.mixing
    check_export(model, inputs, n_masks=4, graph=graph, atol=1e-9)


# ----- per-call rules travel with the graph -------------------------------------------------
def checked_scale(x, channels: int):
    """A user op that checks its channel count argument (an fx leaf function)."""
    if x.shape[1] != channels:
        raise ValueError(f"expected {channels} channels, got {x.shape[1]}")
    return x * 1.5


def center_channels(x):
    """A user op that mixes channels: subtracts the mean over the channel dim."""
    return x - x.mean(1, keepdim=True)


torch.fx.wrap("checked_scale")
torch.fx.wrap("center_channels")


class UserOpNet(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.use = op
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Linear(6, 4)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = checked_scale(y, 8) if self.use == "checked" else center_channels(y)
        return self.c3(torch.relu(self.c2(y)).mean((2, 3)))


def checked_scale_export(ectx, node):
    node.args = (node.args[0], ectx.pruned_size(node.args[0], 1))


def center_channels_rule(ctx, node):
    ctx.mark_mixing(node, "centers over the channel dim")
    return passthrough(ctx, node)


def center_channels_masked(op, m, x):
    return x - (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)


def test_per_call_rule_export_hook_is_used_by_export():
    model, inputs = UserOpNet("checked").eval(), _inputs()
    rule = fxsparse.Rule(analyze=passthrough, export=checked_scale_export)
    graph = fxsparse.analyze(model, inputs, rules={checked_scale: rule})
    (g8,) = [g for g in graph.prunable_groups if g.size == 8]
    keep = {g8.id: torch.arange(8) % 2 == 0}
    small = fxsparse.export(model, graph, keep)  # without the hook: the check run fails (8 != 4)
    torch.testing.assert_close(small(*inputs), masked_reference(graph, keep, *inputs))
    assert checked_scale not in _RULES and graph.rules[checked_scale] is rule


def test_without_the_export_hook_export_reports_the_stale_argument():
    model, inputs = UserOpNet("checked").eval(), _inputs()
    graph = fxsparse.analyze(model, inputs, rules={checked_scale: passthrough})
    (g8,) = [g for g in graph.prunable_groups if g.size == 8]
    with pytest.raises(ExportError):
        fxsparse.export(model, graph, {g8.id: torch.arange(8) % 2 == 0})


def test_per_call_masked_form_is_used_by_reference_and_compile():
    torch.manual_seed(0)
    model, inputs = UserOpNet("center").double(), tuple(x.double() for x in _inputs())
    rule = fxsparse.Rule(analyze=center_channels_rule, masked=center_channels_masked)
    graph = fxsparse.analyze(model, inputs, rules={center_channels: rule})
    assert [n for n, _ in graph.mixing] and any(g.size == 8 for g in graph.prunable_groups)
    check_export(model, inputs, n_masks=4, graph=graph, atol=1e-9)  # reference == export
    # the sparse step's capacity model (fxsparse.compile with this graph) uses the masked form too
    sp = fxsparse.compile(model, inputs, graph=graph, keep=0.5, compile=False)
    for _ in range(3):
        sp.sample_masks(0.5)
        with torch.no_grad():
            torch.testing.assert_close(sp(*inputs), sp.export()(*inputs), atol=1e-9, rtol=1e-9)


def test_per_call_mixing_rule_without_masked_form_is_a_clear_error():
    model, inputs = UserOpNet("center").double(), tuple(x.double() for x in _inputs())
    graph = fxsparse.analyze(model, inputs, rules={center_channels: center_channels_rule})
    (g8,) = [g for g in graph.prunable_groups if g.size == 8]
    keep = {g8.id: torch.arange(8) % 2 == 0}
    fxsparse.export(model, graph, keep)  # export does not need the masked form
    with pytest.raises(NotImplementedError, match=r"center_channels.*masked="):
        masked_reference(graph, keep, *inputs)
    with pytest.raises(NotImplementedError, match=r"center_channels.*masked="):
        fxsparse.compile(model, inputs, graph=graph, keep=0.5, compile=False)


def test_register_rule_takes_masked_forms_and_rule_objects():
    def op_a(x):
        return x

    def op_b(x):
        return x

    try:
        fxsparse.register_rule(op_a, masked=center_channels_masked)(center_channels_rule)
        assert _RULES[op_a].masked is center_channels_masked and _RULES[op_a].analyze is center_channels_rule
        rule = fxsparse.Rule(analyze=center_channels_rule, masked=center_channels_masked)
        fxsparse.register_rule(op_b)(rule)
        assert _RULES[op_b] is rule and rule.name == "center_channels_rule"
        with pytest.raises(ValueError, match="already registered"):
            fxsparse.register_rule(op_b)(rule)
    finally:
        _RULES.pop(op_a, None)
        _RULES.pop(op_b, None)
    # every field the Rule docstring describes exists
    fields = {f.name for f in __import__("dataclasses").fields(fxsparse.Rule)}
    assert fields == {"analyze", "export", "masked", "name"}
    assert all(f"``{f}" in fxsparse.Rule.__doc__ for f in fields)


# ----- the pass contract ------------------------------------------------------------------
def test_passes_share_the_pass_base_contract():
    from torch.fx.passes.infra.pass_base import PassBase, PassResult

    from fxsparse.passes.channel_propagation import IDS, ChannelPropagation
    from fxsparse.passes.fuse_channel_shuffle import FuseChannelShuffle
    from fxsparse.passes.shape_prop import SHAPE, ShapeProp

    model, inputs = MixNet("std"), _inputs()
    gm = torch.fx.symbolic_trace(model)
    propagation = ChannelPropagation()
    assert all(isinstance(p, PassBase) for p in (propagation, ShapeProp(inputs), FuseChannelShuffle()))
    with pytest.raises(AssertionError, match="shape_prop"):  # requires: shapes first
        propagation(gm)
    result = ShapeProp(inputs)(gm)
    assert isinstance(result, PassResult) and result.graph_module is gm and not result.modified
    assert all(SHAPE in n.meta for n in gm.graph.nodes)
    assert not FuseChannelShuffle()(gm).modified
    assert not propagation(gm).modified
    assert all(IDS in n.meta for n in gm.graph.nodes) and [n for n, _ in propagation.context.mixing] == ["std"]


class CompiledMixNet(nn.Module):
    """A module (LayerNorm, Softmax) and a function (logsumexp) mixing channels: the masked
    forms inside the torch.compile'd step (a module reached by get_attr, a bound function)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Linear(6, 4)
        self.norm, self.softmax = nn.LayerNorm(8), nn.Softmax(dim=1)

    def forward(self, x):
        y = self.norm(self.c1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        z = self.c2(self.softmax(y)) * torch.logsumexp(y, 1, keepdim=True)
        return self.fc(z.mean((2, 3)))


@pytest.mark.slow
def test_masked_forms_in_the_compiled_step(aot_eager):  # dynamo traces the masked forms; inductor's code: not the point
    torch.manual_seed(0)
    sp = check_steps(CompiledMixNet(), _inputs(), torch.tensor([0, 3]), F.cross_entropy, steps=2, keep=0.6,
                     compile=True, tol=1e-4)
    assert len(sp.channel_graph.mixing) == 3 and len(sp.valid_buffers) == 3
    assert any(g.size == 8 for g in sp.channel_graph.prunable_groups)
