"""SET: Sparse Evolutionary Training.

Mocanu, Mocanu, Stone, Nguyen, Gibescu, Liotta, "Scalable training of artificial neural
networks with adaptive sparse connectivity inspired by network science", Nature
Communications 9, 2383 (2018); authors' code dcmocanu/sparse-evolutionary-artificial-neural-networks.

Start from random sparse masks (Erdos-Renyi; here ``distribution="erk"``, which for a
linear layer is exactly the paper's ``eps (n_in + n_out) / (n_in n_out)``, with ``eps``
solved from ``keep``; or ``"uniform"``). After every epoch, in every sparse tensor:

* remove ``floor(zeta * P)`` of its P positive active weights, the smallest ones, and
  ``floor(zeta * Q)`` of its Q negative active weights, the largest ones (closest to zero on
  each side), plus any active weight that is exactly 0 (the authors' threshold test removes
  those too). Ties go to the lower flat index. The authors' code draws the two thresholds by
  index arithmetic, which removes one or two weights more or fewer; floor is RigL's count.
* regrow as many connections, uniformly at random (``torch.randperm`` from
  ``state.generator``) among the positions inactive after the removal (as the authors'
  code, a connection just removed may come back, as a new one).

New weights (``grow_init``): ``"zeros"`` (default; the authors' Keras code, the variant the
paper's experiments used, and RigL's SET baseline), ``"uniform"`` U(-l, l) with
``l = sqrt(6 / (fan_in + fan_out))`` of the tensor (the authors' sparse-NumPy code, which
takes fan_in/fan_out from the next layer by an indexing slip; here the tensor's own), or
``"normal"`` N(0, 0.1^2) (the authors' first NumPy version). The optimizer state of
removed and regrown weights is zeroed (the authors' code sets new momentum to 0).
Density is exactly constant per tensor. The connectivity is not changed after the last
epoch (``skip_last_epoch=True``, as the authors' code), judged from ``state.total_steps``
and ``state.steps_per_epoch``.

Sparse tensors: trainable parameters with >= 2 dims, minus ``exclude`` (biases and norm
parameters stay dense). The authors keep the output layer dense: pass its weight in
``exclude`` to do the same. Masks are applied with
:func:`~fxsparse.methods.unstructured.apply_weight_masks`, so the cost is dense.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .base import Method, TrainState
from .registry import register_method
from .options import check_choice, check_number, check_options, check_state_keys
from .unstructured import DynamicMaskMethod, sparsifiable_weights, topk_exact

__all__ = ["SET", "set_drop"]


def set_drop(weight: torch.Tensor, mask: torch.Tensor, zeta: float) -> torch.Tensor:
    """Flat bool mask of the active weights SET removes (see the module docstring)."""
    w = weight.detach().reshape(-1)
    m = mask.reshape(-1)
    pos, neg = m & (w > 0), m & (w < 0)
    drop = m & (w == 0)
    n_pos, n_neg = int(math.floor(zeta * int(pos.sum()))), int(math.floor(zeta * int(neg.sum())))
    ninf = torch.tensor(float("-inf"), dtype=w.dtype, device=w.device)
    drop[topk_exact(torch.where(pos, -w, ninf), n_pos)] = True  # smallest positives
    drop[topk_exact(torch.where(neg, w, ninf), n_neg)] = True   # largest negatives
    return drop


@register_method("set")
class SET(DynamicMaskMethod, Method):
    """SET (Mocanu et al., Nature Communications 2018). ``keep``: overall density of the sparse tensors.

    Options: ``zeta`` (0.3), ``distribution`` ("erk" | "uniform"), ``erk_power_scale`` (1.0),
    ``grow_init`` ("zeros" | "uniform" | "normal"), ``exclude`` (parameter names kept dense),
    ``skip_last_epoch`` (True).
    """
    level = "weight"
    paper = ("Mocanu et al. Scalable training of artificial neural networks with adaptive sparse connectivity "
             "inspired by network science. Nature Communications 9:2383 (2018)")
    DEFAULTS = {"zeta": 0.3, "distribution": "erk", "erk_power_scale": 1.0, "grow_init": "zeros", "exclude": (),
                "skip_last_epoch": True}

    def __init__(self, keep: float = 0.1, **options):
        super().__init__(keep, **options)
        o = check_options("set", options, self.DEFAULTS)
        check_number("set", "zeta", o["zeta"], lo=0, hi=1)
        check_choice("set", "distribution", o["distribution"], ("erk", "uniform"))
        check_number("set", "erk_power_scale", o["erk_power_scale"], lo=0)
        check_choice("set", "grow_init", o["grow_init"], ("zeros", "uniform", "normal"))
        check_choice("set", "skip_last_epoch", o["skip_last_epoch"], (True, False))
        if isinstance(o["exclude"], str):
            o["exclude"] = [o["exclude"]]
        self.opts = o
        self.epochs = 0
        self.updates = 0
        self._wm = None
        self.last_update: dict = {}

    def init(self, state: TrainState) -> None:
        names = sparsifiable_weights(state.model, self.opts["exclude"])
        self._setup_masks(state, names, self.opts["distribution"], self.opts["erk_power_scale"])

    def _is_last_epoch(self, state: TrainState) -> bool:
        if not self.opts["skip_last_epoch"]:
            return False
        total_epochs = math.ceil(max(state.total_steps, 1) / max(state.steps_per_epoch, 1))
        return self.epochs >= total_epochs

    def after_step(self, state: TrainState) -> None:
        self._ensure_bound(state)

    def end_epoch(self, state: TrainState) -> None:
        self._ensure_bound(state)
        self.epochs += 1
        if self._is_last_epoch(state):
            return
        self.evolve(state)

    def _grow_values(self, name: str, n: int, generator: torch.Generator) -> torch.Tensor:
        kind = self.opts["grow_init"]
        if kind == "zeros":
            return torch.zeros(n)
        if kind == "normal":
            return torch.randn(n, generator=generator) * 0.1
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(self._orig[name])
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1).mul(limit).to(torch.float32)

    def evolve(self, state: TrainState) -> None:
        """One SET update of every sparse tensor (what ``end_epoch`` runs)."""
        self.last_update = {}
        for name in self._names:
            wm, p = self._wm[name], self._orig[name]
            old = wm.mask.view(-1).clone()
            drop = set_drop(p.detach() * wm.mask, wm.mask, self.opts["zeta"])
            new = old & ~drop
            n = int(drop.sum())
            cand = (~new).nonzero().view(-1)
            grown = cand[torch.randperm(cand.numel(), generator=state.generator)[:n].to(cand.device)]
            new[grown] = True
            values = self._grow_values(name, n, state.generator)
            self._rewire(name, new, state.optimizer, grown=grown, grown_values=values)
            self.last_update[name] = {"dropped": drop.nonzero().view(-1), "grown": torch.sort(grown).values}
        self.updates += 1

    def state_dict(self) -> dict:
        return {"masks": self._masks_state(), "epochs": self.epochs, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        check_state_keys("set", state, {"masks", "epochs", "updates"})
        self._load_masks(state["masks"])
        self.epochs, self.updates = int(state["epochs"]), int(state["updates"])
