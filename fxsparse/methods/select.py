"""Shared pieces of the score-based methods (SNIP, GraSP, SynFlow, magnitude, L1-filter,
network slimming, random): per-channel scores from per-parameter scores, exact top-k
selection over channels or weights, and a side-effect-free way to evaluate a model.

Conventions (all methods follow them):

* Exact top-k everywhere. Ties are broken deterministically by position (the earlier
  channel / weight wins, in group order then channel order, or parameter order then
  flat index), never by a ``kthvalue`` threshold (which keeps every tied entry and so
  misses the budget, as the public SynFlow and DropBack code do).
* Channel selection keeps at least one channel of every scored group (an empty group
  would disconnect the network; ``export`` refuses it).
* Per-channel scores sum over the group's *parameter* members only. Buffers (BN
  ``running_mean`` / ``running_var``) are statistics, not weights: they carry no
  gradient and removing a channel's statistics has no first-order effect of its own.
* Scoring never changes the model: it runs through :func:`torch.func.functional_call`
  on detached copies of the parameters and buffers (so BN running statistics are not
  updated and ``.grad`` / ``requires_grad`` are left alone), restores train/eval modes,
  and runs under a forked global RNG seeded from ``state.generator`` (dropout in train
  mode is reproducible and the caller's RNG stream is untouched).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.analysis.masks import check_finite_scores, check_fraction, top_mask
from .base import Method, TrainState
from .options import check_choice, check_choices, check_options

__all__ = [
    "ScoreMethod",
    "call_model",
    "group_scores",
    "keep_top",
    "member_masks",
    "prunable_weights",
    "scoring_mode",
    "sum_outputs",
    "weight_top",
]


# ----------------------------------------------------------------------------- scores

def _buffer_names(graph: ChannelGraph) -> set:
    return {n for n, _ in graph.gm.named_buffers()}


def _channel_of_position(member, length: int) -> torch.Tensor:
    """chan[p] = j when position p along ``member.dim`` belongs to channel j, else -1."""
    chan = torch.full((length,), -1, dtype=torch.long)
    for j, ix in enumerate(member.index):
        chan[torch.as_tensor(ix, dtype=torch.long)] = j
    return chan


def group_scores(graph: ChannelGraph, per_param: dict, reduce: str = "sum", groups: str = "prunable",
                 where=None) -> dict:
    """{group id: float64 tensor[size]}: channel j's score is the sum (``reduce="sum"``) or
    mean (``"mean"``: sum divided by the number of entries summed) of ``per_param[name]``
    over the entries of every member ``name`` that belong to channel j.

    ``per_param``: {parameter name: tensor shaped like the parameter}. Members whose name
    is not in ``per_param`` are skipped, and buffers (BN running statistics) are always
    skipped (they are not weights; see the module docstring). ``where(member) -> bool``
    narrows the members further (e.g. only a weight's output-channel dim). A group none
    of whose members is scored gets no entry. ``groups``: ``"prunable"`` or ``"all"``.
    """
    check_choices("group_scores", reduce=(reduce, ("sum", "mean")), groups=(groups, ("prunable", "all")))
    buffers = _buffer_names(graph)
    out = {}
    for g in (graph.prunable_groups if groups == "prunable" else graph.groups):
        total = torch.zeros(g.size, dtype=torch.float64)
        count = torch.zeros(g.size, dtype=torch.float64)
        scored = False
        for m in g.members:
            if m.param in buffers or m.param not in per_param or (where is not None and not where(m)):
                continue
            t = per_param[m.param].detach().to(device="cpu", dtype=torch.float64)
            length = t.shape[m.dim]
            per_pos = t.movedim(m.dim, 0).reshape(length, -1)
            chan = _channel_of_position(m, length)
            sel = chan >= 0
            total.index_add_(0, chan[sel], per_pos.sum(1)[sel])
            count.index_add_(0, chan[sel], torch.full((int(sel.sum()),), float(per_pos.shape[1]), dtype=torch.float64))
            scored = True
        if scored:
            out[g.id] = total if reduce == "sum" else total / count.clamp_min(1)
    return out


def member_masks(graph: ChannelGraph, keep: dict, params: dict) -> dict:
    """{parameter name: float 0/1 tensor} that zeroes every entry of a dropped channel in
    each parameter member of its group (``params``: {name: tensor}, for shapes/devices).
    Parameters no dropped channel touches get no entry. Buffers are not masked."""
    out = {}
    for g in graph.groups:
        mask = keep.get(g.id)
        if mask is None:
            continue
        dropped = torch.nonzero(~torch.as_tensor(mask, dtype=torch.bool).cpu()).flatten().tolist()
        if not dropped:
            continue
        for m in g.members:
            if m.param not in params:
                continue
            idx = torch.as_tensor(np.unique(np.concatenate([np.asarray(m.index[j]) for j in dropped])), dtype=torch.long)
            p = params[m.param]
            cur = out.get(m.param)
            if cur is None:
                cur = out[m.param] = torch.ones_like(p, dtype=p.dtype if p.is_floating_point() else torch.float32)
            cur.index_fill_(m.dim, idx.to(cur.device), 0)
    return out


# -------------------------------------------------------------------------- selection

def _order(scores: torch.Tensor, what: str) -> torch.Tensor:
    """Indices by descending score, ties by ascending position (stable sort)."""
    s = scores.detach().to(dtype=torch.float64).flatten()
    check_finite_scores(s, what)
    return torch.sort(s, descending=True, stable=True).indices


def keep_top(graph: ChannelGraph, scores: dict, keep: float, scope: str = "global", budget: str = "channels") -> dict:
    """{group id: bool mask} keeping the highest-scoring channels.

    ``scores``: {group id: tensor[size]} for the prunable groups to select in; groups with
    no entry are not returned (callers then keep them whole). ``scope="per_group"``:
    every group keeps its own share; ``"global"``: one ranking over all scored channels.
    ``budget="channels"``: keep ``max(1, round(keep * size))`` channels per group
    (per_group) or ``round(keep * N)`` of the N scored channels (global; raised to the
    number of groups if smaller, since every group keeps one channel).
    ``budget="flops"``: the sub-network's real forward FLOPs (:class:`fxsparse.analysis.flops.SubnetFlops`,
    exact for conv/linear layers, with unscored groups kept whole) must be <= ``keep`` x
    the dense model's. Global: each group's best channel is kept first; then channels are
    taken in score order, each one that still fits, so no dropped channel would fit.
    Per group: the largest uniform ratio r (each group keeps its top max(1, round(r size)))
    that fits, found by bisection.
    Channels scored -inf are never added by the FLOPs fill (iterative methods score
    already-pruned channels -inf so that masks only shrink); they rank last otherwise.
    Exact: ties go to the earlier channel (group order, then channel order).
    """
    check_choices("keep_top", scope=(scope, ("global", "per_group")), budget=(budget, ("channels", "flops")))
    check_fraction(keep, "keep")
    groups = []
    for gid in scores:
        if not isinstance(gid, int) or not 0 <= gid < len(graph.groups):
            raise ValueError(f"scores name group {gid!r}, but the graph has groups 0..{len(graph.groups) - 1}")
        g = graph.groups[gid]
        if not g.prunable:
            raise ValueError(f"scores name group {gid}, which is not prunable ({g.reason}); score only graph.prunable_groups")
        if torch.as_tensor(scores[gid]).numel() != g.size:
            raise ValueError(f"scores for group {gid} have {torch.as_tensor(scores[gid]).numel()} entries, "
                             f"the group has {g.size} channels")
        groups.append(g)
    if not groups:
        raise ValueError("no prunable group was scored: the model has no prunable channel group "
                         "(see fxsparse.analyze(model, x).summary() for why), or use a weight-level method")
    groups.sort(key=lambda g: g.id)
    if budget == "flops" and not graph.flops.get("total"):
        raise ValueError("budget='flops' needs FLOPs counts, but the graph has none: build it with "
                         "fxsparse.analyze(model, x, flops=True), or use budget='channels'")

    if scope == "per_group":
        out = {}
        for g in groups:
            order = _order(torch.as_tensor(scores[g.id]), f"group {g.id}")
            mask = torch.zeros(g.size, dtype=torch.bool)
            mask[order[:max(1, round(keep * g.size))]] = True
            out[g.id] = mask
        if budget == "flops":
            out = _uniform_ratio_for_flops(graph, groups, scores, keep)
        return out

    flat = torch.cat([torch.as_tensor(scores[g.id]).detach().cpu().to(torch.float64).flatten() for g in groups])
    order = _order(flat, "the scored groups")
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + g.size)
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    for g, a, b in zip(groups, offsets, offsets[1:]):  # each group's best channel
        chosen[a + int(_order(flat[a:b], f"group {g.id}")[0])] = True
    if budget == "channels":
        k = max(len(groups), round(keep * len(flat)))
        rest = order[~chosen[order]]
        chosen[rest[:k - len(groups)]] = True
    else:
        _flops_fill(graph, groups, order, chosen, flat, keep)
    return {g.id: chosen[a:b].clone() for g, a, b in zip(groups, offsets, offsets[1:])}


def _positions_in_full(graph, groups):
    """Index of each scored channel (groups in order) in the flat vector over every
    prunable group, which is what SubnetFlops reads; unscored groups stay kept."""
    start, at = 0, {}
    for g in graph.prunable_groups:
        at[g.id] = start
        start += g.size
    return torch.cat([torch.arange(at[g.id], at[g.id] + g.size) for g in groups]), start


def _full_vector(graph, groups, chosen):
    pos, n = _positions_in_full(graph, groups)
    full = torch.ones(n, dtype=torch.float64)
    full[pos] = chosen.to(torch.float64)
    return full


def _flops_fill(graph, groups, order, chosen, flat, keep):
    """Add channels in score order while the sub-network's real FLOPs stay within budget."""
    from fxsparse.analysis.flops import SubnetFlops

    counter = SubnetFlops(graph)
    limit = keep * counter.dense * (1 + 1e-12)
    pos, _ = _positions_in_full(graph, groups)
    full = _full_vector(graph, groups, chosen)  # updated in place: one entry per candidate
    if float(counter(full)) > limit:
        raise ValueError(f"a FLOPs budget of {keep:g} is below what one channel per group costs; raise keep")
    for i in order.tolist():
        if chosen[i] or flat[i] == float("-inf"):
            continue
        full[pos[i]] = 1.0
        if float(counter(full)) > limit:
            full[pos[i]] = 0.0
        else:
            chosen[i] = True


