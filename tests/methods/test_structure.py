"""VR-PGE joint training: the budget holds after every projection, the score step runs no
backward, the realised keep ratio converges to the budget, the final mask meets it."""
import torch
import torch.nn.functional as F

import fxsparse
from fxsparse.methods.vrpge import StructureLearner
from sparse_checks import ConvBNNet


def _setup(budget="channels", keep=0.5):
    torch.manual_seed(0)
    model = ConvBNNet(16, 24)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    sp = fxsparse.compile(model, x, keep=keep, compile=False)
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    # the paper's form: one score per channel, the weights trained on the first sample
    learner = StructureLearner(sp, keep=keep, budget=budget, lr=0.05, granularity="channel", weight_masks="sampled")
    sp.train()
    return model, sp, step, learner, x, y


def test_budget_holds_and_keep_converges():
    for budget in ("channels", "flops"):
        model, sp, step, learner, x, y = _setup(budget)
        realised, expected = [], []
        for _ in range(80):
            learner.step(step, F.cross_entropy, x, y)
            s = learner.scores.detach().double()
            assert float(s.min()) >= 0 and float(s.max()) <= 1
            assert learner.used(s) <= keep_of(learner) * (1 + 1e-6)
            realised.append(learner.used(learner.sample(1)[0]))
            expected.append(learner.expected_keep())
        # the loss pulls scores up, the budget caps them: the constraint binds again and again
        # (the unbiased estimate can also step below it for a few steps)
        assert sum(abs(e - 0.5) < 1e-4 for e in expected[-20:]) >= 10
        assert min(expected[-20:]) > 0.47
        assert abs(sum(realised[-20:]) / 20 - 0.5) < 0.1


def keep_of(learner):
    return learner.budget / (learner.flops.dense if learner.kind == "flops" else len(learner.scores))


def test_flops_budget_is_real_flops():
    """A FLOPs budget of 0.25 means sub-networks with a quarter of the dense FLOPs (checked
    against FlopCounterMode on the exported model), not a quarter of the channels."""
    from fxsparse.analysis.graph import count_flops

    model, sp, step, learner, x, y = _setup("flops", keep=0.25)
    assert abs(learner.expected_keep() - 0.25) < 1e-6
    assert float(learner.scores.mean()) > 0.4  # FLOPs are ~quadratic in the channel keep ratio
    masks = learner.final_mask(lambda m: 0.0, tries=3)
    flops, _ = count_flops(fxsparse.export(model, sp.channel_graph, masks).eval(), (x,))
    dense, _ = count_flops(model.eval(), (x,))
    assert flops <= 0.25 * dense * (1 + 1e-9)
    assert flops > 0.15 * dense  # the cut stops as soon as the budget is met


def test_state_dict_round_trip_continues_identically():
    model, sp, step, learner, x, y = _setup()
    learner.step(step, F.cross_entropy, x, y)
    saved = learner.state_dict()
    a = [learner.sample(1)[0] for _ in range(3)]
    learner.load_state_dict(saved)
    b = [learner.sample(1)[0] for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_score_forwards_need_no_backward_and_leave_no_trace():
    model, sp, step, learner, x, y = _setup()
    model.zero_grad(set_to_none=True)
    before = {n: t.clone() for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    scores = learner.scores.detach().clone()
    learner.forward_only_step(F.cross_entropy, x, y)
    assert not torch.equal(learner.scores.detach(), scores)  # the scores did learn
    assert all(p.grad is None for p in model.parameters())
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.equal(t, before[n]), n


def test_reuse_loss_and_final_mask_meets_budget():
    model, sp, step, learner, x, y = _setup()
    for _ in range(5):
        learner.step(step, F.cross_entropy, x, y)  # the weight step's loss reused as a sample's
    masks = learner.final_mask(lambda m: float(torch.rand(1)), tries=5)
    flat = torch.cat([masks[g.id] for g in learner.groups]).double()
    assert float(flat.sum()) <= learner.budget + 1e-9
    assert all(m.any() for m in masks.values())


def test_bad_input():
    model, sp, step, learner, x, y = _setup()
    import pytest

    for bad in (0, 1.2, float("nan")):
        with pytest.raises(ValueError, match="keep must be"):
            StructureLearner(sp, keep=bad)
    with pytest.raises(ValueError, match="budget must be"):
        StructureLearner(sp, budget="params")
    with pytest.raises(ValueError, match="at least 2 samples"):
        StructureLearner(sp, samples=1)


def test_averaged_weight_step_equals_mean_of_exported_gradients():
    """The authors' two-sample weight step: the update is -lr * mean of the two sub-networks'
    gradients (each computed independently on its exported model), on the entries either
    keeps; entries neither keeps stay bit-identical."""
    import numpy as np

    from fxsparse.analysis.masks import kept_indices

    torch.manual_seed(0)
    model = ConvBNNet(16, 24).double()
    x, y = torch.randn(16, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (16,))
    sp = fxsparse.compile(model, x, keep=0.5, compile=False)
    sp.train()
    opt = fxsparse.MaskedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), sp)
    learner = StructureLearner(sp, keep=0.5, seed=3, lr=0.1, granularity="channel", weight_masks="sampled")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = learner.generator.get_state()
    masks = learner.sample(2)
    learner.generator.set_state(state)  # averaged_step draws the same two masks
    expected = {n: torch.zeros_like(p) for n, p in before.items()}
    touched = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in before.items()}
    for m in masks:
        gm = learner.as_group_masks(m)
        ref = ConvBNNet(16, 24).double()
        ref.load_state_dict(model.state_dict())
        small = fxsparse.export(ref, sp.channel_graph, gm).train()
        F.cross_entropy(small(x), y).backward()
        grads = {n: p.grad for n, p in small.named_parameters()}
        kept = kept_indices(sp.channel_graph, gm)
        for name in expected:
            per_dim = kept.get(name, {})  # a parameter no group slices is kept whole
            lines = [per_dim[d] if d in per_dim else torch.arange(before[name].shape[d]) for d in range(before[name].dim())]
            ix = np.ix_(*[t.numpy() for t in lines])
            expected[name][ix] += grads[name] / 2
            touched[name][ix] = True
    learner.averaged_step(F.cross_entropy, opt, x, y)
    for n, p in model.named_parameters():
        delta = (before[n] - p.detach()) / 0.1
        torch.testing.assert_close(delta[touched[n]], expected[n][touched[n]], rtol=1e-7, atol=1e-10)
        assert torch.equal(p.detach()[~touched[n]], before[n][~touched[n]]), n


def test_final_mask_uses_the_whole_budget():
    """Scores that sharpened to 0 below the budget: the final mask adds back the
    highest-scoring pruned channels until nothing more fits (channels: exactly floor(K);
    FLOPs: no further channel fits), and never exceeds the budget."""
    for budget in ("channels", "flops"):
        model, sp, step, learner, x, y = _setup(budget, keep=0.5)
        with torch.no_grad():
            n = len(learner.scores)
            learner.scores.copy_(torch.linspace(0.3, 0.0, n, dtype=torch.float64))  # sum far below the budget
        chosen = learner.final_mask(lambda m: 0.0, tries=3)
        mask = torch.cat([chosen[g.id] for g in learner.groups])
        used = learner._cost(mask)
        assert used <= learner.budget * (1 + 1e-9)
        if budget == "channels":
            assert int(mask.sum()) == int(learner.budget)
        else:
            for i in torch.nonzero(~mask).flatten().tolist():
                more = mask.clone()
                more[i] = True
                assert learner._cost(more) > learner.budget
        # the highest-scoring channels are the ones added
        assert bool(mask[: n // 4].all())
