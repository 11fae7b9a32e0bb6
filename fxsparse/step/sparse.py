"""``fxsparse.compile``: a model whose pruned channels are physically absent from the
forward and the backward pass, with masks that change every step and a bounded number
of compilations.

Dynamic capacities (the default where the model allows it): the capacity model below is
the whole model (every slot), each step keeps only the slots its mask fills, and the kept
counts are symbolic sizes of one compiled graph per step function (see
:mod:`fxsparse.step.compiler` and ``passes/opaque_conv.py``). Static capacities (otherwise):

How: the channel groups are cut into blocks with a fixed number of slots (capacities).
A *capacity model* (the exported model for a keep pattern that fills every slot) has
static shapes. Each step, the full dense parameters are gathered into it: slot s of a
block gets the block's s-th kept channel; empty slots gather a pruned channel times 0,
so they add exact zeros and receive zero gradient. Gradients land in the dense
parameters at kept positions only; running statistics are written back for kept
channels only. Shapes only change when the capacities change: when a mask keeps more
channels in a block than it has slots (that block grows), or when a caller that knows
the keep probabilities re-plans them (:meth:`SparseModel.fit_capacity`: grow before
overflow, shrink when the probabilities have sharpened). Each change is one more
compiled graph per step function; stale graphs are dropped (:mod:`fxsparse.step.build_cache`).

The pieces, one module each: the capacity policy (``capacity.py``), a capacity set's build
(``build.py``) and the cache of recent builds (``build_cache.py``), the per-step index
(``index.py``), the gather (``gather.py``), the forwards (``forward.py``), the compiler
(``compiler.py``), and the training step (``train_step.py``), which reads this model only
through :class:`fxsparse.step.host.StepHost`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fxsparse.analysis.analyze import analyze
from fxsparse.analysis.graph import ChannelGraph
from fxsparse.analysis.masks import check_fraction, normalize_keep, random_keep
from fxsparse.core.errors import NoPrunableGroupError
from fxsparse.rewrite.export import export
from fxsparse.rewrite.layout import Plan
from fxsparse.rewrite.run_check import check_runs, inputs_on_device_of
from fxsparse.step.build import CapacityBuild, build_capacity_model
from fxsparse.step.build_cache import BuildCache
from fxsparse.step.capacity import CapacityFit, resolve_align, resolve_capacity
from fxsparse.step.compact_update import compact_update_for
from fxsparse.step.compiler import StepCompiler
from fxsparse.step.forward import dense_forward_of, forward_no_write_back, losses_of
from fxsparse.step.host import StepInputs, device_of
from fxsparse.step.index import StepIndex
from fxsparse.step.optim import MaskedOptimizer
from fxsparse.step.train_step import TrainStep


def compile(model: nn.Module, example_inputs, *, keep: float = 0.5, compile: bool = True, capacity=None,
            headroom: float = 3.0, align: int | None = None, graph: ChannelGraph | None = None, leaf_modules=(), seed: int = 0,
            compile_update: bool = True):
    """Wrap ``model`` for sparse training. See :class:`SparseModel`."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    graph = graph or analyze(model, example_inputs, leaf_modules=leaf_modules)
    return SparseModel(model, graph, keep=keep, compile=compile, capacity=capacity, headroom=headroom, align=align,
                       seed=seed, compile_update=compile_update)