def _uniform_ratio_for_flops(graph, groups, scores, keep):
    """The largest uniform per-group keep ratio whose sub-network meets the FLOPs budget."""
    from fxsparse.analysis.flops import SubnetFlops

    counter = SubnetFlops(graph)
    limit = keep * counter.dense * (1 + 1e-12)
    orders = {g.id: _order(torch.as_tensor(scores[g.id]), f"group {g.id}") for g in groups}

    def masks_at(r):
        out = {}
        for g in groups:
            m = torch.zeros(g.size, dtype=torch.bool)
            m[orders[g.id][:max(1, round(r * g.size))]] = True
            out[g.id] = m
        return out

    def fits(r):
        m = masks_at(r)
        return float(counter(_full_vector(graph, groups, torch.cat([m[g.id] for g in groups])))) <= limit

    if not fits(0.0):
        raise ValueError(f"a FLOPs budget of {keep:g} is below what one channel per group costs; raise keep")
    lo, hi = 0.0, 1.0
    if fits(1.0):
        return masks_at(1.0)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return masks_at(lo)


def weight_top(scores: dict, density: float, scope: str = "global") -> dict:
    """{name: bool mask shaped like scores[name]} keeping the highest scores, exactly.

    ``scope="global"``: ``max(1, round(density * N))`` entries over all N entries;
    ``"per_layer"``: ``max(1, round(density * n))`` entries of each tensor. Ties go to the
    earlier entry (dict order, then flat index). Masks are on the scores' devices.
    """
    check_choice("weight_top", "scope", scope, ("global", "per_layer"))
    check_fraction(density, "density")
    if not scores:
        raise ValueError("weight_top needs at least one score tensor")
    out = {}
    if scope == "per_layer":
        for name, s in scores.items():
            out[name] = top_mask(s, max(1, round(density * s.numel())), name).view(s.shape)
        return out
    flat = torch.cat([s.detach().to(device="cpu", dtype=torch.float64).flatten() for s in scores.values()])
    chosen = top_mask(flat, max(1, round(density * len(flat))), "the weights")
    start = 0
    for name, s in scores.items():
        out[name] = chosen[start:start + s.numel()].view(s.shape).to(s.device)
        start += s.numel()
    return out


