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
