"""Loss scaling (fp16) of the compact step with a ``torch.amp.GradScaler``: the backward runs on
the scaled loss, the gradients are unscaled before the update, and a step whose gradients
overflowed updates nothing and backs the scale off."""
from __future__ import annotations

import torch


class LossScaling:
    """Loss scaling of the compact step with a ``torch.amp.GradScaler`` (or an object with
    its public API: ``scale``, ``update(new_scale)``, ``get_growth_factor``,
    ``get_backoff_factor``, ``get_growth_interval``). The scaler's own ``unscale_`` /
    ``step`` work on an optimizer's ``p.grad``, and the compact step's gradients are on
    gathered leaves, so the unscaling and the growth/backoff are done here: the scale is
    set through ``update(new_scale=...)``, and the count of good steps since the last
    change is kept here (``state_dict``: a checkpoint of the step saves it with the
    scaler's)."""

    def __init__(self, scaler=None):
        enabled = scaler is not None and getattr(scaler, "is_enabled", lambda: True)()
        self.scaler = scaler if enabled else None
        self.good_steps = 0   # unskipped steps since the scale last changed
        self.overflows = 0    # steps skipped because a gradient overflowed
        self.scale = None     # this step's scale, a 0-dim tensor on the device

    def backward(self, loss):
        if self.scaler is None:
            loss.backward()
            return
        # the scale as a tensor (get_scale() would sync with the device)
        self.scale = self.scaler.scale(torch.ones((), device=loss.device, dtype=torch.float32))
        self.scaler.scale(loss).backward()

    @torch.no_grad()
    def unscale_(self, grads, device) -> torch.Tensor:
        """``grads`` divided by the scale in place (the fused kernel GradScaler.unscale_
        runs); a 1-element tensor, nonzero when one of them holds an inf/NaN. No sync."""
        found_inf = torch.zeros(1, device=device, dtype=torch.float32)
        inv_scale = self.scale.double().reciprocal().float()
        by_dtype = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for group in by_dtype.values():
            torch._amp_foreach_non_finite_check_and_unscale_(group, found_inf, inv_scale)
        return found_inf

    def update(self, overflow: bool):
        """GradScaler's schedule: back off at an overflow, grow after ``growth_interval``
        good steps in a row (not to an inf)."""
        if overflow:
            self.overflows += 1
            self.good_steps = 0
            self.scaler.update(new_scale=self.scale * self.scaler.get_backoff_factor())
            return
        self.good_steps += 1
        if self.good_steps >= self.scaler.get_growth_interval():
            self.good_steps = 0
            grown = self.scale * self.scaler.get_growth_factor()
            self.scaler.update(new_scale=torch.where(torch.isfinite(grown), grown, self.scale))

    def state_dict(self) -> dict:
        return {"good_steps": self.good_steps, "overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        self.good_steps, self.overflows = int(state["good_steps"]), int(state["overflows"])


def load_scaling_state(step, state: dict) -> None:
    """Restore a step's :meth:`LossScaling.state_dict` (and its ``step.overflows``)."""
    step.loss_scaling.load_state_dict(state)
    step.overflows = step.loss_scaling.overflows
