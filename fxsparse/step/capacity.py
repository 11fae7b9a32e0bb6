"""How a SparseModel chooses its capacities: the mode (dynamic, else static slots), the slot
alignment, and when a static capacity set is re-planned (grow before masks overflow, shrink once
the keep probabilities have sharpened and the saving repays a recompile). The slot arithmetic
itself is the plan's (:class:`fxsparse.rewrite.layout.Plan`)."""
from __future__ import annotations

import torch

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.rewrite.layout import Plan
from fxsparse.rewrite.shape_free import ShapeFree, shape_free


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


def resolve_align(align, model, dynamic: bool) -> int:
    """``align`` checked, or its default: 8 when the model is on a GPU, on a CPU
    :func:`cpu_channel_block` for dynamic capacities and 1 for static ones."""
    if align is not None and (isinstance(align, bool) or not isinstance(align, int) or align < 1):
        raise ValueError(f"align must be a positive int, got {align!r}; or None: 8 on a GPU, on a CPU "
                         f"{cpu_channel_block()} for dynamic capacities and 1 for static ones")
    if align is not None:
        return align
    on_gpu = any(p.device.type == "cuda" for p in model.parameters())
    return 8 if on_gpu else cpu_channel_block() if dynamic else 1


class CapacityFit:
    """Re-planning of static capacities for masks drawn from keep probabilities, priced in the
    capacity model's forward FLOPs; ``shrinks`` counts the shrinks once compiled."""

    def __init__(self, plan: Plan, graph: ChannelGraph):
        self.plan = plan
        self.graph = graph
        self.shrinks = 0
        self._flops = None

    def fitted(self, probs, masks, compiled: bool, *, headroom: float, grow_at: float, slack: float,
               shrink_gain: float, max_shrinks: int, shrink: bool, remaining_steps: int | None,
               recompile_steps: float, spread: dict[int, float] | None) -> list[int] | None:
        """New capacities, or None to keep them (see :meth:`fxsparse.SparseModel.fit_capacity`)."""
        if compiled and remaining_steps is not None:
            shrink_gain = max(shrink_gain, recompile_steps / max(remaining_steps, 1))
        caps, shrank = self.plan.fitted_caps(probs, masks, self.cost, headroom=headroom, grow_at=grow_at,
                                             slack=slack, shrink_gain=shrink_gain, shrink=shrink and not (
                                                 compiled and self.shrinks >= max_shrinks), spread=spread)
        self.shrinks += compiled and shrank
        return caps

    def cost(self, caps) -> float:
        """Forward FLOPs of the capacity model with these capacities."""
        from fxsparse.analysis.flops import SubnetFlops

        if self._flops is None:
            self._flops = SubnetFlops(self.graph)
        return float(self._flops(self._flops.flat(self.plan.cap_keep(caps))))
