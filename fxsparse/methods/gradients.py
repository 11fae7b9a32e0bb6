"""Per-batch gradients of the training loss at the model's current weights, for the
criteria that score trained weights over many batches (first-order Taylor, OBD). The model
is not changed: the loss runs through :func:`fxsparse.methods.select.call_model` on detached
copies (BatchNorm uses batch statistics in train mode, its running statistics stay as they
are), under :func:`fxsparse.methods.select.scoring_mode`'s forked RNG."""
from __future__ import annotations

from typing import Iterator

import torch

from .select import call_model, detached_state, first_output, model_device, scoring_mode, to_device


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


def parameter_values(model, names) -> dict:
    """{name: detached parameter} for ``names``."""
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in names}
