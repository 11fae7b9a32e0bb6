"""Per-batch gradients of the training loss at the model's current weights, for the
criteria that score trained weights over many batches (first-order Taylor, OBD). The model
is not changed: the loss runs through :func:`fxsparse.methods.select.call_model` on detached
copies (BatchNorm uses batch statistics in train mode, its running statistics stay as they
are), under :func:`fxsparse.methods.select.scoring_mode`'s forked RNG."""
from __future__ import annotations

from typing import Iterator

import torch

from .base import TrainState
from .options import check_number
from .select import (ScoreMethod, call_model, detached_state, first_output, model_device, scoring_mode, take_batches,
                     to_device)


def per_batch_gradients(model, batches, loss_fn, names, *, train_mode: bool = True, generator=None) -> Iterator[dict]:
    """For each ``(inputs, targets)`` of ``batches``: ``{name: dL/dname}`` for the parameters
    ``names`` (zeros where the loss does not depend on one), and the detached parameter
    ``names`` (zeros where the loss does not depend on one)."""
    device = model_device(model)
    with scoring_mode(model, train_mode, generator):
        tensors = detached_state(model, requires_grad=names)
        leaves = [tensors[n] for n in names]
        for inputs, targets in batches:
            out = call_model(model, tensors, to_device(inputs, device))
            loss = loss_fn(first_output(out), to_device(targets, device))
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            yield {n: (torch.zeros_like(t) if g is None else g.detach()) for n, g, t in zip(names, grads, leaves)}


class BatchGradientCriterion(ScoreMethod):
    """A channel criterion accumulated from the gradients of ``batches`` training batches at
    the model's weights (trained weights: ``fxsparse train --init``). Subclasses define
    :meth:`accumulate` (one batch's gradients into a running total) and :meth:`finish`
    (the total into per-channel scores); channels are ranked globally and the selection
    meets the run's budget."""
    level = "channel"
    supported_levels = ("channel",)
    default_scope = {"channel": "global"}
    extra_options = {"batches": 64}

    def validate_options(self) -> None:
        check_number(self.name, "batches", self.batches, lo=1, integer=True)

    def accumulate(self, total, graph, grads: dict, values: dict):
        raise NotImplementedError

    def finish(self, total, graph, values: dict, batches: int) -> dict:
        raise NotImplementedError

    def init(self, state: TrainState) -> None:
        graph = self.channel_graph(state)
        params = dict(state.model.named_parameters())
        names = [n for n, p in params.items() if p.requires_grad]
        values = {n: params[n].detach() for n in names}
        batches = take_batches(state, self.batches, self.name)
        total = None
        for grads in per_batch_gradients(state.model, batches, state.loss_fn, names, generator=state.generator):
            total = self.accumulate(total, graph, grads, values)
        self.scores = self.finish(total, graph, values, len(batches))
        self._keep_masks = self.select_channels(graph, self.scores)
