"""Network slimming: L1 sparsity on BN scales during training, then a global threshold.

Liu, Li, Shen, Huang, Yan, Zhang, "Learning Efficient Convolutional Networks through
Network Slimming", ICCV 2017 (arXiv 1708.06519); authors' code Eric-mingjie/network-slimming.

During training, ``after_backward`` adds the L1 subgradient ``s * sign(gamma)`` (s = 1e-4)
to the gradient of every BN scale gamma, exactly as the authors' ``updateBN``. Only BN
layers whose channels belong to a prunable group are penalised (the paper penalises
every BN; sparsifying scales that can never be pruned costs accuracy for nothing).
After training, channels are kept by one global ranking of |gamma| (exact top-k instead
of the paper's percentile threshold, which keeps ties), where a channel coupled to
several BN layers (a residual stream) scores the MEAN |gamma| over them, so that it is
comparable with a channel that has one BN. Groups without a BN member cannot be scored
by this method and are kept whole. Channel level only.

When the masks are decided: ``channel_keep()`` returns None before training has started
(at init every gamma is 1, so there is nothing to rank; None tells the trainer to train
the dense model first), and afterwards (``state.step > 0``, or any ``after_backward`` /
``after_step`` seen) the masks from the CURRENT gammas -- the trainer asks when the
sparsity-regularised phase ends and fine-tuning begins. ``final_keep()`` computes them
at any time.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import TrainState
from .registry import register_method
from .select import ScoreMethod, group_scores


@register_method("slimming")
class Slimming(ScoreMethod):
    """Network slimming (Liu et al., ICCV 2017). Options: ``s`` (1e-4), ``scope``
    ("global" default), ``budget`` ("channels")."""
    paper = "Liu et al., Learning Efficient Convolutional Networks through Network Slimming, ICCV 2017"
    level = "channel"
    supported_levels = ("channel",)
    extra_options = {"s": 1e-4}

    decides_at = "end"

    def validate_options(self) -> None:
        if not isinstance(self.s, (int, float)) or self.s != self.s or self.s < 0:
            raise ValueError(f"slimming: s must be a non-negative number, got {self.s!r}")

    def __init__(self, keep: float = 0.5, **options):
        super().__init__(keep, **options)
        self.bn_weights: list = []
        self._graph = None
        self._model = None
        self._state = None
        self._trained = False

    def init(self, state: TrainState) -> None:
        graph = self.channel_graph(state)
        bn_modules = {name for name, m in state.model.named_modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine}
        names = []
        for g in graph.prunable_groups:
            for m in g.members:
                if m.param.endswith(".weight") and m.param.rsplit(".", 1)[0] in bn_modules and m.param not in names:
                    names.append(m.param)
        if not names:
            raise ValueError("slimming needs BatchNorm layers (with affine scales) on prunable channels, and the model "
                             "has none; use l1_filter, snip or another method")
        self.bn_weights = names
        self._graph, self._model, self._state = graph, state.model, state
        self._trained = False

    def after_backward(self, state: TrainState) -> None:
        self._trained = True
        with torch.no_grad():
            for name in self.bn_weights:
                p = state.model.get_parameter(name)
                if p.grad is not None:
                    p.grad.add_(torch.sign(p.detach()), alpha=self.s)

    def after_step(self, state: TrainState) -> None:
        self._trained = True

    def final_keep(self) -> dict:
        """{group id: bool mask} from the current |gamma| (global exact top-k)."""
        if self._graph is None:
            raise ValueError("slimming: call init(state) before asking for masks")
        gammas = {n: self._model.get_parameter(n).detach().abs() for n in self.bn_weights}
        self.scores = group_scores(self._graph, gammas, reduce="mean")
        self._keep_masks = self.select_channels(self._graph, self.scores)
        return {k: v.clone() for k, v in self._keep_masks.items()}

    def channel_keep(self):
        started = self._trained or (self._state is not None and self._state.step > 0)
        return self.final_keep() if started and self._graph is not None else None
