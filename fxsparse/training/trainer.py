"""``fxsparse train``: search, fine-tune and export, with checkpoints that resume bit-identically.

Phases, by method (``fxsparse.methods``; :meth:`fxsparse.methods.Method.phases` says which):

* a method with a phase of its own (a structure search, for ``epochs``): the
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

The Trainer is the loop; it holds its config and a few collaborators, each the one owner of
what it holds: where it computes (``place``), the data (``run_data``), the model, graph and
step counts (the methods' ``TrainState``), the method, the phases and their schedules
(``phases``; their step: ``plain_step``), what the run has done and what a resume loads
(``run_state``: ``RunRecord``, ``RunState``), evaluation (``evaluation``), history rows and
the printed table (``history``), the progress bar (``progress``), what it says about
torch.compile (``compile_notes``), the checkpoint files (``checkpoint``; the settings a resume
must share: ``resume_settings``) and the delivered model and summary (``results``). Methods
reach it through their hooks (:class:`fxsparse.methods.Method`); it never asks which method it runs.
"""
from __future__ import annotations

import dataclasses
import os
import time
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxsparse.analysis.analyze import analyze
from fxsparse.analysis.dynamic_dims import pinned_sizes_expected
from fxsparse.analysis.flops import TRAIN_FACTOR, SubnetFlops
from fxsparse.analysis.masks import all_finite
from fxsparse.methods import TRAINER_PHASES, RunContext, TrainState, get_method
from fxsparse.rewrite.export import export
from fxsparse.training import checkpoint, results, saved
from fxsparse.training.compile_notes import CompileNotes
from fxsparse.training.config import TrainConfig
from fxsparse.training.evaluation import Evaluator
from fxsparse.training.history import UNITS, RowTally, keep_fields, table_header, table_line
from fxsparse.training.logs import NullLogs, RunLogs
from fxsparse.training.phases import FIXED_MASK_PHASES, Phase, PhaseBuilder, PhasePlan, set_lr, sgd
from fxsparse.training.place import RunPlace
from fxsparse.training.progress import Console
from fxsparse.training.resume_settings import check_resume_settings
from fxsparse.training.run_data import RunData
from fxsparse.training.run_state import RunRecord, RunState


