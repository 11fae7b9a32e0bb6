"""SNIP: single-shot network pruning by connection sensitivity.

Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR 2019 (arXiv 1810.02340).

Weight level (the paper): score = |g * theta| with g = dL/dtheta on one training batch
at initialisation, divided by the sum of all scores (the paper's normalisation; it does
not change the ranking), and the top ``keep`` fraction of conv/linear weights is kept,
globally by default.

Channel level: a gate c_j multiplying channel j has dL/dc_j = sum over the channel's
parameters of g * theta (each parameter touching the channel scales with the gate), so
the channel score is |sum over the group's parameter members of g * theta| (Lee et al.,
ICLR 2019, with the gate over a channel), normalised by the sum over channels. Buffers are skipped (no gradient).

Conventions: the model is scored in train mode (BN uses batch statistics, as when the
network starts training; the running statistics are not updated) -- ``train_mode=False``
scores in eval mode like the Synaptic-Flow re-implementation. ``batches`` (default 1, the
paper) sums the gradient over that many batches.
"""
from __future__ import annotations

import torch

from .base import TrainState
from .registry import register_method
from .gradients import per_batch_gradients
from .select import ScoreMethod, group_scores, take_batches


def snip_products(model, batches, loss_fn, names, *, train_mode=True, generator=None) -> dict:
    """{name: g * theta} (signed) for the parameters ``names``; g is the gradient of the
    loss summed over ``batches`` ([(inputs, targets)]). The model is not changed."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in names}
    for grads in per_batch_gradients(model, batches, loss_fn, names, train_mode=train_mode, generator=generator):
        for n in names:
            total[n].add_(grads[n])
    return {n: total[n] * params[n].detach() for n in names}


@register_method("snip")
class SNIP(ScoreMethod):
    """SNIP (Lee et al., ICLR 2019): keep the largest |g * theta| (weights) or
    |sum_group g * theta| (channels). Options: ``level`` ("channel" default, "weight" =
    the paper), ``scope``, ``budget``, ``batches`` (1), ``train_mode`` (True)."""
    paper = "Lee et al., SNIP: Single-shot Network Pruning based on Connection Sensitivity, ICLR 2019"
    level = "channel"
    extra_options = {"batches": 1, "train_mode": True}

    def validate_options(self) -> None:
        if not isinstance(self.batches, int) or self.batches < 1:
            raise ValueError(f"snip: batches must be a positive int, got {self.batches!r}")

    def init(self, state: TrainState) -> None:
        model = state.model
        batches = take_batches(state, self.batches, "snip")
        graph, names = self.scored_parameters(state)
        prod = snip_products(model, batches, state.loss_fn, names, train_mode=self.train_mode, generator=state.generator)
        if self.level == "weight":
            scores = {n: v.abs() for n, v in prod.items()}
            total = sum(float(v.double().sum()) for v in scores.values())
            self.scores = {n: v / total if total > 0 else v for n, v in scores.items()}
            self._weight_masks = self.select_weights(self.scores)
        else:
            per = group_scores(graph, prod, reduce="sum")
            scores = {gid: v.abs() for gid, v in per.items()}
            total = sum(float(v.sum()) for v in scores.values())
            self.scores = {gid: v / total if total > 0 else v for gid, v in scores.items()}
            self._keep_masks = self.select_channels(graph, self.scores)
