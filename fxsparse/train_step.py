"""The compact training step of a SparseModel: forward, loss, backward and optimizer update
touching only the kept weights.

The kept entries of every member parameter are gathered into leaf tensors, so the
backward produces gradients of kept weights only; SGD / Adam / AdamW then read and write
only the kept entries of the weights and of their optimizer state (pruned entries stay
bit-identical, no dense-size gradient exists). Any other optimizer runs on dense
gradients through :class:`~fxsparse.optim.MaskedOptimizer`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from .optim import MaskedOptimizer, compact_update_fn, flat_selection


def device_of(inputs):
    return next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))


def make_train_step(sp, loss_fn, optimizer, skip_nonfinite: bool = True):
    """``step(*inputs, target) -> loss``: forward, loss, backward and optimizer step for
    the current masks, compiled when the model was built with compile=True.

    For SGD, Adam and AdamW the step is *compact*: the kept weights are gathered into
    leaf tensors, the backward produces gradients of the kept weights only, and the
    update reads and writes only the kept entries of the weights and optimizer state
    (pruned ones stay bit-identical; no dense-size gradient is materialised). Any other
    optimizer runs on dense gradients wrapped in :class:`MaskedOptimizer`.

    ``skip_nonfinite``: a step whose loss is NaN/inf updates no weight and no optimizer
    state (on the compact path no running statistic either) and counts in
    ``step.skipped``; the loss is returned so the caller can warn."""
    base = optimizer.optimizer if isinstance(optimizer, MaskedOptimizer) else optimizer
    update = compact_update_fn(base)
    fallback = None if update is not None else MaskedOptimizer(base, sp)
    by_name = dict(sp.model.named_parameters())
    names = {id(p): n for n, p in by_name.items()}

    def forward_loss(tensors, plan, target, *inputs):
        return loss_fn(forward_gathered(sp, tensors, plan, *inputs), target)

    def dense_forward_loss(dense, plan, target, *inputs):
        return loss_fn(sp._forward_impl(dense, plan, *inputs), target)

    def step(*args):
        *inputs, target = args
        sp._buffers_to(device_of(inputs))
        plan = sp.step_inputs()
        cached = sp._compiled.get("step")
        if cached is None or cached[0] is not sp.capacity_model:  # first call, or capacities grew
            fl = forward_loss if update is not None else dense_forward_loss
            up = update
            if sp.use_compile:  # the update stays eager: it is a short loop of fused in-place ops
                fl = sp.compile_fn(fl)
            sp._compiled["step"] = cached = (sp.capacity_model, fl, up)
        _, fl, up = cached
        base.zero_grad(set_to_none=True)
        if up is None:
            loss = fl(sp._dense_tensors(), plan, target, *inputs)
            loss.backward()
            if skip_nonfinite and not bool(torch.isfinite(loss)):
                step.skipped += 1
                return loss.detach()
            fallback.step()
            return loss.detach()
        gathered, index = gather_leaves(sp, plan)
        loss = fl(gathered, plan, target, *inputs)
        loss.backward()
        if skip_nonfinite and not bool(torch.isfinite(loss)):  # before any write: nothing changes
            step.skipped += 1
            return loss.detach()
        compact = [(by_name[n], gathered[n], index[n]) for n in index if n in by_name]
        up(base, compact, names)
        write_back_buffers(sp, gathered, plan)
        return loss.detach()

    step.optimizer = base
    step.skipped = 0
    return step

def gather_leaves(sp, plan):
    """Kept entries of every member parameter as leaf tensors (compact gradients land
    there), member buffers gathered, the rest as is; plus, per gathered tensor, the
    flat indices of its entries (all slots, and real slots with their compact positions)."""
    tensors, index = {}, {}
    for name, t in sp._dense_tensors().items():
        dims = sp._members.get(name)
        if not dims:
            tensors[name] = t
            continue
        where = [(dim, plan[f"{name}|{dim}|idx"].to(t.device), plan[f"{name}|{dim}|valid"].to(t.device) > 0)
                 for dim, _ in dims]
        sel = flat_selection(t.shape, where)
        g = t.detach().reshape(-1)[sel.all].view(sel.shape)
        if isinstance(t, nn.Parameter):
            g.requires_grad_(t.requires_grad)
        tensors[name] = g
        index[name] = sel
    return tensors, index

def forward_gathered(sp, tensors, plan, *inputs):
    """The capacity model on already-gathered tensors (validity applied here, so empty
    slots are exact zeros with zero gradient)."""
    scaled = {}
    buffers = set(sp._buffer_names)
    for name, t in tensors.items():
        for dim, _ in sp._members.get(name, ()):
            # buffers (running statistics) stay as gathered: BN updates them in place
            if t.is_floating_point() and name not in buffers:
                shape = [1] * t.dim()
                shape[dim] = -1
                t = t * plan[f"{name}|{dim}|valid"].to(t.device, t.dtype).view(shape)
        scaled[name] = t
    for buf in sp._valid_buffers:
        scaled[buf] = plan[f"{buf}|valid"].to(inputs[0].device)
    return functional_call(sp.capacity_model, scaled, inputs)

@torch.no_grad()
def write_back_buffers(sp, gathered, plan, dense=None):
    """Running statistics were updated in place on the gathered copies: write real slots
    back (empty slots point at distinct pruned channels and write back their old values)."""
    if not sp.training:
        return
    dense = dense if dense is not None else sp._dense_tensors()
    for name in sp._buffer_names:
        dims = sp._members.get(name)
        if not dims:
            continue
        (dim, _), = dims
        full = dense[name]
        idx = plan[f"{name}|{dim}|idx"].to(full.device)
        valid = (plan[f"{name}|{dim}|valid"].to(full.device) > 0).view([-1 if d == dim else 1 for d in range(full.dim())])
        full.index_copy_(dim, idx, torch.where(valid, gathered[name], full.index_select(dim, idx)))
