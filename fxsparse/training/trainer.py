"""``fxsparse train``: search, fine-tune and export, with checkpoints that resume bit-identically.

Phases, by method (``fxsparse.methods``; :meth:`fxsparse.methods.Method.phases` says which):

* a method with a phase of its own (the default method's search, for ``epochs``): the
  method builds and steps it (:meth:`~fxsparse.methods.Method.build_phase`), then the mask it
  chooses (:meth:`~fxsparse.methods.Method.final_masks`) is fine-tuned on the exported model
  for ``finetune_epochs``.
* a channel method that decides at initialisation (random, l1_filter, snip, ...): the
  exported model with that mask trains for ``epochs + finetune_epochs``.
* a channel method that decides during training (slimming): dense training with its hooks
  for ``epochs``, then its mask is fine-tuned on the exported model.
* a weight-level method: the dense model with parametrized masks, all epochs (dense cost).
* ``dense``: the unpruned model, all epochs.

Every epoch: a row of the table (loss, test accuracy, expected and realised keep, training
FLOPs so far, wall time), ``history.json``, and an atomic checkpoint ``last.pt`` (weights,
scores, optimizer and scheduler states, the method's state, every RNG state). ``resume``
restarts the epoch that was interrupted from that checkpoint, so the run continues
bit-identically. At the end: ``model.safetensors`` + ``model.json`` (the exported model as
weights and a recipe, no pickle: ``fxsparse.load(out)`` rebuilds it) and ``summary.json``. ``history.csv`` and ``steps.csv`` (a row per step) follow the checkpoints
(``fxsparse.training.logs``, with TensorBoard scalars under ``log_dir``).

Where and how: ``device`` / ``precision`` / ``channels_last`` (``fxsparse.training.device``);
under ``torchrun`` each process trains on its share of every batch and process 0 writes
(``fxsparse.training.distributed``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tabulate import tabulate

from fxsparse.training import checkpoint, saved
from fxsparse.analysis.analyze import analyze
from fxsparse.training.classifier import Classifier
from fxsparse.core.errors import NoPrunableGroupError
from fxsparse.rewrite.batchnorm import recalibrate_batchnorm
from fxsparse.rewrite.export import export
from fxsparse.analysis.flops import TRAIN_FACTOR, SubnetFlops
from fxsparse.analysis.masks import all_finite
from fxsparse.methods import TRAINER_PHASES, RunContext, TrainState, get_method
from fxsparse.training.device import Precision, resolve_device, to_device
from fxsparse.training.distributed import Group, shard_loader
from fxsparse.training.logs import NullLogs, RunLogs
from fxsparse.training.config import TrainConfig


class Trainer:
    """``Trainer(config).run()`` -> summary dict. ``model``/``loaders`` override the ones the
    config names (``loaders = (train_loader, test_loader, info)`` as from
    :func:`fxsparse.training.data.make_loaders`). ``callbacks``: ``cb(trainer, event, **info)`` with
    event ``"step"`` (after every optimizer step) or ``"epoch"`` (after the checkpoint)."""

    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None, loaders=None,
                 callbacks=(), resume: bool = False, log: Callable[[str], None] | None = print, progress: bool = True):
        config.validate()
        self.device = resolve_device(config.device)
        self.group = Group(self.device)  # torchrun's processes (one process: no group)
        if self.group.active and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.group.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.writer = self.group.rank == 0  # the process that writes files and logs
        if not self.writer:
            log, progress = None, False
        self.config, self.callbacks, self.log, self.progress = config, list(callbacks), log or (lambda s: None), progress
        self.out = config.out
        self.ckpt_path = os.path.join(self.out, "last.pt")
        self.precision = Precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        from fxsparse.training.data import make_loaders

        if loaders is None:  # a bad data path is the first thing to fix: say it before the --out collision
            loaders = make_loaders(config.data, config.data_root, batch_size=config.batch_size, seed=config.seed,
                                   augment=config.augment, drop_last=True, test_batch_size=512)
        if not resume and os.path.exists(self.ckpt_path):
            raise FileExistsError(f"{self.out!r} already holds a run (last.pt); pass --resume to continue it, "
                                  "or choose another --out")
        self.train_loader, self.test_loader, self.info = loaders
        # the training loop reads this process's share of every global batch
        self._shard = shard_loader(self.train_loader, self.group.rank, self.group.world) if self.group.active \
            else self.train_loader
        self.model_spec = config.model if model is None else None  # None: a model object, not rebuildable by name
        if model is None:
            from fxsparse.zoo import load_model

            model = load_model(config.model, num_classes=self.info["num_classes"], in_chans=self.info["in_chans"])
        if config.init is not None:
            from fxsparse.training.init_weights import load_init_weights

            load_init_weights(model, config.init)
        self.model = self._placed(model)
        self.loss_fn = F.cross_entropy
        x0, _ = next(iter(self.test_loader))
        self.example = (self._to_device(x0[:2].clone()),)
        self.method = get_method(config.method).for_run(config.keep, config.budget, dict(config.method_options),
                                                         trained=config.init is not None)
        self.graph = None
        if self.method.level != "none":
            self.graph = analyze(model, self.example)
            if self.method.level == "channel" and not self.graph.prunable_groups:
                raise NoPrunableGroupError(f"{config.model} has no prunable channel group, so channel method "
                                 f"{config.method!r} cannot run; see `fxsparse analyze {config.model}` for the reasons")
        self.flops = SubnetFlops(self.graph or analyze(model, self.example))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.state = TrainState(model=model, graph=self.graph, loss_fn=self.loss_fn,
                                batches=lambda: map(self._to_device, self.train_loader),  # whole batches: alike everywhere
                                num_classes=self.info["num_classes"], example_inputs=self.example, generator=self.generator,
                                steps_per_epoch=self._steps_per_epoch())
        self.state.total_steps = self._step_of(config.epochs + config.finetune_epochs)
        if self.state.total_steps < 1:
            raise ValueError(f"--epochs + --finetune-epochs = {config.epochs + config.finetune_epochs} is less than one "
                             f"step of {self.state.steps_per_epoch} per epoch: nothing to train")
        self.history: list[dict] = []
        self.epoch = 0
        self.train_flops = 0.0
        self.elapsed = 0.0
        self.masks = None           # the fixed channel mask once chosen
        self.small = None           # the exported model trained in fixed-mask phases
        self.oneshot_acc = None     # its test accuracy before any training (BN statistics re-estimated)
        self.sp = self.step_fn = None  # sp: the SparseModel a method's phase compiles, if any
        self.optimizer = None
        self._schedules = []
        self._phase_built = None
        self.finished = False       # resumed from the checkpoint of a run that trained to the end
        self._bar = None            # the epoch's progress bar
        self._compile_pending = self._recompiling = False  # the next step compiles / recompiles
        self._compile_s = {}        # how long the first step's compile took, per step kind
        self.compile_s = 0.0        # wall time of this process's training steps that compiled
        self._compiles_before = 0
        self._compiling = dict(self._TRAINER_COMPILING)  # what a phase's first step compiles, for the log
        self.run_context = RunContext(model=model, graph=self.graph, loss_fn=self.loss_fn, keep=config.keep,
                                      budget=config.budget, seed=config.seed, compile=config.compile,
                                      sgd=lambda params: self._sgd(params, config.lr),
                                      weight_schedule=self._weight_schedule, train_batches=self._first_batches,
                                      accuracy=self._accuracy_sparse, scaler=self.precision.scaler)
        saved = checkpoint.load(self.ckpt_path) if resume else None
        if saved is not None:
            self.method.load_state_dict(saved["method"])
        else:
            self.method.init(self.state)
        if self.method.level == "weight":
            from fxsparse.methods.unstructured import apply_weight_masks

            apply_weight_masks(self.model, self.method.weight_masks())
        self.phases = self._plan_phases()  # after init: whether a channel method has decided yet
        # fp16 needs the method's own phases to scale the loss (Method.scales_loss)
        unscaled = [name for name, _ in self.phases if name not in TRAINER_PHASES and not self.method.scales_loss(name)]
        if self.precision.scaler is not None and unscaled:
            raise ValueError(f"--precision fp16: method {config.method!r} trains in a step of its own ({unscaled[0]}), "
                             "which has no gradient scaler with these options; use --precision bf16")
        self.logs = RunLogs(self.out, config.log_dir, resume=saved is not None,
                            step=saved["step"] if saved is not None else 0) if self.writer else NullLogs()
        if saved is not None:
            self._resume(saved)

    # ----- device and memory format ---------------------------------------------------
    def _placed(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.config.channels_last else model

    def _to_device(self, batch):
        return to_device(batch, self.device, self.config.channels_last)

    # ----- plan ----------------------------------------------------------------------
    def _steps_per_epoch(self) -> int:
        n = len(self.train_loader)
        return min(n, self.config.limit_batches) if self.config.limit_batches else n

    def _step_of(self, epochs: float) -> int:
        """The run's step count after ``epochs`` (fractional epochs are whole steps)."""
        return int(round(epochs * self.state.steps_per_epoch))

    def _plan_phases(self) -> list:
        """[(phase, steps)]: phase boundaries are steps, so a search may end mid-epoch."""
        return self.method.phases(self._step_of(self.config.epochs), self.state.total_steps)

    def _phase_at(self, step: int) -> tuple[str, int, int]:
        """(phase, its first step, its steps) for the run's step ``step``."""
        start = 0
        for name, n in self.phases:
            if step < start + n:
                return name, start, n
            start += n
        raise IndexError(step)

    # ----- phase set-up --------------------------------------------------------------
    def _sgd(self, params, lr):
        c = self.config
        return torch.optim.SGD(params, lr=lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _set_lr(self, step: int):
        """Cosine decay per schedule (optimizer, base lr, first step, length in steps), a
        function of the run's step alone (nothing to checkpoint)."""
        for opt, base, start, length in self._schedules:
            opt = opt() if callable(opt) else opt  # the learner's optimizer is replaced when width+channel switches stage
            frac = 0.5 * (1 + math.cos(math.pi * min(max(step - start, 0) / max(1, length), 1.0)))
            for group in opt.param_groups:
                group["lr"] = base * frac

    def _weight_schedule(self, optimizer, phase: str, start: int, steps: int):
        """The weights' cosine: over the whole run (one schedule, continued across phases)
        unless this is a fine-tune with its own ``finetune_lr`` (or a phase followed by one)."""
        c = self.config
        if phase == "finetune" and c.finetune_lr is not None:
            return (optimizer, c.finetune_lr, start, steps)
        if phase != "fixed" and c.finetune_lr is not None and len(self.phases) > 1:
            return (optimizer, c.lr, start, steps)
        return (optimizer, c.lr, 0, self.state.total_steps)

    def _build_phase(self, phase: str, start: int, steps: int):
        """Models, optimizer and schedules of ``phase``, which runs ``steps`` steps from ``start``."""
        c = self.config
        if phase not in TRAINER_PHASES:  # the method's own phase
            setup = self.method.build_phase(phase, self.run_context, start, steps)
            self.sp, self.optimizer, self._schedules = setup.sparse, setup.optimizer, list(setup.schedules)
            self._compiling[phase] = setup.compiling
        elif phase in ("fixed", "finetune"):
            if self.masks is None:
                self.masks = self._choose_masks()
            self.small = self._placed(export(self.model, self.graph, self.masks))
            if self.oneshot_acc is None:  # entered afresh (a resume loads the small model's state after this)
                self._recalibrate(self.small)
                self.oneshot_acc = self._accuracy(self.small, self.test_loader)
                self._say(f"pruned to {self.flops.fraction(self.flops.flat(self.masks)):.3f} of the dense FLOPs: one-shot "
                          f"test accuracy {100 * self.oneshot_acc:.2f} % (BatchNorm statistics re-estimated on "
                          f"{c.bn_batches} training batches), before any training")
            self.optimizer = self._sgd(self.small.parameters(), c.lr)
            self._schedules = [self._weight_schedule(self.optimizer, phase, start, steps)]
            self.step_fn = self._plain_step(self.small, bn_eval=phase == "finetune" and c.finetune_bn_eval)
        else:  # dense
            self.optimizer = self._sgd(self.model.parameters(), c.lr)
            self._schedules = [self._weight_schedule(self.optimizer, phase, start, steps)]
            self.state.optimizer = self.optimizer
            self.step_fn = self._plain_step(self.model, hooks=True)
        self._phase_built = phase
        self._compile_pending = bool(c.compile)  # the phase's first step compiles its graphs
        if self.sp is not None and self._on_rebuild not in self.sp.on_rebuild:
            self.sp.on_rebuild.append(self._on_rebuild)
        if self.sp is not None and self.group.active:  # the sparse step's and the score forwards' averaging
            self.sp.reduce_mean = self.group.reduce_mean
        fixed = phase in ("fixed", "finetune")  # per-sample forward FLOPs of a fixed-mask step
        self._step_flops = float(self.flops(self.flops.flat(self.masks))) if fixed else self.flops.dense
        self._step_keep = (float(self.flops.flat(self.masks).double().mean()), self._step_flops / self.flops.dense) \
            if fixed else (1.0, 1.0)

    def _recalibrate(self, model: nn.Module):
        """Re-estimate the BatchNorm statistics of a freshly pruned model on the first
        ``bn_batches`` training batches (stale statistics would mislead every one-shot figure)."""
        if self.config.bn_batches:
            recalibrate_batchnorm(model, self._first_batches(self.config.bn_batches),
                                  forward=lambda m, x: self._autocast_forward(m, x))

    def _autocast_forward(self, model, x):
        with self.precision.autocast():
            return model(x)

    def _choose_masks(self) -> dict:
        return self.method.final_masks(self.run_context)

    def _first_batches(self, batches: int) -> list:
        """A fixed set of training batches (the first ones of the dataset, no augmentation
        randomness beyond the seed), e.g. to rank final-mask candidates."""
        ds = self.train_loader.dataset
        n = min(len(ds), batches * self.config.batch_size)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(n)), batch_size=self.config.batch_size)
        return [self._to_device(b) for b in loader]

    def _plain_step(self, model: nn.Module, bn_eval: bool = False, hooks: bool = False):
        """Forward, loss, backward, SGD step on an ordinary module (dense or exported).
        A non-finite loss skips the step and restores the running statistics it touched."""
        net = model
        if self.group.active:  # gradients averaged over the processes during the backward
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        fwd = torch.compile(net, dynamic=False) if self.config.compile else net
        frozen_bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if bn_eval else []

        scaler = self.precision.scaler

        def step(x, y):
            model.train()  # evaluation in between switches modes
            for mod in frozen_bn:
                mod.eval()
            saved = [b.clone() for b in model.buffers()]
            self.optimizer.zero_grad(set_to_none=True)
            with self.precision.autocast():
                loss = self.loss_fn(fwd(x), y)
            mean = loss.detach().clone()  # the whole batch's loss: every process decides alike
            self.group.reduce_mean([mean] if self.group.active else [])
            if not all_finite(mean):  # host-device sync: the skip is a decision on the loss's value
                with torch.no_grad():
                    for b, s in zip(model.buffers(), saved):
                        b.copy_(s)
                step.skipped += 1
                return mean
            if scaler is not None:  # fp16: scaled backward; the hooks and the step see unscaled gradients
                scaler.scale(loss).backward()
                scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if hooks:
                self.method.after_backward(self.state)
            if scaler is not None:
                scaler.step(self.optimizer)  # skipped when a gradient overflowed (the scaler's own sync)
                scaler.update()
            else:
                self.optimizer.step()
            if hooks:
                self.method.after_step(self.state)
            return mean

        step.skipped = 0
        return step

    # ----- evaluation ----------------------------------------------------------------
    @torch.no_grad()
    def _accuracy(self, model, batches) -> float:
        was = model.training
        model.eval()
        correct, total = torch.zeros((), dtype=torch.long, device=self.device), 0
        for x, y in batches:
            x, y = self._to_device((x, y))
            with self.precision.autocast():
                correct += (model(x).argmax(1) == y).sum()  # summed on the device: one sync per evaluation
            total += len(y)
        correct = int(correct)
        model.train(was)
        return correct / max(total, 1)

    def _accuracy_sparse(self, masks, batches) -> float:
        """Accuracy of the exported model for ``masks`` (its BatchNorm statistics re-estimated
        first: the dense model's are stale for it): eager and physically small, so evaluation
        adds no compiled graph and no capacity growth to the search step."""
        small = export(self.model, self.graph, masks)
        self._recalibrate(small)
        return self._accuracy(small, batches)

    def _current_eval(self) -> tuple[float, dict | None]:
        """Test accuracy of what the run would deliver now, and its channel mask."""
        phase = self._phase_built
        if phase not in TRAINER_PHASES:
            masks = self.method.phase_masks(phase)
            return self._accuracy_sparse(masks, self.test_loader), masks
        if phase in ("fixed", "finetune"):
            return self._accuracy(self.small, self.test_loader), self.masks
        return self._accuracy(self.model, self.test_loader), None

    # ----- the loop ------------------------------------------------------------------
    def run(self) -> dict:
        """Train to the end and export; on a finished run (resumed), change nothing."""
        summary_path = os.path.join(self.out, "summary.json")
        if self.finished and os.path.isfile(summary_path) and os.path.isfile(os.path.join(self.out, saved.RECIPE)):
            import json

            with open(summary_path) as f:
                summary = json.load(f)
            self.log(f"the run in {self.out} is finished ({self.state.step} of {self.state.total_steps} steps, test "
                     f"accuracy {summary.get('test_acc_pct', float('nan')):.2f} %, {saved.RECIPE} and summary.json written); "
                     "nothing to do. To train more, start a new run with another --out.")
            return summary
        if self.state.step == 0 and not self.history:
            self.log(self._header())
        try:
            while self.state.step < self.state.total_steps:
                self._train_epoch()
            return self._finish()
        finally:
            self.group.close()

    def _batches(self, epoch: int, limit: int):
        (self._shard.batch_sampler if self.group.active else self._shard.sampler).set_epoch(epoch)
        for i, batch in enumerate(self._shard):
            if i >= limit:
                break
            yield self._to_device(batch)

    def _train_epoch(self):
        """One pass over the data (the last one may be cut short by a fractional total); a
        phase that ends mid-epoch gets its own row (no checkpoint: resume replays the epoch)."""
        epoch, st = self.epoch, self.state
        st.epoch = epoch
        self._t_row = time.perf_counter()
        limit = min(st.steps_per_epoch, st.total_steps - st.step)
        phase, stats, dense_seen = None, None, False
        self._bar = _Progress(limit, f"epoch {epoch + 1}", self.progress)
        for x, y in self._batches(epoch, limit):
            now, start, n = self._phase_at(st.step)
            if now != phase:
                if phase is not None:  # the previous phase ended mid-epoch
                    self._end_row(phase, stats, checkpoint=False)
                if self._phase_built != now:
                    self._build_phase(now, start, n)
                phase, stats = now, _MaskStats(self)
                dense_seen = dense_seen or phase == "dense"
            b = len(y) * self.group.world  # the global batch
            self._set_lr(st.step)
            t_step = self._before_step(phase)
            if phase not in TRAINER_PHASES:
                with self.precision.autocast():  # the sparse step's and the score forwards' ops
                    loss, masks, extra_flops = self.method.phase_step(phase, x, y)
                flops_before = self.train_flops
                kept = [stats.add(mask, b) for mask in masks]  # masks live on the host: no device sync
                self.train_flops += extra_flops * b
                keep, flops_frac = (sum(k) / len(kept) for k in zip(*kept)) if kept else (1.0, 1.0)
            else:
                flops_before = self.train_flops
                loss = self.step_fn(x, y)
                self.train_flops += TRAIN_FACTOR * self._step_flops * b
                keep, flops_frac = self._step_keep
            # host-device sync, one per step: whether to count the step as skipped is a decision
            # on the loss's value (the step itself already decided the same way); float(loss)
            # below then reads a value already on its way to the host
            if not all_finite(loss):
                stats.skipped += 1
                warnings.warn(f"epoch {epoch + 1}: non-finite loss ({float(loss)}), step skipped (weights, "
                              "optimizer state and running statistics unchanged)", RuntimeWarning, stacklevel=2)
            else:
                stats.losses.append(float(loss))
            st.step += 1
            self.logs.step({"step": st.step, "epoch": epoch + 1, "phase": phase, "loss": float(loss), "realised_keep": keep,
                            "realised_flops_frac": flops_frac, "train_tflop": (self.train_flops - flops_before) / 1e12,
                            "step_time_s": time.perf_counter() - t_step})
            self._after_step(t_step)
            self._bar.update()
            for cb in self.callbacks:
                cb(self, "step", epoch=epoch, loss=float(loss))
        self._bar.close()
        if dense_seen:
            self.method.end_epoch(self.state)
        self.epoch += 1
        row = self._end_row(phase, stats, checkpoint=True)
        for cb in self.callbacks:
            cb(self, "epoch", epoch=epoch, row=row)

    def _end_row(self, phase, stats, checkpoint: bool):
        """Evaluate, append a history row (epoch = data passes so far, fractional mid-epoch),
        print it; at an epoch's end also write the checkpoint."""
        train_time = time.perf_counter() - self._t_row
        acc, masks = self._current_eval()
        now = time.perf_counter()
        self.elapsed += now - self._t_row
        self._t_row = now
        passes = self.state.step / self.state.steps_per_epoch
        row = {"epoch": int(passes) if passes == int(passes) else round(passes, 3), "step": self.state.step,
               "phase": phase, "loss": sum(stats.losses) / max(len(stats.losses), 1), "test_acc_pct": 100 * acc,
               "skipped": stats.skipped, "train_tflop": self.train_flops / 1e12, "train_time_s": train_time,
               "wall_s": self.elapsed}
        row.update(self._keep_stats(phase, masks, stats))
        self.history.append(row)
        self.logs.epoch(row)
        self._say(self._row_text(row))
        if self._bar is not None:  # mid-epoch: the evaluation is not training time
            self._bar.restart()
        if checkpoint:
            self._save_checkpoint()
        return row

    # ----- saying what takes time ----------------------------------------------------
    def _say(self, text: str):
        """Log a line without tearing the progress bar."""
        if self._bar is not None:
            self._bar.write(text, self.log)
        else:
            self.log(text)

    _TRAINER_COMPILING = {"fixed": "the training step of the exported model",
                          "finetune": "the training step of the exported model", "dense": "the dense training step"}

    def _before_step(self, phase) -> float:
        """Before a step; before the first step of a phase (it compiles) say so, and keep the
        bar counting the seconds of the wait (the compile shows no other sign of life)."""
        if self._compile_pending:
            import sys

            took = self._compile_s.get(self._compiling.get(phase))
            guess = f"about {took:.0f} s, like the last time" if took else \
                "from seconds to minutes, depending on the model and the CPU, and longer on a busy CPU"
            shown = "; the progress bar counts its seconds" if self._bar.bar is not None else ""
            self._say(f"compiling {self._compiling.get(phase, 'the training step')} with torch.compile "
                      f"(the first step waits for it: {guess}{shown}; --no-compile runs eagerly)")
            # until _after_step, or until an exception or Ctrl-C leaves the training loop's frame
            self._bar.tick("compiling", sys._getframe(1))
        self._compiles_before = getattr(self.sp, "compilations", 0)
        return time.perf_counter()

    def _on_rebuild(self, sp):
        """A capacity change to capacities not seen lately: the next step recompiles."""
        if not self.config.compile or not sp.compilations or sp.reused_build:
            return
        took = self._compile_s.get(self._compiling.get(self._phase_built))
        self._say("recompiling: channel capacities changed (the compiled step's channel slots follow the scores"
                  + (f"; about {took:.0f} s)" if took else ")"))
        self._recompiling = True

    def _after_step(self, t_step: float):
        """After a step that compiled: say how long it took, and restart the bar's clock so
        its rate and ETA count steps, not the compile."""
        self._bar.stop_ticking()
        compiled = self._compile_pending or self._recompiling or \
            getattr(self.sp, "compilations", 0) != self._compiles_before
        if not compiled or not self.config.compile:
            return
        took = time.perf_counter() - t_step
        self.compile_s += took
        if self._compile_pending:
            self._compile_s[self._compiling.get(self._phase_built)] = took
            self._say(f"compiled in {took:.0f} s")
        self._compile_pending = self._recompiling = False
        self._bar.restart()

    def _keep_stats(self, phase, masks, stats) -> dict:
        groups = self.graph.prunable_groups if self.graph is not None else []
        out = {"expected_keep": 1.0, "expected_flops_frac": 1.0, "realised_keep": 1.0, "realised_flops_frac": 1.0}
        if phase not in TRAINER_PHASES:
            pass  # the method's own phase reports itself
        elif self.method.level == "weight":  # masked weights still cost dense FLOPs: say so
            wm = self.method.weight_masks()
            density = (sum(float(m.sum()) for m in wm.values()) / sum(m.numel() for m in wm.values())) if wm else self.method.keep
            out.update(expected_keep=density, realised_keep=density)
        elif masks is not None:
            flat = self.flops.flat(masks)
            frac = self.flops.fraction(flat)
            out.update(expected_keep=float(flat.mean()), expected_flops_frac=frac, realised_keep=float(flat.mean()),
                       realised_flops_frac=frac, group_keep=[float(masks[g.id].double().mean()) for g in groups])
        out.update(self.method.report(phase, stats))
        if "group_keep" in out:
            out["group_names"] = [_group_name(g) for g in groups]
        return out

    # ----- checkpoints ---------------------------------------------------------------
    def _save_checkpoint(self):
        state = {"config": dataclasses.asdict(self.config), "epoch": self.epoch, "history": self.history,
                 "train_flops": self.train_flops, "elapsed": self.elapsed, "step": self.state.step,
                 "model": self.model.state_dict(), "masks": self.masks, "phase_built": self._phase_built,
                 "oneshot_acc": self.oneshot_acc,
                 "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                 "method": self.method.state_dict(), "generator": self.generator.get_state(),
                 "rng": checkpoint.rng_state(),
                 "scaler": self.precision.scaler.state_dict() if self.precision.scaler is not None else None}
        if self.small is not None:
            state["small"] = self.small.state_dict()
        if self.writer:
            self.logs.flush(self.history)  # before the checkpoint: a resume drops the steps past it
            checkpoint.save_atomic(state, self.ckpt_path)
            checkpoint.write_json_atomic(self.history, os.path.join(self.out, "history.json"))
        self.group.barrier()  # no process runs ahead of the checkpoint it would resume from

    def _resume(self, state: dict):
        saved = state["config"]
        mine = dataclasses.asdict(self.config)
        # a checkpoint resumes on another device (it is loaded to the CPU, then copied into
        # the model and the optimizer where they live) and logs anywhere
        differ = [k for k in saved if k not in ("out", "device", "log_dir") and saved[k] != mine.get(k)]
        if differ:
            raise ValueError(f"--resume with different settings than the checkpoint in {self.out!r}: "
                             + ", ".join(f"{k}={mine.get(k)!r} (checkpoint: {saved[k]!r})" for k in differ))
        self.model.load_state_dict(state["model"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.train_flops, self.elapsed, self.state.step = state["train_flops"], state["elapsed"], state["step"]
        self.masks = state["masks"]
        self.oneshot_acc = state.get("oneshot_acc")
        self.generator.set_state(state["generator"])
        phase, step = state["phase_built"], self.state.step
        self.finished = step >= self.state.total_steps
        if self.finished and phase in ("fixed", "finetune"):  # trained; the export may not have been written
            self.small = export(self.model, self.graph, self.masks)
            self.small.load_state_dict(state["small"])
            self._phase_built = phase
        elif self.finished and phase not in TRAINER_PHASES:  # the final model is the method's phase's mask
            self._build_phase(phase, *self._phase_at(step - 1)[1:])  # (the method restores its phase's state)
        elif phase is not None:
            name, start, n = self._phase_at(step)
            if name == phase:  # rebuild the phase in progress and load its states
                self._build_phase(phase, start, n)
                if self.small is not None and "small" in state:
                    self.small.load_state_dict(state["small"])
                self.optimizer.load_state_dict(state["optimizer"])
            elif phase not in TRAINER_PHASES:  # the next phase needs the method's phase to pick the final mask
                self._build_phase(phase, *self._phase_at(step - 1)[1:])
        checkpoint.set_rng_state(state["rng"])
        if self.precision.scaler is not None and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        if not self.finished:
            self.log(f"resumed {self.out} at epoch {self.epoch + 1}")

    # ----- the end -------------------------------------------------------------------
    def _final_model(self) -> tuple:
        """What the run delivers, the model its last history row evaluated, and its channel
        mask: the exported model of a fixed-mask phase, the exported deterministic mask of a
        search that ends the run, or the dense model (dense and weight-level methods: no mask)."""
        if self.small is not None:
            return self.small, self.masks
        if self._phase_built not in TRAINER_PHASES and self._phase_built is not None:
            masks = self.method.phase_masks(self._phase_built)
            return export(self.model, self.graph, masks), masks
        if self.method.level == "weight":
            from fxsparse.methods.unstructured import remove_weight_masks

            remove_weight_masks(self.model)
        return self.model, None

    def _finish(self) -> dict:
        final, masks = self._final_model()
        final = final.eval().cpu()  # the saved weights load on any machine
        example = self.example[0]
        info = self.info
        names = info.get("classes")
        final = Classifier(final, info.get("mean"), info.get("std"),
                           class_names=names if names and len(names) == info["num_classes"] else None,
                           input_shape=example.shape[1:])
        files = {name: os.path.join(self.out, name) for name in
                 (saved.WEIGHTS, saved.RECIPE, "summary.json", "history.json", "history.csv", "steps.csv",
                  "last.pt")}
        if self.writer:
            checkpoint.save_safetensors_atomic(final.net.state_dict(), files[saved.WEIGHTS])
            checkpoint.write_json_atomic(saved.recipe(self.model_spec, info["num_classes"], info["in_chans"], example.shape,
                                                      masks, final, files[saved.WEIGHTS]), files[saved.RECIPE])
        last = self.history[-1]
        params = sum(p.numel() for p in final.parameters())
        dense_params = sum(p.numel() for p in self.model.parameters())
        summary = {"model": self.config.model, "method": self.config.method, "data": self.config.data,
                   "keep": self.config.keep, "budget": self.config.budget,
                   "epochs": round(self.state.total_steps / self.state.steps_per_epoch, 3),
                   "test_acc_pct": last["test_acc_pct"],
                   "oneshot_test_acc_pct": None if self.oneshot_acc is None else 100 * self.oneshot_acc,
                   "train_tflop": self.train_flops / 1e12,
                   "train_tflop_dense": TRAIN_FACTOR * self.flops.dense * self.state.total_steps * self.config.batch_size / 1e12,
                   "final_keep": last["realised_keep"], "final_flops_frac": last["realised_flops_frac"],
                   "params": params, "dense_params": dense_params,
                   "wall_s": self.elapsed, "compile_s": self.compile_s, "compilations": getattr(self.sp, "compilations", None),
                   "units": UNITS, "files": files, "preprocessing": final.preprocessing()}
        if self.writer:
            checkpoint.write_json_atomic(summary, files["summary.json"])
        self.group.barrier()
        self.logs.close()
        shown = [[k, _fmt(v)] for k, v in summary.items() if not isinstance(v, dict)]
        self.log("\n" + tabulate(shown, headers=["summary", ""]))
        self.log(f"files in {self.out}: {saved.WEIGHTS} and {saved.RECIPE} (the trained model as weights and a "
                 "recipe, no code: fxsparse.load(OUT) rebuilds it, taking raw images scaled to [0, 1], see the README's "
                 "'Using the trained model'; `--init OUT` reads the weights), summary.json "
                 "(this summary and the preprocessing), "
                 "history.json (a row per epoch; history.csv the same as CSV), steps.csv (a row per step), last.pt (the "
                 "checkpoint --resume reads)")
        return summary

    # ----- printing ------------------------------------------------------------------
    _COLS = [("epoch", 6), ("phase", 8), ("loss", 8), ("test_acc_pct", 12), ("expected_keep", 13),
             ("realised_keep", 13), ("realised_flops_frac", 19), ("train_tflop", 11), ("wall_s", 8)]

    def _header(self) -> str:
        return "  ".join(f"{name:>{w}}" for name, w in self._COLS)

    def _row_text(self, r: dict) -> str:
        vals = [r["epoch"], r["phase"], f"{r['loss']:.4f}", f"{r['test_acc_pct']:.2f}", f"{r['expected_keep']:.3f}",
                f"{r['realised_keep']:.3f}", f"{r['realised_flops_frac']:.3f}", f"{r['train_tflop']:.3f}",
                f"{r['wall_s']:.1f}"]
        text = "  ".join(f"{v:>{w}}" for v, (_, w) in zip(vals, self._COLS))
        return text + (f"  ({r['skipped']} steps skipped: non-finite loss)" if r["skipped"] else "")


class _MaskStats:
    """Per-row tally of losses, skipped steps and the sampled masks: realised keep (channels, FLOPs, per channel)
    and the training FLOPs they cost."""

    def __init__(self, trainer):
        self.trainer, self.count, self.channels, self.flops, self.kept = trainer, 0, 0.0, 0.0, 0.0
        self.losses, self.skipped = [], 0

    def add(self, mask, batch_size) -> tuple[float, float]:
        """Tally a sampled mask; its (realised keep, FLOPs fraction)."""
        tr = self.trainer
        f = float(tr.flops(mask))
        tr.train_flops += TRAIN_FACTOR * f * batch_size
        self.count += 1
        keep = float(mask.double().mean())
        self.channels += keep
        self.flops += f / tr.flops.dense
        self.kept = self.kept + mask.double()
        return keep, f / tr.flops.dense


# the units of history.json's rows and summary.json (also written into summary.json)
UNITS = {"*_pct": "percent (0-100)", "*_keep": "fraction (0-1) of the prunable channels",
         "*_flops_frac": "fraction (0-1) of the dense model's forward FLOPs", "*_tflop": "10^12 FLOPs",
         "*_s": "seconds", "epoch": "passes over the training data", "loss": "mean training cross-entropy"}


def _group_name(group) -> str:
    """A channel group by its first layer, its size and how many more layers' outputs it couples."""
    producers = {m.layer for m in group.members if m.dim == 0 and m.param.endswith(".weight")}
    more = len(producers - {group.layers[0]})
    return f"{group.layers[0]} ({group.size} ch" + (f", +{more} coupled layers" if more else "") + ")"


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return v


class _Progress:
    """The epoch's tqdm bar (or nothing when disabled). ``restart`` forgets the timing so far
    (a compile stalled it), so the rate and the ETA count training steps only. ``tick`` keeps
    a long first step visibly alive: the bar's postfix counts its seconds (``compiling, 12 s``),
    refreshed by a background thread about once a second, until ``stop_ticking`` (the step
    returned) or until the watched frame (the training loop's) is no longer on its thread's
    stack: an exception or Ctrl-C went through it, and nobody will call ``stop_ticking``."""

    TICKER = "fxsparse-progress-ticker"  # the background thread's name

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.n, self.bar = total, desc, 0, None
        self._ticker = self._stop = None
        if enabled:
            self.bar = self._new()

    def _new(self):
        from tqdm import tqdm

        return tqdm(total=self.total, initial=self.n, desc=self.desc, leave=False, dynamic_ncols=True)

    def tick(self, label: str, frame) -> None:
        """Count seconds in the bar's postfix while ``frame`` (on the calling thread) runs;
        nothing without a bar."""
        if self.bar is None:
            return
        import threading

        self.stop_ticking()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name=self.TICKER, daemon=True,
                                        args=(self.bar, label, frame, threading.get_ident(), self._stop))
        self._ticker.start()

    @staticmethod
    def _tick(bar, label, frame, ident, stop) -> None:
        import sys

        def running() -> bool:  # is ``frame`` still on the watched thread's stack?
            f = sys._current_frames().get(ident)
            while f is not None and f is not frame:
                f = f.f_back
            return f is not None

        start, shown = time.monotonic(), 0
        while not stop.wait(0.1):
            if not running():
                return
            seconds = int(time.monotonic() - start)
            if seconds > shown:  # the elapsed time in the bar's [..] moves with each refresh too
                shown = seconds
                bar.set_postfix_str(f"{label}, {seconds} s")  # tqdm's lock: safe beside the loop's writes

    def stop_ticking(self) -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = self._stop = None
            if self.bar is not None:
                self.bar.set_postfix_str("", refresh=False)

    def update(self):
        self.stop_ticking()
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def restart(self):
        self.stop_ticking()
        if self.bar is not None:
            self.bar.close()
            self.bar = self._new()

    def write(self, text: str, log):
        if self.bar is None:
            return log(text)
        from tqdm import tqdm

        with tqdm.external_write_mode():
            log(text)

    def close(self):
        self.stop_ticking()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
