"""VR-PGE structure learning (Zhou et al., NeurIPS 2021) on top of a SparseModel.

One keep-probability (score) per prunable channel, all groups concatenated. Each
minibatch: a *weight step* with a sampled mask (the compact sparse train step), then a
*score step*: K forward passes without autograd, each with an independent mask, give
losses f_j; the VR-PGE estimate 1/(K-1) sum_j (f_j - mean f) g_j (g the Bernoulli score,
``form="exact"`` by default: it is unbiased; ``"preconditioned"`` is the authors' form)
drives Adam on the scores, followed by the exact projection onto the budget
{0 <= s <= 1, sum(w s) <= B} (w = 1: a channel budget; w = per-channel FLOPs: a FLOPs
budget). ``reuse_loss=True`` takes the weight step's loss (same mask, before the update)
as the first sample, so the score step costs one extra forward instead of two.
"""
from __future__ import annotations

import torch

from .flops import SubnetFlops
from .vrpge import project_budget, sample_grouped_mask, vrpge_gradient


class StructureLearner:
    def __init__(self, sparse, *, keep: float = 0.5, budget: str = "channels", lr: float = 0.1,
                 form: str = "exact", samples: int = 2, seed: int = 0):
        if not isinstance(keep, (int, float)) or keep != keep or not 0 < keep <= 1:
            raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")
        if samples < 2:
            raise ValueError(f"the VR-PGE estimate needs at least 2 samples per step, got {samples}")
        self.sparse = sparse
        self.groups = sparse.channel_graph.prunable_groups
        self.sizes = [g.size for g in self.groups]
        n = sum(self.sizes)
        if budget not in ("channels", "flops"):
            raise ValueError(f"budget must be 'channels' or 'flops', got {budget!r}")
        self.kind, self.keep = budget, float(keep)
        self.flops = SubnetFlops(sparse.channel_graph)
        self.weights = torch.ones(n, dtype=torch.float64)
        self.budget = keep * n  # channels; for "flops" the budget is keep * dense FLOPs
        init = float(keep)
        if budget == "flops":
            self.budget = keep * self.flops.dense
            floor = float(self.flops(torch.zeros(n)))
            if floor > self.budget:
                raise ValueError(f"a FLOPs budget of {keep:g} is below what the unprunable layers alone cost "
                                 f"({floor / self.flops.dense:.3f} of dense); raise --keep")
            init = _bisect(lambda r: float(self.flops(torch.full((n,), r))) - self.budget, 0.0, 1.0)
        self.form, self.samples = form, samples
        self.generator = torch.Generator().manual_seed(seed)
        self.scores = torch.nn.Parameter(torch.full((n,), init, dtype=torch.float64))  # float64: the budget holds to rounding
        self.optimizer = torch.optim.Adam([self.scores], lr=lr)
        self._project()
        self.redrawn = 0  # sampled masks redrawn because they overflowed a block's capacity
        self._steps = 0
        self.sparse.fit_capacity(self.group_probs())  # capacities for these scores, before any compile

    def state_dict(self) -> dict:
        return {"scores": self.scores.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "caps": list(self.sparse.plan.caps),
                "shrinks": self.sparse._shrinks, "steps": self._steps, "redrawn": self.redrawn}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.scores.copy_(state["scores"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self._steps, self.redrawn = state.get("steps", 0), state.get("redrawn", 0)
        # the same capacities as the run that saved it: padding changes float summation order
        if "caps" in state and list(state["caps"]) != self.sparse.plan.caps:
            self.sparse._set_caps(state["caps"])
        self.sparse._shrinks = state.get("shrinks", 0)

    # ----- masks ---------------------------------------------------------------------
    def sample(self, k: int = 1, redraw: int = 10, fit: bool = True) -> torch.Tensor:
        """[k, n] Bernoulli(scores) masks, at least one channel per group. A mask that keeps
        more channels in a block than the compiled step has slots for is redrawn (up to
        ``redraw`` times; counted in ``self.redrawn``) instead of growing the step: the
        capacities sit 3 std above the expected count, so this is a < 0.2% tail per block,
        and :meth:`fit_capacity` re-plans them before the scores move past them."""
        m, _ = sample_grouped_mask(self.scores.detach(), self.sizes, self.generator, num_samples=k)
        m = m.bool()
        for row in range(k if fit else 0):
            for _ in range(redraw):
                if self.sparse.fits(self.as_group_masks(m[row])):
                    break
                self.redrawn += 1
                m[row] = sample_grouped_mask(self.scores.detach(), self.sizes, self.generator, num_samples=1)[0][0].bool()
        return m

    def _per_group(self, flat: torch.Tensor) -> dict[int, torch.Tensor]:
        return {g.id: part for g, part in zip(self.groups, torch.split(flat, self.sizes))}

    def group_probs(self) -> dict[int, torch.Tensor]:
        return self._per_group(self.scores.detach())

    def fit_capacity(self) -> bool:
        """Keep the compiled step's capacities matched to the scores: grow before they
        overflow (checked every step), shrink once the scores have sharpened (checked every
        50 steps). Returns whether the step was rebuilt."""
        self._steps += 1
        return self.sparse.fit_capacity(self.group_probs(), shrink=self._steps % 50 == 0)

    def as_group_masks(self, flat: torch.Tensor) -> dict[int, torch.Tensor]:
        return self._per_group(flat.bool())

    def expected_keep(self) -> float:
        """Budget the scores use in expectation, as a fraction of the dense model's (channels or FLOPs)."""
        return self.used(self.scores.detach())

    def used(self, keep: torch.Tensor) -> float:
        """Fraction of the dense budget a keep vector (mask or probabilities) uses."""
        if self.kind == "flops":
            return self.flops.fraction(keep)
        return float(keep.double().sum()) / len(keep)

    def _project(self):
        """Channels: the exact Euclidean projection onto {0 <= s <= 1, sum s <= K}.
        FLOPs: expected FLOPs are bilinear in the scores, so no closed-form projection
        exists; the scores are shifted along the FLOPs gradient, s <- clamp(s - v dF/ds, 0, 1),
        with v found by bisection so the expected FLOPs meet the budget (to 1e-6 relative)."""
        with torch.no_grad():
            s64 = self.scores.detach().double().clamp(0, 1)
            if self.kind == "channels":
                s64, _ = project_budget(s64, self.budget, weights=self.weights)
            elif float(self.flops(s64)) > self.budget:
                with torch.enable_grad():
                    x = s64.clone().requires_grad_(True)
                    (w,) = torch.autograd.grad(self.flops(x), x)
                w = (w / float(w.max())).clamp_min(1e-12)  # unit scale: v's tolerance is the scores' tolerance
                at = lambda v: (s64 - v * w).clamp(0, 1)
                hi = float((s64 / w).max()) + 1.0
                v = _bisect(lambda v: self.budget - float(self.flops(at(v))), 0.0, hi, rel=1e-13)
                s64 = at(v)
            self.scores.copy_(s64.to(self.scores.dtype))

    # ----- the two steps -------------------------------------------------------------
    def weight_step(self, step_fn, *batch):
        """Sample a mask, run the (compiled) sparse train step on it; returns (loss, mask)."""
        self.fit_capacity()
        mask = self.sample(1)[0]
        self.sparse.masks = self.as_group_masks(mask)
        return step_fn(*batch), mask

    @torch.no_grad()
    def score_step(self, loss_fn, *batch, first=None) -> torch.Tensor:
        """K forwards without autograd on the same minibatch, VR-PGE estimate, Adam, projection.
        ``first``: (loss, mask) of the weight step to reuse as one of the samples.
        A non-finite loss raises FloatingPointError before anything changes."""
        losses, masks = self.sample_losses(loss_fn, *batch, k=self.samples - (1 if first is not None else 0))
        self.last_forward_flops = float(sum(float(self.flops(m)) for m in masks)) / max(len(masks), 1)
        if first is not None:
            losses = torch.cat([first[0].detach().float().view(1), losses])
            masks = torch.cat([first[1].view(1, -1), masks])
        return self.score_update(losses, masks)

    @torch.no_grad()
    def sample_losses(self, loss_fn, *batch, k: int):
        """``k`` fresh masks and their losses on one minibatch, without autograd: ([k], [k, n]).
        Running statistics are restored, so score passes leave no trace."""
        *inputs, target = batch
        masks = self.sample(k)
        losses = []
        buffers = {n: b.clone() for n, b in self.sparse.model.named_buffers()}
        for m in masks:
            self.sparse.masks = self.as_group_masks(m)
            losses.append(loss_fn(self.sparse(*inputs), target).float())
        for n, b in self.sparse.model.named_buffers():
            b.copy_(buffers[n])
        return torch.stack(losses), masks

    @torch.no_grad()
    def score_update(self, losses: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """VR-PGE estimate from K (loss, mask) samples of one minibatch, Adam, projection."""
        if not bool(torch.isfinite(losses).all()):
            raise FloatingPointError(f"non-finite loss in the score step ({losses.tolist()}); scores unchanged")
        # float64: at a score of exactly 0 or 1 the exact Bernoulli score needs its eps clamp
        grad = vrpge_gradient(losses.double(), masks.double(), self.scores.detach().double(), form=self.form)
        self.scores.grad = grad.to(self.scores.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._project()
        return grad

    def deterministic_mask(self) -> dict[int, torch.Tensor]:
        """Channels with score >= 0.5 (and each group's best), cut to meet the budget: the
        mask a run evaluates between epochs."""
        s = self.scores.detach()
        mask = s >= 0.5
        for part, sub in zip(torch.split(mask, self.sizes), torch.split(s, self.sizes)):
            part[int(sub.argmax())] = True
        return self.as_group_masks(self._meet_budget(mask))

    def averaged_step(self, loss_fn, masked_optimizer, *batch):
        """The authors' weight step: K sampled sub-networks on the same minibatch, the weight
        gradient is the mean of their gradients (each through its own sub-network), one
        update on the entries any of them keeps (``masked_optimizer``: a
        :class:`fxsparse.MaskedOptimizer`); the K losses (before the update) are then the
        score step's samples, so no extra forward is needed. Returns the mean loss."""
        *inputs, target = batch
        self.fit_capacity()
        masks = self.sample(self.samples)
        masked_optimizer.zero_grad(set_to_none=True)
        losses = []
        for m in masks:
            self.sparse.masks = self.as_group_masks(m)
            loss = loss_fn(self.sparse(*inputs), target)
            (loss / len(masks)).backward()
            losses.append(loss.detach().float())
        losses = torch.stack(losses)
        self.last_forward_flops = 0.0
        if not bool(torch.isfinite(losses).all()):
            masked_optimizer.zero_grad(set_to_none=True)
            return losses.mean(), masks
        keep = masked_optimizer.union_keep([self.as_group_masks(m) for m in masks])
        masked_optimizer.step(keep=keep)
        masked_optimizer.zero_grad(set_to_none=True)
        self.score_update(losses, masks)
        return losses.mean(), masks

    def step(self, step_fn, loss_fn, *batch, reuse_loss: bool = False):
        """One minibatch of joint training: weight step, then score step. Returns the loss."""
        loss, mask = self.weight_step(step_fn, *batch)
        self.score_step(loss_fn, *batch, first=(loss, mask) if reuse_loss else None)
        return loss

    def final_mask(self, evaluate, tries: int = 10) -> dict[int, torch.Tensor]:
        """The authors' fine-tune mask: of ``tries`` sampled masks, the one ``evaluate``
        (mask dict -> accuracy) scores best, then cut to meet the budget exactly."""
        best, best_acc = None, -1.0
        for m in self.sample(tries, fit=False):
            acc = evaluate(self.as_group_masks(m))
            if acc > best_acc:
                best, best_acc = m, acc
        return self.as_group_masks(self._meet_budget(best))

    def _meet_budget(self, mask: torch.Tensor, fill: bool = True) -> torch.Tensor:
        """Drop the lowest-scoring kept channels (never a group's last) until the mask meets
        the budget (channels: sum m <= K; FLOPs: sub-network FLOPs <= budget), then, with
        ``fill``, add the highest-scoring pruned channels that still fit: scores that
        sharpened to 0 below the budget would otherwise leave part of it unused (measured:
        0.474 of the channels at keep 0.5 on Fashion-MNIST VGG-11)."""
        mask = self._drop_to_budget(mask)
        if fill:
            mask = self._fill_to_budget(mask)
        return mask

    def _cost(self, mask: torch.Tensor) -> float:
        return float(mask.double().sum()) if self.kind == "channels" else float(self.flops(mask))

    def _fill_to_budget(self, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.clone()
        limit = self.budget * (1 + 1e-9)
        for i in torch.argsort(self.scores.detach(), descending=True).tolist():
            if mask[i]:
                continue
            mask[i] = True
            if self._cost(mask) > limit:
                mask[i] = False
                if self.kind == "channels":
                    break  # every channel costs the same: nothing further fits
        return mask

    def _drop_to_budget(self, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.clone().bool()
        order = torch.argsort(self.scores.detach())
        owner = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        kept_per = torch.zeros(len(self.sizes), dtype=torch.long).index_add_(0, owner, mask.long())
        for i in order.tolist():
            if self._cost(mask) <= self.budget * (1 + 1e-9):
                break
            if mask[i] and kept_per[owner[i]] > 1:
                mask[i] = False
                kept_per[owner[i]] -= 1
        return mask


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
