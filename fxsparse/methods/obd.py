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

from .base import TrainState
from .gradients import parameter_values, per_batch_gradients
from .options import check_number
from .registry import register_method
from .select import ScoreMethod, group_scores, take_batches


@register_method("obd")
class OBD(ScoreMethod):
    """Optimal Brain Damage (LeCun et al., 1990) with the diagonal empirical Fisher, summed per
    channel: keep the channels with the largest sum of F_ii w_i^2 / 2. Options: ``scope``
    ("global"), ``budget``, ``batches`` (64)."""
    paper = "LeCun et al., Optimal Brain Damage, NeurIPS 1990 (diagonal empirical Fisher, per channel group)"
    level = "channel"
    supported_levels = ("channel",)
    default_scope = {"channel": "global"}
    extra_options = {"batches": 64}

    def validate_options(self) -> None:
        check_number("obd", "batches", self.batches, lo=1, integer=True)

    def init(self, state: TrainState) -> None:
        graph = self.channel_graph(state)
        names = [n for n, p in state.model.named_parameters() if p.requires_grad]
        values = parameter_values(state.model, names)
        batches = take_batches(state, self.batches, "obd")
        fisher = {n: 0.0 for n in names}
        for grads in per_batch_gradients(state.model, batches, state.loss_fn, names, generator=state.generator):
            for n in names:
                fisher[n] = fisher[n] + grads[n].double().square()
        saliency = {n: 0.5 * (fisher[n] / len(batches)) * values[n].double().square() for n in names}
        self.scores = group_scores(graph, saliency, reduce="sum")
        self._keep_masks = self.select_channels(graph, self.scores)
