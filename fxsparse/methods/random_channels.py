"""Random pruning: the cheap baseline every pruning paper compares against.

Channel level (default): each prunable group keeps ``max(1, round(keep * size))``
channels drawn uniformly at random (``scope="per_group"``, the same ratio as
``fxsparse.random_keep``); ``scope="global"`` draws one random ranking over all channels,
and ``budget="flops"`` fills a FLOPs budget in random order; ``allocation=[k_0, k_1, ...]``
keeps exactly k_i random channels of the i-th prunable group (for instance the per-layer
allocation a structure search learned: this separates the allocation from the choice of
channels within a layer; ``keep`` and ``budget`` are then not used). Weight level: each conv /
linear weight keeps ``max(1, round(keep * n))`` random entries (``scope="per_layer"``,
default; ``"global"`` draws over all weights). All randomness comes from
``state.generator``, drawn once at ``init``: the masks are fixed for the whole run.
"""
from __future__ import annotations

import torch

from .base import TrainState
from .registry import register_method
from .select import ScoreMethod, keep_top


@register_method("random")
class RandomPruning(ScoreMethod):
    """Fixed random channels (or weights) at the keep ratio, seeded from state.generator."""
    paper = "random baseline (e.g. Liu et al., Rethinking the Value of Network Pruning, ICLR 2019)"
    level = "channel"
    default_scope = {"channel": "per_group", "weight": "per_layer"}
    extra_options = {"allocation": None}

    def validate_options(self) -> None:
        a = self.allocation
        if a is not None and (self.level != "channel" or not isinstance(a, (list, tuple))
                              or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in a)):
            raise ValueError(f"random: allocation must be a list of channel counts >= 1, one per prunable group "
                             f"(channel level only), got {a!r}")

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
            groups = graph.prunable_groups
            self.scores = {g.id: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in groups}
            if self.allocation is None:
                self._keep_masks = self.select_channels(graph, self.scores)
                return
            if len(self.allocation) != len(groups) or any(k > g.size for k, g in zip(self.allocation, groups)):
                raise ValueError(f"random: allocation {list(self.allocation)} does not fit the model's prunable groups "
                                 f"(sizes {[g.size for g in groups]}): one count per group, at most its size")
            self._keep_masks = {g.id: keep_top(graph, {g.id: self.scores[g.id]}, k / g.size, scope="per_group")[g.id]
                                for g, k in zip(groups, self.allocation)}
