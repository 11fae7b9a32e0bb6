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

from .gradients import BatchGradientCriterion
from .registry import register_method
from .select import group_scores


@register_method("taylor")
class Taylor(BatchGradientCriterion):
    """First-order Taylor (Molchanov et al., CVPR 2019): keep the channels with the largest
    mean over ``batches`` minibatches of (sum of g * w over the channel)^2. Options:
    ``scope`` ("global"), ``budget``, ``batches`` (64)."""
    paper = "Molchanov et al., Importance Estimation for Neural Network Pruning, CVPR 2019"

    def accumulate(self, total, graph, grads, values):
        per = group_scores(graph, {n: grads[n] * values[n] for n in values}, reduce="sum")
        sq = {gid: v.square() for gid, v in per.items()}
        return sq if total is None else {gid: total[gid] + v for gid, v in sq.items()}

    def finish(self, total, graph, values, batches):
        return {gid: v / batches for gid, v in total.items()}
