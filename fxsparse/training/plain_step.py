"""The training step of the trainer's own phases: forward, loss, backward and optimizer step
on an ordinary module (the dense model, or the exported model of a fixed mask).

Why not the compiled step of :mod:`fxsparse.step` (``SparseModel.make_train_step``): that step
exists for masks that change every step. It keeps the dense weights, gathers the kept
channels into leaf tensors each step, runs the capacity model on them and scatters the
update back. With a fixed mask the exported model already *is* those kept channels, as an
ordinary module: there is nothing left to gather, and its weights are what the run
delivers and checkpoints (``small`` in ``last.pt``). Going through a ``SparseModel`` would
add a gather and a scatter per step, train the capacity model's parameters instead (another
checkpoint layout, other floating-point results, so no bit-identical resume of existing
runs), and leave out what this step needs: ``DistributedDataParallel`` averaging its
gradients during the backward, and, in the ``dense`` phase, the dense ``.grad`` of every
parameter for the method's ``after_backward`` / ``after_step`` hooks (slimming's L1
subgradient, RigL's gradients, weight masks through ``torch.nn.utils.parametrize``), which
the compact step never materialises. What the two steps share is their contract: a
non-finite loss skips the step and restores the running statistics it touched, an fp16
gradient scaler scales the backward and unscales before the update, and ``step.skipped``
counts the skips.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from fxsparse.analysis.masks import all_finite
from fxsparse.step.compiler import StepCompiler
from fxsparse.training.device import Precision
from fxsparse.training.distributed import Group


def make_plain_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, *, precision: Precision,
                    group: Group, device: torch.device, compile: bool, bn_eval: bool = False,
                    after_backward: Optional[Callable[[], None]] = None,
                    after_step: Optional[Callable[[], None]] = None):
    """``step(x, y) -> loss`` (the whole global batch's mean loss, detached) for ``model``
    trained by ``optimizer``. ``bn_eval``: BatchNorm layers keep their running statistics
    (eval mode) while the rest trains. ``after_backward`` / ``after_step``: called with the
    unscaled gradients before the update, and after it (a method's hooks). ``step.compiler``
    counts the graphs torch.compile made (the counter a SparseModel's step has too)."""
    net = model
    if group.active:  # gradients averaged over the processes during the backward
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    compiler = StepCompiler(compile, dynamic=False)
    # its backend is inductor's, counted: the same graphs and kernels as backend="inductor"
    fwd = torch.compile(net, backend=compiler.backend, dynamic=False) if compile else net
    frozen_bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if bn_eval else []
    scaler = precision.scaler

    def step(x, y):
        model.train()  # evaluation in between switches modes
        for mod in frozen_bn:
            mod.eval()
        saved = [b.clone() for b in model.buffers()]
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = loss_fn(fwd(x), y)
        mean = loss.detach().clone()  # the whole batch's loss: every process decides alike
        group.reduce_mean([mean] if group.active else [])
        if not all_finite(mean):  # host-device sync: the skip is a decision on the loss's value
            with torch.no_grad():
                for b, s in zip(model.buffers(), saved):
                    b.copy_(s)
            step.skipped += 1
            return mean
        if scaler is not None:  # fp16: scaled backward; the hooks and the step see unscaled gradients
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if after_backward is not None:
            after_backward()
        if scaler is not None:
            scaler.step(optimizer)  # skipped when a gradient overflowed (the scaler's own sync)
            scaler.update()
        else:
            optimizer.step()
        if after_step is not None:
            after_step()
        return mean

    step.skipped, step.compiler = 0, compiler
    return step
