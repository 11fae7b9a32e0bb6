"""L0 channel gates: hard-concrete gates trained by backprop under a FLOPs (or channel) budget.

Louizos, Welling, Kingma, "Learning Sparse Neural Networks through L0 Regularization",
ICLR 2018 (arXiv 1712.01312); the budget as a Lagrangian as in Wang, Wohlwend, Lei,
"Structured Pruning of Large Language Models", EMNLP 2020, and CoFi (Xia et al., ACL 2022).
The reparameterisation-gradient competitor of VR-PGE's policy-gradient search.

One gate per prunable channel. Each step draws ``u ~ U(0, 1)`` per gate and
``z = min(1, max(0, sigmoid((log u - log(1 - u) + log_alpha) / beta) (r - l) + l))``
(``beta = 2/3, l = -0.1, r = 1.1``); the gate multiplies every parameter entry that
*produces* its channel (a convolution's or linear layer's output rows, and every 1-D
parameter along the channel: biases, BatchNorm/LayerNorm scale and shift), so the channel's
output is scaled by z (through a BatchNorm too: its scale and shift carry the gate). The
probability that a gate is non-zero is ``P_j = sigmoid(log_alpha_j - beta log(-l / r))``
and the expected cost ``c = E[FLOPs] / FLOPs(dense)`` (exact: FLOPs are multilinear in
independent gates) or the expected kept fraction of the channels. The loss is
``L + lambda_1 (c - t) + lambda_2 (c - t)^2``, minimised over the weights (the run's SGD)
and ``log_alpha`` (Adam, ``lr``), maximised over the multipliers (Adam ascent, ``lr``):
the cost is driven to the target ``t``, which ramps linearly from 1 (the dense model) to
the run's keep over the first ``ramp`` of the phase. The phase costs a dense training step
per step (the gates are multiplications, nothing is removed).

The final mask keeps the channels of the largest ``log_alpha`` filling the budget exactly
(each group keeps at least one); before the fine-tune, the kept channels' parameters are
multiplied by their deterministic gate ``min(1, max(0, sigmoid(log_alpha) (r - l) + l))``,
so the exported model computes what the gated model computed. One process only (the
gates' phase does not average gradients across ``torchrun`` processes).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from fxsparse.analysis.flops import TRAIN_FACTOR, SubnetFlops
from .base import Method, PhaseSetup, RunContext
from .options import check_number, check_options
from .registry import register_method
from .select import call_model, first_output, keep_top, weight_out_dims

GATES = "gates"
BETA, LOW, HIGH = 2.0 / 3.0, -0.1, 1.1


class ChannelGates(nn.Module):
    """Hard-concrete gates over the prunable channels of a graph, and the map from each gate
    to the parameter entries that produce its channel."""

    def __init__(self, model: nn.Module, graph, init_drop: float = 0.05):
        super().__init__()
        self.groups = graph.prunable_groups
        self.sizes = [g.size for g in self.groups]
        n = sum(self.sizes)
        # Louizos et al.'s initialisation: P(gate non-zero) about 1 - init_drop
        self.log_alpha = nn.Parameter(torch.full((n,), math.log(1 - init_drop) - math.log(init_drop)))
        out_dims = weight_out_dims(model)
        params = dict(model.named_parameters())
        self.targets = {}  # parameter name -> (dim, position -> gate index, n = "no gate")
        offset = 0
        for g in self.groups:
            for m in g.members:
                p = params.get(m.param)
                if p is None or not p.requires_grad:
                    continue
                produces = (p.dim() == 1 and m.dim == 0) or (m.param in out_dims and m.dim == out_dims[m.param])
                if not produces:
                    continue
                dim, chan = self.targets.get(m.param, (m.dim, torch.full((p.shape[m.dim],), n, dtype=torch.long)))
                if dim != m.dim:
                    continue
                for j, ix in enumerate(m.index):
                    chan[torch.as_tensor(ix, dtype=torch.long)] = offset + j
                self.targets[m.param] = (dim, chan)
            offset += g.size

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """A training draw of every gate (differentiable in ``log_alpha``)."""
        u = torch.rand(self.log_alpha.shape, generator=generator, dtype=self.log_alpha.dtype).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)
        return (s * (HIGH - LOW) + LOW).clamp(0, 1)

    def deterministic(self) -> torch.Tensor:
        """The test-time gates."""
        return (torch.sigmoid(self.log_alpha) * (HIGH - LOW) + LOW).clamp(0, 1)

    def open_probability(self) -> torch.Tensor:
        """P(gate > 0) per channel."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-LOW / HIGH))

    def gated(self, params: dict, z: torch.Tensor) -> dict:
        """``params`` with every producing entry of channel j multiplied by ``z[j]``."""
        ext = torch.cat([z, z.new_ones(1)])  # the last entry: positions of no gated channel
        out = dict(params)
        for name, (dim, chan) in self.targets.items():
            p = params[name]
            shape = [1] * p.dim()
            shape[dim] = p.shape[dim]
            out[name] = p * ext[chan.to(p.device)].view(shape).to(p.dtype)
        return out


