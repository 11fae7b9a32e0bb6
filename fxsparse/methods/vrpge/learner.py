"""The search of VR-PGE (Zhou et al., NeurIPS 2021) on top of a SparseModel.

A *policy* over channel masks, trained with the variance-reduced policy gradient from
forward passes only. Three granularities (``granularity``):

* ``"channel"`` (the paper): one keep-probability per prunable channel; masks are
  independent Bernoulli draws.
* ``"width"``: one keep-probability w_g per prunable group (a learned width). The group
  keeps k_g ~ Binomial(n_g, w_g) channels (at least one), and *which* ones follows a
  within-group order, the L1 norm of the channels' producing filters, re-read from the
  weights every ``reorder_every`` steps. A few dozen parameters instead of thousands: the
  estimate of each resolves in tens of steps (README: the score_snr measurements), where per-channel
  scores need thousands.
* ``"width+channel"``: widths for the first ``width_fraction`` of the search, then
  per-channel scores inside each group, started at its learned width, with each group's
  expected channel count held at what the widths chose.

Each minibatch: the *score forwards* run first, K sampled sub-networks at the current
weights, without autograd, as one compiled graph (:meth:`fxsparse.SparseModel.losses`);
then the *weight step* trains the policy's typical sub-network (``weight_masks="mean"``),
or with ``weight_masks="sampled"`` (the paper) the first sample's, whose loss before its
update serves as that sample's (K - 1 score forwards; K fresh ones and one more sample to
train with the experiment switch ``reuse_loss=False``). So every sample of one estimate
sees the same weights (a loss taken after the weight update would carry the update's own
loss drop into f_1 - f_2). The estimate
1/(K-1) sum_j (f_j - mean f) g_j, with g the Bernoulli score of the draws (summed over a
group's channels for a width), drives Adam on the parameters, then the projection onto
the budget {0 <= s <= 1, sum(w s) <= B} (channels or expected FLOPs).

The score learning rate: with Adam a parameter moves about ``lr`` per step whatever the
gradient's size, and 0 and 1 absorb, so a rate too high for the search length fixes a
random structure before the estimates know anything. ``lr=None`` calibrates it to the
search: ``lr = c / sqrt(steps)`` (``c``: ``fxsparse.methods.defaults.VRPGE_LR_SCALE``; noise
alone then moves a parameter about ``c`` over the whole search, signal about
``c * sqrt(steps) * snr``).
The final mask is the top of the scores meeting the budget exactly (``final="topk"``),
or the authors' best of sampled masks (``final="sample"``).
"""
from __future__ import annotations

import math
import warnings

import torch

from fxsparse.analysis.flops import SubnetFlops
from fxsparse.analysis.masks import all_finite, check_fraction
from ..defaults import VRPGE_FROM_SCRATCH as _DEFAULT
from ..defaults import VRPGE_LR_SCALE
from ..scores import filter_l1
from .estimator import project_budget, sample_grouped_mask, vrpge_gradient
from .experimental import ExperimentSwitches
from .options import check_budget, check_options


