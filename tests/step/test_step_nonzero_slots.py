"""Sums over a channel dim of a tensor that an op made non-zero at the step's empty slots
(``(h + 1).sum(1)``, a count ``(h <= 0.1).sum(1)``, ``exp``, a contraction of two sigmoids):
the compiled sparse step zero-fills that operand there, so it equals the exported model at
keep 0.5 (before, it counted the empty slots). A sum of a tensor that is zero there
(``relu(h).sum(1)``, ``sigmoid(q) @ k^T``) is left as it is.

An op that makes an empty slot's zero inf or NaN (``log(h.abs())``, ``1 / h``) or whose
gradient there is (``sqrt(h.abs())``) gets one at those slots instead: before, the next
layer's zero weights turned the inf into NaN everywhere, where the exported model is finite."""
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


class Between(nn.Module):
    """``f`` between two convolutions: the second contracts the first's 8 prunable channels."""

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.c2(self.f(self.c1(x))).mean((2, 3)))


NON_FINITE = {  # inf or NaN at a zero, in the value or (sqrt) only in the gradient
    "log_abs": lambda: Between(lambda h: torch.log(h.abs())),
    "reciprocal": lambda: Between(lambda h: 1 / h),
    "rsqrt_square": lambda: Between(lambda h: (h * h).rsqrt()),
    "sin_over_h": lambda: Between(lambda h: h.sin() / h),
    "sqrt_abs": lambda: Between(lambda h: torch.sqrt(h.abs())),
}
FINITE = {  # finite at a zero with a finite gradient: nothing to fill
    "gelu": lambda: Between(F.gelu), "silu": lambda: Between(F.silu), "abs": lambda: Between(torch.abs),
    "square": lambda: Between(lambda h: h * h), "log_clamped": lambda: Between(lambda h: h.abs().clamp_min(1e-3).log()),
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


def _one_fills(sp):
    return [b for b in sp.valid_buffers if b.startswith("_fxsparse_one_")]


@pytest.mark.parametrize("name", sorted(NON_FINITE))
def test_op_non_finite_at_a_zero_slot_trains_like_the_export(name):
    sp = _check(NON_FINITE[name])  # loss, output and kept gradients finite and equal to the export's
    assert _one_fills(sp), "the op's operand must be one at the empty slots"


@pytest.mark.parametrize("name", sorted(FINITE) + sorted(FILLED) + sorted(LEFT))
def test_op_finite_at_a_zero_slot_not_filled_with_one(name):
    sp = _check({**FINITE, **FILLED, **LEFT}[name])
    assert not _one_fills(sp)


def test_compiled_step_fills_non_finite_slots_with_one(aot_eager):
    sp = _check(NON_FINITE["log_abs"], compile=True)
    assert _one_fills(sp)


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
