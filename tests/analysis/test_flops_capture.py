"""FLOPs do not depend on the capture: the same model captured by symbolic tracing and by
torch.export (an aten graph: no module calls, every layer a function reading its weight)
gives the same per-group FLOPs shares in ``summary()``, the same sub-network FLOPs
(SubnetFlops) and the FLOPs of the exported model."""
import pytest
import torch
import torch.nn as nn

import fxsparse
import fxsparse.analysis.analyze as analyze_module
from fxsparse import zoo
from fxsparse.analysis.flops import SubnetFlops
from fxsparse.core.errors import TraceError

pytestmark = pytest.mark.usefixtures("single_thread")


class MLPBlock(nn.Module):
    """A pre-norm transformer MLP block on tokens (Linear layers, LayerNorm, a residual)."""

    def __init__(self, dim=16, inner=40, classes=5):
        super().__init__()
        self.proj = nn.Linear(8, dim)
        self.norm = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, inner), nn.Linear(inner, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.proj(x)
        h = h + self.down(torch.relu(self.up(self.norm(h))))
        return self.head(h.mean(1))


def _both_captures(model, x, monkeypatch):
    traced = fxsparse.analyze(model, x)
    assert any(n.op == "call_module" for n in traced.gm.graph.nodes)

    def no_trace(*args, **kwargs):
        raise TraceError("forced: capture with torch.export")

    with monkeypatch.context() as m:
        m.setattr(analyze_module, "trace", no_trace)
        exported = fxsparse.analyze(model, x)
    assert not any(n.op == "call_module" for n in exported.gm.graph.nodes)
    return traced, exported


def _shares(graph):
    return {frozenset((m.param, m.dim) for m in g.members): g.flops_share for g in graph.groups}


@pytest.mark.parametrize("build,shape", [(lambda: MLPBlock(), (2, 6, 8)),
                                         (lambda: zoo.create("resnet20", num_classes=10), (2, 3, 32, 32))],
                         ids=["mlp_block", "resnet20"])
def test_fx_and_torch_export_captures_count_the_same_flops(build, shape, monkeypatch):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(shape)
    traced, exported = _both_captures(model, x, monkeypatch)
    assert exported.flops["total"] == pytest.approx(traced.flops["total"], rel=1e-9)
    assert exported.flops["per_module"] == pytest.approx(traced.flops["per_module"], rel=1e-9)
    shares = _shares(traced)
    assert _shares(exported) == pytest.approx(shares, rel=1e-9)
    assert max(shares.values()) > 0.1
    # the sub-network FLOPs of the same masks, and the exported model's FLOPs
    counters = SubnetFlops(traced), SubnetFlops(exported)
    for seed in (1, 2):
        keep = fxsparse.random_keep(traced, 0.5, torch.Generator().manual_seed(seed))
        by_members = {frozenset((m.param, m.dim) for m in g.members): keep[g.id] for g in traced.prunable_groups}
        keep_exported = {g.id: by_members[frozenset((m.param, m.dim) for m in g.members)]
                         for g in exported.prunable_groups}
        fractions = (counters[0].fraction(counters[0].flat(keep)), counters[1].fraction(counters[1].flat(keep_exported)))
        true = fxsparse.count_flops(fxsparse.export(model, traced, keep), (x,))[0] / fxsparse.count_flops(model, (x,))[0]
        assert fractions[0] < 0.8 and fractions == pytest.approx((true, true), rel=1e-9)
