"""VR-PGE joint training: the budget holds after every projection, the score step runs no
backward, the realised keep ratio converges to the budget, the final mask meets it."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse.structure import StructureLearner


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def _setup(budget="channels", keep=0.5):
    torch.manual_seed(0)
    model = Net()
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    sp = fxsparse.compile(model, x, keep=keep, compile=False)
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    learner = StructureLearner(sp, keep=keep, budget=budget, lr=0.05)
    sp.train()
    return model, sp, step, learner, x, y


def test_budget_holds_and_keep_converges():
    for budget in ("channels", "flops"):
        model, sp, step, learner, x, y = _setup(budget)
        realised = []
        for _ in range(40):
            learner.step(step, F.cross_entropy, x, y)
            s = learner.scores.detach().double()
            assert float(s.min()) >= 0 and float(s.max()) <= 1
            assert float((learner.weights * s).sum()) <= learner.budget * (1 + 1e-6)
            realised.append(learner.sample(1)[0].double().mul(learner.weights).sum() / learner.weights.sum())
        # the loss pulls scores up, the budget caps them: the constraint ends up active
        assert abs(learner.expected_keep() - 0.5) < 1e-4
        assert abs(float(torch.stack(realised[-20:]).mean()) - 0.5) < 0.1


def test_score_step_needs_no_backward_and_leaves_no_trace():
    model, sp, step, learner, x, y = _setup()
    model.zero_grad(set_to_none=True)
    before = {n: t.clone() for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    learner.score_step(F.cross_entropy, x, y)
    assert all(p.grad is None for p in model.parameters())
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.equal(t, before[n]), n


def test_reuse_loss_and_final_mask_meets_budget():
    model, sp, step, learner, x, y = _setup()
    for _ in range(5):
        learner.step(step, F.cross_entropy, x, y, reuse_loss=True)
    masks = learner.final_mask(lambda m: float(torch.rand(1)), tries=5)
    flat = torch.cat([masks[g.id] for g in learner.groups]).double()
    assert float((learner.weights * flat).sum()) <= learner.budget + 1e-9
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
