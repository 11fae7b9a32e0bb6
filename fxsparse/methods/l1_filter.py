"""L1-norm filter pruning.

Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017
(arXiv 1608.08710).

Channel score = sum |W[c]| over the group's producing filters: every conv / linear weight
member of the group along its output-channel dim (``side="out"``, the paper's filter
norm; a channel shared by a residual stream sums the filters of every conv writing to
it). ``side="all"`` also adds the consumers' input slices W[:, c]. A group with no
producing weight (rare) falls back to all its weight members. ``reduce="mean"`` divides
by the number of entries (|W| per entry), useful with ``scope="global"`` because sums
grow with fan-in. Default ``scope="per_group"``: every group keeps the same fraction,
as Li et al. prune a fixed fraction of each layer. Channel level only.
"""
from __future__ import annotations

import torch

from .base import TrainState
from .options import check_choices
from .registry import register_method
from .scores import filter_l1
from .select import ScoreMethod


@register_method("l1_filter")
class L1Filter(ScoreMethod):
    """L1-filter (Li et al., ICLR 2017): keep the channels with the largest sum |W[c]|.
    Options: ``scope`` ("per_group" default, "global"), ``budget``, ``side`` ("out"),
    ``reduce`` ("sum")."""
    paper = "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017"
    level = "channel"
    supported_levels = ("channel",)
    default_scope = {"channel": "per_group"}
    extra_options = {"side": "out", "reduce": "sum"}

    def validate_options(self) -> None:
        check_choices("l1_filter", side=(self.side, ("out", "all")), reduce=(self.reduce, ("sum", "mean")))

    def init(self, state: TrainState) -> None:
        self.scores = filter_l1(self.channel_graph(state), state.model, side=self.side, reduce=self.reduce)
        self._keep_masks = self.select_channels(self.channel_graph(state), self.scores)


@register_method("l1_global")
class L1Global(ScoreMethod):
    """L1 filter norm ranked globally with FLOPs-normalised scores: a channel's score is its
    filters' mean |W| (``l1_filter`` with ``reduce="mean"``) divided by its group's mean
    (so that layers of different weight scales compare), divided by the FLOPs its removal
    saves relative to the average channel's (:meth:`SubnetFlops.marginal`): per FLOP, the
    weakest filters anywhere in the network go first. Fills the run's budget in that order.
    Options: ``budget``."""
    paper = "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017 (global, FLOPs-normalised)"
    level = "channel"
    supported_levels = ("channel",)
    default_scope = {"channel": "global"}

    def validate_options(self) -> None:
        if self.scope != "global":
            raise ValueError("l1_global ranks all channels together (scope='global'); for a uniform ratio per layer "
                             "use l1_filter")

    def init(self, state: TrainState) -> None:
        from fxsparse.analysis.flops import SubnetFlops

        graph = self.channel_graph(state)
        l1 = filter_l1(graph, state.model, side="out", reduce="mean")
        counter = SubnetFlops(graph)
        saved = torch.split(counter.marginal(), [g.size for g in graph.prunable_groups])
        saved = {g.id: part for g, part in zip(graph.prunable_groups, saved)}
        mean_saved = float(torch.cat(list(saved.values())).mean())
        # the weakest filters per FLOP first; a group whose filters are all zero scores 0
        self.scores = {gid: (v / float(v.mean()) if float(v.mean()) > 0 else v) / (saved[gid] / mean_saved).clamp_min(1e-12)
                       for gid, v in l1.items()}
        self._keep_masks = self.select_channels(graph, self.scores)
