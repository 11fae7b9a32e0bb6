"""The compact training step of a SparseModel: forward, loss, backward and optimizer update
touching only the kept weights.

The kept entries of every member parameter are gathered into leaf tensors, so the
backward produces gradients of kept weights only; SGD / Adam / AdamW then read and write
only the kept entries of the weights and of their optimizer state (pruned entries stay
bit-identical, no dense-size gradient exists). Any other optimizer runs on dense
gradients through :class:`~fxsparse.step.optim.MaskedOptimizer`.

With a gradient scaler (fp16) the backward runs on the scaled loss and the gradients are
unscaled before the update; a step whose gradients overflowed updates nothing and backs
the scale off (:class:`~fxsparse.step.scaling.LossScaling`).

The step reads its model only through :class:`~fxsparse.step.host.StepHost`.
"""
from __future__ import annotations

import weakref

import torch

from fxsparse.analysis.masks import all_finite
from fxsparse.step.build import CapacityBuild
from fxsparse.step.compact_update import INDEXED_KERNEL_OPTIONS, compact_update_for
from fxsparse.step.forward import forward_dense, forward_gathered
from fxsparse.step.gather import gather_tensors, write_back_buffers
from fxsparse.step.host import StepHost
from fxsparse.step.leaves import gather_leaves
from fxsparse.step.optim import MaskedOptimizer
from fxsparse.step.scaling import LossScaling

PHASES = ("indices", "gather", "forward", "backward", "update", "write-back")