class StructureLearner:
    """The search over one SparseModel (see the module docstring). Its options default to
    VR-PGE's from scratch (:data:`fxsparse.methods.defaults.VRPGE_FROM_SCRATCH`, what
    ``fxsparse train`` runs); ``lr=None`` (calibrated) needs ``steps=``, the search's length.
    The paper's form: ``granularity="channel", weight_masks="sampled", final="sample"``.
    ``experimental``: the switches benchmarks measure (:class:`.ExperimentSwitches`)."""

    def __init__(self, sparse, *, keep: float = 0.5, budget: str = "channels", steps: int | None = None,
                 seed: int = 0, lr: float | None = _DEFAULT["score_lr"], granularity: str = _DEFAULT["granularity"],
                 weight_masks: str = _DEFAULT["weight_masks"], final: str = _DEFAULT["final"],
                 samples: int = _DEFAULT["samples"], width_units: int | None = _DEFAULT["width_units"],
                 budget_ramp: float = _DEFAULT["budget_ramp"], projection: str = _DEFAULT["projection"],
                 min_width: float = _DEFAULT["min_width"],
                 width_fraction: float = 0.5, reorder_every: int = 100,
                 experimental: ExperimentSwitches | None = None):
        check_fraction(keep, "keep")
        check_budget(budget)
        check_options(dict(granularity=granularity, weight_masks=weight_masks, final=final, samples=samples,
                           width_units=width_units, budget_ramp=budget_ramp, projection=projection,
                           min_width=min_width))
        self.experimental = ExperimentSwitches.of(experimental)
        if lr is None and not steps:
            raise ValueError("lr=None calibrates the score learning rate to the search length: pass steps=")
        if not 0 < width_fraction < 1:
            raise ValueError(f"width_fraction must be in (0, 1), got {width_fraction!r}")
        if budget_ramp and not steps:
            raise ValueError("budget_ramp tightens the budget over the search: pass steps=")
        self.projection, self.min_width = projection, float(min_width)
        self.sparse = sparse
        self.groups = sparse.channel_graph.prunable_groups
        self.sizes = [g.size for g in self.groups]
        n = sum(self.sizes)
        self.kind, self.target = budget, float(keep)
        self.flops = SubnetFlops(sparse.channel_graph)
        # gradual: the budget starts at the dense model and tightens to the target over the
        # first ``budget_ramp`` of the search (cubic, Zhu & Gupta 2017), then holds
        self.budget_ramp = float(budget_ramp)
        self.keep = self.target if not self.budget_ramp else 1.0
        self.budget = self.keep * n if budget == "channels" else self.keep * self.flops.dense
        self.samples, self.final, self.weight_masks = int(samples), final, weight_masks
        self.granularity, self.steps, self.width_fraction = granularity, steps, float(width_fraction)
        self.reorder_every = int(reorder_every)
        self.lr = lr if lr is not None else VRPGE_LR_SCALE / math.sqrt(steps)
        self.generator = torch.Generator().manual_seed(seed)
        self.redrawn = 0  # sampled masks redrawn because they overflowed a block's capacity
        self._steps = 0
        self._owner = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        # widths: the Bernoulli draws are per *unit*, each a 1/u_g share of its group's width
        # (u_g = min(n_g, width_units)), so a width's relative spread sqrt(w(1-w)/u_g) does not
        # shrink with the layer's size; with one unit per channel (Binomial(n_g, w_g)) a
        # 1280-wide layer moves by ~1 % per draw, its loss effect drowns in the other layers',
        # and Adam's step (the same size for signal or noise) random-walks its width to 0
        self.width_units = width_units
        self.unit_sizes = [min(n, width_units) if width_units else n for n in self.sizes]
        self._unit_owner = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.unit_sizes))
        self._unit_scale = (torch.tensor(self.sizes), torch.tensor(self.unit_sizes))  # (n_g, u_g), for mask_of
        self._order = None  # within-group channel order (widths): {position: rank}, refreshed
        self.stage = "channel" if granularity == "channel" else "width"
        self.group_budget = None  # per-group expected channel counts in the channel stage of width+channel
        if budget == "flops":
            floor = float(self.flops(torch.zeros(n)))
            if floor > self.target * self.flops.dense:
                raise ValueError(f"a FLOPs budget of {keep:g} is below what the unprunable layers alone cost "
                                 f"({floor / self.flops.dense:.3f} of dense); raise --keep")
            init = _bisect(lambda r: float(self.flops(torch.full((n,), r))) - self.budget, 0.0, 1.0)
        else:
            init = float(self.keep)
        if self.min_width and self.stage == "width":
            self._fit_floor(n)
        size = n if self.stage == "channel" else len(self.sizes)
        self.scores = torch.nn.Parameter(torch.full((size,), init, dtype=torch.float64))  # float64: the budget holds to rounding
        self.optimizer = torch.optim.Adam([self.scores], lr=self.lr)
        self._split = torch.zeros(2, size, dtype=torch.float64)  # summed estimates of even / odd steps
        self._project()
        self.sparse.fit_capacity(self.group_probs(), spread=self._count_spread())  # before any compile

    # ----- state ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"scores": self.scores.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "caps": list(self.sparse.plan.caps),
                "shrinks": self.sparse.shrinks, "steps": self._steps, "redrawn": self.redrawn,
                "stage": self.stage, "group_budget": self.group_budget, "split": self._split.clone(),
                "order": self._order, "keep": self.keep}

    def load_state_dict(self, state: dict) -> None:
        if state.get("stage", self.stage) != self.stage:
            self._enter_channel_stage(state["group_budget"])
        with torch.no_grad():
            self.scores.copy_(state["scores"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self._steps, self.redrawn = state.get("steps", 0), state.get("redrawn", 0)
        self._split = state.get("split", self._split)
        self._order = state.get("order")
        self._set_keep(state.get("keep", self.keep))
        # the same capacities as the run that saved it: padding changes float summation order
        self.sparse.restore_capacity(state.get("caps"), state.get("shrinks", 0))

    # ----- the policy: probabilities, draws, masks -----------------------------------
    def probs(self) -> torch.Tensor:
        """Per-channel keep probabilities (all prunable groups concatenated)."""
        s = self.scores.detach()
        return s[self._owner] if self.stage == "width" else s

    def group_probs(self) -> dict[int, torch.Tensor]:
        return self._per_group(self.probs())

    def _per_group(self, flat: torch.Tensor) -> dict[int, torch.Tensor]:
        return {g.id: part for g, part in zip(self.groups, torch.split(flat, self.sizes))}

    def as_group_masks(self, flat: torch.Tensor) -> dict[int, torch.Tensor]:
        return self._per_group(flat.bool())

    def _draw_space(self) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
        """(probabilities, sizes per group, owner) of the Bernoulli draws: per channel, or
        for widths per unit (one per channel unless ``width_units``)."""
        if self.stage != "width":
            return self.probs(), self.sizes, None
        return self.scores.detach()[self._unit_owner], self.unit_sizes, self._unit_owner

    def _draws(self, k: int) -> torch.Tensor:
        probs, sizes, _ = self._draw_space()
        m, _ = sample_grouped_mask(probs, sizes, self.generator, num_samples=k)
        return m.bool()

    def mask_of(self, draws: torch.Tensor) -> torch.Tensor:
        """The network's mask for Bernoulli ``draws`` [..., draws]: the draws themselves for
        channel scores; for widths, each group's first k_g channels of the within-group
        order, k_g = round(c_g n_g / u_g) (at least 1) for c_g of its u_g units drawn."""
        if self.stage != "width":
            return draws
        counts = torch.zeros(*draws.shape[:-1], len(self.sizes), dtype=torch.long)
        counts.index_add_(-1, self._unit_owner, draws.long())
        if self.unit_sizes != self.sizes:
            n, u = self._unit_scale
            counts = torch.div(2 * counts * n + u, 2 * u, rounding_mode="floor").clamp(min=1)  # round half up
        return self._ordered_rank() < counts[..., self._owner]

    def _ordered_rank(self) -> torch.Tensor:
        """Each channel's rank within its group by the width order (0 = kept first)."""
        if self._order is None or (self.reorder_every and self._steps % self.reorder_every == 0
                                   and self._order[0] != self._steps):
            scores = filter_l1(self.sparse.channel_graph, self.sparse.model)
            rank = torch.empty(len(self._owner), dtype=torch.long)
            start = 0
            for g, n in zip(self.groups, self.sizes):
                order = torch.sort(scores[g.id], descending=True, stable=True).indices
                rank[start + order] = torch.arange(n)
                start += n
            self._order = (self._steps, rank)
        return self._order[1]

    def sample(self, k: int = 1, redraw: int = 10, fit: bool = True) -> torch.Tensor:
        """[k, n] network masks (see :meth:`sample_draws`)."""
        return self.mask_of(self.sample_draws(k, redraw, fit))

    def sample_draws(self, k: int = 1, redraw: int = 10, fit: bool = True) -> torch.Tensor:
        """[k, n] Bernoulli draws of the policy, at least one channel per group. A draw whose
        mask keeps more channels in a block than the compiled step has slots for is redrawn
        (up to ``redraw`` times; counted in ``self.redrawn``) instead of growing the step:
        the capacities sit 3 std above the expected count, so this is a < 0.2% tail per
        block, and :meth:`fit_capacity` re-plans them before the scores move past them."""
        if self.experimental.perturb == "group" and k > 1:  # samples 2..k: sample 1 with one group drawn afresh
            first = self.sample_draws(1, redraw, fit)
            group = int(torch.randint(len(self.sizes), (1,), generator=self.generator))
            rest = self._redraw_group(first.expand(k - 1, -1).clone(), group, redraw if fit else 0)
            return torch.cat([first, rest])
        d = self._draws(k)
        for row in range(k if fit else 0):
            for _ in range(redraw):
                if self.sparse.fits(self.as_group_masks(self.mask_of(d[row]))):
                    break
                self.redrawn += 1
                d[row] = self._draws(1)[0]
        return d

    def _redraw_group(self, rows: torch.Tensor, group: int, redraw: int) -> torch.Tensor:
        """``rows`` with group ``group``'s channels drawn afresh (at least one kept), each row
        redrawn while its mask overflows the capacities (at most ``redraw`` times)."""
        probs, sizes, _ = self._draw_space()
        start = sum(sizes[:group])
        sl = slice(start, start + sizes[group])
        p = probs[sl]
        for row in range(len(rows)):
            for attempt in range(redraw + 1):
                rows[row, sl] = sample_grouped_mask(p, [len(p)], self.generator)[0].bool()
                if attempt == redraw or self.sparse.fits(self.as_group_masks(self.mask_of(rows[row]))):
                    break
                self.redrawn += 1
        return rows

    def fit_capacity(self) -> bool:
        """Keep the compiled step's capacities matched to the scores: grow before they
        overflow (checked every step), shrink once the scores have sharpened (checked every
        50 steps) by enough to repay the recompile over the search's steps left. Returns
        whether the step was rebuilt."""
        remaining = max(self.steps - self._steps, 0) if self.steps else None
        return self.sparse.fit_capacity(self.group_probs(), shrink=self._steps % 50 == 0, remaining_steps=remaining,
                                        spread=self._count_spread())

    def _count_spread(self) -> dict[int, float] | None:
        """Widths drawn in units: per group, a kept count's std over the Binomial's, sqrt(n_g / u_g)."""
        if self.stage != "width" or self.unit_sizes == self.sizes:
            return None
        return {g.id: math.sqrt(n / u) for g, n, u in zip(self.groups, self.sizes, self.unit_sizes)}

    # ----- budget --------------------------------------------------------------------
    def expected_keep(self) -> float:
        """Budget the scores use in expectation, as a fraction of the dense model's (channels or FLOPs)."""
        return self.used(self.probs())

    def used(self, keep: torch.Tensor) -> float:
        """Fraction of the dense budget a keep vector (mask or probabilities) uses."""
        if self.kind == "flops":
            return self.flops.fraction(keep)
        return float(keep.double().sum()) / len(keep)

    def _project(self):
        """Onto the budget after every update. Channels: the exact Euclidean projection onto
        {0 <= s <= 1, sum(n s) <= K} (n: channels per parameter; per group in the channel
        stage of width+channel, where each group holds its learned count). FLOPs: expected
        FLOPs are bilinear in the probabilities, so no closed-form projection exists; the
        parameters are shifted along the FLOPs gradient, s <- clamp(s - v dF/ds, 0, 1), v
        found by bisection so the expected FLOPs meet the budget (to 1e-6 relative)."""
        with torch.no_grad():
            s64 = self._box(self.scores.detach().double())
            if self.projection == "scale" and self.group_budget is None:
                s64 = self._scale_to_budget(s64)
            elif self.group_budget is not None:
                parts = [project_budget(p, float(b))[0] for p, b in zip(torch.split(s64, self.sizes), self.group_budget)]
                s64 = torch.cat(parts)
            elif self.kind == "channels":
                w = torch.tensor(self.sizes, dtype=torch.float64) if self.stage == "width" else None
                lo = self._floor()  # the box [lo, 1] is [0, 1] scaled and shifted: project there
                at_floor = lo * (float(w.sum()) if w is not None else s64.numel())
                y, _ = project_budget((s64 - lo) / (1 - lo), (self.budget - at_floor) / (1 - lo), weights=w)
                s64 = lo + (1 - lo) * y
            elif float(self.flops(self._expand(s64))) > self.budget:
                w = self._cost_gradient(s64)
                w = (w / float(w.max())).clamp_min(1e-12)  # unit scale: v's tolerance is the scores' tolerance
                at = lambda v: self._box(s64 - v * w)
                hi = float((s64 / w).max()) + 1.0
                v = _bisect(lambda v: self.budget - float(self.flops(self._expand(at(v)))), 0.0, hi, rel=1e-13)
                s64 = at(v)
            self.scores.copy_(s64.to(self.scores.dtype))

    def _scale_to_budget(self, s64: torch.Tensor) -> torch.Tensor:
        """``projection="scale"``: every parameter scaled by one factor, s <- clamp(a s, 0, 1),
        with the a that spends the budget exactly (a > 1 when the scores fell below it): the
        budget keeps the allocation's proportions, so only the loss signal moves it away from
        where it started (the uniform allocation), where the gradient projection shrinks
        fastest the groups whose channels cost the most, signal or not."""
        cost = (lambda v: float(self.flops(self._expand(v)))) if self.kind == "flops" \
            else (lambda v: float(self._expand(v).sum()))
        positive = s64[s64 > 0]
        if positive.numel() == 0:
            return s64
        hi = 1.0 / float(positive.min())  # every positive score at 1 beyond this
        if cost((s64 > 0).double()) <= self.budget:
            return self._box(s64 * hi)  # even all of them full fit: keep what can be kept
        lo = 0.0  # the largest factor that fits: the cost grows with it
        while hi - lo > 1e-12 * max(1.0, hi):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if cost(self._box(s64 * mid)) <= self.budget else (lo, mid)
        return self._box(s64 * lo)

    def _fit_floor(self, n: int) -> None:
        """A floor the budget cannot pay for (every group at it costs more than the target)
        drops to half the uniform width that meets the target, with a warning."""
        at_floor = self.used(torch.full((n,), self.min_width, dtype=torch.float64))
        if at_floor <= self.target:
            return
        uniform = self.target if self.kind == "channels" else \
            _bisect(lambda r: float(self.flops(torch.full((n,), r))) - self.target * self.flops.dense, 0.0, 1.0)
        warnings.warn(f"min_width={self.min_width:g}: every group at that width would use {at_floor:.3f} of the "
                      f"dense {self.kind}, above the budget of {self.target:g}; the floor is {uniform / 2:.3f} "
                      "(half the uniform width that meets the budget) instead", RuntimeWarning, stacklevel=3)
        self.min_width = uniform / 2

    def _floor(self) -> float:
        return self.min_width if self.stage == "width" else 0.0

    def _box(self, s64: torch.Tensor) -> torch.Tensor:
        """Scores into [floor, 1]: widths into [min_width, 1] (MetaPruning's and AutoSlim's
        search spaces start a layer at a fraction of its channels, so that no layer of a chain
        narrows to one channel and starves every layer after it); per-channel scores into [0, 1]."""
        return s64.clamp(self._floor(), 1)

    def budget_direction(self) -> torch.Tensor:
        """Unit vector along the gradient of the budget's cost (expected FLOPs or channels)
        with respect to the parameters: the part of a score gradient the projection cancels
        when the budget binds. What the search can learn about the allocation is the rest."""
        w = self._cost_gradient(self.scores.detach().double())
        return w / w.norm().clamp_min(1e-30)

    def _cost_gradient(self, s64: torch.Tensor) -> torch.Tensor:
        """Gradient of the budget's cost (expected FLOPs or channels) with respect to the parameters at ``s64``."""
        with torch.enable_grad():
            x = s64.clone().requires_grad_(True)
            cost = self.flops(self._expand(x)) if self.kind == "flops" else self._expand(x).sum()
            (w,) = torch.autograd.grad(cost, x)
        return w

    def _expand(self, s: torch.Tensor) -> torch.Tensor:
        return s[self._owner] if self.stage == "width" else s

    # ----- the estimate --------------------------------------------------------------
    def gradient(self, losses: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """The VR-PGE estimate w.r.t. the parameters from K (loss, draw) samples of one
        minibatch: per channel, or summed over each group's channels for a width (the score
        of a Binomial count is the sum of its Bernoulli draws' scores)."""
        probs, _, owner = self._draw_space()
        grad = policy_gradient(losses, draws, probs, owner, self.experimental.form)
        # one group perturbed, picked uniformly: scaled by the number of groups, the estimate
        # of the whole gradient stays unbiased (the other coordinates' terms cancel exactly)
        return grad * len(self.sizes) if self.experimental.perturb == "group" else grad

    @torch.no_grad()
    def sample_losses(self, loss_fn, *batch, k: int):
        """``k`` fresh draws and their sub-networks' losses on one minibatch, at the current
        weights, without autograd (one compiled graph): ([k], [k, n] draws)."""
        draws = self.sample_draws(k)
        masks = self.mask_of(draws)
        losses = self.sparse.losses(loss_fn, [self.as_group_masks(m) for m in masks], *batch)
        return losses, draws

    @torch.no_grad()
    def score_update(self, losses: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """VR-PGE estimate from K (loss, draw) samples of one minibatch, Adam, projection."""
        if not all_finite(losses):
            raise FloatingPointError(f"non-finite loss in the score step ({losses.tolist()}); scores unchanged")
        grad = self.gradient(losses, draws)
        self._split[self._steps % 2] += grad
        self.scores.grad = grad.to(self.scores.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._project()
        return grad

    # ----- one minibatch -------------------------------------------------------------
    def step(self, step_fn, loss_fn, *batch):
        """One minibatch of joint training: the score forwards, then the weight step, then
        the score update, every sample at the same (pre-update) weights. ``step_fn``: the
        sparse train step; returns (weight step loss, its mask). A non-finite loss skips
        the score update (FloatingPointError is not raised here: the caller sees the loss)."""
        mean = self.weight_masks == "mean"
        reuse = self.experimental.reuse_loss and not mean
        self._advance()
        draws = self.sample_draws(self.samples + (0 if reuse or mean else 1))
        masks = self.mask_of(draws)
        scored = masks if mean else masks[1:]  # the samples evaluated by the score forwards
        with torch.no_grad():
            rest = self.sparse.losses(loss_fn, [self.as_group_masks(m) for m in scored], *batch)
        trained = self.mean_mask() if mean else masks[0]
        self.sparse.masks = self.as_group_masks(trained)
        loss = step_fn(*batch)
        if reuse:
            losses, used = torch.cat([loss.detach().float().view(1), rest]), draws
        else:
            losses, used = rest, (draws if mean else draws[1:])
        self.last_forward_flops = float(sum(float(self.flops(m)) for m in scored)) / max(len(scored), 1)
        self.last_forwards = len(scored)
        # host-device sync: the K losses come to the host, where the scores and the masks live
        # (the budget projection and the next masks are host decisions); one copy per step
        if all_finite(losses):
            self.score_update(losses, used)
        elif all_finite(loss):  # the weight step's own non-finite loss is the caller's to report
            warnings.warn(f"score update skipped: non-finite loss among the samples ({losses.tolist()})",
                          RuntimeWarning, stacklevel=2)
        return loss, trained

    def mean_mask(self) -> torch.Tensor:
        """The policy's typical sub-network: each group keeps round(its expected count)
        channels (at least one), the first of its order: the L1 order for widths, the
        probabilities per channel. ``weight_masks="mean"`` trains the weights on it during
        the search, while the samples only score."""
        p = self.probs().double()
        counts = torch.zeros(len(self.sizes), dtype=torch.float64).index_add_(0, self._owner, p).round().clamp(min=1)
        if self.stage == "width":
            rank = self._ordered_rank()
        else:
            rank = torch.empty(len(p), dtype=torch.long)
            for idx in torch.split(torch.arange(len(p)), self.sizes):
                rank[idx[torch.sort(p[idx], descending=True, stable=True).indices]] = torch.arange(len(idx))
        return rank < counts[self._owner]

    @property
    def steps_done(self) -> int:
        """Search steps taken so far."""
        return self._steps

    def _set_keep(self, keep: float) -> None:
        """The budget the projection holds the scores to, as a fraction of the dense model's."""
        self.keep = float(keep)
        self.budget = self.keep * (sum(self.sizes) if self.kind == "channels" else self.flops.dense)

    def scheduled_keep(self, step: int) -> float:
        """The budget at search step ``step``: the target, or on the gradual ramp from dense."""
        if not self.budget_ramp:
            return self.target
        frac = min(1.0, step / max(1.0, self.budget_ramp * self.steps))
        return self.target + (1.0 - self.target) * (1.0 - frac) ** 3

    def _advance(self):
        """Per step: the budget's schedule, the stage switch of width+channel, then the capacities."""
        self._steps += 1
        if self.budget_ramp and self.keep != self.scheduled_keep(self._steps):
            self._set_keep(self.scheduled_keep(self._steps))
            self._project()
        if self.granularity == "width+channel" and self.stage == "width" and \
                self._steps > self.width_fraction * (self.steps or 0):
            self._enter_channel_stage()
        self.fit_capacity()

    def _enter_channel_stage(self, group_budget=None):
        """width+channel: per-channel scores from here on, started at their group's width
        (the within-group order breaks the tie: the first of the order starts highest), each
        group holding the channel count its width chose."""
        widths = self.scores.detach().double()
        if group_budget is None:
            group_budget = [float(w) * n for w, n in zip(widths, self.sizes)]
        start = widths[self._owner]
        rank = self._ordered_rank().double()
        sizes = torch.tensor(self.sizes, dtype=torch.float64)[self._owner]
        start = (start + 0.1 * (0.5 - rank / sizes)).clamp(0, 1)  # a slight tilt toward the L1 order
        self.stage, self.group_budget = "channel", list(group_budget)
        self.scores = torch.nn.Parameter(start.clone())
        self.optimizer = torch.optim.Adam([self.scores], lr=self.lr)
        self._split = torch.zeros(2, len(start), dtype=torch.float64)
        self._project()

    def weight_step(self, step_fn, *batch):
        """Sample a mask, run the (compiled) sparse train step on it; returns (loss, mask)."""
        self._advance()
        mask = self.sample(1)[0]
        self.sparse.masks = self.as_group_masks(mask)
        return step_fn(*batch), mask

    def _score_forwards(self, loss_fn, *batch):
        """K fresh samples and their losses at the current weights; records what they cost."""
        losses, draws = self.sample_losses(loss_fn, *batch, k=self.samples)
        self.last_forward_flops = float(sum(float(self.flops(m)) for m in self.mask_of(draws))) / len(draws)
        self.last_forwards = len(draws)
        return losses, draws

    @torch.no_grad()
    def forward_only_step(self, loss_fn, *batch) -> torch.Tensor:
        """A search step at fixed weights (compressing a trained model): K fresh samples
        scored by the forward-only graph, the estimate, Adam, the projection; no backward
        and no weight update. Returns the samples' mean loss (non-finite: the update is
        skipped with a warning, the scores unchanged)."""
        self._advance()
        losses, draws = self._score_forwards(loss_fn, *batch)
        if all_finite(losses):
            self.score_update(losses, draws)
        else:
            warnings.warn(f"score update skipped: non-finite loss among the samples ({losses.tolist()})",
                          RuntimeWarning, stacklevel=2)
        return losses.mean()

    def averaged_step(self, loss_fn, masked_optimizer, *batch):
        """The authors' weight step: K sampled sub-networks on the same minibatch, the weight
        gradient is the mean of their gradients (each through its own sub-network), one
        update on the entries any of them keeps (``masked_optimizer``: a
        :class:`fxsparse.MaskedOptimizer`); the K losses (before the update) are then the
        score step's samples, so no extra forward is needed. Returns the mean loss."""
        *inputs, target = batch
        self._advance()
        draws = self.sample_draws(self.samples)
        masks = self.mask_of(draws)
        masked_optimizer.zero_grad(set_to_none=True)
        losses = []
        for m in masks:
            self.sparse.masks = self.as_group_masks(m)
            loss = loss_fn(self.sparse(*inputs), target)
            (loss / len(masks)).backward()
            losses.append(loss.detach().float())
        losses = torch.stack(losses)
        self.last_forward_flops, self.last_forwards = 0.0, 0
        if not all_finite(losses):
            masked_optimizer.zero_grad(set_to_none=True)
            return losses.mean(), masks
        keep = masked_optimizer.union_keep([self.as_group_masks(m) for m in masks])
        masked_optimizer.step(keep=keep)
        masked_optimizer.zero_grad(set_to_none=True)
        self.score_update(losses, draws)
        return losses.mean(), masks

    # ----- diagnostics ---------------------------------------------------------------
    def diagnostics(self) -> dict:
        """What the search has learned so far: the fraction of probabilities at 0 or 1, the
        rank correlation of the summed estimates of even and odd steps (split halves: near 0
        when the updates followed noise, near 1 when they followed a signal), and each
        group's expected keep ratio."""
        p = self.probs()
        return {"scores_at_0_or_1": float(((p <= 1e-6) | (p >= 1 - 1e-6)).double().mean()),
                "split_half_rank_corr": spearman(self._split[0], self._split[1]),
                "group_expected_keep": [float(v.mean()) for v in torch.split(p, self.sizes)],
                "stage": self.stage, "score_lr": self.lr}

    # ----- the final mask ------------------------------------------------------------
    def deterministic_mask(self) -> dict[int, torch.Tensor]:
        """The mask a run evaluates between epochs: the top of the scores, meeting the budget."""
        return self.as_group_masks(self._topk_mask())

    def final_mask(self, evaluate, tries: int = 10) -> dict[int, torch.Tensor]:
        """The fine-tune mask. ``final="topk"``: the highest-probability channels (for
        widths: the first round(w_g n_g) of each group's order) filling the budget exactly.
        ``final="sample"`` (the authors): of ``tries`` sampled masks the one ``evaluate``
        (mask dict -> accuracy) scores best, then cut to meet the budget exactly."""
        if self.final == "topk":
            return self.as_group_masks(self._topk_mask())
        best, best_acc = None, -1.0
        for m in self.sample(tries, fit=False):
            acc = evaluate(self.as_group_masks(m))
            if acc > best_acc:
                best, best_acc = m, acc
        return self.as_group_masks(self._meet_budget(best))

    def _priority(self) -> torch.Tensor:
        """A per-channel priority whose top fills the budget: the probabilities; for widths,
        within a group the order position rescaled so that channel j of n ranks at
        w_g - (j + 0.5) / n (the first round(w n) channels are exactly those above 0)."""
        p = self.probs().double()
        if self.stage != "width":
            return p
        sizes = torch.tensor(self.sizes, dtype=torch.float64)[self._owner]
        return p - (self._ordered_rank().double() + 0.5) / sizes

    def _topk_mask(self) -> torch.Tensor:
        pri = self._priority()
        mask = torch.zeros(len(pri), dtype=torch.bool)
        for part_idx in torch.split(torch.arange(len(pri)), self.sizes):  # each group's best
            mask[part_idx[int(pri[part_idx].argmax())]] = True
        return self._fill_to_budget(mask, pri)

    def _meet_budget(self, mask: torch.Tensor, fill: bool = True) -> torch.Tensor:
        """Drop the lowest-priority kept channels (never a group's last) until the mask meets
        the budget (channels: sum m <= K; FLOPs: sub-network FLOPs <= budget), then, with
        ``fill``, add the highest-priority pruned channels that still fit: scores that
        sharpened to 0 below the budget would otherwise leave part of it unused."""
        pri = self._priority()
        mask = self._drop_to_budget(mask, pri)
        if fill:
            mask = self._fill_to_budget(mask, pri)
        return mask

    def _cost(self, mask: torch.Tensor) -> float:
        return float(mask.double().sum()) if self.kind == "channels" else float(self.flops(mask))

    def _fill_to_budget(self, mask: torch.Tensor, pri: torch.Tensor) -> torch.Tensor:
        mask = mask.clone()
        limit = self.budget * (1 + 1e-9)
        for i in torch.sort(pri, descending=True, stable=True).indices.tolist():
            if mask[i]:
                continue
            mask[i] = True
            if self._cost(mask) > limit:
                mask[i] = False
                if self.kind == "channels":
                    break  # every channel costs the same: nothing further fits
        return mask

    def _drop_to_budget(self, mask: torch.Tensor, pri: torch.Tensor) -> torch.Tensor:
        mask = mask.clone().bool()
        kept_per = torch.zeros(len(self.sizes), dtype=torch.long).index_add_(0, self._owner, mask.long())
        for i in torch.sort(pri, stable=True).indices.tolist():
            if self._cost(mask) <= self.budget * (1 + 1e-9):
                break
            if mask[i] and kept_per[self._owner[i]] > 1:
                mask[i] = False
                kept_per[self._owner[i]] -= 1
        return mask


def policy_gradient(losses, draws, probs, owner=None, form: str = "exact") -> torch.Tensor:
    """VR-PGE estimate from K (loss, Bernoulli draws) samples: per channel, or with
    ``owner`` (the parameter of each channel, channels sharing one keep-probability) summed
    over each parameter's channels: the score of a Binomial count is the sum of its draws'
    Bernoulli scores, so the sum is the estimate for the shared parameter."""
    grad = vrpge_gradient(losses.double(), draws.double(), probs.double(), form=form)
    if owner is None:
        return grad
    return torch.zeros(int(owner.max()) + 1, dtype=grad.dtype).index_add_(0, owner, grad)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties); nan for fewer than 3 entries or constant input."""
    if a.numel() < 3:
        return float("nan")

    def ranks(x):
        order = torch.sort(x, stable=True).indices
        r = torch.empty_like(x, dtype=torch.float64)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for v in torch.unique(x):  # ties: their mean rank
            tie = x == v
            if int(tie.sum()) > 1:
                r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a.double()), ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def _bisect(f, lo: float, hi: float, rel: float = 1e-9, iters: int = 200) -> float:
    """The smallest x in [lo, hi] with f(x) >= 0 for f increasing (to tolerance)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid) >= 0:
            hi = mid
        else:
            lo = mid
        if hi - lo <= rel * max(1.0, abs(hi)):
            break
    return hi
