"""The structure search's estimator and policies: every sample of a score step at the same
weights, width (per-group) policies unbiased by enumeration, the one-graph score forwards
equal to the exported models, final masks that meet the budget exactly."""
import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

import fxsparse
from fxsparse.methods.vrpge import StructureLearner, policy_gradient
from fxsparse.methods.vrpge import spearman as _spearman
from fxsparse.methods.vrpge.experimental import ExperimentSwitches
from sparse_checks import ConvBNNet


def _setup(granularity="channel", budget="channels", keep=0.5, compile=False, weight_masks="sampled", **kw):
    torch.manual_seed(0)
    model = ConvBNNet(16, 24)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    sp = fxsparse.compile(model, x, keep=keep, compile=compile)
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9))
    learner = StructureLearner(sp, keep=keep, budget=budget, lr=0.05, granularity=granularity, steps=40,
                               weight_masks=weight_masks, **kw)
    sp.train()
    return model, sp, step, learner, x, y


def _exported_loss(model, graph, mask, x, y):
    small = fxsparse.export(model, graph, mask)
    small.train()
    with torch.no_grad():
        return float(F.cross_entropy(small(x), y))


@pytest.mark.parametrize("reuse,weight_masks", [(True, "sampled"), (False, "sampled"), (True, "mean")])
@pytest.mark.parametrize("granularity", ["channel", "width"])
def test_every_sample_of_a_score_step_sees_the_same_weights(reuse, weight_masks, granularity):
    """The losses in the estimate are the losses of their masks at the weights before the
    step's update (the exported model of the pre-step weights is the reference). Taking a
    sample's loss after the weight update (as the reused-loss step once did) fails this:
    the update's own loss drop then enters f1 - f2."""
    model, sp, step, learner, x, y = _setup(granularity, weight_masks=weight_masks,
                                            experimental=ExperimentSwitches(reuse_loss=reuse))
    seen = []
    update = learner.score_update
    learner.score_update = lambda losses, draws: seen.append((losses.clone(), draws.clone())) or update(losses, draws)
    for _ in range(3):
        before = copy.deepcopy(model.state_dict())
        typical, learner_probs = learner.mean_mask(), learner.probs().clone()
        loss, mask = learner.step(step, F.cross_entropy, x, y)
        losses, draws = seen[-1]
        assert len(losses) == learner.samples
        after = copy.deepcopy(model.state_dict())
        after_loss = _exported_loss(model, sp.channel_graph, learner.as_group_masks(mask), x, y)
        model.load_state_dict(before)  # export reads the traced model's weights: evaluate at the old ones
        for f, d in zip(losses, draws):
            ref = _exported_loss(model, sp.channel_graph, learner.as_group_masks(learner.mask_of(d)), x, y)
            assert abs(float(f) - ref) < 1e-4 * max(1.0, abs(ref)), (float(f), ref)
        model.load_state_dict(after)
        assert abs(after_loss - float(loss)) > 1e-3  # the step did update the weights (the check has teeth)
        if weight_masks == "mean":  # the weights trained on the policy's typical sub-network
            assert torch.equal(mask, typical)
            counts = [int(m.sum()) for m in torch.split(mask, learner.sizes)]
            assert counts == [max(1, round(float(p.sum()))) for p in torch.split(learner_probs, learner.sizes)]


def test_width_estimate_is_unbiased_by_enumeration():
    """Shared keep-probabilities per group (a width): E[estimate] over all pairs of draws
    equals the exact gradient of E[L(mask)] with respect to the widths, for a loss that
    depends on the kept count of each group (as width masks do) in a nonlinear way."""
    sizes = [2, 3]
    owner = torch.tensor([0, 0, 1, 1, 1])
    widths = torch.tensor([0.3, 0.65], dtype=torch.float64, requires_grad=True)

    def loss(d):
        c = torch.zeros(2, dtype=torch.float64).index_add_(0, owner, d)
        return (c[0] - 1.2) ** 2 + torch.sin(c[1]) * c[0] + 0.5 * c[1]

    patterns = [torch.tensor(p, dtype=torch.float64) for p in itertools.product([0.0, 1.0], repeat=sum(sizes))]
    p = widths[owner]
    prob = [torch.prod(torch.where(d > 0, p, 1 - p)) for d in patterns]
    expected_loss = sum(q * loss(d) for q, d in zip(prob, patterns))
    (exact,) = torch.autograd.grad(expected_loss, widths)
    probs = p.detach()
    mean = torch.zeros(2, dtype=torch.float64)
    for (qa, da), (qb, db) in itertools.product(zip(prob, patterns), repeat=2):
        est = policy_gradient(torch.stack([loss(da), loss(db)]), torch.stack([da, db]), probs, owner)
        mean += float(qa * qb) * est
    assert torch.allclose(mean, exact, atol=1e-10), (mean, exact)
    # and per channel (owner=None) the same estimator summed over a group's channels
    per_channel = torch.zeros(5, dtype=torch.float64)
    for (qa, da), (qb, db) in itertools.product(zip(prob, patterns), repeat=2):
        per_channel += float(qa * qb) * policy_gradient(torch.stack([loss(da), loss(db)]), torch.stack([da, db]), probs)
    assert torch.allclose(torch.zeros(2, dtype=torch.float64).index_add_(0, owner, per_channel), exact, atol=1e-10)


