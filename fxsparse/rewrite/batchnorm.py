"""BatchNorm statistics re-estimated after channels were removed.

Pruning a channel changes what every later layer sees, so the running statistics a
trained model carries are stale for its pruned form: evaluated as they are, a one-shot
pruned model measures the stale statistics as much as the choice of channels. The
standard remedy (e.g. Li et al., "Revisiting Random Channel Pruning", CVPR 2022) is to
re-estimate them on a few training batches in train mode, with no weight update.

:func:`recalibrate_batchnorm` resets every BatchNorm's running mean and variance and
replaces them by the *cumulative* average over the batches given (momentum ``None`` while
it runs: every batch weighs the same, whatever their number), then restores each
module's momentum and train/eval mode. Nothing else changes: no gradient, no parameter
update, and the global RNG is forked so that dropout in train mode leaves the caller's
random stream where it was.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn


def batchnorms(model: nn.Module) -> list:
    """The BatchNorm modules of ``model`` that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, forward: Optional[Callable] = None) -> int:
    """Re-estimate the running statistics of every BatchNorm of ``model`` on ``batches``
    (an iterable of input tensors, or of ``(inputs, targets)`` pairs, whose inputs are
    used); returns how many batches were run (0 when the model has no BatchNorm, which
    then is not run at all). ``forward(model, x)`` replaces ``model(x)`` (autocast, say).
    Raises ``ValueError`` when ``batches`` is empty and there are statistics to estimate."""
    norms = batchnorms(model)
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    saved = [(m, m.momentum) for m in norms]
    ran = 0
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average: each batch counts equally
            model.train()
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x) if forward is None else forward(model, x)
                ran += 1
        finally:
            for m, momentum in saved:
                m.momentum = momentum
            for m, training in modes:
                m.training = training
    if ran == 0:
        raise ValueError("recalibrate_batchnorm: no batch given; it needs a few training batches (20-100)")
    return ran
