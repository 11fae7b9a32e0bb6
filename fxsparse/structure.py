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

from .vrpge import project_budget, sample_grouped_mask, vrpge_gradient


class StructureLearner:
    def __init__(self, sparse, *, keep: float = 0.5, budget: str = "channels", lr: float = 12e-3,
                 form: str = "exact", samples: int = 2, seed: int = 0):
        if not isinstance(keep, (int, float)) or keep != keep or not 0 < keep <= 1:
            raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")
        if samples < 2:
            raise ValueError(f"the VR-PGE estimate needs at least 2 samples per step, got {samples}")
        self.sparse = sparse
        self.groups = sparse.channel_graph.prunable_groups
        self.sizes = [g.size for g in self.groups]
        n = sum(self.sizes)
        if budget == "channels":
            self.weights = torch.ones(n, dtype=torch.float64)
        elif budget == "flops":
            w = [torch.full((g.size,), max(g.flops_share, 1e-12) / g.size, dtype=torch.float64) for g in self.groups]
            self.weights = torch.cat(w)
        else:
            raise ValueError(f"budget must be 'channels' or 'flops', got {budget!r}")
        self.budget = keep * float(self.weights.sum())
        self.form, self.samples = form, samples
        self.generator = torch.Generator().manual_seed(seed)
        self.scores = torch.nn.Parameter(torch.full((n,), float(keep)))
        self.optimizer = torch.optim.Adam([self.scores], lr=lr)
        self._project()

    # ----- masks ---------------------------------------------------------------------
    def sample(self, k: int = 1) -> torch.Tensor:
        """[k, n] Bernoulli(scores) masks, at least one channel per group."""
        m, _ = sample_grouped_mask(self.scores.detach(), self.sizes, self.generator, num_samples=k)
        return m.bool()

    def as_group_masks(self, flat: torch.Tensor) -> dict[int, torch.Tensor]:
        return {g.id: part for g, part in zip(self.groups, torch.split(flat.bool(), self.sizes))}

    def expected_keep(self) -> float:
        """Budget used by the scores, as a fraction of the dense model's (channels or FLOPs)."""
        return float((self.weights * self.scores.detach().double()).sum() / self.weights.sum())

    def _project(self):
        with torch.no_grad():
            s, _ = project_budget(self.scores.detach().double(), self.budget, weights=self.weights)
            self.scores.copy_(s.to(self.scores.dtype))

    # ----- the two steps -------------------------------------------------------------
    def weight_step(self, step_fn, *batch):
        """Sample a mask, run the (compiled) sparse train step on it; returns (loss, mask)."""
        mask = self.sample(1)[0]
        self.sparse.masks = self.as_group_masks(mask)
        return step_fn(*batch), mask

    @torch.no_grad()
    def score_step(self, loss_fn, *batch, first=None) -> torch.Tensor:
        """K forwards without autograd on the same minibatch, VR-PGE estimate, Adam, projection.
        ``first``: (loss, mask) of the weight step to reuse as one of the samples."""
        *inputs, target = batch
        k = self.samples - (1 if first is not None else 0)
        masks = self.sample(k)
        losses = []
        buffers = {n: b.clone() for n, b in self.sparse.model.named_buffers()}  # score passes leave no trace
        for m in masks:
            self.sparse.masks = self.as_group_masks(m)
            losses.append(loss_fn(self.sparse(*inputs), target).float())
        for n, b in self.sparse.model.named_buffers():
            b.copy_(buffers[n])
        losses = torch.stack(losses)
        if first is not None:
            losses = torch.cat([first[0].detach().float().view(1), losses])
            masks = torch.cat([first[1].view(1, -1), masks])
        # float64: at a score of exactly 0 or 1 the exact Bernoulli score needs its eps clamp
        grad = vrpge_gradient(losses.double(), masks.double(), self.scores.detach().double(), form=self.form)
        self.scores.grad = grad.to(self.scores.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._project()
        return grad

    def step(self, step_fn, loss_fn, *batch, reuse_loss: bool = False):
        """One minibatch of joint training: weight step, then score step. Returns the loss."""
        loss, mask = self.weight_step(step_fn, *batch)
        self.score_step(loss_fn, *batch, first=(loss, mask) if reuse_loss else None)
        return loss

    def final_mask(self, evaluate, tries: int = 10) -> dict[int, torch.Tensor]:
        """The authors' fine-tune mask: of ``tries`` sampled masks, the one ``evaluate``
        (mask dict -> accuracy) scores best, then cut to meet the budget exactly."""
        best, best_acc = None, -1.0
        for m in self.sample(tries):
            acc = evaluate(self.as_group_masks(m))
            if acc > best_acc:
                best, best_acc = m, acc
        return self.as_group_masks(self._meet_budget(best))

    def _meet_budget(self, mask: torch.Tensor) -> torch.Tensor:
        """Drop the lowest-scoring kept channels (never a group's last) until sum(w m) <= B."""
        mask = mask.clone().bool()
        used = float((self.weights * mask.double()).sum())
        order = torch.argsort(self.scores.detach())
        owner = torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))
        kept_per = torch.zeros(len(self.sizes), dtype=torch.long).index_add_(0, owner, mask.long())
        for i in order.tolist():
            if used <= self.budget + 1e-9:
                break
            if mask[i] and kept_per[owner[i]] > 1:
                mask[i] = False
                kept_per[owner[i]] -= 1
                used -= float(self.weights[i])
        return mask