def _out_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


def prunable_weights(model: nn.Module) -> list:
    """Names of the weights unstructured methods prune: the ``weight`` of every
    convolution (``nn.Conv*d``, ``nn.ConvTranspose*d``) and ``nn.Linear``, the classifier
    included (as SNIP, GraSP and SynFlow do); biases and normalisation parameters are not
    pruned. Shared modules are listed once."""
    names, seen = [], set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and isinstance(getattr(mod, "weight", None), nn.Parameter):
            if id(mod.weight) in seen:
                continue
            seen.add(id(mod.weight))
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    return names


def weight_out_dims(model: nn.Module) -> dict:
    """{conv/linear weight name: the dim that indexes its output channels}."""
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) and isinstance(getattr(mod, "weight", None), nn.Parameter):
            out[f"{mod_name}.weight" if mod_name else "weight"] = _out_dim(mod)
    return out


# ------------------------------------------------------------------ running the model

@contextlib.contextmanager
def scoring_mode(model: nn.Module, train: bool, generator: Optional[torch.Generator]):
    """Set train/eval mode, fork the global RNG (seeded from ``generator``), restore both."""
    modes = [(m, m.training) for m in model.modules()]
    devices = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        if generator is not None:
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
            torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that would also queue
            for d in devices:                          # a seed for a CUDA not yet initialised
                torch.cuda.default_generators[d].manual_seed(seed)
        model.train(train)
        try:
            yield
        finally:
            for m, t in modes:
                m.training = t


