"""A run's phases: which phase runs at which step (:class:`PhasePlan`, from
:meth:`Method.phases`), their learning-rate schedules, and each phase built into what the
training loop steps (:class:`Phase`, by :class:`PhaseBuilder`).

The trainer runs three phases itself (``TRAINER_PHASES``): ``dense`` (the dense model with
the method's hooks) and ``fixed`` / ``finetune`` (the exported model of one channel mask),
all with the plain step (:mod:`fxsparse.training.plain_step`). Any other phase is the
method's own: the method builds it (:meth:`Method.build_phase`) and takes its steps
(:meth:`Method.phase_step`)."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn as nn

from fxsparse.analysis.flops import TRAIN_FACTOR, SubnetFlops
from fxsparse.methods import TRAINER_PHASES, Method, RunContext, TrainState
from fxsparse.training.config import TrainConfig
from fxsparse.training.device import Precision
from fxsparse.training.distributed import Group
from fxsparse.training.plain_step import make_plain_step

FIXED_MASK_PHASES = ("fixed", "finetune")  # the trainer's phases that train the exported model

# what the first step of each of the trainer's phases compiles, for the log
_COMPILING = {"fixed": "the training step of the exported model",
              "finetune": "the training step of the exported model", "dense": "the dense training step"}


class PhasePlan:
    """The run's length in steps and its phases as step ranges ([(phase, steps)]: phase
    boundaries are steps, so a search may end mid-epoch; fractional epochs are whole steps)."""

    def __init__(self, config: TrainConfig, batches_per_epoch: int):
        self.config = config
        steps_per_epoch = min(batches_per_epoch, config.limit_batches) if config.limit_batches else batches_per_epoch
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = self.step_of(config.epochs + config.finetune_epochs)
        if self.total_steps < 1:
            raise ValueError(f"--epochs + --finetune-epochs = {config.epochs + config.finetune_epochs} is less than one "
                             f"step of {steps_per_epoch} per epoch: nothing to train")
        self.phases: list = []

    def step_of(self, epochs: float) -> int:
        """The run's step count after ``epochs``."""
        return int(round(epochs * self.steps_per_epoch))

    def plan(self, method: Method) -> None:
        """The method's phases (after its ``init``: whether a channel method has decided yet)."""
        self.phases = method.phases(self.step_of(self.config.epochs), self.total_steps)

    def at(self, step: int) -> tuple[str, int, int]:
        """(phase, its first step, its steps) for the run's step ``step``."""
        start = 0
        for name, n in self.phases:
            if step < start + n:
                return name, start, n
            start += n
        raise IndexError(step)

    def weight_schedule(self, optimizer, phase: str, start: int, steps: int) -> tuple:
        """The weights' cosine: over the whole run (one schedule, continued across phases)
        unless this is a fine-tune with its own ``finetune_lr`` (or a phase followed by one)."""
        c = self.config
        if phase == "finetune" and c.finetune_lr is not None:
            return (optimizer, c.finetune_lr, start, steps)
        if phase != "fixed" and c.finetune_lr is not None and len(self.phases) > 1:
            return (optimizer, c.lr, start, steps)
        return (optimizer, c.lr, 0, self.total_steps)


def set_lr(schedules, step: int) -> None:
    """Cosine decay per schedule (optimizer, base lr, first step, length in steps), a function
    of the run's step alone (nothing to checkpoint). The optimizer may be a callable that
    returns it: a method that replaces its optimizer during its phase."""
    for opt, base, start, length in schedules:
        opt = opt() if callable(opt) else opt
        frac = 0.5 * (1 + math.cos(math.pi * min(max(step - start, 0) / max(1, length), 1.0)))
        for group in opt.param_groups:
            group["lr"] = base * frac


def sgd(config: TrainConfig, params, lr: float) -> torch.optim.SGD:
    """The run's weight optimizer."""
    return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)


@dataclasses.dataclass
class Phase:
    """A built phase: ``step(x, y) -> (loss, [channel masks the step trained], forward FLOPs
    per sample spent beyond those masks' steps)``; ``keep``: (kept channels, FLOPs fraction)
    of a step that trained no mask; ``sparse``: the SparseModel the method's phase compiles;
    ``compiler``: what counts the graphs its steps compile (``.compilations``; None: not known)."""
    name: str
    optimizer: torch.optim.Optimizer
    schedules: list
    step: Callable
    compiling: str
    own: bool                  # the method's own phase (not one of TRAINER_PHASES)
    keep: tuple = (1.0, 1.0)
    sparse: object = None
    compiler: object = None


class PhaseBuilder:
    """Builds each phase of a run from its settings and the trainer's pieces."""

    def __init__(self, config: TrainConfig, plan: PhasePlan, precision: Precision, group: Group,
                 device: torch.device, loss_fn: Callable, flops: SubnetFlops):
        self.config, self.plan, self.precision, self.group = config, plan, precision, group
        self.device, self.loss_fn, self.flops = device, loss_fn, flops

    def own(self, method: Method, name: str, run: RunContext, start: int, steps: int) -> Phase:
        """The method's phase ``name``, which runs ``steps`` steps from ``start``."""
        assert name not in TRAINER_PHASES, name
        setup = method.build_phase(name, run, start, steps)
        if setup.sparse is not None and self.group.active:  # the sparse step's and the score forwards' averaging
            setup.sparse.reduce_mean = self.group.reduce_mean

        def step(x, y):
            with self.precision.autocast():  # the sparse step's and the score forwards' ops
                return method.phase_step(name, x, y)

        return Phase(name, setup.optimizer, list(setup.schedules), step, setup.compiling, own=True,
                     sparse=setup.sparse, compiler=getattr(setup.sparse, "compiler", None))

    def fixed(self, name: str, small: nn.Module, masks: dict, start: int, steps: int) -> Phase:
        """A fixed-mask phase (``fixed`` or ``finetune``): the exported model ``small`` of ``masks``."""
        c = self.config
        optimizer = sgd(c, small.parameters(), c.lr)
        plain = self._plain(small, optimizer, bn_eval=name == "finetune" and c.finetune_bn_eval)
        flat = self.flops.flat(masks)
        step_flops = float(self.flops(flat))  # per-sample forward FLOPs of a step
        keep = (float(flat.double().mean()), step_flops / self.flops.dense)
        return self._trainer_phase(name, optimizer, start, steps, plain, step_flops, keep)

    def dense(self, model: nn.Module, method: Method, state: TrainState, start: int, steps: int) -> Phase:
        """The dense model's phase, with the method's hooks around every update."""
        optimizer = sgd(self.config, model.parameters(), self.config.lr)
        state.optimizer = optimizer
        plain = self._plain(model, optimizer, after_backward=lambda: method.after_backward(state),
                            after_step=lambda: method.after_step(state))
        return self._trainer_phase("dense", optimizer, start, steps, plain, self.flops.dense, (1.0, 1.0))

    def _plain(self, model, optimizer, **options):
        return make_plain_step(model, optimizer, self.loss_fn, precision=self.precision, group=self.group,
                               device=self.device, compile=self.config.compile, **options)

    def _trainer_phase(self, name, optimizer, start, steps, plain, step_flops, keep) -> Phase:
        cost = TRAIN_FACTOR * step_flops  # training FLOPs per sample: forward and backward

        def step(x, y):
            return plain(x, y), [], cost

        return Phase(name, optimizer, [self.plan.weight_schedule(optimizer, name, start, steps)], step,
                     _COMPILING[name], own=False, keep=keep, compiler=plain.compiler)
