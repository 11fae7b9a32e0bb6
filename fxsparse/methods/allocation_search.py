"""Random allocation search: the best of N random per-layer widths, each scored one-shot.

Li, Yang, Wang, Zhu, Wang, Liu, "Revisiting Random Channel Pruning for Neural Network
Compression", CVPR 2022 (arXiv 2205.05676): sample per-layer width settings that meet the
budget, score each one-shot after re-estimating BatchNorm statistics on a few training
batches, keep the best. With enough samples it matches many published criteria, so it is
the fair baseline for any learned allocation at equal search cost.

Here, per candidate: each prunable group g draws a ratio r_g ~ U(1/4, 1) (bounded, so that no
layer is drawn hundreds of times narrower than another: a one-channel bottleneck); the counts
``k_g = clamp(round(a r_g n_g), 1, n_g)`` take the largest common scale ``a`` that meets
the budget (bisection), then single channels are added to groups in random order while
they fit, so no candidate leaves room for one more channel (:func:`sample_allocation`).
Within a group the channels kept are the first k_g by the L1 norm of their filters (the
order of the ``l1_filter`` method and of VR-PGE's width search). A candidate is scored by
the exported model's accuracy on ``eval_batches`` training batches after its BatchNorm
statistics were re-estimated on ``bn_batches`` other training batches, as Li et al. do; the
highest wins, ties to the earlier candidate (:func:`best_allocation`). Not the loss: near
chance, a collapsed network that predicts the class prior has a lower loss (log 10) than a
pruned network that is confidently wrong, so the loss prefers the worst candidates.
``samples`` candidates (N) are drawn; duplicates are scored once.
"""
from __future__ import annotations

import torch

from fxsparse.analysis.flops import SubnetFlops
from fxsparse.rewrite.batchnorm import recalibrate_batchnorm
from fxsparse.rewrite.export import export
from .base import TrainState
from .options import check_number
from .registry import register_method
from .scores import filter_l1
from .select import ScoreMethod, first_output, model_device, take_batches, to_device


def sample_allocation(sizes: list, cost, limit: float, generator: torch.Generator) -> list:
    """Random per-group channel counts (each in [1, n_g]) with ``cost(counts) <= limit``, to
    which no single channel can be added without exceeding it. ``cost`` must grow with every
    count. Raises ValueError when one channel per group already exceeds ``limit``."""
    r = 0.25 + 0.75 * torch.rand(len(sizes), generator=generator, dtype=torch.float64)

    def counts_at(a: float) -> list:
        return [min(n, max(1, round(a * float(ri) * n))) for n, ri in zip(sizes, r)]

    if cost([1] * len(sizes)) > limit:
        raise ValueError(f"the budget is below what one channel per group costs ({cost([1] * len(sizes)):.4g} > "
                         f"{limit:.4g}); raise keep")
    hi = 1.0 / float(r.min())
    if cost(counts_at(hi)) <= limit:
        return counts_at(hi)
    lo = 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cost(counts_at(mid)) <= limit else (lo, mid)
    counts = counts_at(lo)
    order = torch.randperm(len(sizes), generator=generator).tolist()
    grown = True
    while grown:  # the rounding's leftover: one channel at a time, groups in random order
        grown = False
        for g in order:
            if counts[g] < sizes[g]:
                counts[g] += 1
                if cost(counts) <= limit:
                    grown = True
                else:
                    counts[g] -= 1
    return counts


def best_allocation(candidates: list, evaluate) -> tuple:
    """(best counts, its score, [(counts, score)] of each distinct candidate in order):
    the candidate with the highest ``evaluate(counts)`` (ties: the earlier one)."""
    seen, scored = set(), []
    for counts in candidates:
        key = tuple(counts)
        if key in seen:
            continue
        seen.add(key)
        scored.append((list(counts), float(evaluate(list(counts)))))
    best = min(range(len(scored)), key=lambda i: (-scored[i][1], i))
    return scored[best][0], scored[best][1], scored


@register_method("random_search")
class RandomAllocationSearch(ScoreMethod):
    """Random allocation search (Li et al., CVPR 2022): the best of ``samples`` random
    per-layer widths meeting the budget, each scored one-shot (BN statistics re-estimated on
    ``bn_batches`` training batches, accuracy on ``eval_batches`` others); channels within a layer
    by L1 order. Options: ``budget``, ``samples`` (32), ``bn_batches`` (10), ``eval_batches`` (5)."""
    paper = "Li et al., Revisiting Random Channel Pruning for Neural Network Compression, CVPR 2022"
    level = "channel"
    supported_levels = ("channel",)
    default_scope = {"channel": "global"}
    extra_options = {"samples": 32, "bn_batches": 10, "eval_batches": 5}

    def validate_options(self) -> None:
        for key in ("samples", "bn_batches", "eval_batches"):
            check_number("random_search", key, getattr(self, key), lo=1, integer=True)

    def init(self, state: TrainState) -> None:
        graph = self.channel_graph(state)
        groups = graph.prunable_groups
        sizes = [g.size for g in groups]
        order = filter_l1(graph, state.model)
        ranks = {g.id: torch.sort(order.get(g.id, torch.zeros(g.size, dtype=torch.float64)), descending=True,
                                  stable=True).indices for g in groups}
        counter = SubnetFlops(graph)

        def masks_of(counts):
            out = {}
            for g, k in zip(groups, counts):
                m = torch.zeros(g.size, dtype=torch.bool)
                m[ranks[g.id][:k]] = True
                out[g.id] = m
            return out

        if self.budget == "flops":
            cost, limit = (lambda c: float(counter(counter.flat(masks_of(c))))), self.keep * counter.dense * (1 + 1e-12)
        else:
            cost, limit = (lambda c: float(sum(c))), max(len(sizes), round(self.keep * sum(sizes)))
        candidates = [sample_allocation(sizes, cost, limit, state.generator) for _ in range(self.samples)]
        batches = take_batches(state, self.bn_batches + self.eval_batches, "random_search")
        calib, held = batches[:self.bn_batches], batches[self.bn_batches:] or batches[-1:]
        device = model_device(state.model)

        def evaluate(counts) -> float:
            small = export(state.model, graph, masks_of(counts))
            recalibrate_batchnorm(small, [to_device(x, device) for x, _ in calib])
            small.eval()
            with torch.no_grad():
                right = sum(int((first_output(small(to_device(x, device))).argmax(1) == to_device(y, device)).sum())
                            for x, y in held)
            return right / sum(len(y) for _, y in held)

        best, accuracy, scored = best_allocation(candidates, evaluate)
        self.allocation, self.candidates = best, scored
        self.scores = None
        self._keep_masks = masks_of(best)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "allocation": getattr(self, "allocation", None)}