def test_one_group_perturbation_is_unbiased_by_enumeration():
    """The experiment switch perturb="group": the second sample redraws one group (picked uniformly) of the first;
    the estimate scaled by the number of groups is unbiased for the whole gradient (the
    other groups' terms cancel exactly), here for widths and per channel."""
    owner = torch.tensor([0, 0, 1, 1, 1])
    widths = torch.tensor([0.3, 0.65], dtype=torch.float64, requires_grad=True)

    def loss(d):
        c = torch.zeros(2, dtype=torch.float64).index_add_(0, owner, d)
        return (c[0] - 1.2) ** 2 + torch.sin(c[1]) * c[0] + 0.5 * c[1]

    p = widths[owner]
    prob = lambda d, idx: torch.prod(torch.where(d[idx] > 0, p[idx], 1 - p[idx]))
    full = list(range(5))
    patterns = [torch.tensor(q, dtype=torch.float64) for q in itertools.product([0.0, 1.0], repeat=5)]
    (exact,) = torch.autograd.grad(sum(prob(d, full) * loss(d) for d in patterns), widths)
    probs = p.detach()
    for per_channel in (False, True):
        mean = torch.zeros(5 if per_channel else 2, dtype=torch.float64)
        for g in (0, 1):
            idx = torch.nonzero(owner == g).flatten().tolist()
            for d1 in patterns:
                for d2 in patterns:
                    if any(d2[i] != d1[i] for i in full if i not in idx):
                        continue  # the second sample differs from the first only in group g
                    q = float(prob(d1, full) * prob(d2, idx))
                    est = policy_gradient(torch.stack([loss(d1), loss(d2)]), torch.stack([d1, d2]), probs,
                                          None if per_channel else owner)
                    assert torch.all(est[[i for i in range(len(est)) if (owner[i] if per_channel else i) != g]].abs() < 1e-12)
                    mean += q * est  # P(pick g) = 1/2 times the scale 2 (the number of groups)
        if per_channel:
            mean = torch.zeros(2, dtype=torch.float64).index_add_(0, owner, mean)
        assert torch.allclose(mean, exact, atol=1e-10), (per_channel, mean, exact)


def test_one_group_perturbation_samples():
    model, sp, step, learner, x, y = _setup("width", experimental=ExperimentSwitches(perturb="group"))
    for _ in range(20):
        d = learner.sample_draws(3)
        differs = (d[1:] != d[0]).any(0)
        owners = set(learner._owner[differs].tolist())
        assert len(owners) <= 1  # only one group redrawn
    g = learner.gradient(torch.tensor([1.0, 2.0]), learner.sample_draws(2))
    assert int((g.abs() > 1e-9).sum()) <= 1


def test_width_masks_follow_the_l1_order_and_the_width():
    model, sp, step, learner, x, y = _setup("width", keep=0.5)
    assert learner.scores.numel() == len(learner.sizes)
    draws = learner.sample_draws(400, fit=False)
    masks = learner.mask_of(draws)
    rank = learner._ordered_rank()
    start = 0
    for n, w in zip(learner.sizes, learner.scores.detach()):
        m, r = masks[:, start:start + n], rank[start:start + n]
        counts = m.sum(1)
        # each mask keeps a prefix of the group's order, with as many channels as it drew
        assert torch.equal(m, r.unsqueeze(0) < counts.unsqueeze(1))
        assert torch.equal(counts, draws[:, start:start + n].sum(1))
        assert abs(float(counts.double().mean()) - float(w) * n) < 4 * (n * float(w) * (1 - float(w)) / 400) ** 0.5 + 0.05
        start += n
    # the order is the L1 norm of the producing filters
    from fxsparse.methods.scores import filter_l1

    l1 = filter_l1(sp.channel_graph, model)
    g = learner.groups[0]
    first = int(torch.nonzero(rank[:g.size] == 0)[0])
    assert float(l1[g.id][first]) == float(l1[g.id].max())


