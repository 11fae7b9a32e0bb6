"""Sums over a channel dim of a tensor that an op made non-zero at the step's empty slots
(``(h + 1).sum(1)``, a count ``(h <= 0.1).sum(1)``, ``exp``, a contraction of two sigmoids):
the compiled sparse step zero-fills that operand there, so it equals the exported model at
keep 0.5 (before, it counted the empty slots). A sum of a tensor that is zero there
(``relu(h).sum(1)``, ``sigmoid(q) @ k^T``) is left as it is."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_checks import check_steps


class ConvSum(nn.Module):
    """A conv's channels summed by ``reduce`` ([B, C, H, W] -> [B, H, W]) beside a classifier."""

    def __init__(self, reduce):
        super().__init__()
        self.reduce = reduce
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        h = self.conv(x)
        s = self.reduce(h).to(h.dtype)
        return self.fc(h.mean((2, 3))) + s.mean((1, 2)).unsqueeze(1)


class ConvNormalize(nn.Module):
    """``F.normalize`` over the channels of ``h + 1``: every kept channel divided by a norm."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.normalize(self.conv(x) + 1, dim=1).mean((2, 3)))


class Scores(nn.Module):
    """Attention-like scores ``f(q) @ g(k)^T`` contracted over 8 prunable channels."""

    def __init__(self, f, g):
        super().__init__()
        self.f, self.g = f, g
        self.q, self.k, self.fc = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 4)

    def forward(self, x):
        q, k = self.q(x), self.k(x)
        scores = self.f(q) @ self.g(k).transpose(-1, -2)  # [B, T, T]
        return self.fc(q.mean(1)) + scores.mean((1, 2)).unsqueeze(1)


FILLED = {
    "count_le": lambda: ConvSum(lambda h: (h <= 0.1).sum(1)),
    "plus_one": lambda: ConvSum(lambda h: (h + 1).sum(1)),
    "exp": lambda: ConvSum(lambda h: h.exp().sum(1)),
    "norm": lambda: ConvSum(lambda h: (h + 1).norm(dim=1)),
    "normalize": ConvNormalize,
    "padded_with_one": lambda: ConvSum(lambda h: F.pad(h, (1, 1, 1, 1), value=1.0).sum(1)),
    "sigmoid_scores": lambda: Scores(torch.sigmoid, torch.sigmoid),
}
LEFT = {
    "relu_sum": lambda: ConvSum(lambda h: F.relu(h).sum(1)),
    "gelu_times_sigmoid": lambda: ConvSum(lambda h: (F.gelu(h) * h.sigmoid()).sum(1)),  # 0 * 0.5
    "where": lambda: ConvSum(lambda h: torch.where(h > 0, h, 0.0).sum(1)),
    "cos_amax": lambda: ConvSum(lambda h: torch.cos(h).amax(1)),  # mixing: masked already
    "any": lambda: ConvSum(lambda h: (h <= 0.1).any(1)),  # mixing: masked already
    "one_sided_scores": lambda: Scores(torch.sigmoid, F.relu),  # k is zero at empty slots
}


def _inputs(model):
    torch.manual_seed(0)
    shape = (2, 5, 6) if isinstance(model, Scores) else (2, 3, 6, 6)
    return (torch.randn(shape, dtype=torch.float64),), torch.randint(0, 4, (2,))


def _check(make, compile=False):
    torch.manual_seed(0)
    model = make().double()
    inputs, target = _inputs(model)
    # two keep-0.5 masks, each leaving half of the 8 slots empty
    return check_steps(model, inputs, target, F.cross_entropy, steps=2, bernoulli=False, tol=1e-9, compile=compile)


def _zero_fills(sp):
    return [b for b in sp.valid_buffers if b.startswith("_fxsparse_zero_")]


@pytest.mark.parametrize("name", sorted(FILLED))
def test_sum_of_nonzero_slots_equals_export(name):
    sp = _check(FILLED[name])
    assert _zero_fills(sp), "the summed operand is not zero at empty slots: it must be zero-filled"


@pytest.mark.parametrize("name", sorted(LEFT))
def test_sum_of_zero_slots_not_filled(name):
    sp = _check(LEFT[name])
    assert not _zero_fills(sp), "the summed operand is zero at empty slots already"


def test_compiled_step_zero_fills(aot_eager):
    """The fill inside the compiled step (dynamo and AOT autograd)."""
    sp = _check(FILLED["plus_one"], compile=True)
    assert _zero_fills(sp)
