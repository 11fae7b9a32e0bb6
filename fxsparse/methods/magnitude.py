"""Magnitude pruning: keep the weights with the largest |w|.

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural
Networks", NeurIPS 2015 (arXiv 1506.02626).

Weight level only (the channel analogue is ``l1_filter``). Scores |w| of every conv and
linear weight; ``scope="global"`` (default) ranks all weights together, as the
Synaptic-Flow and lottery-ticket baselines do; ``scope="per_layer"`` keeps the same
fraction of every layer, which is Han et al.'s per-layer pruning. Applied at ``init``
to the current weights (at initialisation, or to trained weights when the trainer
calls ``init`` on a trained model); exact top-k, ties to the earlier weight.
"""
from __future__ import annotations

from .base import TrainState
from .registry import register_method
from .select import ScoreMethod


@register_method("magnitude")
class Magnitude(ScoreMethod):
    """Magnitude pruning (Han et al., NeurIPS 2015): keep the largest |w|.
    Options: ``scope`` ("global" default, "per_layer")."""
    paper = "Han et al., Learning both Weights and Connections for Efficient Neural Networks, NeurIPS 2015"
    level = "weight"
    supported_levels = ("weight",)

    def init(self, state: TrainState) -> None:
        params = dict(state.model.named_parameters())
        self.scores = {n: params[n].detach().abs() for n in self.weight_names(state)}
        self._weight_masks = self.select_weights(self.scores)
