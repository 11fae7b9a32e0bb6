"""The capacity model's forwards on the dense tensors: gathered at a step's slots
(:func:`fxsparse.step.gather.gather_tensors`), empty slots made exact zeros, run through the
capacity model with the step's buffers installed."""
from __future__ import annotations

import torch
from torch.func import functional_call

from fxsparse.core.broadcast import along
from fxsparse.step.build import CapacityBuild
from fxsparse.step.gather import gather_tensors, write_back_buffers
from fxsparse.step.index import Slots, StepIndex


def forward_gathered(build: CapacityBuild, tensors: dict, buffers: dict, inputs):
    """The capacity model on already-gathered ``tensors``, with the step's ``buffers``
    (:attr:`fxsparse.step.index.StepIndex.buffers`) installed."""
    return functional_call(build.model, {**tensors, **buffers}, tuple(inputs))


def times_validity(gathered: dict, slots: dict[str, tuple[Slots, ...]], buffer_names) -> dict:
    """Each gathered tensor times the validity vector of each of its gathered dims: empty slots
    are exact zeros with zero gradient. Buffers (running statistics) stay as gathered: BN
    updates them in place."""
    out, buffers = {}, set(buffer_names)
    for name, t in gathered.items():
        if t.is_floating_point() and name not in buffers:
            for s in slots.get(name, ()):
                t = t * along(s.valid.to(t.dtype), s.dim, t.dim())
        out[name] = t
    return out


def forward_dense(build: CapacityBuild, dense: dict, index: StepIndex, training: bool, *inputs):
    """Dense-gradient path (``sp(x)``, optimizers without a compact update): the gather inside
    autograd, so gradients land in the dense parameters at kept positions; in training, the
    running statistics' real slots are written back."""
    gathered = gather_tensors(dense, index.slots)
    out = forward_gathered(build, times_validity(gathered, index.slots, build.buffer_names), index.buffers, inputs)
    if training:
        write_back_buffers(build.buffer_names, gathered, index.slots, dense)
    return out


def forward_no_write_back(build: CapacityBuild, dense: dict, index: StepIndex, *inputs):
    """The forward on gathered copies of every tensor: in train mode BN updates those copies,
    never the dense running statistics."""
    gathered, buffers = gather_tensors(dense, index.slots), set(build.buffer_names)
    gathered = {name: t.clone() if name not in index.slots and name in buffers else t for name, t in gathered.items()}
    return forward_gathered(build, times_validity(gathered, index.slots, build.buffer_names), index.buffers, inputs)


def dense_forward_of(build: CapacityBuild):
    """``fn(dense, index, training, *inputs)``: :func:`forward_dense` of ``build``."""
    def forward(dense, index, training, *inputs):
        return forward_dense(build, dense, index, training, *inputs)

    return forward


def losses_of(build: CapacityBuild, loss_fn):
    """``fn(dense, indexes, target, *inputs)``: the losses of the sub-networks of ``indexes``
    (one :class:`~fxsparse.step.index.StepIndex` each) at the same weights, stacked; nothing
    written back."""
    def many_losses(dense, indexes, target, *inputs):
        return torch.stack([loss_fn(forward_no_write_back(build, dense, index, *inputs), target) for index in indexes])

    return many_losses
