"""Random pruning: the cheap baseline every pruning paper compares against.

Channel level (default): each prunable group keeps ``max(1, round(keep * size))``
channels drawn uniformly at random (``scope="per_group"``, the same ratio as
``fxsparse.random_keep``); ``scope="global"`` draws one random ranking over all channels,
and ``budget="flops"`` fills a FLOPs budget in random order. Weight level: each conv /
linear weight keeps ``max(1, round(keep * n))`` random entries (``scope="per_layer"``,
default; ``"global"`` draws over all weights). All randomness comes from
``state.generator``, drawn once at ``init``: the masks are fixed for the whole run.
"""
from __future__ import annotations

import torch

from .base import TrainState
from .registry import register_method
from .select import ScoreMethod


@register_method("random")
class RandomPruning(ScoreMethod):
    """Fixed random channels (or weights) at the keep ratio, seeded from state.generator."""
    paper = "random baseline (e.g. Liu et al., Rethinking the Value of Network Pruning, ICLR 2019)"
    level = "channel"
    default_scope = {"channel": "per_group", "weight": "per_layer"}

    def init(self, state: TrainState) -> None:
        gen = state.generator
        if self.level == "weight":
            params = dict(state.model.named_parameters())
            self.scores = {n: torch.rand(params[n].shape, generator=gen, dtype=torch.float64)
                           for n in self.weight_names(state)}
            masks = self.select_weights(self.scores)
            self._weight_masks = {n: m.to(params[n].device) for n, m in masks.items()}
        else:
            graph = self.channel_graph(state)
            self.scores = {g.id: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in graph.prunable_groups}
            self._keep_masks = self.select_channels(graph, self.scores)