def test_width_units_draw_each_width_in_equal_shares():
    """``width_units=u``: a group of n channels draws u Bernoulli units and keeps the first
    round(c n / u) channels of its order for c units drawn, so every width's relative
    spread is sqrt(w (1 - w) / u) whatever n (per channel it is sqrt(w (1 - w) / n))."""
    model, sp, step, learner, x, y = _setup("width", keep=0.5, width_units=4)
    assert learner.unit_sizes == [4, 4] and learner.sizes == [16, 24]
    draws = learner.sample_draws(3000, fit=False)
    assert draws.shape == (3000, 8)
    masks, rank = learner.mask_of(draws), learner._ordered_rank()
    start = unit = 0
    for n, w in zip(learner.sizes, learner.scores.detach().tolist()):
        m = masks[:, start:start + n]
        c = draws[:, unit:unit + 4].sum(1)
        width = torch.floor(c * n / 4 + 0.5).clamp(min=1).long()
        assert torch.equal(m, rank[start:start + n].unsqueeze(0) < width.unsqueeze(1))  # a prefix of the order
        frac = m.sum(1).double() / n
        assert abs(float(frac.mean()) - w) < 0.03
        assert abs(float(frac.std()) - (w * (1 - w) / 4) ** 0.5) < 0.03  # 0.25 here; per channel 0.10-0.125
        start, unit = start + n, unit + 4


def test_width_units_estimate_is_unbiased_by_enumeration():
    """The learner's estimate with ``width_units`` (draws per unit, masks from the units'
    counts) averaged over every pair of unit draws equals the exact gradient of
    E[L(mask)] with respect to the widths, for a loss nonlinear in the kept channels."""
    model, sp, step, learner, x, y = _setup("width", keep=0.5, width_units=3)
    with torch.no_grad():
        learner.scores.copy_(torch.tensor([0.35, 0.7], dtype=torch.float64))
    rank = learner._ordered_rank().double()

    def loss(mask):  # depends on which channels are kept, through the masks of mask_of
        kept = mask.double()
        return (kept[:16] * (rank[:16] + 1)).sum() ** 0.5 + torch.cos(kept[16:].sum() / 5.0) * kept[:16].sum() / 16

    widths = learner.scores.detach().clone().requires_grad_(True)
    owner = torch.tensor([0, 0, 0, 1, 1, 1])
    patterns = [torch.tensor(q, dtype=torch.float64) for q in itertools.product([0.0, 1.0], repeat=6)]
    p = widths[owner]
    prob = [torch.prod(torch.where(d > 0, p, 1 - p)) for d in patterns]
    losses = [loss(learner.mask_of(d.bool())) for d in patterns]
    (exact,) = torch.autograd.grad(sum(q * f for q, f in zip(prob, losses)), widths)
    mean = torch.zeros(2, dtype=torch.float64)
    for (qa, da, fa), (qb, db, fb) in itertools.product(zip(prob, patterns, losses), repeat=2):
        mean += float((qa * qb).detach()) * learner.gradient(torch.stack([fa, fb]).detach(), torch.stack([da, db]).bool())
    assert torch.allclose(mean, exact, atol=1e-10), (mean, exact)
    assert float(exact.abs().min()) > 1e-3  # the check has teeth


def test_width_units_capacities_cover_the_wider_spread():
    """The compiled step's capacities follow the units' spread (sqrt(n / u) times the
    per-channel std), so fitted draws are not redrawn (which would bias the policy)."""
    model, sp, step, learner, x, y = _setup("width", keep=0.5, width_units=2)
    per_channel = sp.planned_caps(learner.group_probs(), headroom=3.5)
    wide = [m + 3.5 * sd for m, sd in sp.plan.block_moments(learner.group_probs(), learner._count_spread())]
    assert any(c < w for c, w in zip(per_channel, wide))  # the Binomial capacities would not hold them
    learner.sample_draws(300)
    assert learner.redrawn == 0


def test_width_units_are_checked():
    for bad in (1, 0, 2.5, True, "16"):
        with pytest.raises(ValueError, match="width_units"):
            _setup("width", width_units=bad)