def detached_state(model: nn.Module, dtype=None, requires_grad: Iterable = ()) -> dict:
    """{name: tensor} copies of every parameter and buffer (floating ones cast to
    ``dtype`` when given); the names in ``requires_grad`` become leaves that need grad."""
    want = set(requires_grad)
    out = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        c = t.detach().clone()
        if dtype is not None and c.is_floating_point():
            c = c.to(dtype)
        if name in want:
            c.requires_grad_(True)
        out[name] = c
    return out


def call_model(model: nn.Module, tensors: dict, inputs):
    """``model(*inputs)`` with its parameters and buffers replaced by ``tensors``."""
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    return torch.func.functional_call(model, tensors, tuple(inputs))


def sum_outputs(out) -> torch.Tensor:
    """Sum of every floating tensor in a (nested) model output."""
    if isinstance(out, torch.Tensor):
        return out.sum()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        parts = [sum_outputs(o) for o in out if isinstance(o, (torch.Tensor, tuple, list, dict))]
        parts = [p for p in parts if p is not None]
        return sum(parts) if parts else None
    return None


def first_output(out) -> torch.Tensor:
    """The logits of a model output: the tensor itself, or the first tensor of a tuple/dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    for o in out:
        if isinstance(o, torch.Tensor):
            return o
    raise ValueError("the model output holds no tensor to compute a loss from")


# ---------------------------------------------------------------------- method base

_UNSET = object()


class ScoreMethod(Method):
    """Base of the score-then-select methods: parses ``level``, ``scope``, ``budget``,
    validates them, and turns per-parameter / per-channel scores into masks.

    Options common to all: ``level`` (``"channel"`` or ``"weight"``, among
    ``supported_levels``), ``scope`` (channel: ``"global"`` / ``"per_group"``; weight:
    ``"global"`` / ``"per_layer"``), ``budget`` (channel level: ``"channels"`` or
    ``"flops"``). Subclasses list their own options in ``extra_options`` (name -> default).
    """
    supported_levels: tuple = ("channel", "weight")
    default_scope = {"channel": "global", "weight": "global"}
    extra_options: dict = {}
    decides_at: str = "init"  # when the masks are final: "init" (after init) or "end" (after training)

    def __init__(self, keep: float = 0.5, **options):
        super().__init__(keep, **options)
        check_options(self.name, options, dict.fromkeys(["level", "scope", "budget", *self.extra_options]))
        level = options.get("level", type(self).level)
        if level not in self.supported_levels:
            raise ValueError(f"method {self.name!r} works at level {' or '.join(map(repr, self.supported_levels))}, "
                             f"got level={level!r}; pick a supported level or another method")
        self.level = level
        scopes = ("global", "per_group") if level == "channel" else ("global", "per_layer")
        self.scope = options.get("scope", self.default_scope[level])
        self.budget = options.get("budget", "channels")
        check_choices(f"{self.name} (level={level!r})", scope=(self.scope, scopes), budget=(self.budget, ("channels", "flops")))
        if level == "weight" and "budget" in options and self.budget != "channels":
            raise ValueError("budget='flops' applies to level='channel' only; weight-level masks count weights")
        for key, default in self.extra_options.items():
            setattr(self, key, options.get(key, default))
        self.validate_options()
        self._keep_masks: Optional[dict] = None
        self._weight_masks: Optional[dict] = None
        self.scores: Optional[dict] = None  # the last scores: {gid: tensor} or {param name: tensor}

    @classmethod
    def for_run(cls, keep: float, budget: str, options: dict, trained: bool = False) -> "ScoreMethod":
        """At channel level the selection meets the run's ``--budget`` (channels or FLOPs),
        as VR-PGE's search does; weight-level masks count weights."""
        level = options.get("level", cls.level)
        if level != "channel":
            if budget != "channels":
                raise ValueError(f"--budget {budget}: method {cls.name!r} at level {level!r} keeps a fraction of the "
                                 "weights and cannot meet a FLOPs budget; use --budget channels, or level 'channel'")
            return cls(keep=keep, **options)
        if options.get("budget", budget) != budget:
            raise ValueError(f"method {cls.name!r}: its option budget={options['budget']!r} contradicts the run's "
                             f"--budget {budget}; set one of them")
        return cls(keep=keep, **{**options, "budget": budget})

    def validate_options(self) -> None:
        """Subclasses check their ``extra_options`` here (raise ValueError)."""

    # ----- helpers for subclasses -------------------------------------------------------
    def channel_graph(self, state: TrainState) -> ChannelGraph:
        graph = state.graph
        if graph is None:
            from fxsparse.analysis.analyze import analyze
            graph = analyze(state.model, state.example_inputs)
        if not graph.prunable_groups:
            reasons = sorted({g.reason for g in graph.groups if g.reason})
            raise ValueError(f"method {self.name!r} at level='channel' needs a prunable channel group, but the model has "
                             f"none ({'; '.join(reasons) or 'no channel groups'}); use level='weight' or another model")
        return graph

    def weight_names(self, state: TrainState) -> list:
        names = prunable_weights(state.model)
        if not names:
            raise ValueError(f"method {self.name!r} at level='weight' prunes convolution and linear weights, "
                             "but the model has none")
        return names

    def scored_parameters(self, state: TrainState) -> tuple:
        """(graph, names): at level "weight" no graph and the prunable weights; at level
        "channel" the channel graph and every parameter (a channel's biases and BN scales too)."""
        if self.level == "weight":
            return None, self.weight_names(state)
        return self.channel_graph(state), [n for n, _ in state.model.named_parameters()]

    def select_channels(self, graph: ChannelGraph, scores: dict, keep: Optional[float] = None) -> dict:
        return keep_top(graph, scores, self.keep if keep is None else keep, scope=self.scope, budget=self.budget)

    def select_weights(self, scores: dict, density: Optional[float] = None) -> dict:
        return weight_top(scores, self.keep if density is None else density, scope=self.scope)

    # ----- results --------------------------------------------------------------------
    def channel_keep(self):
        return None if self._keep_masks is None else {k: v.clone() for k, v in self._keep_masks.items()}

    def weight_masks(self):
        return None if self._weight_masks is None else {k: v.clone() for k, v in self._weight_masks.items()}

    def state_dict(self) -> dict:
        return {"keep_masks": self._keep_masks, "weight_masks": self._weight_masks}

    def load_state_dict(self, state: dict) -> None:
        self._keep_masks = state.get("keep_masks")
        self._weight_masks = state.get("weight_masks")

    def __repr__(self):
        return f"{type(self).__name__}(keep={self.keep}, level={self.level!r}, scope={self.scope!r}, budget={self.budget!r})"


# ----------------------------------------------------------------------------- data

def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


def take_batches(state: TrainState, n: int, who: str) -> list:
    """The first ``n`` (inputs, targets) batches of a fresh ``state.batches()`` iterator."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"{who}: the number of batches must be a positive int, got {n!r}")
    out = []
    for batch in state.batches():
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f"{who}: state.batches() must yield (inputs, targets) pairs, got {type(batch).__name__}")
        out.append((batch[0], batch[1]))
        if len(out) == n:
            break
    if not out:
        raise ValueError(f"{who}: state.batches() yielded no batch; it needs training data")
    return out
