"""Core math of VR-PGE channel-level sparse training, in plain torch.

Zhou et al., "Efficient Neural Network Training via Forward and Backward Propagation
Sparsification" (NeurIPS 2021). Channel keep bits m ~ Bernoulli(s), one score s_i in
[0, 1] per prunable channel (all groups' scores concatenated into one 1-D tensor), the
scores optimised by a variance-reduced policy gradient and projected onto a budget.

What is here (no model code):

* :func:`project_budget` -- exact Euclidean projection onto
  ``{0 <= s <= 1, sum(w * s) <= budget}`` (w = 1: a channel budget; w = per-channel FLOPs:
  a FLOPs budget).
* :func:`sample_mask`, :func:`sample_grouped_mask` -- Bernoulli masks; the grouped one
  keeps at least one channel per group and reports which groups it had to force.
* :func:`score_function` -- d/ds log p(m | s), exact or the authors' preconditioned form.
* :func:`vrpge_gradient` (leave-one-out / mean baseline, K >= 2 samples) and
  :func:`reinforce_gradient` (no baseline, for comparison).

Which score form is the default, and why
----------------------------------------
Default: ``form="exact"``, g = (m - s) / (s (1 - s)). It is the true score of the
Bernoulli distribution, so the VR-PGE estimate is an unbiased estimate of
d/ds E_{m~Bern(s)} L(m) (tested by full enumeration in tests/methods/test_vrpge.py).

``form="preconditioned"``, g = (m - s) / sqrt(s (1 - s) + eps), is what the authors' code
runs. It equals the exact score times the positive per-coordinate factor
s (1 - s) / sqrt(s (1 - s) + eps) ~= sqrt(s (1 - s)) (an inverse-square-root Fisher
preconditioning: the Bernoulli Fisher information is 1 / (s (1 - s))). Its expectation is
therefore D * grad with D a positive diagonal matrix: a descent direction, but NOT an
unbiased estimate of the raw gradient. Use it to reproduce the authors' runs.

Why not default to the preconditioned form: we found no reason that holds in general.
Its practical advantage is bounded magnitudes: with the exact score, a channel with
s -> 0 that happens to be sampled gets |g| ~ 1 / s, so the exact estimate is heavy-tailed
near the box boundary (its per-coordinate second moment is 1 / (s (1 - s))). With Adam on
s (the authors' optimiser) a slowly varying per-coordinate scale is largely normalised
away, so the two forms behave alike there; but with joint gradient-norm clipping over w
and s (authors: clip at 3) the rare large exact-score spikes can clip -- and so shrink --
the weight update. Clip s separately from w, or choose the preconditioned form, when
that matters. ``eps`` clamps s to [eps, 1 - eps] in the exact form so that g stays finite.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fxsparse.analysis.masks import check_no_nan

__all__ = [
    "project_budget",
    "reinforce_gradient",
    "sample_grouped_mask",
    "sample_mask",
    "score_function",
    "vrpge_gradient",
]

_FORMS = ("exact", "preconditioned")


# --------------------------------------------------------------------------------------
# Projection onto {0 <= s <= 1, sum(w s) <= budget}
# --------------------------------------------------------------------------------------

def _check_projection_inputs(s, budget, weights):
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"s must be a torch.Tensor, got {type(s).__name__}")
    if s.dim() != 1:
        raise ValueError(f"s must be 1-D (all groups' scores concatenated), got shape {tuple(s.shape)}")
    if not s.is_floating_point():
        raise ValueError(f"s must be a floating-point tensor, got dtype {s.dtype}")
    check_no_nan(s, "s contains NaN; the scores are corrupt (check the learning rate / the loss)")
    budget = float(budget)
    if math.isnan(budget) or budget < 0:
        raise ValueError(f"budget must be a number >= 0, got {budget!r}")
    if weights is None:
        w = torch.ones_like(s, dtype=torch.float64)
    else:
        w = torch.as_tensor(weights).detach().to(device=s.device, dtype=torch.float64).flatten()
        if w.numel() != s.numel():
            raise ValueError(f"weights has {w.numel()} entries, s has {s.numel()}; pass one weight per channel")
        if torch.isnan(w).any() or torch.isinf(w).any():
            raise ValueError("weights must be finite")
        if (w < 0).any():
            raise ValueError("weights must be >= 0 (e.g. per-channel FLOPs); got a negative weight")
    if torch.isinf(s).any():
        raise ValueError("s contains inf; the scores are corrupt")
    return budget, w


def _phi(s64, w, v):
    """sum(w * clamp(s - v w, 0, 1)) at a scalar v (float64)."""
    return float((w * (s64 - v * w).clamp(0.0, 1.0)).sum())


def _phi_at(s64, w, t):
    """phi evaluated at every point of the sorted-or-not vector t, in O((n + len(t)) log n).

    For w_i > 0: x_i(v) = 1 for v <= a_i = (s_i - 1)/w_i, s_i - v w_i for a_i < v < b_i,
    0 for v >= b_i = s_i / w_i (b_i - a_i = 1 / w_i > 0). Hence
    phi(v) = sum_{a_i >= v} w_i + sum_{a_i < v} (w_i s_i - v w_i^2) - sum_{b_i <= v} (w_i s_i - v w_i^2),
    the last sum being over entries already at 0 (b_i <= v implies a_i < v).
    Entries with w_i = 0 contribute nothing.
    """
    pos = w > 0
    sp, wp = s64[pos], w[pos]
    a, b = (sp - 1.0) / wp, sp / wp
    ia, ib = torch.argsort(a), torch.argsort(b)
    a_s, b_s = a[ia], b[ib]
    zero = torch.zeros(1, dtype=torch.float64, device=s64.device)
    # prefix sums (prefix[k] = sum of the first k sorted entries)
    wa = torch.cat([zero, torch.cumsum(wp[ia], 0)])
    wsa = torch.cat([zero, torch.cumsum((wp * sp)[ia], 0)])
    w2a = torch.cat([zero, torch.cumsum((wp * wp)[ia], 0)])
    wsb = torch.cat([zero, torch.cumsum((wp * sp)[ib], 0)])
    w2b = torch.cat([zero, torch.cumsum((wp * wp)[ib], 0)])
    ka = torch.searchsorted(a_s, t, right=False)  # number of a_i < t
    kb = torch.searchsorted(b_s, t, right=True)  # number of b_i <= t
    ones_part = wa[-1] - wa[ka]
    mid_a = wsa[ka] - t * w2a[ka]
    mid_b = wsb[kb] - t * w2b[kb]
    return ones_part + mid_a - mid_b


def _solve_v_exact(s64, w, budget):
    """Smallest v >= 0 with phi(v) = budget, given phi(0) > budget (breakpoint sweep)."""
    pos = w > 0
    sp, wp = s64[pos], w[pos]
    bps = torch.cat([(sp - 1.0) / wp, sp / wp, torch.zeros(1, dtype=torch.float64, device=s64.device)])
    t = torch.unique(bps[bps >= 0])  # sorted, starts at 0
    vals = _phi_at(s64, w, t)
    # phi is continuous, piecewise linear and nonincreasing; phi(t[0] = 0) > budget and
    # phi(max b_i) = 0 <= budget. Find the first breakpoint at or below the budget.
    below = torch.nonzero(vals <= budget).flatten()
    if below.numel() == 0:  # cannot happen in exact arithmetic; let the caller fall back
        return None
    k = int(below[0])
    if k == 0:
        return 0.0
    t0, t1 = float(t[k - 1]), float(t[k])
    f0, f1 = float(vals[k - 1]), float(vals[k])
    if f0 == f1:
        return t1
    return t0 + (f0 - budget) / (f0 - f1) * (t1 - t0)


def _solve_v_bisect(s64, w, budget, tol=1e-9, max_iter=200):
    """Bisection on v for phi(v) = budget, to an interval width of tol (relative to the bracket)."""
    lo = 0.0
    pos = w > 0
    hi = float((s64[pos] / w[pos]).max().clamp_min(0.0)) + 1.0
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if _phi(s64, w, mid) > budget:
            lo = mid
        else:
            hi = mid
        if hi - lo <= tol * max(1.0, hi):
            break
    return hi


@torch.no_grad()
def project_budget(s, budget, weights=None, tol=1e-6):
    """Euclidean projection of ``s`` onto ``{x : 0 <= x <= 1, sum(w * x) <= budget}``.

    Returns ``(s_proj, v)`` with ``s_proj = clamp(s - v * w, 0, 1)`` and ``v >= 0`` a float:
    ``v = 0`` when ``clamp(s, 0, 1)`` already satisfies the budget (to within ``tol`` in
    absolute terms, scaled by ``max(1, budget)``), else the smallest v with
    ``sum(w * clamp(s - v w, 0, 1)) = budget`` (the KKT conditions of the projection).

    ``s``: 1-D float tensor, all groups' scores concatenated. ``weights``: None (every
    channel costs 1: a channel budget) or one weight >= 0 per channel (per-channel FLOPs:
    a FLOPs budget). Channels of weight 0 are only clamped to [0, 1].

    It solves the piecewise-linear monotone equation exactly by sorting the breakpoints
    (s_i - 1)/w_i and s_i/w_i (O(n log n), float64) and checks the result; if the check
    fails it falls back to bisection to 1e-9.

    Raises ValueError for budget < 0, NaN/inf in s, negative or non-finite weights, or a
    weight vector of the wrong length. Not differentiable (runs under no_grad).
    """
    budget, w = _check_projection_inputs(s, budget, weights)
    s64 = s.detach().to(torch.float64)
    clamped = s64.clamp(0.0, 1.0)
    scale = max(1.0, budget)
    if float((w * clamped).sum()) <= budget + tol * scale:
        return clamped.to(s.dtype), 0.0
    v = _solve_v_exact(s64, w, budget)
    if v is not None and abs(_phi(s64, w, v) - budget) > tol * scale:
        v = None  # numerical trouble: fall back
    if v is None:
        v = _solve_v_bisect(s64, w, budget)
    out = (s64 - v * w).clamp(0.0, 1.0)
    return out.to(s.dtype), float(v)


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------

def _check_probs(s):
    if not isinstance(s, torch.Tensor) or not s.is_floating_point():
        raise ValueError("s must be a floating-point torch.Tensor of keep probabilities")
    check_no_nan(s, "s contains NaN")


def sample_mask(s, generator=None, num_samples=None):
    """Independent Bernoulli(s_i) keep bits, as a float tensor of 0/1 with s's dtype.

    ``s`` is clamped to [0, 1] first. ``num_samples=K`` returns shape ``[K, *s.shape]``
    (K independent masks), else ``s.shape``.
    """
    _check_probs(s)
    p = s.detach().clamp(0.0, 1.0)
    if num_samples is not None:
        p = p.expand(int(num_samples), *p.shape)
    return torch.bernoulli(p, generator=generator)


def sample_grouped_mask(s, group_sizes: Sequence[int], generator=None, num_samples=None):
    """Bernoulli(s) keep bits with at least one kept channel in every group.

    ``s`` is the concatenation of the groups' scores, ``group_sizes`` their lengths (each
    >= 1, summing to ``s.numel()``). Each channel is first drawn Bernoulli(s_i) exactly as
    :func:`sample_mask` does (same generator draws); any group that kept nothing then keeps
    its highest-probability channel (the first one on ties).

    Returns ``(m, forced)``: ``m`` like :func:`sample_mask`, ``forced`` a bool tensor of
    shape ``[..., num_groups]``, True where the group was forced.

    Note: forcing changes the sampling distribution. Within a group g, the pattern
    "only the argmax channel kept" gets probability p(that pattern) + prod_{i in g}(1 - s_i)
    and the empty pattern gets 0; so E[m_i] = s_i + [i is g's argmax] * prod_{j in g}(1 - s_j).
    The Bernoulli score function is then not the exact score of the sampled distribution
    for forced groups; an estimator may drop or down-weight those groups using ``forced``.
    When every group's scores are away from 0 the effect is negligible (the empty
    probability is a product over the group).
    """
    _check_probs(s)
    sizes = [int(k) for k in group_sizes]
    if any(k < 1 for k in sizes):
        raise ValueError(f"every group needs at least one channel, got sizes {sizes}")
    if s.dim() != 1 or sum(sizes) != s.numel():
        raise ValueError(f"group sizes sum to {sum(sizes)} but s has shape {tuple(s.shape)}; s must be 1-D")
    m = sample_mask(s, generator=generator, num_samples=num_samples)
    flat = m.reshape(-1, s.numel())
    gid = torch.repeat_interleave(torch.arange(len(sizes), device=s.device), torch.tensor(sizes, device=s.device))
    counts = torch.zeros(flat.shape[0], len(sizes), dtype=flat.dtype, device=s.device)
    counts.index_add_(1, gid, flat)
    forced = counts == 0
    if forced.any():
        starts = [0]
        for k in sizes[:-1]:
            starts.append(starts[-1] + k)
        sd = s.detach()
        argmax = torch.tensor([st + int(torch.argmax(sd[st:st + k])) for st, k in zip(starts, sizes)], device=s.device)
        rows, groups = torch.nonzero(forced, as_tuple=True)
        flat[rows, argmax[groups]] = 1.0
    return flat.reshape(m.shape), forced.reshape(*m.shape[:-1], len(sizes))


# --------------------------------------------------------------------------------------
# Score function and gradient estimators
# --------------------------------------------------------------------------------------

def score_function(m, s, form="exact", eps=1e-8):
    """Score g = d/ds log p(m | s) of independent Bernoulli bits (broadcasts m against s).

    ``form="exact"``: g = (m - s) / (s (1 - s)) with s clamped to [eps, 1 - eps] (unbiased
    policy gradients). ``form="preconditioned"`` (the authors' code):
    g = (m - s) / sqrt(s (1 - s) + eps) = exact * s (1 - s) / sqrt(s (1 - s) + eps), a
    positive per-coordinate rescaling of the exact score (for s strictly inside (0, 1)
    and away from the eps clamp): it yields a descent direction whose expectation is
    D * grad, not the raw gradient.
    """
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
    s = s.detach()
    m = m.to(s.dtype)
    if form == "exact":
        sc = s.clamp(eps, 1.0 - eps)
        return (m - sc) / (sc * (1.0 - sc))
    return (m - s) / torch.sqrt(s * (1.0 - s) + eps)


def _check_estimator_inputs(losses, masks, s):
    losses = torch.as_tensor(losses, dtype=s.dtype, device=s.device).detach()
    if masks.shape[-1] != s.shape[-1]:
        raise ValueError(f"masks have {masks.shape[-1]} channels, s has {s.shape[-1]}")
    if masks.shape[:-1] != losses.shape:
        raise ValueError(f"losses shape {tuple(losses.shape)} must equal masks shape without the channel dim "
                         f"{tuple(masks.shape[:-1])} (one loss per sample)")
    check_no_nan(losses, "losses contain NaN")
    return losses


def vrpge_gradient(losses, masks, s, form="exact", eps=1e-8):
    """Variance-reduced policy gradient of E_{m~Bern(s)} L(m) w.r.t. s.

    ``losses``: shape [..., K] (K >= 2 samples, detached), ``masks``: [..., K, n],
    ``s``: [n]. Returns [..., n]:
        grad = 1/(K-1) * sum_j (f_j - mean(f)) * g_j
    (mean-baseline / leave-one-out estimator; for K = 2 it equals (f1 - f2)/2 * (g1 - g2)).
    With ``form="exact"`` it is unbiased for any K >= 2 and invariant to adding a constant
    to the loss. With ``form="preconditioned"`` its expectation is the gradient times the
    positive diagonal s(1-s)/sqrt(s(1-s)+eps) (see the module docstring).
    """
    losses = _check_estimator_inputs(losses, masks, s)
    K = losses.shape[-1]
    if K < 2:
        raise ValueError(f"VR-PGE needs K >= 2 samples (got {K}); use reinforce_gradient for one sample")
    g = score_function(masks, s, form=form, eps=eps)
    fc = losses - losses.mean(dim=-1, keepdim=True)
    return (fc.unsqueeze(-1) * g).sum(dim=-2) / (K - 1)


def reinforce_gradient(losses, masks, s, form="exact", eps=1e-8):
    """Plain REINFORCE (no baseline): mean_j f_j * g_j. Shapes as in :func:`vrpge_gradient`, K >= 1."""
    losses = _check_estimator_inputs(losses, masks, s)
    if losses.shape[-1] < 1:
        raise ValueError("need at least one sample")
    g = score_function(masks, s, form=form, eps=eps)
    return (losses.unsqueeze(-1) * g).mean(dim=-2)


def signal_to_noise(estimates: torch.Tensor) -> dict:
    """How much of a stochastic gradient estimate is signal, from ``estimates`` [M, n]
    (M independent estimates of the same n-dim gradient).

    A per-coordinate mean from M samples is itself noisy, so ``mean**2`` overstates the
    signal. Split-half instead: with means ``a``, ``b`` of two independent halves,
    ``E[a_j b_j] = mu_j**2``, so ``signal = sqrt(max(mean_j(a_j b_j), 0))`` is the RMS of the
    true gradient without the noise bias; ``noise`` is the RMS per-sample standard deviation.
    ``snr = signal / noise`` per single estimate; averaging ``n`` estimates gives
    ``snr * sqrt(n)``, so ``steps_to_resolve = 1 / snr**2`` estimates are needed before the
    average points along the gradient more than along its noise (inf if no signal is found).
    ``signal_floor``: the signal RMS this M and n can tell from zero (2 standard errors);
    ``snr_upper`` = max(signal, floor) / noise bounds the snr from above, so
    ``min_steps`` = 1 / snr_upper^2 is a lower bound on the steps to resolve."""
    e = torch.as_tensor(estimates, dtype=torch.float64)
    if e.dim() != 2 or e.shape[0] < 4:
        raise ValueError(f"estimates must be [M, n] with M >= 4 independent estimates, got {tuple(e.shape)}")
    half = e.shape[0] // 2
    a, b = e[:half].mean(0), e[half:2 * half].mean(0)
    prod = a * b
    noise = float(e.var(0, unbiased=True).mean().sqrt())
    signal2 = float(prod.mean())
    floor2 = 2 * float(prod.std(unbiased=True)) / math.sqrt(prod.numel())
    signal = math.sqrt(max(signal2, 0.0))
    floor = math.sqrt(max(floor2, 0.0))
    snr = signal / noise if noise > 0 else math.inf
    upper = max(signal, floor) / noise if noise > 0 else math.inf
    return {"signal": signal, "noise": noise, "snr": snr, "signal_floor": floor,
            "steps_to_resolve": (1.0 / snr ** 2) if snr > 0 else math.inf, "snr_upper": upper,
            "min_steps": (1.0 / upper ** 2) if upper > 0 else math.inf, "estimates": int(e.shape[0])}