@register_method("l0")
class L0Gates(Method):
    """L0 hard-concrete channel gates (Louizos et al., ICLR 2018) trained by backprop with a
    Lagrangian budget; see the module docstring. Options: ``lr`` (0.1, gates and
    multipliers), ``ramp`` (0.5), ``init_drop`` (0.05)."""
    level = "channel"
    paper = "Louizos et al., Learning Sparse Neural Networks through L0 Regularization, ICLR 2018"

    def __init__(self, keep: float = 0.5, *, budget: str = "channels", **options):
        super().__init__(keep)
        o = check_options("l0", options, {"lr": 0.1, "ramp": 0.5, "init_drop": 0.05})
        check_number("l0", "lr", o["lr"], lo=0, lo_open=True)
        check_number("l0", "ramp", o["ramp"], lo=0, hi=1)
        check_number("l0", "init_drop", o["init_drop"], lo=0, hi=1, lo_open=True)
        if budget not in ("channels", "flops"):
            raise ValueError(f"l0: budget must be 'channels' or 'flops', got {budget!r}")
        self.budget, self.lr, self.ramp, self.init_drop = budget, float(o["lr"]), float(o["ramp"]), float(o["init_drop"])
        self.gates = self.model = self.graph = None
        self._saved = None

    @classmethod
    def for_run(cls, keep: float, budget: str, options: dict, trained: bool = False) -> "L0Gates":
        return cls(keep=keep, **{**options, "budget": budget})  # the gates meet the run's --budget

    def phases(self, first: int, total: int) -> list:
        return [(GATES, first), ("finetune", total - first)]

    def build_phase(self, phase: str, run: RunContext, start: int, steps: int) -> PhaseSetup:
        if phase != GATES:
            return super().build_phase(phase, run, start, steps)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ValueError("method 'l0' trains its gates in one process; run it without --nproc / torchrun")
        self.model, self.graph, self.loss_fn, self.steps = run.model, run.graph, run.loss_fn, steps
        device = next(run.model.parameters()).device
        self.gates = ChannelGates(run.model, run.graph, self.init_drop).to(device)
        self.flops = SubnetFlops(run.graph)
        self.multipliers = nn.Parameter(torch.zeros(2, device=device))
        self.gate_optimizer = torch.optim.Adam([self.gates.log_alpha], lr=self.lr)
        self.multiplier_optimizer = torch.optim.Adam([self.multipliers], lr=self.lr, maximize=True)
        self.generator = torch.Generator().manual_seed(run.seed + 2)
        self.step_count = 0
        self.last_cost = 1.0
        optimizer = run.sgd(run.model.parameters())
        if self._saved is not None:
            with torch.no_grad():
                self.gates.log_alpha.copy_(self._saved["log_alpha"])
                self.multipliers.copy_(self._saved["multipliers"])
            self.gate_optimizer.load_state_dict(self._saved["gate_optimizer"])
            self.multiplier_optimizer.load_state_dict(self._saved["multiplier_optimizer"])
            self.generator.set_state(self._saved["generator"])
            self.step_count = self._saved["step_count"]
            self._saved = None
        self.optimizer = optimizer
        return PhaseSetup(optimizer=optimizer, schedules=[run.weight_schedule(optimizer, phase, start, steps)],
                          compiling="nothing (the gates' phase runs eagerly)")

    def target(self) -> float:
        """The cost the multipliers drive the expected cost to at this step."""
        frac = min(1.0, self.step_count / max(1.0, self.ramp * self.steps)) if self.ramp else 1.0
        return 1.0 + (self.keep - 1.0) * frac

    def expected_cost(self) -> torch.Tensor:
        p = self.gates.open_probability().double().cpu()
        return self.flops(p) / self.flops.dense if self.budget == "flops" else p.mean()

    def phase_step(self, phase: str, x, y) -> tuple:
        self.step_count += 1
        self.model.train()
        params = {n: p for n, p in self.model.named_parameters()}
        tensors = {**params, **dict(self.model.named_buffers())}
        z = self.gates.sample(self.generator)
        loss = self.loss_fn(first_output(call_model(self.model, self.gates.gated(tensors, z), x)), y)
        gap = self.expected_cost().to(loss.device, torch.float32) - self.target()
        lagrangian = self.multipliers[0] * gap + self.multipliers[1] * gap * gap
        self.optimizer.zero_grad(set_to_none=True)
        self.gate_optimizer.zero_grad(set_to_none=True)
        self.multiplier_optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            (loss + lagrangian).backward()
            self.optimizer.step()
            self.gate_optimizer.step()
            self.multiplier_optimizer.step()
        self.last_cost = float(gap.detach()) + self.target()
        return loss.detach(), [], TRAIN_FACTOR * self.flops.dense  # a dense step: nothing is removed

    def _mask(self) -> dict:
        scores = {g.id: part.detach().double().cpu()
                  for g, part in zip(self.gates.groups, torch.split(self.gates.log_alpha, self.gates.sizes))}
        return keep_top(self.graph, scores, self.keep, scope="global", budget=self.budget)

    def phase_masks(self, phase: str) -> dict:
        return self._mask()

    def final_masks(self, run: RunContext) -> dict:
        """The top of ``log_alpha`` filling the budget; the kept channels' deterministic gates
        are folded into the model's parameters (the exported model then computes what the
        gated model computed on them)."""
        masks = self._mask()
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            folded = self.gates.gated(params, self.gates.deterministic().detach())
            for name in self.gates.targets:
                params[name].copy_(folded[name])
        return masks

    def report(self, phase: str, tally) -> dict:
        if phase != GATES:
            return {}
        p = self.gates.open_probability().detach().cpu()
        return dict(expected_keep=float(p.mean()), expected_flops_frac=float(self.flops(p.double())) / self.flops.dense,
                    realised_keep=1.0, realised_flops_frac=1.0, gate_target=self.target(),
                    multipliers=self.multipliers.detach().cpu().tolist())

    def state_dict(self) -> dict:
        if self.gates is None:
            return {}
        return {"log_alpha": self.gates.log_alpha.detach().cpu(), "multipliers": self.multipliers.detach().cpu(),
                "gate_optimizer": self.gate_optimizer.state_dict(),
                "multiplier_optimizer": self.multiplier_optimizer.state_dict(),
                "generator": self.generator.get_state(), "step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self._saved = state if state else None