class Trainer:
    """``Trainer(config).run()`` -> summary dict. ``model``/``loaders`` override the ones the
    config names (``loaders = (train_loader, test_loader, info)`` as from
    :func:`fxsparse.training.data.make_loaders`). ``callbacks``: ``cb(trainer, event, **info)`` with
    event ``"step"`` (after every optimizer step) or ``"epoch"`` (after the checkpoint)."""

    def __init__(self, config: TrainConfig, *, model: nn.Module | None = None, loaders=None,
                 callbacks=(), resume: bool = False, log: Callable[[str], None] | None = print, progress: bool = True):
        config.validate()
        self.config, self.callbacks = config, list(callbacks)
        self.place = RunPlace(config)
        writer = self.place.writer
        self.console = Console((log if writer else None) or (lambda s: None), progress and writer)
        torch.manual_seed(config.seed)
        self.data = RunData.of(config, self.place, loaders, resume)
        self.rebuildable = model is None  # a model the config names, not an object: the recipe rebuilds it by name
        model = self.place.model(self._dense_model(model))
        example = self.data.example(self.place)
        self.method = get_method(config.method).for_run(config.keep, config.budget, dict(config.method_options),
                                                         trained=config.init is not None)
        with pinned_sizes_expected():  # a run trains and evaluates at its data's one input size
            dense_graph = analyze(model, example)
        graph = self.method.graph_for_run(dense_graph, config.model)  # None: the method needs none
        self.flops = SubnetFlops(dense_graph)
        self.plan = PhasePlan(config, len(self.data.train))
        # the model, its graph and the step counts: the methods' view of the run, and their one owner
        self.state = TrainState(model=model, graph=graph, loss_fn=F.cross_entropy,
                                batches=lambda: map(self.place.batch, self.data.train),  # whole batches: alike everywhere
                                num_classes=self.data.info["num_classes"], example_inputs=example,
                                generator=torch.Generator().manual_seed(config.seed),
                                steps_per_epoch=self.plan.steps_per_epoch, total_steps=self.plan.total_steps)
        self.record = RunRecord()   # what the run has done: what a checkpoint saves besides the states
        self.phase: Phase | None = None  # the phase built last
        self.small = None           # the exported model trained in fixed-mask phases
        self.evaluator = Evaluator(config, self.place.precision, self.place.device, self.data.train, self.place.batch)
        self.compile_notes = CompileNotes(self.console, config.compile)
        self.phases = PhaseBuilder(config, self.plan, self.place.precision, self.place.group, self.place.device,
                                   self.state.loss_fn, self.flops)
        self.run_context = RunContext(model=model, graph=graph, loss_fn=self.state.loss_fn, keep=config.keep,
                                      budget=config.budget, seed=config.seed, compile=config.compile,
                                      sgd=lambda params: sgd(config, params, config.lr),
                                      weight_schedule=self.plan.weight_schedule,
                                      train_batches=self.evaluator.first_batches, accuracy=self._exported_accuracy,
                                      scaler=self.place.precision.scaler)
        path = checkpoint.run_file(config.out)
        saved_state = RunState.from_dict(checkpoint.load(path), path) if resume else None
        if saved_state is not None:  # refused before anything is loaded or a log file is touched
            check_resume_settings(saved_state.config, dataclasses.asdict(config), config.out)
            self.method.load_state_dict(saved_state.method)
        else:
            self.method.init(self.state)
        self.method.attach(model)
        self.plan.plan(self.method)  # after init: whether a channel method has decided yet
        # fp16 needs the method's own phases to scale the loss (Method.scales_loss)
        unscaled = [name for name, _ in self.plan.phases
                    if name not in TRAINER_PHASES and not self.method.scales_loss(name)]
        if self.place.precision.scaler is not None and unscaled:
            raise ValueError(f"--precision fp16: method {config.method!r} trains in a step of its own ({unscaled[0]}), "
                             "which has no gradient scaler with these options; use --precision bf16")
        self.logs = RunLogs(config.out, config.log_dir, resume=saved_state is not None,
                            step=saved_state.step if saved_state is not None else 0) if writer else NullLogs()
        if saved_state is not None:
            self._resume(saved_state)

    # ----- views: each the value of its one owner ---------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.state.model

    @property
    def graph(self):
        return self.state.graph

    @property
    def example(self) -> tuple:
        return self.state.example_inputs

    @property
    def device(self) -> torch.device:
        return self.place.device

    @property
    def precision(self):
        return self.place.precision

    @property
    def writer(self) -> bool:
        return self.place.writer

    @property
    def test_loader(self):
        return self.data.test

    @property
    def history(self) -> list:
        return self.record.history

    @property
    def masks(self):
        return self.record.masks

    @property
    def train_flops(self) -> float:
        return self.record.train_flops

    @property
    def elapsed(self) -> float:
        return self.record.elapsed

    @property
    def finished(self) -> bool:
        """The run has trained to the end (resumed from the checkpoint of a finished run)."""
        return self.state.step >= self.plan.total_steps

    def log(self, text: str) -> None:
        self.console.log(text)

    # ----- set-up --------------------------------------------------------------------
    def _dense_model(self, model: nn.Module | None) -> nn.Module:
        """The model the config names (unless given), with the trained weights of ``--init``."""
        if model is None:
            from fxsparse.zoo import load_model

            info = self.data.info
            model = load_model(self.config.model, num_classes=info["num_classes"], in_chans=info["in_chans"])
        if self.config.init is not None:
            from fxsparse.training.init_weights import load_init_weights

            load_init_weights(model, self.config.init)
        return model

    # ----- phases --------------------------------------------------------------------
    def _build_phase(self, name: str, start: int, steps: int):
        """Models, optimizer, schedules and step of phase ``name``, which runs ``steps`` steps from ``start``."""
        if name not in TRAINER_PHASES:  # the method's own phase
            self.phase = self.phases.own(self.method, name, self.run_context, start, steps)
        elif name in FIXED_MASK_PHASES:
            self._export_fixed_mask()
            self.phase = self.phases.fixed(name, self.small, self.record.masks, start, steps)
        else:
            self.phase = self.phases.dense(self.model, self.method, self.state, start, steps)
        self.compile_notes.phase_built(self.phase)

    def _export_fixed_mask(self):
        """The exported model of the method's final mask (chosen once); entered afresh, its
        one-shot accuracy (a resume loads the small model's state after this)."""
        record = self.record
        if record.masks is None:
            record.masks = self.method.final_masks(self.run_context)
        self.small = self.place.model(export(self.model, self.graph, record.masks))
        if record.oneshot_acc is None:
            self.evaluator.recalibrate(self.small)
            record.oneshot_acc = self.evaluator.accuracy(self.small, self.data.test)
            self.console.say(f"pruned to {self.flops.fraction(self.flops.flat(record.masks)):.3f} of the dense FLOPs: "
                             f"one-shot test accuracy {100 * record.oneshot_acc:.2f} % (BatchNorm statistics "
                             f"re-estimated on {self.config.bn_batches} training batches), before any training")

    # ----- evaluation ----------------------------------------------------------------
    def _exported_accuracy(self, masks, batches) -> float:
        return self.evaluator.exported_accuracy(self.model, self.graph, masks, batches)

    def _current_eval(self) -> tuple[float, dict | None]:
        """Test accuracy of what the run would deliver now, and its channel mask."""
        if self.phase.own:
            masks = self.method.phase_masks(self.phase.name)
            return self._exported_accuracy(masks, self.data.test), masks
        if self.phase.name in FIXED_MASK_PHASES:
            return self.evaluator.accuracy(self.small, self.data.test), self.record.masks
        return self.evaluator.accuracy(self.model, self.data.test), None

    # ----- the loop ------------------------------------------------------------------
    def run(self) -> dict:
        """Train to the end and export; on a finished run (resumed), change nothing."""
        out = self.config.out
        summary_path = os.path.join(out, "summary.json")
        if self.finished and os.path.isfile(summary_path) and os.path.isfile(os.path.join(out, saved.RECIPE)):
            import json

            with open(summary_path) as f:
                summary = json.load(f)
            self.log(f"the run in {out} is finished ({self.state.step} of {self.plan.total_steps} steps, test "
                     f"accuracy {summary.get('test_acc_pct', float('nan')):.2f} %, {saved.RECIPE} and summary.json written); "
                     "nothing to do. To train more, start a new run with another --out.")
            return summary
        if self.state.step == 0 and not self.record.history:
            self.log(table_header())
        try:
            while self.state.step < self.plan.total_steps:
                self._train_epoch()
            return self._finish()
        finally:
            self.place.group.close()

    def _train_epoch(self):
        """One pass over the data (the last one may be cut short by a fractional total); a
        phase that ends mid-epoch gets its own row (no checkpoint: resume replays the epoch)."""
        st = self.state
        epoch = st.epoch = self.record.epoch
        self._row_start = time.perf_counter()
        limit = min(self.plan.steps_per_epoch, self.plan.total_steps - st.step)
        phase, tally, dense_seen = None, None, False
        bar = self.console.epoch_bar(limit, f"epoch {epoch + 1}")
        for x, y in self.data.epoch_batches(epoch, limit, self.place):
            now, start, n = self.plan.at(st.step)
            if now != phase:
                if phase is not None:  # the previous phase ended mid-epoch
                    self._end_row(phase, tally, checkpoint=False)
                if self.phase is None or self.phase.name != now:
                    self._build_phase(now, start, n)
                phase, tally = now, RowTally(self.flops)
                dense_seen = dense_seen or phase == "dense"
            loss = self._step(x, y, tally)
            bar.update()
            for cb in self.callbacks:
                cb(self, "step", epoch=epoch, loss=float(loss))
        bar.close()
        if dense_seen:
            self.method.end_epoch(self.state)
        self.record.epoch += 1
        row = self._end_row(phase, tally, checkpoint=True)
        for cb in self.callbacks:
            cb(self, "epoch", epoch=epoch, row=row)

    def _step(self, x, y, tally: RowTally):
        """One step of the current phase: its learning rates, the step, its FLOPs and its row in steps.csv."""
        st, record, b = self.state, self.record, len(y) * self.place.group.world  # the global batch
        set_lr(self.phase.schedules, st.step)
        t_step = self.compile_notes.before_step()
        loss, masks, extra_flops = self.phase.step(x, y)
        flops_before, kept = record.train_flops, []
        for mask in masks:  # masks live on the host: no device sync
            keep, flops_frac, cost = tally.add(mask, b)
            kept.append((keep, flops_frac))
            record.train_flops += cost
        record.train_flops += extra_flops * b
        keep, flops_frac = (sum(k) / len(kept) for k in zip(*kept)) if kept else self.phase.keep
        # host-device sync, one per step: whether to count the step as skipped is a decision
        # on the loss's value (the step itself already decided the same way); float(loss)
        # below then reads a value already on its way to the host
        if not all_finite(loss):
            tally.skipped += 1
            warnings.warn(f"epoch {st.epoch + 1}: non-finite loss ({float(loss)}), step skipped (weights, "
                          "optimizer state and running statistics unchanged)", RuntimeWarning, stacklevel=3)
        else:
            tally.losses.append(float(loss))
        st.step += 1
        self.logs.step({"step": st.step, "epoch": st.epoch + 1, "phase": self.phase.name, "loss": float(loss),
                        "realised_keep": keep, "realised_flops_frac": flops_frac,
                        "train_tflop": (record.train_flops - flops_before) / 1e12,
                        "step_time_s": time.perf_counter() - t_step})
        self.compile_notes.after_step(t_step, st.step)
        return loss

    def _end_row(self, phase: str, tally: RowTally, checkpoint: bool) -> dict:
        """Evaluate, append a history row (epoch = data passes so far, fractional mid-epoch),
        print it; at an epoch's end also write the checkpoint."""
        record = self.record
        train_time = time.perf_counter() - self._row_start
        acc, masks = self._current_eval()
        now = time.perf_counter()
        record.elapsed += now - self._row_start
        self._row_start = now
        passes = self.state.step / self.plan.steps_per_epoch
        row = {"epoch": int(passes) if passes == int(passes) else round(passes, 3), "step": self.state.step,
               "phase": phase, "loss": tally.mean_loss(), "test_acc_pct": 100 * acc,
               "skipped": tally.skipped, "train_tflop": record.train_flops / 1e12, "train_time_s": train_time,
               "wall_s": record.elapsed}
        row.update(keep_fields(phase, self.phase.own, masks, tally, self.method, self.graph, self.flops))
        record.history.append(row)
        self.logs.epoch(row)
        self.console.say(table_line(row))
        self.console.bar.restart()  # mid-epoch: the evaluation is not training time
        if checkpoint:
            self._save_checkpoint()
        return row

    # ----- checkpoints ---------------------------------------------------------------
    def _run_state(self) -> RunState:
        phase, scaler = self.phase, self.place.precision.scaler
        return RunState(config=dataclasses.asdict(self.config), step=self.state.step, record=self.record,
                        model=self.model.state_dict(), method=self.method.state_dict(),
                        generator=self.state.generator.get_state(), rng=checkpoint.rng_state(),
                        phase_built=phase and phase.name, optimizer=phase and phase.optimizer.state_dict(),
                        small=self.small.state_dict() if self.small is not None else None,
                        scaler=scaler.state_dict() if scaler is not None else None)

    def _save_checkpoint(self):
        state = self._run_state()
        if self.place.writer:
            self.logs.flush(self.record.history)  # before the checkpoint: a resume drops the steps past it
            checkpoint.write_run(state.to_dict(), self.record.history, self.config.out)
        self.place.group.barrier()  # no process runs ahead of the checkpoint it would resume from

    def _resume(self, state: RunState):
        self.model.load_state_dict(state.model)
        self.record, self.state.step = state.record, state.step
        self.state.generator.set_state(state.generator)
        phase, step = state.phase_built, self.state.step
        if self.finished and phase in FIXED_MASK_PHASES:  # trained; the export may not have been written
            self.small = export(self.model, self.graph, self.record.masks)
            self.small.load_state_dict(state.small)
        elif self.finished and phase not in TRAINER_PHASES:  # the final model is the method's phase's mask
            self._build_phase(phase, *self.plan.at(step - 1)[1:])  # (the method restores its phase's state)
        elif phase is not None:
            name, start, n = self.plan.at(step)
            if name == phase:  # rebuild the phase in progress and load its states
                self._build_phase(phase, start, n)
                if self.small is not None and state.small is not None:
                    self.small.load_state_dict(state.small)
                self.phase.optimizer.load_state_dict(state.optimizer)
            elif phase not in TRAINER_PHASES:  # the next phase needs the method's phase to pick the final mask
                self._build_phase(phase, *self.plan.at(step - 1)[1:])
        checkpoint.set_rng_state(state.rng)
        if self.place.precision.scaler is not None and state.scaler:
            self.place.precision.scaler.load_state_dict(state.scaler)
        if not self.finished:
            self.log(f"resumed {self.config.out} at epoch {self.record.epoch + 1}")

    # ----- the end -------------------------------------------------------------------
    def _final_model(self) -> tuple:
        """What the run delivers, the model its last history row evaluated, and its channel
        mask: the exported model of a fixed-mask phase, the exported deterministic mask of a
        search that ends the run, or the dense model (the method's masks baked in; no channel mask)."""
        if self.small is not None:
            return self.small, self.record.masks
        if self.phase is not None and self.phase.own:
            masks = self.method.phase_masks(self.phase.name)
            return export(self.model, self.graph, masks), masks
        self.method.detach(self.model)
        return self.model, None

    def _finish(self) -> dict:
        c, info, example, record = self.config, self.data.info, self.example[0], self.record
        model, masks = self._final_model()
        final = results.as_classifier(model, info, example)
        files = results.run_files(c.out)
        if self.place.writer:
            results.write_model(final, files, c.model if self.rebuildable else None, info, example, masks)
        last = record.history[-1]
        steps = self.plan.total_steps
        summary = {"model": c.model, "method": c.method, "data": c.data, "keep": c.keep, "budget": c.budget,
                   "epochs": round(steps / self.plan.steps_per_epoch, 3),
                   "test_acc_pct": last["test_acc_pct"],
                   "oneshot_test_acc_pct": None if record.oneshot_acc is None else 100 * record.oneshot_acc,
                   "train_tflop": record.train_flops / 1e12,
                   "train_tflop_dense": TRAIN_FACTOR * self.flops.dense * steps * c.batch_size / 1e12,
                   "final_keep": last["realised_keep"], "final_flops_frac": last["realised_flops_frac"],
                   "params": sum(p.numel() for p in final.parameters()),
                   "dense_params": sum(p.numel() for p in self.model.parameters()),
                   "wall_s": record.elapsed, "compile_s": self.compile_notes.total_s,
                   "compilations": self.compile_notes.compilations,
                   "units": UNITS, "files": files, "preprocessing": final.preprocessing()}
        if self.place.writer:
            checkpoint.write_json_atomic(summary, files["summary.json"])
        self.place.group.barrier()
        self.logs.close()
        for line in results.summary_lines(summary, c.out):
            self.log(line)
        return summary
