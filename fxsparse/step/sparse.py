"""``fxsparse.compile``: a model whose pruned channels are physically absent from the
forward and the backward pass, with masks that change every step and a bounded number
of compilations.

Dynamic capacities (the default where the model allows it): the capacity model below is
the whole model (every slot), each step keeps only the slots its mask fills, and the kept
counts are symbolic sizes of one compiled graph per step function (see
:meth:`SparseModel.mark_counts`, :meth:`SparseModel.compile_fn` and
``passes/opaque_conv.py``). Static capacities (otherwise):

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
compiled graph per step function; stale graphs are dropped, so torch.compile's
recompile limit never silently sends the step back to eager.
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import time
import types

import numpy as np
import torch
import torch.nn as nn

from fxsparse.analysis.analyze import analyze
from fxsparse.core.broadcast import left_pad
from fxsparse.core.errors import NoPrunableGroupError
from fxsparse.rewrite.export import export, tied_names
from fxsparse.rewrite.run_check import check_runs, inputs_on_device_of
from fxsparse.rewrite.shape_free import Piece, ShapeFree, shape_free
from fxsparse.analysis.graph import ChannelGraph
from fxsparse.rewrite.layout import GatherIndex, Plan, kept_permutation
from fxsparse.step.train_step import device_of, forward_gathered, make_train_step, write_back_buffers
from fxsparse.analysis.masks import check_fraction, normalize_keep, random_keep
from fxsparse.passes.channel_propagation import IDS
from fxsparse.passes.masked_mixing import MaskMixingOps
from fxsparse.passes.opaque_conv import OpaqueConvolutions
from fxsparse.passes.shape_prop import SHAPE


def compile(model: nn.Module, example_inputs, *, keep: float = 0.5, compile: bool = True, capacity=None,
            headroom: float = 3.0, align: int | None = None, graph: ChannelGraph | None = None, leaf_modules=(), seed: int = 0,
            compile_update: bool = True):
    """Wrap ``model`` for sparse training. See :class:`SparseModel`."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    graph = graph or analyze(model, example_inputs, leaf_modules=leaf_modules)
    return SparseModel(model, graph, keep=keep, compile=compile, capacity=capacity, headroom=headroom, align=align,
                       seed=seed, compile_update=compile_update)


