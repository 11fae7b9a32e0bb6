"""Tests of fxsparse.methods.vrpge.estimator: budget projection, Bernoulli sampling, VR-PGE estimators."""
import itertools
import math

import pytest
import torch

from fxsparse.methods.vrpge import (
    project_budget,
    reinforce_gradient,
    sample_grouped_mask,
    sample_mask,
    score_function,
    signal_to_noise,
    vrpge_gradient,
)

D = torch.float64


# ------------------------------------------------------------------ projection helpers

def _dykstra(s, budget, w, iters=20000):
    """Projection onto box ∩ halfspace by Dykstra's alternating projections (independent of the code under test)."""
    x = s.clone()
    p = torch.zeros_like(s)
    q = torch.zeros_like(s)
    ww = float((w * w).sum())
    for _ in range(iters):
        y = (x + p).clamp(0, 1)
        p = x + p - y
        z = y + q
        excess = float((w * z).sum()) - budget
        xn = z - (max(0.0, excess) / ww) * w if ww > 0 else z
        q = y + q - xn
        if torch.allclose(xn, x, atol=1e-13, rtol=0):
            x = xn
            break
        x = xn
    return x


def _bisect_projection(s, budget, w, tol=1e-12):
    """(x, v) of the projection by bisection on v (independent of the code under test):
    sum(w clamp(s - v w, 0, 1)) falls with v, the smallest v meeting the budget is the one."""
    used = lambda v: float((w * (s - v * w).clamp(0, 1)).sum())
    if used(0.0) <= budget:
        return s.clamp(0, 1), 0.0
    lo, hi = 0.0, float((s[w > 0] / w[w > 0]).max()) + 1.0
    while hi - lo > tol * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if used(mid) > budget else (lo, mid)
    return (s - hi * w).clamp(0, 1), hi


def _check_kkt(s, budget, w, x, v, tol=1e-7):
    assert v >= 0
    assert (x >= 0).all() and (x <= 1).all()
    assert float((w * x).sum()) <= budget + tol * max(1, budget)
    torch.testing.assert_close(x, (s - v * w).clamp(0, 1), atol=1e-12, rtol=0)
    if v > 0:  # constraint active: complementary slackness
        assert abs(float((w * x).sum()) - budget) <= tol * max(1, budget)


def _cases():
    g = torch.Generator().manual_seed(0)
    out = []
    for n in range(1, 9):
        for _ in range(12):
            s = torch.rand(n, generator=g, dtype=D) * 1.4 - 0.2  # some entries outside [0, 1]
            budget = float(torch.rand(1, generator=g, dtype=D)) * n
            out.append((s, budget, None))
            w = torch.rand(n, generator=g, dtype=D) * 3
            if n > 2:
                w[0] = 0.0  # a zero-cost channel
            out.append((s, budget * float(w.mean()), w))
    # ties, all ones, budget 0, budget >= n, integer weights with ties
    out += [
        (torch.full((5,), 0.5, dtype=D), 2.0, None),
        (torch.full((5,), 0.5, dtype=D), 0.0, None),
        (torch.ones(6, dtype=D), 3.0, None),
        (torch.ones(6, dtype=D), 6.0, None),
        (torch.ones(6, dtype=D), 10.0, None),
        (torch.ones(6, dtype=D), 0.0, None),
        (torch.tensor([0.9, 0.9, 0.1, 0.1], dtype=D), 1.0, None),
        (torch.tensor([0.9, 0.9, 0.1, 0.1], dtype=D), 1.0, torch.tensor([1.0, 2.0, 1.0, 2.0], dtype=D)),
        (torch.tensor([0.7, 0.7, 0.7], dtype=D), 0.0, torch.tensor([1.0, 4.0, 0.5], dtype=D)),
        (torch.tensor([2.0, -1.0, 0.5], dtype=D), 1.0, None),
        (torch.tensor([0.3, 0.8], dtype=D), 5.0, torch.tensor([10.0, 10.0], dtype=D)),
    ]
    return out


CASES = _cases()


@pytest.mark.parametrize("i", range(len(CASES)))
def test_projection_kkt_and_dykstra(i):
    s, budget, w = CASES[i]
    wt = torch.ones_like(s) if w is None else w
    x, v = project_budget(s, budget, weights=w)
    _check_kkt(s, budget, wt, x, v)
    torch.testing.assert_close(x, _dykstra(s, budget, wt), atol=1e-7, rtol=0)
    xb, _vb = _bisect_projection(s, budget, wt)
    torch.testing.assert_close(x, xb, atol=1e-7, rtol=0)


