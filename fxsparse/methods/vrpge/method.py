"""VR-PGE (Zhou et al., NeurIPS 2021): the default method. A policy over channel masks is
learned jointly with the weights (its own phase, ``"search"``) from forward passes only,
then its final mask is fine-tuned and exported (the trainer's ``"finetune"`` phase).
Default: one keep ratio per channel group (``granularity="width"``; channels filled by L1
order), a score learning rate calibrated to the search length, and the top of the scores
as the final mask; ``granularity="channel"`` with ``final="sample"`` is the paper's
per-channel form. The search itself is :class:`fxsparse.methods.vrpge.StructureLearner`;
this class runs it through the :class:`fxsparse.methods.Method` phase hooks."""
from __future__ import annotations

import math

import torch

from fxsparse.step.optim import MaskedOptimizer
from fxsparse.step.sparse import SparseModel
from fxsparse.step.train_step import load_scaling_state
from ..base import Method, PhaseSetup, RunContext
from ..flags import COMPILE_UPDATE_STEPS  # the search length from which the update compiles
from ..options import check_number
from ..registry import register_method
from .learner import StructureLearner, check_options

SEARCH = "search"


@register_method("vrpge")
class VRPGE(Method):
    level = "channel"
    paper = "Zhou et al., Efficient Neural Network Training via Forward and Backward Propagation Sparsification, NeurIPS 2021"
    # its ``fxsparse train`` flags: fxsparse/methods/flags.py (registering sets them as cli_options)

    def __init__(self, keep: float = 0.5, *, budget: str = "channels", form: str = "exact", samples: int = 2,
                 score_lr: float | None = None, reuse_loss: bool = True, final_tries: int = 10,
                 granularity: str = "width", final: str = "topk", weight_masks: str = "mean",
                 weight_average: bool = False, final_batches: int = 10, compile_update: bool | None = None,
                 weight_every: int = 1, budget_ramp: float = 0.0, projection: str = "gradient",
                 width_units: int | None = None, **options):
        super().__init__(keep, **options)
        check_options(budget=budget, form=form, samples=samples, granularity=granularity, final=final,
                      weight_masks=weight_masks, width_units=width_units)
        if score_lr is not None and (isinstance(score_lr, bool) or not isinstance(score_lr, (int, float))
                                     or not score_lr > 0 or math.isinf(score_lr)):
            raise ValueError(f"--score-lr must be a positive number, got {score_lr!r}")
        check_number("vrpge", "final_tries", final_tries, lo=1, integer=True)
        check_number("vrpge", "final_batches", final_batches, lo=1, integer=True)
        # weight_every: a weight step every that many search steps (0: the weights stay fixed and
        # every step is forward-only, for a trained model); budget_ramp: the fraction of the
        # search over which the budget tightens from the dense model to the target
        check_number("vrpge", "weight_every", weight_every, lo=0, integer=True)
        check_number("vrpge", "budget_ramp", budget_ramp, lo=0, hi=1)
        if weight_average and weight_every != 1:
            raise ValueError("vrpge: weight_average trains the weights every step; it needs weight_every=1")
        self.weight_every, self.budget_ramp, self.projection = int(weight_every), float(budget_ramp), projection
        self.width_units = width_units
        self.budget, self.form, self.samples = budget, form, int(samples)
        self.score_lr = None if score_lr is None else float(score_lr)
        self.reuse_loss, self.final_tries = bool(reuse_loss), int(final_tries)
        self.granularity, self.final, self.weight_masks = granularity, final, weight_masks
        self.weight_average, self.final_batches = bool(weight_average), int(final_batches)
        self.compile_update = compile_update
        self.sparse = self.learner = self.step_fn = self.masked_optimizer = None
        self._saved = None  # the search's state from a checkpoint, applied when the search is rebuilt

    # the search's defaults when the run compresses trained weights (``--init``), from the
    # pilot of benchmarks/compress.py (README, "Compressing a trained model"): the budget
    # tightens from the dense model over the first half of the search (at the target from the
    # first step every sample of a 0.1-FLOPs model is at chance loss, and the search learns to
    # shrink the last layers toward a constant output), it scales every width by one factor,
    # and widths are drawn in 16 units; options the user sets win over them
    TRAINED_DEFAULTS: dict = {"projection": "scale", "budget_ramp": 0.5, "width_units": 16}

    @classmethod
    def for_run(cls, keep: float, budget: str, options: dict, trained: bool = False) -> "VRPGE":
        defaults = cls.TRAINED_DEFAULTS if trained else {}
        return cls(keep=keep, **{**defaults, **options, "budget": budget})  # the search meets the run's --budget

    # ----- phases --------------------------------------------------------------------
    def phases(self, first: int, total: int) -> list:
        return [(SEARCH, first), ("finetune", total - first)]

    def build_phase(self, phase: str, run: RunContext, start: int, steps: int) -> PhaseSetup:
        """The search: the sparse model (its compiled step), the weights' SGD and the learner."""
        if phase != SEARCH:
            return super().build_phase(phase, run, start, steps)
        compile_update = self.compile_update if self.compile_update is not None else steps >= COMPILE_UPDATE_STEPS
        self.sparse = SparseModel(run.model, run.graph, keep=run.keep, compile=run.compile, seed=run.seed,
                                  compile_update=compile_update)
        optimizer = run.sgd(run.model.parameters())
        self.step_fn = self.sparse.make_train_step(run.loss_fn, optimizer, scaler=run.scaler)
        self.loss_fn = run.loss_fn
        self.learner = StructureLearner(self.sparse, keep=run.keep, budget=self.budget, lr=self.score_lr,
                                        form=self.form, samples=self.samples, seed=run.seed + 1,
                                        granularity=self.granularity, steps=steps, reuse_loss=self.reuse_loss,
                                        final=self.final, weight_masks=self.weight_masks, budget_ramp=self.budget_ramp,
                                        projection=self.projection, width_units=self.width_units)
        schedules = [run.weight_schedule(optimizer, phase, start, steps),  # scores: cosine over the search
                     (lambda: self.learner.optimizer, self.learner.lr, start, steps)]
        if self.weight_average:
            self.masked_optimizer = MaskedOptimizer(optimizer, self.sparse)
        if self._saved is not None:  # resumed: the search's state as the checkpoint left it
            self.learner.load_state_dict(self._saved["learner"])
            self.sparse.generator.set_state(self._saved["sp_generator"])
            if self._saved.get("loss_scaling"):  # fp16: the good steps toward the scale's next growth
                load_scaling_state(self.step_fn, self._saved["loss_scaling"])
            self._saved = None
        return PhaseSetup(optimizer=optimizer, schedules=schedules, sparse=self.sparse,
                          compiling="the sparse training step")

    def scales_loss(self, phase: str) -> bool:
        # the sparse step scales its loss; the authors' weight averaging steps a MaskedOptimizer
        # of its own, unscaled
        return phase == SEARCH and not self.weight_average

    def phase_step(self, phase: str, x, y) -> tuple:
        """Score forwards, weight step, score update: all at the same weights."""
        if self.weight_average:
            loss, masks = self.learner.averaged_step(self.loss_fn, self.masked_optimizer, x, y)
            return loss, list(masks), 0.0
        if not self.weight_every or self.learner.steps_done % self.weight_every:  # a forward-only step
            loss = self.learner.forward_only_step(self.loss_fn, x, y)
            return loss, [], self.learner.last_forwards * self.learner.last_forward_flops
        loss, mask = self.learner.step(self.step_fn, self.loss_fn, x, y)
        return loss, [mask], self.learner.last_forwards * self.learner.last_forward_flops

    def phase_masks(self, phase: str) -> dict:
        return self.learner.deterministic_mask()

    def report(self, phase: str, tally) -> dict:
        if phase != SEARCH:
            return {}
        s = self.learner.probs()
        n = max(tally.count, 1)
        if not tally.count:  # forward-only steps trained no mask: the policy's expectation stands for it
            realised = dict(realised_keep=float(s.mean()), realised_flops_frac=self.learner.flops.fraction(s),
                            group_keep=[float(v.mean()) for v in torch.split(s, self.learner.sizes)])
        else:
            realised = dict(realised_keep=tally.channels / n, realised_flops_frac=tally.flops / n,
                            group_keep=[float(v.mean()) for v in torch.split(tally.kept / n, self.learner.sizes)])
        return dict(expected_keep=float(s.mean()), expected_flops_frac=self.learner.flops.fraction(s), **realised,
                    score_hist=torch.histc(s.float(), bins=20, min=0, max=1).tolist(),
                    search=self.learner.diagnostics())

    def final_masks(self, run: RunContext) -> dict:
        """The search's final mask (best of ``final_tries`` samples on ``final_batches``
        training batches with ``final="sample"``), cut to meet the budget exactly."""
        subset = run.train_batches(self.final_batches)
        return self.learner.final_mask(lambda masks: run.accuracy(masks, subset), tries=self.final_tries)

    # ----- state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.learner is None:
            return {}
        return {"learner": self.learner.state_dict(), "sp_generator": self.sparse.generator.get_state(),
                "loss_scaling": self.step_fn.loss_scaling.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._saved = state if state else None
