"""The compact training step of a SparseModel: forward, loss, backward and optimizer update
touching only the kept weights.

The kept entries of every member parameter are gathered into leaf tensors, so the
backward produces gradients of kept weights only; SGD / Adam / AdamW then read and write
only the kept entries of the weights and of their optimizer state (pruned entries stay
bit-identical, no dense-size gradient exists). Any other optimizer runs on dense
gradients through :class:`~fxsparse.step.optim.MaskedOptimizer`.

With a gradient scaler (fp16) the backward runs on the scaled loss and the gradients are
unscaled before the update; a step whose gradients overflowed updates nothing and backs
the scale off (:class:`LossScaling`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from fxsparse.core.broadcast import along
from fxsparse.analysis.masks import all_finite
from fxsparse.step.optim import (INDEXED_KERNEL_OPTIONS, MaskedOptimizer, compact_update_for, gather,
                                 real_slots, scatter_)


def device_of(inputs):
    return next((x.device for x in inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))


def make_train_step(sp, loss_fn, optimizer, skip_nonfinite: bool = True, scaler=None):
    """``step(*inputs, target) -> loss``: forward, loss, backward and optimizer step for
    the current masks, compiled when the model was built with compile=True.

    For SGD, Adam and AdamW the step is *compact*: the kept weights are gathered into
    leaf tensors, the backward produces gradients of the kept weights only, and the
    update reads and writes only the kept entries of the weights and optimizer state
    (pruned ones stay bit-identical; no dense-size gradient is materialised). Any other
    optimizer runs on dense gradients wrapped in :class:`MaskedOptimizer`.

    ``skip_nonfinite``: a step whose loss is NaN/inf updates no weight, no optimizer
    state and no running statistic, and counts in ``step.skipped``; the loss is returned
    so the caller can warn.

    ``scaler``: a ``torch.amp.GradScaler`` (or an object with its public API) for fp16
    autocast: the backward runs on ``scaler.scale(loss)``, the gradients the update reads
    (the kept weights' and the plain ``.grad`` of the rest) are unscaled, and a step whose
    gradients hold an inf/NaN updates nothing (as a non-finite loss does), backs the scale
    off and counts in ``step.overflows``; the scale grows after the scaler's growth
    interval of good steps (:class:`LossScaling`, ``step.loss_scaling``)."""
    base = optimizer.optimizer if isinstance(optimizer, MaskedOptimizer) else optimizer
    update = compact_update_for(base)
    fallback = None if update is not None else MaskedOptimizer(base, sp)
    by_name = dict(sp.model.named_parameters())

    def forward_loss(tensors, index, target, *inputs):  # gather_leaves zeroed the empty slots
        return loss_fn(forward_gathered(sp, tensors, index, *inputs, empty_zeroed=True), target)

    def dense_forward_loss(dense, index, target, *inputs):
        return loss_fn(sp.forward_dense(dense, index, *inputs), target)

    scaling = LossScaling(scaler)

    def decided(loss, grads) -> bool:
        """Whether to update: the gradients averaged (data parallel: every process updates
        with the mean gradient) and unscaled, the loss and, with a scaler, the gradients
        checked. Host-device sync, the step's only one: whether to update is a decision on
        the loss's (and the gradients') values, alike on every process (both are means)."""
        if scaling.scaler is None:
            if skip_nonfinite and not all_finite(loss):
                step.skipped += 1
                return False
            if sp.reduce_mean is not None:
                sp.reduce_mean(grads)
            return True
        if sp.reduce_mean is not None:  # the scaled gradients: unscaling commutes with the mean
            sp.reduce_mean(grads)
        found_inf = scaling.unscale_(grads, loss.device)
        nonfinite_loss, overflow = (bool(v) for v in torch.cat(
            [(~torch.isfinite(loss)).reshape(1).to(found_inf.dtype), found_inf.reshape(1) > 0]).tolist())
        if skip_nonfinite and nonfinite_loss:  # not the scale's doing: the scale stays
            step.skipped += 1
            return False
        scaling.update(overflow)
        step.overflows = scaling.overflows
        return not overflow

    def step(*args):
        with sp.timed_compiles():
            return run_step(*args)

    def run_step(*args):
        *inputs, target = args
        sp.buffers_to(device_of(inputs))
        index, empty = sp.step_inputs(with_empty=True)
        cached = sp.compiled_fns.get("step")
        if cached is None or cached[0] is not sp.capacity_model:  # first call, or capacities changed
            fl = forward_loss if update is not None else dense_forward_loss
            kernel = update.kernel if update is not None else None
            gather_fn = gather_all
            if sp.use_compile:  # graphs: forward + backward, the gather, the update
                fl = sp.compile_fn(fl)
                # one fused pass per tensor instead of one copy per gathered dim
                gather_fn = sp.compile_fn(gather_all, inductor_options=INDEXED_KERNEL_OPTIONS)
            if kernel is not None and sp.compile_update:
                kernel = sp.compile_fn(kernel, inductor_options=INDEXED_KERNEL_OPTIONS)
            sp.compiled_fns["step"] = cached = (sp.capacity_model, fl, kernel, gather_fn)
        _, fl, kernel, gather_fn = cached
        base.zero_grad(set_to_none=True)
        # what the forward updates in place on the dense model (the dense path: every running
        # statistic; the compact one: those not gathered, e.g. BN's batch counters): copies
        # put back when the step is skipped
        dense = sp.dense_tensors()
        touched = [dense[n] for n in sp.buffer_names if update is None or n not in sp.members]
        saved = [b.clone() for b in touched]
        if update is None:
            loss = fl(dense, index, target, *inputs)
            scaling.backward(loss)
            loss = averaged(sp, loss)
            if not decided(loss, [p.grad for p in sp.model.parameters() if p.grad is not None]):
                restore_(touched, saved)
                return loss
            fallback.step()
            return loss
        gathered, slots, weights = gather_leaves(sp, index, gather_fn, empty, dense)
        loss = fl(gathered, index, target, *inputs)
        scaling.backward(loss)
        loss = averaged(sp, loss)
        compact = [(by_name[n], gathered[n], weights[n], slots[n]) for n in slots if n in by_name]
        sp.mark_counts(tensors={n: gathered[n].grad for n in slots if n in by_name and gathered[n].grad is not None})
        leaves = {id(p): leaf for p, leaf, _, _ in compact}  # the kept weights' gradients; the rest in .grad
        grads = [leaves[id(p)].grad if id(p) in leaves else p.grad for p in sp.model.parameters()]
        # before any write: a skipped step changes nothing (no weight, optimizer state or
        # running statistic: those are written back below)
        if not decided(loss, [g for g in grads if g is not None]):
            restore_(touched, saved)
            return loss
        arguments, eager = update.arguments(base, compact)
        if arguments is not None:
            with torch.no_grad():
                (update.kernel if eager else kernel)(*arguments)
        write_back_buffers(sp, gathered, index, slots=slots)
        return loss

    step.optimizer = base
    step.skipped = 0
    step.overflows = 0
    step.loss_scaling = scaling
    return step


class LossScaling:
    """Loss scaling of the compact step with a ``torch.amp.GradScaler`` (or an object with
    its public API: ``scale``, ``update(new_scale)``, ``get_growth_factor``,
    ``get_backoff_factor``, ``get_growth_interval``). The scaler's own ``unscale_`` /
    ``step`` work on an optimizer's ``p.grad``, and the compact step's gradients are on
    gathered leaves, so the unscaling and the growth/backoff are done here: the scale is
    set through ``update(new_scale=...)``, and the count of good steps since the last
    change is kept here (``state_dict``: a checkpoint of the step saves it with the
    scaler's)."""

    def __init__(self, scaler=None):
        enabled = scaler is not None and getattr(scaler, "is_enabled", lambda: True)()
        self.scaler = scaler if enabled else None
        self.good_steps = 0   # unskipped steps since the scale last changed
        self.overflows = 0    # steps skipped because a gradient overflowed
        self.scale = None     # this step's scale, a 0-dim tensor on the device

    def backward(self, loss):
        if self.scaler is None:
            loss.backward()
            return
        # the scale as a tensor (get_scale() would sync with the device)
        self.scale = self.scaler.scale(torch.ones((), device=loss.device, dtype=torch.float32))
        self.scaler.scale(loss).backward()

    @torch.no_grad()
    def unscale_(self, grads, device) -> torch.Tensor:
        """``grads`` divided by the scale in place (the fused kernel GradScaler.unscale_
        runs); a 1-element tensor, nonzero when one of them holds an inf/NaN. No sync."""
        found_inf = torch.zeros(1, device=device, dtype=torch.float32)
        inv_scale = self.scale.double().reciprocal().float()
        by_dtype = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv_scale)
        return found_inf

    def update(self, overflow: bool):
        """GradScaler's schedule: back off at an overflow, grow after ``growth_interval``
        good steps in a row (not to an inf)."""
        if overflow:
            self.overflows += 1
            self.good_steps = 0
            self.scaler.update(new_scale=self.scale * self.scaler.get_backoff_factor())
            return
        self.good_steps += 1
        if self.good_steps >= self.scaler.get_growth_interval():
            self.good_steps = 0
            grown = self.scale * self.scaler.get_growth_factor()
            self.scaler.update(new_scale=torch.where(torch.isfinite(grown), grown, self.scale))

    def state_dict(self) -> dict:
        return {"good_steps": self.good_steps, "overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        self.good_steps, self.overflows = int(state["good_steps"]), int(state["overflows"])


def load_scaling_state(step, state: dict) -> None:
    """Restore a step's :meth:`LossScaling.state_dict` (and its ``step.overflows``)."""
    step.loss_scaling.load_state_dict(state)
    step.overflows = step.loss_scaling.overflows


@torch.no_grad()
def restore_(buffers, saved):
    for b, s in zip(buffers, saved):
        b.copy_(s)


def averaged(sp, loss):
    """The loss, detached; with ``sp.reduce_mean`` (data parallel) its mean over the
    processes, so that every process takes the same skip decision."""
    loss = loss.detach()
    if sp.reduce_mean is not None:
        loss = loss.clone()
        sp.reduce_mean([loss])
    return loss


def slots_of(sp, index, name, device):
    """[(dim, gather index, real-slot line)] for a member tensor of the capacity model."""
    out = []
    for dim, _ in sp.members[name]:
        idx, real = index[f"{name}|{dim}|idx"], index[f"{name}|{dim}|real"]
        if idx.device != device:  # a copy carries no mark (step_inputs marked the originals)
            idx, real = idx.to(device), real.to(device)
            sp.mark_counts({"idx": idx, "real": real})
        out.append((dim, idx, real))
    return out


def gather_all(tensors, wheres):
    """:func:`~fxsparse.step.optim.gather` of each tensor at its slots (compiled: one pass each)."""
    return [gather(t, where) for t, where in zip(tensors, wheres)]


def gather_leaves(sp, index, gather_fn=gather_all, empty=None, dense=None):
    """Kept entries of every member parameter as leaf tensors (compact gradients land
    there), member buffers gathered, the rest as is; per gathered tensor its slots; and per
    member parameter the gathered weights as they are in the dense model.
    ``gather_fn``: :func:`gather_all` or a compiled copy of it; ``empty``: the "name|dim"
    keys with an empty slot (``sp.step_inputs(with_empty=True)``), None to check here.

    A leaf's entries in an empty slot are set to 0 here, outside autograd, so the forward
    needs no validity multiply (a weight-sized product in the forward and in the backward:
    ~1% of a VGG-11 step). Their gradients are then not zero, but no update reads them (it
    writes real slots only, and the old weights of the other slots from the third dict).
    ``dense``: ``sp.dense_tensors()`` when the caller has it."""
    dense = dense if dense is not None else sp.dense_tensors()
    tensors = {name: t for name, t in dense.items() if name not in sp.members}
    slots = {name: slots_of(sp, index, name, t.device) for name, t in dense.items() if name in sp.members}
    with torch.no_grad():
        gathered = gather_fn([dense[name].detach() for name in slots], list(slots.values()))
    weights = {}
    for name, g in zip(slots, gathered):
        t = dense[name]
        if isinstance(t, nn.Parameter):
            weights[name] = g
            dims = sp.members[name]
            if g.is_floating_point() and (has_empty_slot(index, name, dims) if empty is None
                                          else any(f"{name}|{dim}" in empty for dim, _ in dims)):
                g = g.masked_fill(~real_slots(slots[name], g.dim()), 0)  # a copy: weights[name] stays
            else:
                g = g.detach()  # the leaf: weights[name] stays a plain tensor for the update
            g.requires_grad_(t.requires_grad)
        tensors[name] = g
    sp.mark_counts(tensors=tensors)
    sp.mark_counts(tensors=weights)
    return tensors, slots, weights


def has_empty_slot(index, name, dims) -> bool:
    """Whether any gathered dim of ``name`` has an empty slot (checked on the CPU copies:
    no device sync)."""
    return any(not index[f"{name}|{dim}|real"].numpy().all() for dim, _ in dims)


def forward_gathered(sp, tensors, index, *inputs, empty_zeroed: bool = False):
    """The capacity model on already-gathered tensors. Validity is applied here (empty slots
    are exact zeros with zero gradient) unless ``empty_zeroed``: the parameters hold zeros in
    their empty slots already (:func:`gather_leaves`)."""
    if empty_zeroed:
        scaled = dict(tensors)
    else:  # buffers (running statistics) stay as gathered: BN updates them in place
        buffers = set(sp.buffer_names)
        scaled = {name: t if name in buffers else times_validity(sp, name, t, index) for name, t in tensors.items()}
    for buf, key in sp.step_buffers.items():
        scaled[buf] = index[key].to(inputs[0].device)
    return functional_call(sp.capacity_model, scaled, inputs)


def times_validity(sp, name, t, index):
    """``t`` times the validity vector of each of its gathered dims (empty slots: exact zeros,
    zero gradient)."""
    if not t.is_floating_point():
        return t
    for dim, _ in sp.members.get(name, ()):
        t = t * along(index[f"{name}|{dim}|valid"].to(t.device, t.dtype), dim, t.dim())
    return t


@torch.no_grad()
def write_back_buffers(sp, gathered, index, dense=None, slots=None):
    """Running statistics were updated in place on the gathered copies: write real slots
    back (empty slots point at distinct pruned channels and keep their old values).
    ``slots``: those :func:`gather_leaves` already made, if any."""
    if not sp.training:
        return
    dense = dense if dense is not None else sp.dense_tensors()
    for name in sp.buffer_names:
        if name not in sp.members:
            continue
        full = dense[name]
        where = slots[name] if slots is not None else slots_of(sp, index, name, full.device)
        scatter_(full, where, torch.where(real_slots(where, full.dim()), gathered[name], gather(full, where)))