def test_projection_grid_bruteforce_small():
    """Direct minimisation of ||x - s||^2 over a fine grid of the feasible set, n <= 3."""
    g = torch.Generator().manual_seed(1)
    step = 0.005
    ticks = torch.arange(0, 1 + step / 2, step, dtype=D)
    for n in (1, 2, 3):
        grid = torch.cartesian_prod(*([ticks] * n)).reshape(-1, n) if n > 1 else ticks[:, None]
        if n == 3:
            ticks3 = torch.arange(0, 1 + 0.0125, 0.025, dtype=D)  # coarser in 3-D to stay fast
            grid = torch.cartesian_prod(ticks3, ticks3, ticks3)
        h = step if n < 3 else 0.025
        for trial in range(6):
            s = torch.rand(n, generator=g, dtype=D) * 1.2 - 0.1
            w = torch.ones(n, dtype=D) if trial % 2 == 0 else torch.rand(n, generator=g, dtype=D) + 0.2
            budget = float(torch.rand(1, generator=g, dtype=D)) * float(w.sum())
            x, _ = project_budget(s, budget, weights=w)
            feas = grid[(grid * w).sum(1) <= budget + 1e-12]
            best = ((feas - s) ** 2).sum(1).min()
            obj = float(((x - s) ** 2).sum())
            assert obj <= float(best) + 1e-12  # never worse than any feasible grid point
            # and the grid optimum is within a grid cell of ours (objective is 2-strongly convex)
            assert float(best) - obj <= 2 * math.sqrt(n) * h * 1.5 + (n * h) ** 2


def test_projection_inactive_returns_zero_v():
    s = torch.tensor([0.2, 0.3, 1.5, -0.5])
    x, v = project_budget(s, 3.0)
    assert v == 0.0
    torch.testing.assert_close(x, s.clamp(0, 1))
    assert x.dtype == s.dtype


def test_projection_large_random_exact_vs_bisect():
    g = torch.Generator().manual_seed(2)
    s = torch.rand(5000, generator=g, dtype=D)
    w = torch.rand(5000, generator=g, dtype=D) * 100
    for weights, budget in ((None, 1234.5), (w, float((w * s).sum()) * 0.3)):
        x, v = project_budget(s, budget, weights=weights)
        wt = torch.ones_like(s) if weights is None else weights
        _xb, vb = _bisect_projection(s, budget, wt)
        assert abs(v - vb) <= 1e-8 * max(1, v)
        assert abs(float((wt * x).sum()) - budget) <= 1e-6 * budget


def test_projection_float32_input():
    s = torch.rand(100, generator=torch.Generator().manual_seed(3))
    x, v = project_budget(s, 10.0)
    assert x.dtype == torch.float32 and v > 0
    assert abs(float(x.double().sum()) - 10.0) < 1e-4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"s": torch.tensor([0.5, 0.5]), "budget": -1.0},
        {"s": torch.tensor([0.5, float("nan")]), "budget": 1.0},
        {"s": torch.tensor([0.5, 0.5]), "budget": 1.0, "weights": torch.tensor([1.0, -1.0])},
        {"s": torch.tensor([0.5, 0.5]), "budget": 1.0, "weights": torch.tensor([1.0])},
        {"s": torch.tensor([[0.5, 0.5]]), "budget": 1.0},
        {"s": torch.tensor([0.5, 0.5]), "budget": float("nan")},
    ],
)
def test_projection_errors(kwargs):
    with pytest.raises(ValueError):
        project_budget(**kwargs)


# ------------------------------------------------------------------ score function / estimator identities

