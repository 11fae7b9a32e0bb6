"""RigL: Rigging the Lottery.

Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners",
ICML 2020 (arXiv 1911.11134); authors' code google-research/rigl (``SparseRigLOptimizer``).

Random sparse masks with Erdos-Renyi-Kernel densities (default; ``distribution="uniform"``
also offered). Every ``delta_t`` (100) optimizer steps, while the step number ``t``
(1-based, counted by this method and saved with it) is below ``T_end`` (default 75% of
``state.total_steps``; ``t_end`` sets it), in every sparse tensor with n active weights:

* drop ``floor(alpha_t * n)`` active weights with the smallest ``|theta|``, where
  ``alpha_t = alpha / 2 * (1 + cos(pi * t / T_end))`` (``alpha`` = 0.3; floor as the authors' code);
* grow the same number among the positions inactive after the drop with the largest
  ``|dL/dW|`` (the dense gradient of the effective weight of this step, captured by the
  mask parametrization's hook; ``original.grad`` is only ``grad * mask``);
* newly grown weights start at 0 and their optimizer state (momentum, Adam moments) is
  zeroed; weights dropped for good are zeroed too (and their state), so the invariant
  "the parameter is 0 wherever the mask is 0" holds. A weight dropped and regrown in the
  same update is kept as it was (the authors' ``reinit_when_same=False``).

Density is exactly constant per tensor. Ties go to the lower flat index (deterministic;
the authors add N(0, 1e-5) noise to the drop scores instead).

Deviation, on purpose: the authors' code skips the optimizer's weight update on a mask
update step (``tf.cond``); the hooks here run after ``optimizer.step()``, so the weights of
that step are updated first and then the masks (``after_step``), from the gradients of the
same step. One extra SGD step every ``delta_t`` steps; no other difference.

Sparse tensors: trainable parameters with >= 2 dims minus ``exclude``. Cost is dense
(parametrize masks, see :mod:`fxsparse.methods.unstructured`).
"""
from __future__ import annotations

import math

import torch

from .base import Method, TrainState
from .registry import register_method
from .options import check_choice, check_number, check_options, check_state_keys
from .unstructured import DynamicMaskMethod, sparsifiable_weights, topk_exact

__all__ = ["RigL", "rigl_drop_fraction"]


def rigl_drop_fraction(t: int, alpha: float, t_end: int) -> float:
    """Cosine-annealed drop fraction ``alpha / 2 * (1 + cos(pi * t / t_end))`` (0 from t_end on)."""
    if t_end <= 0 or t >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * t / t_end))


@register_method("rigl")
class RigL(DynamicMaskMethod, Method):
    """RigL (Evci et al., ICML 2020). ``keep``: overall density of the sparse tensors.

    Options: ``delta_t`` (100), ``alpha`` (0.3), ``end_fraction`` (0.75 of ``state.total_steps``)
    or ``t_end`` (steps, overrides), ``distribution`` ("erk" | "uniform"), ``erk_power_scale`` (1.0),
    ``exclude`` (parameter names kept dense).
    """
    level = "weight"
    paper = "Evci, Gale, Menick, Castro, Elsen. Rigging the Lottery: Making All Tickets Winners. ICML 2020"
    DEFAULTS = {"delta_t": 100, "alpha": 0.3, "end_fraction": 0.75, "t_end": None, "distribution": "erk",
                "erk_power_scale": 1.0, "exclude": ()}

    def __init__(self, keep: float = 0.1, **options):
        super().__init__(keep, **options)
        o = check_options("rigl", options, self.DEFAULTS)
        check_number("rigl", "delta_t", o["delta_t"], lo=1, integer=True)
        check_number("rigl", "alpha", o["alpha"], lo=0, hi=1)
        check_number("rigl", "end_fraction", o["end_fraction"], lo=0, hi=1, lo_open=True)
        check_number("rigl", "t_end", o["t_end"], lo=1, integer=True, allow_none=True)
        check_choice("rigl", "distribution", o["distribution"], ("erk", "uniform"))
        check_number("rigl", "erk_power_scale", o["erk_power_scale"], lo=0)
        if isinstance(o["exclude"], str):
            o["exclude"] = [o["exclude"]]
        self.opts = o
        self.t = 0
        self.t_end = None
        self.updates = 0
        self._wm = None
        self.last_update: dict = {}

    # ----- schedule
    def drop_fraction(self, t: int) -> float:
        return rigl_drop_fraction(t, self.opts["alpha"], self.t_end)

    def is_update_step(self, t: int) -> bool:
        return t % int(self.opts["delta_t"]) == 0 and t < self.t_end

    def _arm_capture(self, next_t: int) -> None:
        on = self.is_update_step(next_t)
        for wm in self._wm.values():
            wm.dense_grad = None
            wm.capture_grad = on

    # ----- hooks
    def init(self, state: TrainState) -> None:
        if self.t_end is None:
            self.t_end = (int(self.opts["t_end"]) if self.opts["t_end"] is not None
                          else int(math.floor(self.opts["end_fraction"] * state.total_steps)))
        names = sparsifiable_weights(state.model, self.opts["exclude"])
        self._setup_masks(state, names, self.opts["distribution"], self.opts["erk_power_scale"])
        self._arm_capture(self.t + 1)

    def _capture_on_resume(self) -> bool:
        return self.t_end is not None and self.is_update_step(self.t + 1)

    def after_backward(self, state: TrainState) -> None:
        self._ensure_bound(state)

    def after_step(self, state: TrainState) -> None:
        self._ensure_bound(state)
        self.t += 1
        if self.is_update_step(self.t):
            self.update(state)
        self._arm_capture(self.t + 1)

    def update(self, state: TrainState, fraction: float = None) -> None:
        """One drop/grow of every sparse tensor at drop fraction ``fraction`` (default: the schedule's)."""
        frac = self.drop_fraction(self.t) if fraction is None else float(fraction)
        self.last_update = {"t": self.t, "fraction": frac}
        for name in self._names:
            wm, p = self._wm[name], self._orig[name]
            if wm.dense_grad is None:
                raise RuntimeError(f"rigl: no dense gradient was captured for {name!r} at step {self.t}; "
                                   f"the step's forward/backward must run with autograd on the masked model")
            old = wm.mask.view(-1).clone()
            n_active = int(old.sum())
            n = int(math.floor(frac * n_active))
            w = (p.detach() * wm.mask).abs().reshape(-1)
            inf = torch.tensor(float("inf"), dtype=w.dtype, device=w.device)
            dropped = topk_exact(torch.where(old, w, inf), n, largest=False)
            after_drop = old.clone()
            after_drop[dropped] = False
            g = wm.dense_grad.abs().reshape(-1)
            grow = topk_exact(torch.where(after_drop, torch.full_like(g, float("-inf")), g), n)
            new = after_drop.clone()
            new[grow] = True
            newly = grow[~old[grow]]
            self._rewire(name, new, state.optimizer, grown=newly)
            self.last_update[name] = {"dropped": dropped, "grown": grow, "new": newly}
        self.updates += 1

    # ----- state
    def state_dict(self) -> dict:
        return {"masks": self._masks_state(), "t": self.t, "t_end": self.t_end, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        check_state_keys("rigl", state, {"masks", "t", "t_end", "updates"})
        self._load_masks(state["masks"])
        self.t, self.t_end, self.updates = int(state["t"]), state["t_end"], int(state["updates"])
        if self._wm is not None:
            self._arm_capture(self.t + 1)
