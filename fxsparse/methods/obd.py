"""Optimal Brain Damage at channel level, with the diagonal empirical Fisher.

LeCun, Denker, Solla, "Optimal Brain Damage", NeurIPS 1990; channel groups as in Group
Fisher pruning (Liu et al., ICML 2021).

OBD's saliency of a weight at a minimum of the loss is the second-order change of the loss
when the weight is set to zero, ``H_ii w_i^2 / 2``, with the Hessian's diagonal. Here the
Hessian's diagonal is the empirical Fisher's, estimated from minibatch gradients:
``F_ii = mean over batches of g_i^2`` (``batches`` minibatches of the training set; the
minibatch gradient's square, the usual practical estimate: per-sample gradients would
cost a backward each). A channel's saliency is the sum of ``F_ii w_i^2 / 2`` over every
parameter entry that belongs to it (all parameter members of its group: removing a channel
removes all of them; cross terms between entries are what the diagonal drops). Channels are
ranked globally and the selection meets the run's budget. Meant for trained weights.
"""
from __future__ import annotations

from .gradients import BatchGradientCriterion
from .registry import register_method
from .select import group_scores


@register_method("obd")
class OBD(BatchGradientCriterion):
    """Optimal Brain Damage (LeCun et al., 1990) with the diagonal empirical Fisher, summed per
    channel: keep the channels with the largest sum of F_ii w_i^2 / 2. Options: ``scope``
    ("global"), ``budget``, ``batches`` (64)."""
    paper = "LeCun et al., Optimal Brain Damage, NeurIPS 1990 (diagonal empirical Fisher, per channel group)"

    def accumulate(self, total, graph, grads, values):
        sq = {n: grads[n].double().square() for n in values}
        return sq if total is None else {n: total[n] + v for n, v in sq.items()}

    def finish(self, total, graph, values, batches):
        saliency = {n: 0.5 * (total[n] / batches) * values[n].double().square() for n in values}
        return group_scores(graph, saliency, reduce="sum")