def test_score_forms_and_k2_identity():
    g = torch.Generator().manual_seed(4)
    s = torch.rand(7, generator=g, dtype=D) * 0.9 + 0.05
    m = sample_mask(s, g, num_samples=2)
    f = torch.randn(2, generator=g, dtype=D)
    ge = score_function(m, s, "exact")
    gp = score_function(m, s, "preconditioned")
    torch.testing.assert_close(ge, (m - s) / (s * (1 - s)))
    eps = 1e-8
    torch.testing.assert_close(gp, ge * s * (1 - s) / torch.sqrt(s * (1 - s) + eps))
    for form, gg in (("exact", ge), ("preconditioned", gp)):
        est = vrpge_gradient(f, m, s, form=form)
        torch.testing.assert_close(est, (f[0] - f[1]) / 2 * (gg[0] - gg[1]))
    # baseline makes VR-PGE invariant to a constant offset of the loss
    torch.testing.assert_close(vrpge_gradient(f + 10, m, s), vrpge_gradient(f, m, s))
    # exact score stays finite at the box boundary
    sb = torch.tensor([0.0, 1.0, 0.5], dtype=D)
    assert torch.isfinite(score_function(torch.tensor([1.0, 0.0, 1.0], dtype=D), sb)).all()
    with pytest.raises(ValueError):
        vrpge_gradient(f[:1], m[:1], s)
    with pytest.raises(ValueError):
        score_function(m, s, form="natural")


# ------------------------------------------------------------------ unbiasedness by enumeration

N_CH = 4
ALL_MASKS = torch.tensor(list(itertools.product([0.0, 1.0], repeat=N_CH)), dtype=D)  # [16, 4]
POW2 = 2 ** torch.arange(N_CH - 1, -1, -1)


def _expected_loss_grad(s, table):
    s = s.clone().requires_grad_(True)
    p = (ALL_MASKS * s + (1 - ALL_MASKS) * (1 - s)).prod(dim=1)
    (p * table).sum().backward()
    return s.grad


def _draw(s, table, n_est, k, seed):
    g = torch.Generator().manual_seed(seed)
    m = sample_mask(s, g, num_samples=n_est * k).reshape(n_est, k, N_CH)
    f = table[(m.long() * POW2).sum(-1)]
    return f, m


def _assert_unbiased(est, expected):
    """The mean of the estimates ``est`` [n, ...] is within 5 standard errors of ``expected``."""
    mean, se = est.mean(0), est.std(0) / math.sqrt(len(est))
    assert ((mean - expected).abs() <= 5 * se).all(), (mean, expected, se)


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(5)
    table = torch.randn(16, generator=g, dtype=D)
    s = torch.tensor([0.3, 0.5, 0.7, 0.15], dtype=D)
    return s, table


