"""The interface every training method implements, and the state it sees.

A method decides masks at initialisation, during training, or both, over either channel
groups (``level = "channel"``: the trainer runs them through the sparse step or the
exported model, so they get the real speed-up) or individual weights (``level =
"weight"``: applied with ``torch.nn.utils.parametrize``; their cost is dense and reported
as such). The trainer calls the hooks in this order:

    method.init(state)                       # once, before the first step
    per step:  forward/backward
               method.after_backward(state)  # e.g. slimming's L1 subgradient, RigL's |grad|
               optimizer.step()
               method.after_step(state)      # e.g. DropBack reset, RigL drop/grow
    per epoch: method.end_epoch(state)       # e.g. SET

and around them the model's own hooks: :meth:`Method.graph_for_run` (which channel graph the
method trains with, checked), :meth:`Method.attach` (its masks on the dense model, after
``init`` or a resume's ``load_state_dict``), :meth:`Method.weight_density` (the kept
fraction of the weights, for the trainer's history rows) and :meth:`Method.detach` (the
masks baked into the weights, for the final model). Their defaults follow ``level``: a
weight-level method's masks are ``torch.nn.utils.parametrize`` masks
(:mod:`fxsparse.methods.unstructured`); a channel method changes nothing in the model.

The run's *phases* are the method's too (:meth:`Method.phases`). The trainer runs three
phases itself: ``"dense"`` (the dense model, with the hooks above), ``"fixed"`` and
``"finetune"`` (the exported model of the mask :meth:`Method.final_masks` chooses). Any
other phase name is the method's own (VR-PGE's ``"search"``): the trainer asks the method
to build it (:meth:`Method.build_phase`, given a :class:`RunContext`), to take its steps
(:meth:`Method.phase_step`), for the mask to evaluate (:meth:`Method.phase_masks`) and
for the history row's fields (:meth:`Method.report`). Methods keep everything they need to
resume in ``state_dict()`` (a phase in progress included: ``load_state_dict`` runs before
the phase is rebuilt, so a method applies its phase's state in ``build_phase``). Options a
method takes from ``fxsparse train`` flags are declared in :mod:`fxsparse.methods.flags`
under its name (plain data, which the CLI's help reads without torch); registering the
method sets them as :attr:`Method.cli_options`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.analysis.masks import check_fraction
from fxsparse.core.errors import NoPrunableGroupError


@dataclasses.dataclass
class TrainState:
    """What a method may read (and, for the model's weights, write)."""
    model: nn.Module                     # the dense model being trained
    graph: Optional[ChannelGraph]        # its channel dependency graph (None if not analysed)
    loss_fn: Callable                    # loss_fn(output, target) -> scalar
    batches: Callable[[], Iterator]      # fresh iterator over (inputs, targets) training batches
    num_classes: int
    example_inputs: tuple                # one input batch, for data-free methods' shapes
    generator: torch.Generator           # seeded; the only randomness a method may use
    optimizer: Optional[torch.optim.Optimizer] = None
    step: int = 0                        # optimizer steps taken so far
    epoch: int = 0
    steps_per_epoch: int = 1
    total_steps: int = 1


TRAINER_PHASES = ("dense", "fixed", "finetune")  # the phases the trainer runs itself


@dataclasses.dataclass
class RunContext:
    """What a method's own phase is built from (:meth:`Method.build_phase`): the run's model,
    graph and settings, and the trainer's helpers."""
    model: nn.Module
    graph: Optional[ChannelGraph]
    loss_fn: Callable
    keep: float
    budget: str
    seed: int
    compile: bool
    sgd: Callable                        # sgd(params) -> the run's SGD optimizer at its lr
    weight_schedule: Callable            # weight_schedule(optimizer, phase, start, steps) -> a schedule
    train_batches: Callable              # train_batches(n) -> the first n training batches (a list)
    accuracy: Callable                   # accuracy(masks, batches) -> accuracy of the exported model
    scaler: object = None                # fp16: the run's torch.amp.GradScaler, for a phase's own step


@dataclasses.dataclass
class PhaseSetup:
    """A method's phase as :meth:`Method.build_phase` built it. ``schedules``: (optimizer or a
    callable returning it, base lr, first step, length) cosine schedules; ``sparse``: the
    :class:`fxsparse.SparseModel` the phase compiles, if any."""
    optimizer: torch.optim.Optimizer
    schedules: list
    sparse: object = None
    compiling: str = "the training step"  # what the first step compiles, for the log


class Method:
    """Base class. Subclasses set ``name``, ``level`` and ``paper`` and override hooks."""
    name: str = ""
    level: str = "channel"               # "channel" or "weight"
    paper: str = ""
    # ``fxsparse train`` flags that set this method's options: (flags, argparse keywords), the
    # keywords' ``dest`` the option's name; the CLI passes them as ``method_options``. A built-in
    # method's are its entry in fxsparse/methods/flags.py (set when it registers); a method
    # registered from Python may set its own
    cli_options: tuple = ()

    def __init__(self, keep: float = 0.5, **options):
        check_fraction(keep, "keep", ValueError)
        self.keep = float(keep)
        self.options = options

    @classmethod
    def option_defaults(cls, trained: bool = False) -> dict:
        """The options a run of this method gets when none is given, for the setting
        (``trained``: from trained weights); {}: not declared (``--resume`` then compares the
        options as given)."""
        return {}

    @classmethod
    def for_run(cls, keep: float, budget: str, options: dict, trained: bool = False) -> "Method":
        """The method for ``fxsparse train`` (``budget``: the run's ``--budget``, which a method
        that meets it itself takes as an option; one that cannot meet a FLOPs budget refuses it;
        ``trained``: the run starts from trained weights, for a method whose defaults differ there)."""
        if budget != "channels" and cls.level != "none":
            raise ValueError(f"--budget {budget}: method {cls.name!r} keeps a fraction of its "
                             f"{'weights' if cls.level == 'weight' else 'channels'} and cannot meet a FLOPs budget; "
                             "use --budget channels, or a channel method that fills a FLOPs budget "
                             "(`fxsparse train --list-methods`)")
        return cls(keep=keep, **options)

    # ----- phases --------------------------------------------------------------------
    def phases(self, first: int, total: int) -> list:
        """[(phase, steps)] of a run of ``total`` steps whose first phase (search, or dense
        training before a mask is chosen) ends at step ``first``. After :meth:`init`."""
        if self.level == "channel" and self.channel_keep() is not None:
            return [("fixed", total)]
        if self.level == "channel":
            return [("dense", first), ("finetune", total - first)]
        return [("dense", total)]

    def build_phase(self, phase: str, run: RunContext, start: int, steps: int) -> PhaseSetup:
        """Set up the method's own phase ``phase`` (not one of ``TRAINER_PHASES``), which
        runs ``steps`` steps from the run's step ``start``."""
        raise NotImplementedError(f"method {self.name!r} has no phase {phase!r}")

    def scales_loss(self, phase: str) -> bool:
        """Whether the method's own phase ``phase`` trains with the run's gradient scaler
        (``RunContext.scaler``, fp16) when it has one; the trainer refuses fp16 otherwise."""
        return False

    def phase_step(self, phase: str, x, y) -> tuple:
        """One step of the method's own phase: (loss, [the channel masks it trained],
        forward FLOPs per sample spent beyond the masks' training steps)."""
        raise NotImplementedError(f"method {self.name!r} has no phase {phase!r}")

    def phase_masks(self, phase: str) -> dict:
        """The channel mask the run would deliver now, in the method's own phase."""
        raise NotImplementedError(f"method {self.name!r} has no phase {phase!r}")

    def report(self, phase: str, tally) -> dict:
        """Fields of the history row of ``phase`` (after the trainer's own); ``tally`` counts
        the row's sampled masks (``count``, ``channels``, ``flops``, ``kept``)."""
        return {}

    def final_masks(self, run: RunContext) -> dict:
        """The channel mask of the ``fixed``/``finetune`` phases, chosen once."""
        masks = self.channel_keep()
        if masks is None:
            raise RuntimeError(f"method {self.name!r} gave no channel mask to fine-tune")
        return masks

    # ----- the model it trains ---------------------------------------------------------
    def graph_for_run(self, graph: ChannelGraph, model_name: str) -> Optional[ChannelGraph]:
        """The channel graph this method trains with (``graph``, the dense model's), or None for
        a method that needs none; a channel method refuses a model with no prunable group."""
        if self.level == "channel" and not graph.prunable_groups:
            raise NoPrunableGroupError(f"{model_name} has no prunable channel group, so channel method "
                                       f"{self.name!r} cannot run; see `fxsparse analyze {model_name}` for the reasons")
        return graph

    def attach(self, model: nn.Module) -> None:
        """Put the method's masks on the dense model it trains, after :meth:`init` or a resume's
        :meth:`load_state_dict` (weight level: parametrized masks that zero the pruned weights)."""
        if self.level == "weight":
            from .unstructured import apply_weight_masks

            apply_weight_masks(model, self.weight_masks())

    def weight_density(self) -> Optional[float]:
        """The kept fraction of the masked weights (weight level), for the history rows of the
        trainer's phases: masked weights still cost dense FLOPs. None: the method masks no weights."""
        if self.level != "weight":
            return None
        masks = self.weight_masks()
        if not masks:
            return self.keep
        return sum(float(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())

    def detach(self, model: nn.Module) -> None:
        """Bake the masks :meth:`attach` put on ``model`` into its weights (the delivered model:
        plain parameters, no parametrizations)."""
        if self.level == "weight":
            from .unstructured import remove_weight_masks

            remove_weight_masks(model)

    # ----- hooks ---------------------------------------------------------------------
    def init(self, state: TrainState) -> None:
        """Decide the initial masks (prune-at-init methods do all their work here)."""

    def after_backward(self, state: TrainState) -> None:
        """Gradients exist, the optimizer has not stepped."""

    def after_step(self, state: TrainState) -> None:
        """The optimizer has stepped."""

    def end_epoch(self, state: TrainState) -> None:
        """An epoch of training finished."""

    # ----- results -------------------------------------------------------------------
    def channel_keep(self) -> Optional[dict]:
        """{group id: bool mask} for channel methods whose masks are fixed from now on, else None."""
        return None

    def weight_masks(self) -> Optional[dict]:
        """{parameter name: bool mask} for weight-level methods, else None."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self):
        return f"{type(self).__name__}(keep={self.keep}, level={self.level!r})"