@pytest.mark.parametrize("budget,keep", [("channels", 0.4), ("flops", 0.3)])
@pytest.mark.parametrize("granularity", ["channel", "width", "width+channel"])
def test_topk_final_mask_meets_the_budget_exactly(granularity, budget, keep):
    model, sp, step, learner, x, y = _setup(granularity, budget=budget, keep=keep)
    for _ in range(45):  # past the width+channel stage switch (at half of 40 steps)
        learner.step(step, F.cross_entropy, x, y)
    if granularity == "width+channel":
        assert learner.stage == "channel" and learner.scores.numel() == sum(learner.sizes)
    assert learner.used(learner.probs()) <= keep * (1 + 1e-6)
    mask = torch.cat([learner.final_mask(None)[g.id] for g in learner.groups])
    cost = learner._cost(mask)
    assert cost <= learner.budget * (1 + 1e-9)
    # no pruned channel would still fit: the budget is used up
    for i in torch.nonzero(~mask).flatten().tolist():
        more = mask.clone()
        more[i] = True
        assert learner._cost(more) > learner.budget * (1 + 1e-9)
    assert all(m.any() for m in learner.final_mask(None).values())


def test_width_final_mask_keeps_the_learned_widths():
    """With a budget that does not bind, each group keeps round(w n) channels of its order."""
    model, sp, step, learner, x, y = _setup("width", keep=1.0)
    with torch.no_grad():
        learner.scores.copy_(torch.tensor([0.25, 0.5], dtype=torch.float64)[:len(learner.sizes)])
    learner.budget = float(sum(round(float(w) * n) for w, n in zip(learner.scores.detach(), learner.sizes)))
    mask = learner.final_mask(None)
    rank = learner._ordered_rank()
    start = 0
    for g, w in zip(learner.groups, learner.scores.detach()):
        k = round(float(w) * g.size)
        assert torch.equal(mask[g.id], rank[start:start + g.size] < k)
        start += g.size


def test_width_plus_channel_keeps_each_groups_count():
    model, sp, step, learner, x, y = _setup("width+channel", budget="flops", keep=0.3)
    for _ in range(21):
        learner.step(step, F.cross_entropy, x, y)
    assert learner.stage == "channel"
    counts = [float(p.sum()) for p in torch.split(learner.probs(), learner.sizes)]
    for _ in range(10):
        learner.step(step, F.cross_entropy, x, y)
        for c, p, b in zip(counts, torch.split(learner.probs(), learner.sizes), learner.group_budget):
            assert float(p.sum()) <= b * (1 + 1e-9)
    state = learner.state_dict()
    _, sp2, _, learner2, *_ = _setup("width+channel", budget="flops", keep=0.3)
    learner2.load_state_dict(state)
    assert learner2.stage == "channel" and torch.equal(learner2.scores.detach(), learner.scores.detach())


def test_score_forwards_are_one_graph_equal_to_the_exported_models(aot_eager):
    """SparseModel.losses: K sub-networks in one compiled graph, equal to the exported
    models' losses, running statistics untouched, current masks unchanged, and one
    compilation for any number of calls with new masks (same K, same capacities). The graphs
    by aot_eager: dynamo's graph count is the point, not inductor's code."""
    model, sp, step, learner, x, y = _setup("channel", compile=True)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    current = sp.masks
    before = sp.compilations
    for _ in range(3):
        masks = [learner.as_group_masks(m) for m in learner.sample(2)]
        losses = sp.losses(F.cross_entropy, masks, x, y)
        for f, m in zip(losses, masks):
            assert abs(float(f) - _exported_loss(model, sp.channel_graph, m, x, y)) < 1e-4
    assert sp.compilations - before == 1
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(torch.equal(current[k], v) for k, v in sp.masks.items())


def test_split_half_rank_correlation():
    assert _spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert _spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # ties take their mean rank: centred ranks (-1.5, 0, 0, 1.5) against (-1.5, -0.5, 0.5, 1.5)
    assert _spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 2, 3, 4])) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)


def test_bad_options():
    model, sp, *_ = _setup()
    with pytest.raises(ValueError, match="granularity must be"):
        StructureLearner(sp, granularity="layer")
    with pytest.raises(ValueError, match="final must be"):
        StructureLearner(sp, final="best")
    with pytest.raises(ValueError, match="pass steps="):
        StructureLearner(sp, lr=None)
