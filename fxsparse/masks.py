"""Keep masks: one bool tensor per prunable group (True = channel kept)."""
from __future__ import annotations

import torch

from .errors import KeepMaskError
from .graph import ChannelGraph


def _check_ratio(ratio):
    if not isinstance(ratio, (int, float)) or ratio != ratio or not 0 < ratio <= 1:
        raise KeepMaskError(f"keep ratio must be a number in (0, 1], got {ratio!r}")


def random_keep(graph: ChannelGraph, ratio: float, generator: torch.Generator | None = None) -> dict[int, torch.Tensor]:
    """Keep round(ratio * size) random channels of every prunable group (at least one)."""
    _check_ratio(ratio)
    out = {}
    for g in graph.prunable_groups:
        k = max(1, round(ratio * g.size))
        idx = torch.randperm(g.size, generator=generator)[:k]
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[idx] = True
        out[g.id] = mask
    return out


def topk_keep(graph: ChannelGraph, scores: dict[int, torch.Tensor], ratio: float) -> dict[int, torch.Tensor]:
    """Keep the round(ratio * size) highest-scoring channels of every prunable group (at least one)."""
    _check_ratio(ratio)
    out = {}
    for g in graph.prunable_groups:
        if g.id not in scores:
            raise KeepMaskError(f"no scores for prunable group {g.id}; pass a score tensor of size {g.size} for it")
        s = torch.as_tensor(scores[g.id]).flatten()
        if s.numel() != g.size:
            raise KeepMaskError(f"scores for group {g.id} have {s.numel()} entries, the group has {g.size} channels")
        k = max(1, round(ratio * g.size))
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[torch.topk(s.float(), k).indices] = True
        out[g.id] = mask
    return out


def normalize_keep(graph: ChannelGraph, keep) -> dict[int, torch.Tensor]:
    """Validate ``keep`` ({group id: bool mask or index tensor}) and return bool masks for every group."""
    if not isinstance(keep, dict):
        raise KeepMaskError(f"keep must map group id -> bool mask or index tensor, got {type(keep).__name__}")
    out = {g.id: torch.ones(g.size, dtype=torch.bool) for g in graph.groups}
    for gid, mask in keep.items():
        if not isinstance(gid, int) or not 0 <= gid < len(graph.groups):
            raise KeepMaskError(f"keep names group {gid!r}, but the graph has groups 0..{len(graph.groups) - 1}")
        g = graph.groups[gid]
        mask = torch.as_tensor(mask)
        if mask.dtype == torch.bool:
            if mask.numel() != g.size:
                raise KeepMaskError(f"keep mask for group {gid} has {mask.numel()} entries, the group has {g.size} channels")
            m = mask.flatten().clone()
        else:
            idx = mask.flatten().long()
            if idx.numel() and (idx.min() < 0 or idx.max() >= g.size):
                raise KeepMaskError(f"keep indices for group {gid} must lie in [0, {g.size}), got {idx.tolist()[:8]}...")
            m = torch.zeros(g.size, dtype=torch.bool)
            m[idx] = True
        if not m.any():
            raise KeepMaskError(f"keep mask for group {gid} keeps no channel; every group keeps at least one")
        if not g.prunable and not m.all():
            raise KeepMaskError(f"group {gid} is not prunable ({g.reason}); keep all its channels")
        out[gid] = m
    return out