def test_vrpge_exact_unbiased(setup):
    s, table = setup
    true = _expected_loss_grad(s, table)
    n_est = 20000
    f, m = _draw(s, table, n_est, 2, seed=6)
    _assert_unbiased(vrpge_gradient(f, m, s, form="exact"), true)
    # also K = 4
    f4, m4 = _draw(s, table, n_est // 2, 4, seed=7)
    _assert_unbiased(vrpge_gradient(f4, m4, s), true)


def test_vrpge_variance_below_reinforce(setup):
    s, table = setup
    table = table + 10.0  # large offset: where a baseline matters
    true = _expected_loss_grad(s, table)
    n_est = 20000
    f, m = _draw(s, table, n_est, 2, seed=8)  # same samples, same forward budget (K = 2)
    vr = vrpge_gradient(f, m, s)
    rf = reinforce_gradient(f, m, s)
    # REINFORCE is unbiased too (sanity), with a much larger variance
    _assert_unbiased(rf, true)
    ratio = vr.var(0) / rf.var(0)
    print(f"variance ratio VR-PGE / REINFORCE per coordinate (K=2, loss offset 10): {ratio.tolist()}")
    assert (ratio < 0.2).all(), ratio


def test_signal_to_noise_recovers_known_signal_and_noise():
    g = torch.Generator().manual_seed(0)
    n, m = 4000, 400
    mu = 0.1 * torch.randn(n, generator=g, dtype=D)
    est = mu + torch.randn(m, n, generator=g, dtype=D)  # noise std 1: snr = rms(mu) / 1
    r = signal_to_noise(est)
    true_rms = float(mu.pow(2).mean().sqrt())
    assert abs(r["noise"] - 1.0) < 0.01
    assert abs(r["signal"] - true_rms) < 0.1 * true_rms  # the naive rms(mean) would be ~0.11 here
    assert abs(r["steps_to_resolve"] - 1 / true_rms ** 2) < 0.25 / true_rms ** 2
    pure = signal_to_noise(torch.randn(m, n, generator=g, dtype=D))
    assert pure["signal"] < pure["signal_floor"]  # noise alone is not reported as signal
    with pytest.raises(ValueError, match="M >= 4"):
        signal_to_noise(torch.randn(3, 5))


def test_signal_to_noise_of_vrpge_matches_the_exact_gradient(setup):
    """On the enumerable model the split-half signal equals the RMS of the exact gradient."""
    s, table = setup
    true = _expected_loss_grad(s, table)
    f, m = _draw(s, table, 40000, 2, seed=9)
    r = signal_to_noise(vrpge_gradient(f, m, s))
    assert abs(r["signal"] - float(true.pow(2).mean().sqrt())) < 0.05 * float(true.pow(2).mean().sqrt())


def test_preconditioned_is_rescaled_descent_direction(setup):
    s, table = setup
    true = _expected_loss_grad(s, table)
    n_est = 20000
    f, m = _draw(s, table, n_est, 2, seed=9)
    est = vrpge_gradient(f, m, s, form="preconditioned")
    scale = s * (1 - s) / torch.sqrt(s * (1 - s) + 1e-8)
    _assert_unbiased(est, scale * true)  # expectation is D * grad, not grad
    assert float(est.mean(0) @ true) > 0  # a descent direction
    # coordinate-wise it is the exact estimate times the positive factor
    torch.testing.assert_close(est, vrpge_gradient(f, m, s) * scale)


# ------------------------------------------------------------------ grouped sampling

def test_grouped_mask_at_least_one_and_frequencies():
    sizes = [1, 3, 2, 4]
    s = torch.tensor([0.1, 0.2, 0.05, 0.3, 0.5, 0.4, 0.15, 0.15, 0.1, 0.6], dtype=D)
    n = 40000
    m, forced = sample_grouped_mask(s, sizes, torch.Generator().manual_seed(10), num_samples=n)
    assert m.shape == (n, 10) and forced.shape == (n, 4)
    starts = [0, 1, 4, 6]
    for gi, (st, k) in enumerate(zip(starts, sizes)):
        assert (m[:, st:st + k].sum(1) >= 1).all()
    # expected frequencies: s_i, plus the empty-group probability on the group's argmax
    expected = s.clone()
    p_empty = []
    for st, k in zip(starts, sizes):
        pe = float((1 - s[st:st + k]).prod())
        p_empty.append(pe)
        expected[st + int(torch.argmax(s[st:st + k]))] += pe
    freq = m.mean(0)
    se = torch.sqrt(expected * (1 - expected) / n)
    assert ((freq - expected).abs() <= 5 * se).all(), (freq, expected)
    pe = torch.tensor(p_empty, dtype=D)
    assert ((forced.double().mean(0) - pe).abs() <= 5 * torch.sqrt(pe * (1 - pe) / n)).all()
    # unforced groups are exactly the plain Bernoulli draw (same generator stream)
    plain = sample_mask(s, torch.Generator().manual_seed(10), num_samples=n)
    gid = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    keep_plain = ~forced[:, gid]
    assert torch.equal(m[keep_plain], plain[keep_plain])


def test_grouped_mask_single_and_errors():
    s = torch.zeros(5)
    m, forced = sample_grouped_mask(s, [2, 3])
    assert m.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0] and forced.tolist() == [True, True]
    with pytest.raises(ValueError):
        sample_grouped_mask(s, [2, 2])
    with pytest.raises(ValueError):
        sample_grouped_mask(s, [5, 0])


def test_projection_exact_path_needs_no_fallback(monkeypatch):
    import fxsparse.methods.vrpge.estimator as vr

    def boom(*a, **k):
        raise AssertionError("exact solve fell back to bisection")

    monkeypatch.setattr(vr, "_solve_v_bisect", boom)
    for s, budget, w in CASES:
        project_budget(s, budget, weights=w)


def test_projection_fallback_used_when_exact_fails(monkeypatch):
    import fxsparse.methods.vrpge.estimator as vr

    s, budget = torch.tensor([0.9, 0.8, 0.7], dtype=D), 1.0
    want, v_want = project_budget(s, budget)
    monkeypatch.setattr(vr, "_solve_v_exact", lambda *a: None)
    got, v = project_budget(s, budget)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=0)
    assert abs(v - v_want) < 1e-8