class SparseModel(nn.Module):
    """Holds the dense model (``.model``, whose parameters are the ones to optimise) and one
    keep mask per prunable group (``.masks``: {group id: bool tensor}, settable).

    ``capacity``: None (the default: "dynamic" when the model allows it, else "auto"),
    "dynamic" (one compiled graph with the kept counts as symbolic sizes; each step runs
    its mask's exact counts, rounded up to ``align``: no padding, no recompile; needs a
    model whose computation depends on channel counts only through tensor shapes, see
    :func:`fxsparse.rewrite.shape_free.count_dependence`), "auto" (static slots for the
    expected kept count plus ``headroom`` standard deviations of a Bernoulli(keep) mask,
    rounded up to ``align``), "exact" (static slots for exactly round(keep * size)
    channels, for fixed-count masks), or {block: slots}. ``capacity_mode`` says which one
    the model got, ``static_reason`` why a default one is static.
    ``align``: slot counts are rounded up to a multiple of this (never past the group size).
    None: 8 when the model's parameters are on a GPU when it is wrapped (tensor-core
    friendly shapes; move the model to the GPU before ``fxsparse.compile`` or pass
    ``align=8``); on a CPU, :func:`~fxsparse.step.capacity.cpu_channel_block` for dynamic capacities (oneDNN computes
    convolutions in blocks of that many channels, so rounding up costs them little, and it
    bounds the distinct shapes: a new shape costs oneDNN a kernel build every step), 1 for
    static ones, where any padding slot is pure extra work.
    ``compile``: run the step through torch.compile (the eager path is the same code).
    ``compile_update``: with ``compile``, also compile the indexed kernels of
    :meth:`make_train_step`: the gather of the kept weights and the optimizer update (two more
    graphs per capacity set, ~20-60 s cold on a 2-core CPU; they save ~1.5 and ~7-10 ms per
    step on a VGG-11: worth it beyond a few thousand steps). Without it the step's first
    compile is the forward + backward graph alone.

    ``build`` is the current capacity set's :class:`~fxsparse.step.build.CapacityBuild` (the
    capacity model and its compiled step functions). The builds of the last
    ``build_cache_size`` capacity sets are kept: capacities that come back reuse their
    compiled graphs (``reused_build`` says whether the last change did).
    """

    def __init__(self, model, graph, *, keep=0.5, compile=True, capacity=None, headroom=3.0, align=None, seed=0,
                 compile_update=True):
        super().__init__()
        if not graph.prunable_groups:
            raise NoPrunableGroupError("the model has no prunable channel group, so there is nothing to sparsify; "
                                       "fxsparse.analyze(model, x).summary() says why for each group")
        check_fraction(keep, "keep")
        self.model = model
        self.channel_graph = graph
        self.keep = float(keep)
        # dynamic capacities: the capacity model is the whole model and each step runs at its
        # kept counts (rounded up to align), compiled once with the counts as symbolic sizes
        capacity, self._shape_free = resolve_capacity(model, graph, capacity)
        self.dynamic = capacity == "dynamic"
        self.align = resolve_align(align, model, self.dynamic)
        self.capacity_mode = capacity if isinstance(capacity, str) else "given"
        self.compiler = StepCompiler(compile, self.dynamic, compile_update)
        self.rebuilds = 0  # capacity changes after construction
        self.on_rebuild = []  # callables fn(sparse_model), called after each capacity change (before its recompile)
        self._builds = BuildCache()
        # data parallel: fn(tensors) averages them in place over the processes (set by the trainer);
        # the step averages its loss and its gradients, losses() its K losses
        self.reduce_mean = None
        self.generator = torch.Generator().manual_seed(seed)
        self.plan = Plan(graph, align=self.align)
        self.plan.set_initial_caps(self.keep, capacity, headroom)
        self._fit = CapacityFit(self.plan, graph)
        self._masks = normalize_keep(graph, random_keep(graph, self.keep, self.generator))
        self._build()

    # ----- compilation (fxsparse.step.compiler) ---------------------------------------
    @property
    def use_compile(self) -> bool:
        return self.compiler.enabled

    @property
    def compile_update(self) -> bool:
        return self.compiler.compile_update

    @property
    def compilations(self) -> int:
        """Graphs compiled by torch.compile for this model."""
        return self.compiler.compilations

    @compilations.setter
    def compilations(self, n: int) -> None:
        self.compiler.compilations = n

    @property
    def compile_seconds(self) -> float:
        """Wall time of the calls that compiled a graph."""
        return self.compiler.seconds

    # ----- capacities (the policy: fxsparse.step.capacity; the slots: the plan's) ------
    @property
    def static_reason(self) -> str | None:
        """Why the default gave this model static capacities (None: it did not, or the caller chose)."""
        return self._shape_free.reason

    @property
    def shrinks(self) -> int:
        """Capacity shrinks since the step was first compiled (bounded by fit_capacity's max_shrinks)."""
        return self._fit.shrinks

    def restore_capacity(self, caps, shrinks: int = 0) -> None:
        """The capacities (and shrink count) a checkpoint recorded: a resumed run must pad
        like the run that saved it, since padding changes float summation order."""
        if caps is not None and list(caps) != self.plan.caps:
            self._set_caps(caps)
        self._fit.shrinks = shrinks

    def fits(self, masks) -> bool:
        """Whether ``masks`` ({group: bool}) fit the current capacities (no rebuild needed)."""
        return self.plan.fits(masks)

    def block_moments(self, probs: dict[int, torch.Tensor]) -> list[tuple[float, float]]:
        """Per block: mean and standard deviation of the kept count of a Bernoulli(probs) mask."""
        return self.plan.block_moments(probs)

    def planned_caps(self, probs, headroom: float = 3.0, slack: float = 0.02, moments=None) -> list[int]:
        """Capacities for Bernoulli(probs) masks: see :meth:`fxsparse.rewrite.layout.Plan.planned_caps`."""
        return self.plan.planned_caps(probs, headroom, slack, moments)

    def fit_capacity(self, probs, *, headroom: float = 3.5, grow_at: float = 3.0, slack: float = 0.02,
                     shrink_gain: float = 0.1, max_shrinks: int = 6, shrink: bool = True,
                     remaining_steps: int | None = None, recompile_steps: float = 200.0,
                     spread: dict[int, float] | None = None) -> bool:
        """Re-plan the capacities for masks drawn from Bernoulli(``probs``) ({group: keep
        probabilities}); cheap to call every step. Rebuilds (one recompile) when the plan's
        policy (:meth:`fxsparse.rewrite.layout.Plan.fitted_caps`) changes them: grow before masks
        overflow, shrink once the probabilities sharpened (at most ``max_shrinks`` times once
        compiled). ``remaining_steps`` (the steps still to run at these capacities, when the
        caller knows): once compiled, a shrink must also repay its recompile, priced at
        ``recompile_steps`` steps (a capacity set compiles in ~40-90 s on a 2-core CPU, about
        200 steps of a small CNN): it must cut the FLOPs by ``recompile_steps / remaining_steps``
        at least. Counted in steps, not seconds, so that a seeded run decides the same way
        every time. Returns whether it rebuilt."""
        if self.dynamic:  # every count fits, and the step runs at the exact counts
            return False
        caps = self._fit.fitted(probs, self._masks, bool(self.compiled_fns), headroom=headroom, grow_at=grow_at,
                                slack=slack, shrink_gain=shrink_gain, max_shrinks=max_shrinks, shrink=shrink,
                                remaining_steps=remaining_steps, recompile_steps=recompile_steps, spread=spread)
        if caps is None:
            return False
        self._set_caps(caps)
        return True

    def _set_caps(self, caps):
        self.plan.set_caps(caps)
        self.rebuilds += 1
        self._build()
        for fn in self.on_rebuild:
            fn(self)

    # ----- the build of the current capacities (fxsparse.step.build) -----------------
    @property
    def build(self) -> CapacityBuild:
        return self._builds.current

    @property
    def build_cache_size(self) -> int:
        return self._builds.size

    @build_cache_size.setter
    def build_cache_size(self, size: int) -> None:
        self._builds.size = size

    @property
    def reused_build(self) -> bool:
        """Whether the last capacity change found its build kept."""
        return self._builds.reused

    @property
    def compiled_fns(self) -> dict:
        """The compiled step functions of the current capacities, by key."""
        return self.build.compiled_fns

    @property
    def valid_buffers(self) -> dict:
        """{capacity-model buffer: (node, dim)}: the validity vectors a step passes to the
        masked mixing ops (fxsparse.passes.masked_mixing)."""
        return self.build.valid_buffers

    def _build(self):
        """Switch to the build of the plan's capacities: a kept one (its compiled graphs
        included), else a new one, checked on the example inputs."""
        build, new = self._builds.switch(tuple(self.plan.caps), lambda: build_capacity_model(
            self.model, self.channel_graph, self.plan, self._shape_free, self.dynamic))
        build.model.train(self.training)
        if new:
            self._check_capacity_model()

    def _check_capacity_model(self):
        """One eager capacity-model forward on the example inputs: a model that would crash in
        its first step is reported now, naming the op (see fxsparse.rewrite.run_check)."""
        inputs = self.channel_graph.example_inputs
        if inputs:
            inputs = inputs_on_device_of(self.model, inputs)
            step = self.step_inputs(inputs)
            check_runs(lambda: forward_no_write_back(step.build, step.dense, step.index, *inputs),
                       self.build.model, "the capacity model of fxsparse.compile")

    # ----- masks ---------------------------------------------------------------------
    @property
    def masks(self) -> dict[int, torch.Tensor]:
        return {k: v.clone() for k, v in self._masks.items()}

    @masks.setter
    def masks(self, keep):
        masks = normalize_keep(self.channel_graph, keep)
        caps = self.plan.grown_caps(self.plan.block_counts(masks))
        if caps is not None:
            self._set_caps(caps)
        self._masks = masks

    @property
    def current_masks(self) -> dict[int, torch.Tensor]:
        """The current masks themselves, not copies: read them, never write them (set
        :attr:`masks` instead)."""
        return self._masks

    def sample_masks(self, probs: dict[int, torch.Tensor] | float | None = None, generator=None) -> dict[int, torch.Tensor]:
        """Bernoulli masks (at least one channel per group) from per-group keep
        probabilities, or from one ratio; sets them as the current masks and returns them."""
        gen = generator or self.generator
        out = {}
        for g in self.channel_graph.prunable_groups:
            p = probs[g.id] if isinstance(probs, dict) else torch.full((g.size,), self.keep if probs is None else float(probs))
            m = torch.rand(g.size, generator=gen) < p
            if not m.any():
                m[torch.multinomial(p.clamp_min(1e-12), 1, generator=gen)] = True
            out[g.id] = m
        self.masks = out
        return out

    def expected_keep(self) -> float:
        """Fraction of prunable channels kept by the current masks."""
        kept = sum(int(self._masks[g.id].sum()) for g in self.channel_graph.prunable_groups)
        return kept / self.channel_graph.num_prunable_channels

    # ----- what a step reads (fxsparse.step.host) -------------------------------------
    def step_index(self, device=None, masks=None) -> StepIndex:
        """The per-step index of ``masks`` (default: the current ones; they must fit the
        capacities) on ``device`` (default: the CPU), its counts marked symbolic where the
        compiler wants them."""
        slot_class, slot_valid = self.plan.slot_classes(self._masks if masks is None else masks)
        present = self.plan.present_slots(slot_valid) if self.dynamic else None
        index = self.build.indexer(slot_class, slot_valid, present)
        if device is not None:
            index = index.to(device)
        self.compiler.mark_index(index)
        return index

    def step_inputs(self, inputs) -> StepInputs:
        """What one step call on ``inputs`` reads: see :class:`fxsparse.step.host.StepInputs`."""
        device = device_of(inputs)
        build = self.build
        build.to(device)
        return StepInputs(build, self.step_index(device), build.dense_tensors(), self.training)

    # ----- running it ------------------------------------------------------------------
    def forward(self, *inputs):
        step = self.step_inputs(inputs)
        fn = step.build.function("forward", dense_forward_of, self.compiler)
        with self.compiler.timed():
            return fn(step.dense, step.index, step.training, *inputs)

    @torch.no_grad()
    def losses(self, loss_fn, masks, *args) -> torch.Tensor:
        """Losses of the sub-networks of ``masks`` (a list of {group: bool} dicts) on one
        minibatch ``*inputs, target``, all at the current weights: the structure search's
        score forwards. No autograd, running statistics untouched (batch statistics are
        used, as in a training forward), the current masks left as they were. With
        ``compile``, the K forwards are one compiled graph (K gathers and forwards, no
        write-back), separate from the training step's graphs. Returns a float32 [K] tensor."""
        *inputs, target = args
        current, normalized = self._masks, []
        for keep in masks:  # grow the capacities first if a mask needs more slots (a rebuild)
            self.masks = keep
            normalized.append(self._masks)
        self._masks = current
        device, build = device_of(inputs), self.build  # the build of the final capacities
        build.to(device)
        indexes = [self.step_index(device, keep) for keep in normalized]
        fn = build.function(("losses", len(indexes), loss_fn), lambda b: losses_of(b, loss_fn), self.compiler)
        with self.compiler.timed():
            out = fn(build.dense_tensors(), indexes, target, *inputs)
        if self.reduce_mean is not None:  # the losses of the whole batch (each process holds a shard),
            out = out.clone()             # averaged in the loss's own precision
            self.reduce_mean([out])
        return out.float()

    def make_train_step(self, loss_fn, optimizer, skip_nonfinite: bool = True, scaler=None) -> TrainStep:
        """``step(*inputs, target) -> loss``: see :class:`fxsparse.step.train_step.TrainStep`
        (``scaler``: a ``torch.amp.GradScaler`` for fp16 loss scaling). An optimizer without a
        compact update (other than SGD, Adam, AdamW) runs wrapped in a :class:`MaskedOptimizer`."""
        base = optimizer.optimizer if isinstance(optimizer, MaskedOptimizer) else optimizer
        if compact_update_for(base) is None:
            optimizer = MaskedOptimizer(base, self)
        return TrainStep(self, loss_fn, optimizer, skip_nonfinite=skip_nonfinite, scaler=scaler)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.build is not None:
            self.build.model.train(mode)
        return self

    def export(self) -> nn.Module:
        """The physically smaller model for the current masks."""
        return export(self.model, self.channel_graph, self._masks)
