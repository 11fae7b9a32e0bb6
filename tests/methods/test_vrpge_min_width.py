"""VR-PGE's width floor (``min_width``): every width stays in [min_width, 1] after the
projection onto the budget, the budget still holds (exactly where it binds), the channel
projection with a floor is the Euclidean projection onto the shifted box, the typical
sub-network keeps at least the floor, a floor the budget cannot pay for drops (with a
warning), and options that cannot work are errors."""
import pytest
import torch

import fxsparse
from fxsparse import zoo
from fxsparse.methods.vrpge import VRPGE, StructureLearner

X = torch.randn(4, 1, 28, 28)
Y = torch.zeros(4, dtype=torch.long)


def no_signal(out, y):
    return out.sum() * 0.0  # every sample's loss equal: the estimate is zero, Adam does not move


@pytest.fixture(scope="module")
def sparse():
    torch.manual_seed(0)
    return fxsparse.compile(zoo.create("resnet20", in_chans=1), X, keep=0.5, compile=False)


def learner_at(sparse, scores, **options):
    """A learner whose scores were pushed to ``scores`` (as Adam might), then one step at no
    signal: what is left is the projection's doing."""
    learner = StructureLearner(sparse, granularity="width", lr=0.05, **options)
    with torch.no_grad():
        learner.scores.copy_(scores)
    learner.forward_only_step(no_signal, X, Y)
    return learner


def pushed_scores(n):
    """Half the groups pushed to 0 (a collapse), the rest to 1."""
    return torch.tensor([0.0 if i % 2 == 0 else 1.0 for i in range(n)], dtype=torch.float64)


@pytest.mark.parametrize("budget,projection", [("flops", "gradient"), ("flops", "scale"),
                                               ("channels", "gradient"), ("channels", "scale")])
def test_widths_stay_above_the_floor_and_the_budget_holds(sparse, budget, projection):
    n = len(sparse.channel_graph.prunable_groups)
    learner = learner_at(sparse, pushed_scores(n), keep=0.3, budget=budget, projection=projection, min_width=0.15)
    s = learner.scores.detach()
    assert float(s.min()) >= 0.15 - 1e-12 and float(s.max()) <= 1.0
    assert learner.expected_keep() == pytest.approx(0.3, rel=1e-6)  # all ones overspend: the budget binds
    free = learner_at(sparse, pushed_scores(n), keep=0.3, budget=budget, projection=projection)
    assert float(free.scores.detach().min()) < 0.15  # without the floor the same push goes below it


def test_the_channel_projection_with_a_floor_is_euclidean(sparse):
    """Against an independent solution of the KKT conditions: x = clamp(s - v n, lo, 1) with
    the v (found by bisection here) that spends the channel budget exactly."""
    sizes = torch.tensor([g.size for g in sparse.channel_graph.prunable_groups], dtype=torch.float64)
    torch.manual_seed(1)
    s = torch.rand(len(sizes), dtype=torch.float64) * 1.4 - 0.2
    lo, keep = 0.2, 0.35
    learner = learner_at(sparse, s, keep=keep, budget="channels", min_width=lo)
    budget = keep * float(sizes.sum())
    spend = lambda v: float((sizes * (s - v * sizes).clamp(lo, 1)).sum())  # noqa: E731
    a, b = 0.0, 1.0
    while spend(b) > budget:
        b *= 2
    for _ in range(200):
        a, b = ((a + b) / 2, b) if spend((a + b) / 2) > budget else (a, (a + b) / 2)
    expected = (s - b * sizes).clamp(lo, 1)
    assert torch.allclose(learner.scores.detach(), expected, atol=1e-7)


def test_the_typical_subnetwork_keeps_the_floor(sparse):
    groups = sparse.channel_graph.prunable_groups
    learner = learner_at(sparse, pushed_scores(len(groups)), keep=0.3, budget="flops", min_width=0.25)
    mask = learner.mean_mask()
    for g, part in zip(groups, torch.split(mask, [g.size for g in groups])):
        assert int(part.sum()) >= round(0.25 * g.size)


@pytest.mark.parametrize("budget", ["flops", "channels"])
def test_a_floor_the_budget_cannot_pay_for_drops_with_a_warning(sparse, budget):
    with pytest.warns(RuntimeWarning, match="min_width=0.6: every group at that width would use"):
        learner = StructureLearner(sparse, granularity="width", lr=0.05, keep=0.3, budget=budget, min_width=0.6)
    n = sum(g.size for g in sparse.channel_graph.prunable_groups)
    assert 0 < learner.min_width < 0.3
    assert learner.used(torch.full((n,), learner.min_width, dtype=torch.float64)) < 0.3  # the lowered floor fits
    at_half = torch.full((n,), 2 * learner.min_width, dtype=torch.float64)
    assert learner.used(at_half) == pytest.approx(0.3, rel=1e-6)  # twice the floor: the uniform width at the budget


def test_options_that_cannot_work_are_errors(sparse):
    channel = StructureLearner(sparse, granularity="channel", lr=0.05, keep=0.3, min_width=0.1)
    assert channel.min_width == 0.1 and float(channel.scores.min()) >= 0  # per-channel scores: no floor
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match="min_width"):
            VRPGE(0.3, budget="flops", min_width=bad)
