"""VR-PGE (Zhou et al., NeurIPS 2021): the structure search. A policy over channel masks is
learned jointly with the weights (its own phase, ``"search"``) from forward passes only,
then its final mask is fine-tuned and exported (the trainer's ``"finetune"`` phase).
Its options' defaults per setting (from scratch, from trained weights) are in
:mod:`fxsparse.methods.defaults`; ``granularity="channel", weight_masks="sampled",
final="sample"`` is the paper's per-channel form. The search itself is
:class:`fxsparse.methods.vrpge.StructureLearner`; this class runs it through the
:class:`fxsparse.methods.Method` phase hooks."""
from __future__ import annotations

import torch

from fxsparse.step.optim import MaskedOptimizer
from fxsparse.step.sparse import SparseModel
from fxsparse.step.scaling import load_scaling_state
from ..base import Method, PhaseSetup, RunContext
from ..defaults import vrpge_defaults
from ..registry import register_method
from .experimental import COMPILE_UPDATE_STEPS
from .learner import StructureLearner
from .options import check_budget, check_options

SEARCH = "search"


@register_method("vrpge")
class VRPGE(Method):
    level = "channel"
    paper = "Zhou et al., Efficient Neural Network Training via Forward and Backward Propagation Sparsification, NeurIPS 2021"
    # its ``fxsparse train`` flags: fxsparse/methods/flags.py (registering sets them as cli_options)

    def __init__(self, keep: float = 0.5, *, budget: str = "channels", trained: bool = False, **options):
        """``options``: VR-PGE's (:func:`.check_options`), each defaulting to its value for the
        setting in :mod:`fxsparse.methods.defaults` (``trained``: the run starts from trained
        weights, ``fxsparse train --init``); ``experimental``: a benchmark's switches
        (:mod:`.experimental`)."""
        super().__init__(keep, **options)
        check_budget(budget)
        resolved = check_options(options, trained)
        self.budget, self.experimental = budget, resolved.pop("experimental")
        # the method's own options; the rest are the search's (StructureLearner's keywords)
        self.weight_every, self.weight_average = int(resolved.pop("weight_every")), resolved.pop("weight_average")
        self.final_tries, self.final_batches = int(resolved.pop("final_tries")), int(resolved.pop("final_batches"))
        self.score_lr = resolved.pop("score_lr")
        self.search_options = resolved
        self.sparse = self.learner = self.step_fn = self.masked_optimizer = None
        self._saved = None  # the search's state from a checkpoint, applied when the search is rebuilt

    @classmethod
    def option_defaults(cls, trained: bool = False) -> dict:
        return vrpge_defaults(trained)

    @classmethod
    def for_run(cls, keep: float, budget: str, options: dict, trained: bool = False) -> "VRPGE":
        return cls(keep=keep, trained=trained, **{**options, "budget": budget})  # the search meets the run's --budget

    # ----- phases --------------------------------------------------------------------
    def phases(self, first: int, total: int) -> list:
        return [(SEARCH, first), ("finetune", total - first)]

    def build_phase(self, phase: str, run: RunContext, start: int, steps: int) -> PhaseSetup:
        """The search: the sparse model (its compiled step), the weights' SGD and the learner."""
        if phase != SEARCH:
            return super().build_phase(phase, run, start, steps)
        compile_update = self.experimental.compile_update
        compile_update = compile_update if compile_update is not None else steps >= COMPILE_UPDATE_STEPS
        self.sparse = SparseModel(run.model, run.graph, keep=run.keep, compile=run.compile, seed=run.seed,
                                  compile_update=compile_update)
        optimizer = run.sgd(run.model.parameters())
        self.step_fn = self.sparse.make_train_step(run.loss_fn, optimizer, scaler=run.scaler)
        self.loss_fn = run.loss_fn
        self.learner = StructureLearner(self.sparse, keep=run.keep, budget=self.budget, steps=steps, seed=run.seed + 1,
                                        lr=self.score_lr, experimental=self.experimental, **self.search_options)
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