class TrainStep:
    """``step(*inputs, target) -> loss``: forward, loss, backward and optimizer step for
    the host's current masks, compiled when the model was built with compile=True.

    For SGD, Adam and AdamW the step is *compact*: the kept weights are gathered into
    leaf tensors, the backward produces gradients of the kept weights only, and the
    update reads and writes only the kept entries of the weights and optimizer state
    (pruned ones stay bit-identical; no dense-size gradient is materialised). Any other
    optimizer runs on dense gradients: pass it wrapped in a :class:`MaskedOptimizer` (of the
    host's masks).

    ``skip_nonfinite``: a step whose loss is NaN/inf updates no weight, no optimizer
    state and no running statistic, and counts in ``skipped``; the loss is returned
    so the caller can warn.

    ``scaler``: a ``torch.amp.GradScaler`` (or an object with its public API) for fp16
    autocast: the backward runs on ``scaler.scale(loss)``, the gradients the update reads
    (the kept weights' and the plain ``.grad`` of the rest) are unscaled, and a step whose
    gradients hold an inf/NaN updates nothing (as a non-finite loss does), backs the scale
    off and counts in ``overflows``; the scale grows after the scaler's growth
    interval of good steps (``loss_scaling``).

    ``on_phase``: None, or fn(phase) called as each phase of the compact step ends (one of
    :data:`PHASES`; for profiling: ``fxsparse bench phases``)."""

    def __init__(self, host: StepHost, loss_fn, optimizer, skip_nonfinite: bool = True, scaler=None):
        self.host = host
        self.loss_fn = loss_fn
        self.optimizer = optimizer.optimizer if isinstance(optimizer, MaskedOptimizer) else optimizer
        self.update = compact_update_for(self.optimizer)
        self.fallback = None
        if self.update is None:
            if not isinstance(optimizer, MaskedOptimizer):
                raise TypeError(f"{type(self.optimizer).__name__} has no compact update: pass it wrapped in a "
                                f"MaskedOptimizer (SparseModel.make_train_step does)")
            self.fallback = optimizer
        self.skip_nonfinite = skip_nonfinite
        self.loss_scaling = LossScaling(scaler)
        self.skipped = 0
        self.overflows = 0
        self.on_phase = None
        self._by_name = dict(host.model.named_parameters())
        self._masked_builds = weakref.WeakSet()  # the builds whose updates stay masked (see _exact_update)

    def __call__(self, *args):
        with self.host.compiler.timed():
            return self._run(*args)

    def _phase(self, name):
        if self.on_phase is not None:
            self.on_phase(name)

    def _graphs(self, build: CapacityBuild):
        """(forward + loss, gather, update kernel) of this step for ``build``, made once per
        capacity set. Compiled: forward + backward; with ``compile_update``, the indexed kernels
        too (the gather and the update: each saves a few ms per step and costs a cold compile,
        so a short run is better off without them)."""
        graphs = build.compiled_fns.get(self)
        if graphs is not None:
            return graphs
        loss_fn, compiler = self.loss_fn, self.host.compiler

        if self.update is not None:
            def forward_loss(tensors, index, training, target, *inputs):  # gather_leaves zeroed the empty slots
                return loss_fn(forward_gathered(build, tensors, index.buffers, inputs), target)
        else:
            def forward_loss(dense, index, training, target, *inputs):
                return loss_fn(forward_dense(build, dense, index, training, *inputs), target)

        gather_fn, kernel = gather_tensors, self.update.kernel if self.update is not None else None
        if compiler.enabled:
            forward_loss = compiler.compile(forward_loss, build.codes)
        if compiler.compile_update:
            # one fused pass per tensor instead of one copy per gathered dim
            gather_fn = compiler.compile(gather_tensors, build.codes, inductor_options=INDEXED_KERNEL_OPTIONS)
            if kernel is not None:
                kernel = compiler.compile(kernel, build.codes, inductor_options=INDEXED_KERNEL_OPTIONS)
        graphs = build.compiled_fns[self] = (forward_loss, gather_fn, kernel)
        return graphs

    def _run(self, *args):
        *inputs, target = args
        host, base, update = self.host, self.optimizer, self.update
        step = host.step_inputs(inputs)
        forward_loss, gather_fn, kernel = self._graphs(step.build)
        self._phase("indices")
        base.zero_grad(set_to_none=True)
        # what the forward updates in place on the dense model (the dense path: every running
        # statistic; the compact one: those not gathered, e.g. BN's batch counters): copies
        # put back when the step is skipped
        touched = [step.dense[n] for n in step.build.buffer_names if update is None or n not in step.index.slots]
        saved = [b.clone() for b in touched]
        if update is None:
            loss = forward_loss(step.dense, step.index, step.training, target, *inputs)
            self.loss_scaling.backward(loss)
            loss = self._averaged(loss)
            if not self._decided(loss, [p.grad for p in host.model.parameters() if p.grad is not None]):
                _restore(touched, saved)
                return loss
            self.fallback.step()
            return loss
        leaves = gather_leaves(step, host.compiler, gather_fn)
        self._phase("gather")
        loss = forward_loss(leaves.tensors, step.index, step.training, target, *inputs)
        self._phase("forward")
        self.loss_scaling.backward(loss)
        loss = self._averaged(loss)
        self._phase("backward")
        slots = step.index.slots
        names = [n for n in step.dense if n in slots and n in self._by_name]
        compact = [(self._by_name[n], leaves.tensors[n], leaves.weights[n], slots[n]) for n in names]
        host.compiler.mark_gathered({n: leaves.tensors[n].grad for n in names if leaves.tensors[n].grad is not None},
                                    slots)
        kept = {id(p): leaf for p, leaf, _, _ in compact}  # the kept weights' gradients; the rest in .grad
        grads = [kept[id(p)].grad if id(p) in kept else p.grad for p in host.model.parameters()]
        # before any write: a skipped step changes nothing (no weight, optimizer state or
        # running statistic: those are written back below)
        if not self._decided(loss, [g for g in grads if g is not None]):
            _restore(touched, saved)
            return loss
        arguments, eager = update.arguments(base, compact, self._exact_update(step.build, step.index, names))
        if arguments is not None:
            with torch.no_grad():
                (update.kernel if eager else kernel)(*arguments)
        self._phase("update")
        if step.training:
            write_back_buffers(step.build.buffer_names, leaves.tensors, slots, step.dense)
        self._phase("write-back")
        return loss

    def _exact_update(self, build: CapacityBuild, index, names) -> bool:
        """Whether the update may skip masking empty slots: none of ``names`` has one, and no
        earlier step of this build had one. Once masked, a build stays masked: capacities that
        mostly leave slots empty keep one update graph when a step happens to fill them all."""
        if not index.empty.isdisjoint(names):
            self._masked_builds.add(build)
        return build not in self._masked_builds

    def _decided(self, loss, grads) -> bool:
        """Whether to update: the gradients averaged (data parallel: every process updates
        with the mean gradient) and unscaled, the loss and, with a scaler, the gradients
        checked. Host-device sync, the step's only one: whether to update is a decision on
        the loss's (and the gradients') values, alike on every process (both are means)."""
        scaling, reduce_mean = self.loss_scaling, self.host.reduce_mean
        if scaling.scaler is None:
            if self.skip_nonfinite and not all_finite(loss):
                self.skipped += 1
                return False
            if reduce_mean is not None:
                reduce_mean(grads)
            return True
        if reduce_mean is not None:  # the scaled gradients: unscaling commutes with the mean
            reduce_mean(grads)
        found_inf = scaling.unscale_(grads, loss.device)
        nonfinite_loss, overflow = (bool(v) for v in torch.cat(
            [(~torch.isfinite(loss)).reshape(1).to(found_inf.dtype), found_inf.reshape(1) > 0]).tolist())
        if self.skip_nonfinite and nonfinite_loss:  # not the scale's doing: the scale stays
            self.skipped += 1
            return False
        scaling.update(overflow)
        self.overflows = scaling.overflows
        return not overflow

    def _averaged(self, loss):
        """The loss, detached; with the host's ``reduce_mean`` (data parallel) its mean over the
        processes, so that every process takes the same skip decision."""
        loss = loss.detach()
        if self.host.reduce_mean is not None:
            loss = loss.clone()
            self.host.reduce_mean([loss])
        return loss


def make_train_step(host: StepHost, loss_fn, optimizer, skip_nonfinite: bool = True, scaler=None) -> TrainStep:
    """See :class:`TrainStep`."""
    return TrainStep(host, loss_fn, optimizer, skip_nonfinite=skip_nonfinite, scaler=scaler)


@torch.no_grad()
def _restore(buffers, saved):
    for b, s in zip(buffers, saved):
        b.copy_(s)