def cpu_channel_block() -> int:
    """Channels per block of oneDNN's convolution layouts on this CPU: 16 with AVX-512, else 8."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def resolve_capacity(model, graph, capacity):
    """(the capacity policy to use, how one capacity model serves every count: a
    :class:`fxsparse.rewrite.shape_free.ShapeFree`, whose ``reason`` says why a model needs
    static capacities). ``None`` (the default): "dynamic" when one capacity model serves
    every count, else "auto"."""
    if capacity is not None and capacity != "dynamic":
        return capacity, ShapeFree()
    free = shape_free(model, graph)
    if free.reason is None:
        return "dynamic", free
    if capacity == "dynamic":
        raise ValueError(f"capacity='dynamic' needs a model whose computation depends on channel counts only "
                         f"through its tensors' shapes, but {free.reason}; use capacity=None (the default: static "
                         f"capacities for such a model) or 'auto'")
    return "auto", ShapeFree(reason=free.reason)  # none of the rewrites: they are for dynamic capacities


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
    ``align=8``); on a CPU, :func:`cpu_channel_block` for dynamic capacities (oneDNN computes
    convolutions in blocks of that many channels, so rounding up costs them little, and it
    bounds the distinct shapes: a new shape costs oneDNN a kernel build every step), 1 for
    static ones, where any padding slot is pure extra work.
    ``compile``: run the step through torch.compile (the eager path is the same code).
    ``compile_update``: with ``compile``, also compile the optimizer update of
    :meth:`make_train_step` (one more graph per capacity set, ~10-40 s cold on a 2-core CPU;
    saves ~7-10 ms per step on a VGG-11: worth it beyond a few thousand steps).

    What the training step (:mod:`fxsparse.step.train_step`) reads: ``members`` ({dense tensor
    name: [(dim, DimLayout)]} of the tensors the step gathers), ``buffer_names`` (the dense
    model's buffers the capacity model uses), :attr:`valid_buffers`, :attr:`current_masks`,
    :meth:`dense_tensors`, :meth:`buffers_to`, :meth:`forward_dense` and ``compiled_fns``
    (the compiled step functions of the current capacities, by key). The builds of the last
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
        if align is not None and (isinstance(align, bool) or not isinstance(align, int) or align < 1):
            raise ValueError(f"align must be a positive int, got {align!r}; or None: 8 on a GPU, on a CPU "
                             f"{cpu_channel_block()} for dynamic capacities and 1 for static ones")
        # dynamic capacities: the capacity model is the whole model and each step runs at its
        # kept counts (rounded up to align), compiled once with the counts as symbolic sizes
        capacity, self._shape_free = resolve_capacity(model, graph, capacity)
        self.dynamic = capacity == "dynamic"
        if align is None:
            on_gpu = any(p.device.type == "cuda" for p in model.parameters())
            align = 8 if on_gpu else cpu_channel_block() if self.dynamic else 1
        self.align = align
        self.capacity_mode = capacity if isinstance(capacity, str) else "given"
        self.compile_seconds = 0.0  # wall time of the steps that compiled a graph (see timed_compiles)
        self.use_compile = compile
        self.compile_update = bool(compile and compile_update)
        self.compilations = 0  # graphs compiled by torch.compile for this model (see _backend)
        self.rebuilds = 0  # capacity changes after construction
        self.on_rebuild = []  # callables fn(sparse_model), called after each capacity change (before its recompile)
        # static capacities: the builds (capacity model and its compiled graphs) of the last
        # few capacity sets are kept, so capacities that come back recompile nothing
        self.build_cache_size = 4
        self.reused_build = False  # whether the last capacity change found its build kept
        self._builds = collections.OrderedDict()  # capacity tuple -> {attribute: value}
        self._built_caps = None  # the capacities the current build is for
        # data parallel: fn(tensors) averages them in place over the processes (set by the trainer);
        # the step averages its loss and its gradients, losses() its K losses
        self.reduce_mean = None
        self._shrinks = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.plan = Plan(graph, align=align)
        self.plan.set_initial_caps(self.keep, capacity, headroom)
        self._masks = normalize_keep(graph, random_keep(graph, self.keep, self.generator))
        self._build()

    # ----- capacities (the policy is the plan's: fxsparse.rewrite.layout.Plan) ----------------
    def _grow(self, counts):
        caps = self.plan.grown_caps(counts)
        if caps is not None:
            self._set_caps(caps)

    def _set_caps(self, caps):
        self.plan.set_caps(caps)
        self.rebuilds += 1
        self._build()
        for fn in self.on_rebuild:
            fn(self)

    @property
    def static_reason(self) -> str | None:
        """Why the default gave this model static capacities (None: it did not, or the caller chose)."""
        return self._shape_free.reason

    @property
    def shrinks(self) -> int:
        """Capacity shrinks since the step was first compiled (bounded by fit_capacity's max_shrinks)."""
        return self._shrinks

    def restore_capacity(self, caps, shrinks: int = 0) -> None:
        """The capacities (and shrink count) a checkpoint recorded: a resumed run must pad
        like the run that saved it, since padding changes float summation order."""
        if caps is not None and list(caps) != self.plan.caps:
            self._set_caps(caps)
        self._shrinks = shrinks

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
        compiled = bool(self.compiled_fns)
        if compiled and remaining_steps is not None:
            shrink_gain = max(shrink_gain, recompile_steps / max(remaining_steps, 1))
        caps, shrank = self.plan.fitted_caps(probs, self._masks, self._cap_flops, headroom=headroom, grow_at=grow_at,
                                             slack=slack, shrink_gain=shrink_gain, shrink=shrink and not (
                                                 compiled and self._shrinks >= max_shrinks), spread=spread)
        self._shrinks += compiled and shrank
        if caps is None:
            return False
        self._set_caps(caps)
        return True

    def _cap_flops(self, caps) -> float:
        """Forward FLOPs of the capacity model with these capacities."""
        from fxsparse.analysis.flops import SubnetFlops

        if getattr(self, "_flops", None) is None:
            self._flops = SubnetFlops(self.channel_graph)
        return float(self._flops(self._flops.flat(self.plan.cap_keep(caps))))

    # ----- building the capacity model ------------------------------------------------
    # what differs between the builds of two capacity sets (kept per capacity set, see _build)
    _BUILD_STATE = ("capacity_model", "_valid_buffers", "_valid_layouts", "_step_layouts", "_step_buffer_keys",
                    "members", "_gather_index", "compiled_fns", "_codes")

    def _build(self):
        """The capacity model for the plan's capacities, or the kept build of an earlier
        capacity set equal to them (its compiled graphs included)."""
        caps, built = tuple(self.plan.caps), self._built_caps
        if built is not None and built != caps:
            self._builds[built] = {name: getattr(self, name) for name in self._BUILD_STATE}
            self._builds.move_to_end(built)
        kept = self._builds.pop(caps, None)
        while len(self._builds) > max(0, self.build_cache_size - 1):  # the current build counts too
            _, old = self._builds.popitem(last=False)
            self._drop_compiled(old["_codes"])
        self._built_caps = caps
        self.reused_build = kept is not None
        if kept is not None:
            for name, value in kept.items():
                object.__setattr__(self, name, value)
            self.capacity_model.train(self.training)
            return
        self._build_new()

    def _build_new(self):
        graph = self.channel_graph
        # not run here: _check_capacity_model runs it below, as the step will (the same graph)
        cap = export(self.model, graph, self.plan.cap_keep(), check=False)
        if self.dynamic:  # sizes and groups that follow the counts are read from the tensors
            self._shape_free.apply(cap)
        # its own (capacity-sized) weights are never used: every step passes gathered ones
        layout_of = self._tensor_layout_of(cap)
        masking = MaskMixingOps(graph, layout_of)
        masking(cap)
        self._valid_buffers = masking.valid_buffers
        # the layouts of the validity vectors, read now: they name nodes of this graph
        self._valid_layouts = {buf: layout_of(node, dim) for buf, (node, dim) in self._valid_buffers.items()}
        self._step_layouts = self._step_buffer_layouts(layout_of)
        # read by every forward: built once per build
        self._step_buffer_keys = {buf: f"{buf}|valid" for buf in self._valid_buffers}
        self._step_buffer_keys.update({buf: f"{buf}|step" for buf in self._shape_free.step_buffers})
        if self.dynamic:  # inductor would read every convolution's channel counts as constants
            OpaqueConvolutions(self._shape_free.groups_from_shapes)(cap)
        else:  # only those whose channels-last weight gradient oneDNN gets wrong
            OpaqueConvolutions(only_onednn_hazards=True)(cap)
        # not a registered submodule: its own (capacity-sized) weights are never used, and
        # DDP / state_dict / optimizers must only see the dense model's parameters
        placeholders = {}  # one per tensor: tied weights stay tied (functional_call fills them by one name)
        for mod in cap.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None:
                    mod._parameters[name] = placeholders.setdefault(
                        id(p), nn.Parameter(torch.empty(0, device="meta"), requires_grad=False))
        object.__setattr__(self, "capacity_model", cap)
        dense = dict(self.model.named_parameters())
        dense.update(dict(self.model.named_buffers()))
        members: dict[str, dict] = {}
        first = {alias: name for name, names in tied_names(self.model).items() for alias in names}
        for (param, dim), ids in graph.raw_members.items():
            param = first.get(param, param)  # a tied weight is gathered once, by its first name
            if param in dense:
                members.setdefault(param, {})[dim] = self.plan.dim_layout(graph.elements.canonical(ids))
        self.members = {k: sorted(v.items(), key=lambda t: t[0]) for k, v in members.items()
                         if any(l.any_prunable for l in v.values())}
        self._param_names = [n for n, _ in self.model.named_parameters()]
        cap_buffers = dict(cap.named_buffers())
        self.buffer_names = [n for n, _ in self.model.named_buffers() if n in cap_buffers]
        self._buffer_set = set(self.buffer_names)
        # (name, owning module's tensor dict, key): current tensors by two dict lookups each
        # step (named_parameters() walks the module tree: ~0.5 ms per call on a VGG-11)
        self._tensor_refs = [(n, *self._owner_of(n, "_parameters")) for n in self._param_names]
        self._tensor_refs += [(n, *self._owner_of(n, "_buffers")) for n in self.buffer_names]
        self._gather_index = None
        self._codes = set()  # the code objects of this build's compiled functions (see compile_fn)
        self.compiled_fns = {}
        self._check_capacity_model()

    def _check_capacity_model(self):
        """One eager capacity-model forward on the example inputs: a model that would crash in
        its first step is reported now, naming the op (see fxsparse.rewrite.run_check)."""
        inputs = self.channel_graph.example_inputs
        if inputs:
            inputs = inputs_on_device_of(self.model, inputs)
            check_runs(lambda: self._forward_no_write_back(self.dense_tensors(), self.step_inputs(), *inputs),
                       self.capacity_model, "the capacity model of fxsparse.compile")

    def _step_buffer_layouts(self, layout_of) -> dict:
        """Dynamic capacities: {(buffer, part): layout} of the positions each per-step buffer
        of the shape-free rewrite reads (a split's piece, a shuffle's input and output)."""
        layouts = {}
        for buf, spec in self._shape_free.step_buffers.items():
            if isinstance(spec, Piece):
                layouts[buf, "piece"] = layout_of(spec.source, spec.dim).part(spec.start, spec.stop)
            else:
                layouts[buf, "in"], layouts[buf, "out"] = layout_of(spec.source, spec.dim), layout_of(spec.node, spec.dim)
        return layouts

    def _tensor_layout_of(self, cap):
        nodes = {n.name: n for n in cap.graph.nodes}  # one look-up per member dim: a scan each was quadratic

        def layout_of(node_name, dim):
            node = nodes.get(node_name)
            if node is None or getattr(node, "_erased", False):  # the graph changed since the table was read:
                nodes.clear()  # MaskMixingOps inserts masked forms (layer_norm_masked) and replaces nodes
                nodes.update((n.name, n) for n in cap.graph.nodes)
                node = nodes[node_name]
            ids = self.channel_graph.elements.canonical(node.meta[IDS])
            shape = node.meta[SHAPE]
            ids = left_pad(ids, len(shape))
            line = np.moveaxis(np.broadcast_to(ids, shape), dim, 0).reshape(shape[dim], -1)[:, 0]
            return self.plan.dim_layout(line)

        return layout_of

    # ----- masks ---------------------------------------------------------------------
    @property
    def masks(self) -> dict[int, torch.Tensor]:
        return {k: v.clone() for k, v in self._masks.items()}

    @property
    def current_masks(self) -> dict[int, torch.Tensor]:
        """The current masks themselves, not copies: read them, never write them (set
        :attr:`masks` instead)."""
        return self._masks

    @property
    def valid_buffers(self) -> dict:
        """{capacity-model buffer: (node, dim)}: the validity vectors a step passes to the
        masked mixing ops (fxsparse.passes.masked_mixing)."""
        return self._valid_buffers

    @property
    def step_buffers(self) -> dict[str, str]:
        """{capacity-model buffer: its key in :meth:`step_inputs`}: what a step installs
        as the capacity model's buffers (validity vectors; with dynamic capacities, the
        split pieces and shuffle permutations of its counts)."""
        return self._step_buffer_keys

    @masks.setter
    def masks(self, keep):
        masks = normalize_keep(self.channel_graph, keep)
        self._grow(self.plan.block_counts(masks))
        self._masks = masks

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

    # ----- the step ------------------------------------------------------------------
    def step_inputs(self, with_empty: bool = False):
        """Per-step gather indices and validity vectors (float, and bool ``|real``) for the
        current masks; ``with_empty``: also the set of "name|dim" keys with an empty slot."""
        slot_class, slot_valid = self.plan.slot_classes(self._masks)
        if self._gather_index is None:  # built once per capacity set
            layouts = {f"{name}|{dim}": layout for name, dims in self.members.items() for dim, layout in dims}
            layouts.update(self._valid_layouts)
            layouts.update(self._step_layouts)
            self._gather_index = GatherIndex(layouts)
        out, empty = {}, set()
        present = self.plan.present_slots(slot_valid) if self.dynamic else None
        gathered = self._gather_index(slot_class, slot_valid, present)
        for key, (idx, valid, real, full) in gathered.items():
            if key in self._valid_buffers:
                out[f"{key}|valid"] = valid
            elif key not in self._step_layouts:
                out[f"{key}|idx"], out[f"{key}|valid"], out[f"{key}|real"] = idx, valid, real
                if not full:
                    empty.add(key)
        for buf, spec in self._shape_free.step_buffers.items():
            if isinstance(spec, Piece):  # only its length is read: the piece's size
                out[f"{buf}|step"] = gathered[buf, "piece"][0]
            else:
                out[f"{buf}|step"] = kept_permutation(spec.full, gathered[buf, "in"][0], gathered[buf, "out"][0])
        self.mark_counts(out)
        return (out, empty) if with_empty else out

    def mark_counts(self, index: dict | None = None, tensors: dict | None = None) -> None:
        """Dynamic capacities, compiled: mark the sizes that are kept counts (every index
        vector's length, the gathered dims of member ``tensors``) as symbolic, so that the
        first compile already covers every count (torch.compile would otherwise compile a
        static graph first, then once more per size it sees change)."""
        if not (self.dynamic and self.use_compile) or torch.compiler.is_compiling():  # marks are for inputs
            return
        mark = torch._dynamo.maybe_mark_dynamic
        for t in {id(t): t for t in (index or {}).values()}.values():  # keys of equal layouts share tensors
            mark(t, 0)
        for name, t in (tensors or {}).items():
            for dim, _ in self.members.get(name, ()):
                mark(t, dim)

    def keep_lines(self, index: dict) -> dict:
        """{parameter: [(dim, bool line of kept indices, ndim)]} for the masked optimizer."""
        params = dict(self.model.named_parameters())
        lines = {}
        for name, dims in self.members.items():
            p = params.get(name)
            if p is None:
                continue
            out = []
            for dim, _ in dims:
                idx, valid = index[f"{name}|{dim}|idx"], index[f"{name}|{dim}|valid"]
                line = torch.zeros(p.shape[dim], dtype=torch.bool)
                line[idx[valid > 0]] = True
                out.append((dim, line.to(p.device), p.dim()))
            lines[p] = out
        return lines

    def forward_dense(self, dense, index, *inputs):
        """Dense-gradient path (``sp(x)``, other optimizers): gather inside autograd, so
        gradients land in the dense parameters at kept positions."""
        device = device_of(inputs)
        gathered = {}
        for name, t in dense.items():
            for dim, _ in self.members.get(name, ()):
                t = torch.index_select(t, dim, index[f"{name}|{dim}|idx"].to(device, non_blocking=True))
            gathered[name] = t
        out = forward_gathered(self, gathered, index, *inputs)
        write_back_buffers(self, gathered, index, dense)
        return out

    def buffers_to(self, device):
        """Capacity-model buffers that are not dense-model buffers (shuffle indices) follow the inputs."""
        for mod in self.capacity_model.modules():
            for name, b in mod._buffers.items():
                if b is not None and b.device != device:
                    mod._buffers[name] = b.to(device)

    def _owner_of(self, name, kind):
        """(the owning module's ``kind`` dict, key) of a dotted tensor name."""
        prefix, _, key = name.rpartition(".")
        return getattr(self.model.get_submodule(prefix), kind), key

    def dense_tensors(self):
        """{name: the dense model's parameter or (capacity-model) buffer}, as they are now."""
        return {name: owner[key] for name, owner, key in self._tensor_refs}

    def forward(self, *inputs):
        self.buffers_to(device_of(inputs))
        index = self.step_inputs()
        fn = self.forward_dense
        if self.use_compile:
            fn = self.compiled_fns.get("forward")
            if fn is None:
                fn = self.compiled_fns["forward"] = self.compile_fn(self.forward_dense)
        with self.timed_compiles():
            return fn(self.dense_tensors(), index, *inputs)

    @torch.no_grad()
    def losses(self, loss_fn, masks, *args) -> torch.Tensor:
        """Losses of the sub-networks of ``masks`` (a list of {group: bool} dicts) on one
        minibatch ``*inputs, target``, all at the current weights: the structure search's
        score forwards. No autograd, running statistics untouched (batch statistics are
        used, as in a training forward), the current masks left as they were. With
        ``compile``, the K forwards are one compiled graph (K gathers and forwards, no
        write-back), separate from the training step's graphs. Returns a float32 [K] tensor."""
        *inputs, target = args
        self.buffers_to(device_of(inputs))
        current, normalized = self._masks, []
        for keep in masks:  # grow the capacities first if a mask needs more slots (a rebuild)
            self.masks = keep
            normalized.append(self._masks)
        indexes = []
        for keep in normalized:  # then every index for the final capacities
            self._masks = keep
            indexes.append(self.step_inputs())
        self._masks = current
        fn = self.compiled_fns.get(("losses", len(indexes), loss_fn))
        if fn is None:
            def many_losses(dense, indexes, target, *inputs):
                return torch.stack([loss_fn(self._forward_no_write_back(dense, index, *inputs), target)
                                    for index in indexes])
            fn = self.compile_fn(many_losses) if self.use_compile else many_losses
            self.compiled_fns[("losses", len(indexes), loss_fn)] = fn
        with self.timed_compiles():
            out = fn(self.dense_tensors(), indexes, target, *inputs)
        if self.reduce_mean is not None:  # the losses of the whole batch (each process holds a shard),
            out = out.clone()             # averaged in the loss's own precision
            self.reduce_mean([out])
        return out.float()

    def _forward_no_write_back(self, dense, index, *inputs):
        """The capacity model's forward on gathered copies of every tensor: in train mode BN
        updates those copies, never the dense running statistics."""
        device = device_of(inputs)
        gathered = {}
        for name, t in dense.items():
            members = self.members.get(name, ())
            for dim, _ in members:
                t = torch.index_select(t, dim, index[f"{name}|{dim}|idx"].to(device, non_blocking=True))
            if not members and name in self._buffer_set:
                t = t.clone()
            gathered[name] = t
        return forward_gathered(self, gathered, index, *inputs)

    def make_train_step(self, loss_fn, optimizer, skip_nonfinite: bool = True, scaler=None):
        """``step(*inputs, target) -> loss``: see :func:`fxsparse.step.train_step.make_train_step`
        (``scaler``: a ``torch.amp.GradScaler`` for fp16 loss scaling)."""
        return make_train_step(self, loss_fn, optimizer, skip_nonfinite=skip_nonfinite, scaler=scaler)

    def compile_fn(self, fn, inductor_options: dict | None = None):
        """``torch.compile`` for this model's step functions: static shapes (the capacities),
        compilations counted in ``self.compilations``; ``inductor_options``: inductor config
        for this function's graphs only. ``fn`` is compiled as a copy with its
        own code object: torch.compile caches graphs (and counts its recompile limit) per
        code object, so with shared code one model's rebuild would drop another model's
        graphs, and several models together could reach the limit and run eagerly.
        Dynamic capacities: the sizes :meth:`mark_counts` marked are symbolic, and no two
        are assumed equal because they are equal once (duck shaping would recompile when
        two counts part)."""
        fn = _private_copy(fn)
        self._codes.add(fn.__code__ if not inspect.ismethod(fn) else fn.__func__.__code__)

        def backend(gm, example_inputs):
            from torch._inductor import config  # loaded by then: torch.compile is compiling

            with config.patch(inductor_options or {}):
                return self._backend(gm, example_inputs)

        if not self.dynamic:
            return torch.compile(fn, backend=backend, dynamic=False)
        compiled = torch.compile(fn, backend=backend, dynamic=None)

        def run(*args, **kwargs):
            # functional_call installs the gathered tensors as the module's parameters, which
            # torch.compile would otherwise treat as static shapes; every other size stays
            # static: automatic dynamic shapes keeps a profile per code location, so sizes of
            # another model compiled from the same code would turn dense tensors dynamic here
            with torch.fx.experimental._config.patch(use_duck_shape=False), torch._dynamo.config.patch(
                    force_parameter_static_shapes=False, force_nn_module_property_static_shapes=False,
                    automatic_dynamic_shapes=False):
                return compiled(*args, **kwargs)

        return run

    @contextlib.contextmanager
    def timed_compiles(self):
        """Adds the block's wall time to ``compile_seconds`` when it compiled a graph (the
        backward's graph compiles in the first backward, inside the same step)."""
        before, start = self.compilations, time.perf_counter()
        try:
            yield
        finally:
            if self.compilations != before:
                self.compile_seconds += time.perf_counter() - start

    @staticmethod
    def _drop_compiled(codes):
        """Forget the graphs compiled for a capacity set no longer kept (``codes``: its
        functions' code objects): left in place they would hold memory for shapes that
        are not coming back."""
        reset = getattr(torch._C._dynamo.eval_frame, "reset_code", None)
        if reset is not None:
            for code in codes - {None}:
                reset(code)

    def _backend(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.compilations += 1
        return compile_fx(gm, example_inputs)

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "capacity_model"):
            self.capacity_model.train(mode)
        return self

    def expected_keep(self) -> float:
        """Fraction of prunable channels kept by the current masks."""
        kept = sum(int(self._masks[g.id].sum()) for g in self.channel_graph.prunable_groups)
        return kept / self.channel_graph.num_prunable_channels

    def export(self) -> nn.Module:
        """The physically smaller model for the current masks."""
        return export(self.model, self.channel_graph, self._masks)


def _private_copy(fn):
    """``fn`` (a function or a bound method) with a code object of its own."""
    if inspect.ismethod(fn):
        return types.MethodType(_private_copy(fn.__func__), fn.__self__)
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__dict__.update(fn.__dict__)
    return copy
