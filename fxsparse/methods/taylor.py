"""First-order Taylor importance of channels, accumulated over many batches.

Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for Neural Network
Pruning", CVPR 2019 (arXiv 1906.10771).

Removing channel j (zeroing every parameter entry that belongs to it) changes the loss, to
first order, by -sum over those entries of g * w. Per minibatch b that sum is
``t_j(b) = sum_{entries of channel j} g_b * w`` over every parameter member of the channel's
group (the producing filters, their bias and BatchNorm scale/shift, the consumers' input
slices: a coupled group moves as one); the importance is the mean of ``t_j(b)^2`` over
``batches`` minibatches (the paper's squared form, averaged over many batches: one batch's
estimate is noisy, and summing signed gradients first would cancel at a trained optimum).
Channels are ranked globally (``scope="global"``, the paper's way) and the selection meets
the run's budget (channels, or FLOPs filled in score order). Meant for trained weights
(``fxsparse train --init``); at initialisation it is SNIP's channel score squared.
"""
from __future__ import annotations

from .base import TrainState
from .gradients import parameter_values, per_batch_gradients
from .options import check_number
from .registry import register_method
from .select import ScoreMethod, group_scores, take_batches


@register_method("taylor")
class Taylor(ScoreMethod):
    """First-order Taylor (Molchanov et al., CVPR 2019): keep the channels with the largest
    mean over ``batches`` minibatches of (sum of g * w over the channel)^2. Options:
    ``scope`` ("global"), ``budget``, ``batches`` (64)."""
    paper = "Molchanov et al., Importance Estimation for Neural Network Pruning, CVPR 2019"
    level = "channel"
    supported_levels = ("channel",)
    default_scope = {"channel": "global"}
    extra_options = {"batches": 64}

    def validate_options(self) -> None:
        check_number("taylor", "batches", self.batches, lo=1, integer=True)

    def init(self, state: TrainState) -> None:
        graph = self.channel_graph(state)
        names = [n for n, p in state.model.named_parameters() if p.requires_grad]
        values = parameter_values(state.model, names)
        batches = take_batches(state, self.batches, "taylor")
        total = None
        for grads in per_batch_gradients(state.model, batches, state.loss_fn, names, generator=state.generator):
            per = group_scores(graph, {n: grads[n] * values[n] for n in names}, reduce="sum")
            sq = {gid: v.square() for gid, v in per.items()}
            total = sq if total is None else {gid: total[gid] + v for gid, v in sq.items()}
        self.scores = {gid: v / len(batches) for gid, v in total.items()}
        self._keep_masks = self.select_channels(graph, self.scores)
