"""The compact step's leaves: the kept entries of every member parameter as leaf tensors, so that
the backward produces gradients of kept weights only."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from fxsparse.step.compiler import StepCompiler
from fxsparse.step.gather import gather_tensors, real_slots
from fxsparse.step.host import StepInputs


@dataclasses.dataclass(frozen=True)
class Leaves:
    """``tensors``: what the capacity model runs on (the member parameters' kept entries as
    leaves, member buffers gathered, the rest as they are); ``weights``: per member parameter
    its gathered weights as they are in the dense model (the update's old values)."""
    tensors: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]


def gather_leaves(step: StepInputs, compiler: StepCompiler, gather_fn=gather_tensors) -> Leaves:
    """The leaves of ``step`` (``gather_fn``: :func:`~fxsparse.step.gather.gather_tensors` or a
    compiled copy of it: one fused pass per tensor).

    A leaf's entries in an empty slot are set to 0 here, outside autograd, so the forward needs
    no validity multiply (a weight-sized product in the forward and in the backward: ~1% of a
    VGG-11 step). Their gradients are then not zero, but no update reads them (it writes real
    slots only, and the old weights of the other slots from ``weights``)."""
    dense, index = step.dense, step.index
    members = {name: index.slots[name] for name in dense if name in index.slots}
    tensors = {name: t for name, t in dense.items() if name not in members}
    with torch.no_grad():
        gathered = gather_fn({name: dense[name].detach() for name in members}, members)
    weights = {}
    for name, g in gathered.items():
        t = dense[name]
        if isinstance(t, nn.Parameter):
            weights[name] = g
            if g.is_floating_point() and name in index.empty:
                g = g.masked_fill(~real_slots(members[name], g.dim()), 0)  # a copy: weights[name] stays
            else:
                g = g.detach()  # the leaf: weights[name] stays a plain tensor for the update
            g.requires_grad_(t.requires_grad)
        tensors[name] = g
    compiler.mark_gathered(tensors, members)
    compiler.mark_gathered(weights, members)
    return Leaves(tensors, weights)
