"""The gather: the dense tensors' entries at a step's slots (:class:`fxsparse.step.index.Slots`),
and its inverse, the scatter. Every path of the step reads the dense tensors through
:func:`gather` (the forward, the score forwards, the compact step's leaves, the optimizer
update) and writes them through :func:`scatter_`."""
from __future__ import annotations

import torch

from fxsparse.core.broadcast import along
from fxsparse.step.index import Slots


def gather(t: torch.Tensor, slots: tuple[Slots, ...]) -> torch.Tensor:
    """The entries of ``t`` at ``slots``: one index_select per gathered dim (contiguous slabs;
    much cheaper than a flat index)."""
    for s in slots:
        t = t.index_select(s.dim, s.index)
    return t


def gather_tensors(tensors: dict[str, torch.Tensor], slots: dict[str, tuple[Slots, ...]]) -> dict[str, torch.Tensor]:
    """Each tensor at its slots (those without slots as they are). Inside autograd, gradients
    land in the dense tensors at the gathered positions; compiled, one fused pass per tensor."""
    return {name: gather(t, slots[name]) if name in slots else t for name, t in tensors.items()}


def scatter_(t: torch.Tensor, slots: tuple[Slots, ...], values: torch.Tensor) -> None:
    """Inverse of :func:`gather`: write ``values`` to those slots of ``t``. Slot indices are
    distinct per dim (empty slots hold distinct pruned channels), so no write collides."""
    if len(slots) == 1:
        t.index_copy_(slots[0].dim, slots[0].index, values)
        return
    picked = {s.dim: s.index for s in slots}
    last = max(picked)
    index = []
    for d in range(last + 1):
        i = picked.get(d)
        if i is None:
            i = torch.arange(t.shape[d], device=t.device)
        index.append(along(i, d, last + 1))
    t.index_put_(tuple(index), values)


def real_slots(slots: tuple[Slots, ...], ndim: int) -> torch.Tensor:
    """Bool tensor, broadcastable to the gathered shape: True where every gathered dim holds
    a kept channel (an empty slot's entry must not change)."""
    real = None
    for s in slots:
        line = along(s.real, s.dim, ndim)
        real = line if real is None else real & line
    return real


@torch.no_grad()
def write_back_buffers(buffer_names, gathered, slots, dense) -> None:
    """Running statistics were updated in place on the gathered copies: write their real slots
    back to the dense buffers (empty slots point at distinct pruned channels and keep their old
    values)."""
    for name in buffer_names:
        where = slots.get(name)
        if where is None:
            continue
        full = dense[name]
        scatter_(full, where, torch.where(real_slots(where, full.dim()), gathered[name], gather(full, where)))
