"""Errors blame the right party, and export never returns a model that crashes later."""
import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxsparse
from fxsparse.rewrite.reference import masked_reference
from fxsparse.rewrite.run_check import check_runs


class CaptureDiffersFromEager(nn.Module):
    """Takes a different branch under symbolic tracing (x is a Proxy) than when it runs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        y = self.fc(x)
        if not isinstance(x, torch.Tensor):
            return y.last_hidden_state
        return self.out(torch.relu(y))


class AlsoDataDependent(CaptureDiffersFromEager):
    """... and branches on a tensor value, which torch.export cannot capture either."""

    def forward(self, x):
        y = self.fc(x)
        if not isinstance(x, torch.Tensor):
            return y.last_hidden_state
        return y if y.sum() > 0 else -y


def test_a_graph_that_differs_from_eager_is_recaptured_with_torch_export():
    model, x = CaptureDiffersFromEager(), torch.randn(2, 8)
    graph = fxsparse.analyze(model, x)
    assert graph.prunable_groups  # fc's outputs, seen through the isinstance check
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    small = fxsparse.export(model, graph, keep)
    torch.testing.assert_close(small(x), masked_reference(graph, keep, x))


def test_capture_failure_blames_the_capture_not_the_inputs():
    model = AlsoDataDependent()
    x = torch.randn(2, 8)
    model(x)  # the model itself runs on these inputs
    with pytest.raises(fxsparse.TraceError) as info:
        fxsparse.analyze(model, x)
    msg = str(info.value)
    assert "runs on the example inputs" in msg and "captured graph" in msg
    assert "getattr" in msg and "last_hidden_state" in msg  # where it failed
    assert "torch.export failed too" in msg
    assert "leaf_modules" in msg  # what to do
    assert "Pass inputs the model accepts" not in msg


def test_wrong_inputs_still_blame_the_inputs():
    with pytest.raises(fxsparse.InputError, match="Pass inputs the model accepts"):
        fxsparse.analyze(nn.Sequential(nn.Linear(8, 8)), torch.randn(2, 5))


class ConstantSizeScale(nn.Module):
    """A layer-scale parameter reshaped with a constant channel count."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(32))
        self.out = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.out(self.conv(x) * self.scale.reshape(32, 1, 1))


def test_constant_size_of_a_pruned_parameter_is_rewritten():
    model, x = ConstantSizeScale(), torch.randn(2, 3, 8, 8)
    graph = fxsparse.analyze(model, x)
    group = next(g for g in graph.prunable_groups if any(m.param == "scale" for m in g.members))
    keep = {group.id: torch.arange(32) % 3 == 0}
    small = fxsparse.export(model, graph, keep)
    assert small.scale.shape == (11,)
    torch.testing.assert_close(small(x), masked_reference(graph, keep, x), atol=1e-5, rtol=1e-5)
    sparse = fxsparse.compile(model, x, keep=0.5, compile=False, graph=graph)  # its capacity model runs too
    assert sparse(x).shape == (2, 4, 8, 8)


def test_a_model_that_would_crash_is_reported_naming_the_op_and_constant():
    gm = fx.symbolic_trace(ConstantSizeScale())
    reshape = next(n for n in gm.graph.nodes if n.target == "reshape")
    reshape.args = (reshape.args[0], 16, 1, 1)  # a stale channel count, as a missed rewrite leaves it
    gm.recompile()
    with pytest.raises(fxsparse.ExportError) as info:
        check_runs(lambda: gm.forward(torch.randn(2, 3, 8, 8)), gm, "the exported model")
    msg = str(info.value)
    assert "node 'reshape'" in msg and "16, 1, 1" in msg and "example inputs" in msg
