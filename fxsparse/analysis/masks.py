"""Keep masks: one bool tensor per prunable group (True = channel kept)."""
from __future__ import annotations

import numpy as np
import torch

from fxsparse.core.errors import ExportError, KeepMaskError
from fxsparse.analysis.graph import ChannelGraph
from fxsparse.analysis.tied import untied_drops
from fxsparse.passes.slice_channels import tied_names


def check_fraction(value, name: str = "keep", error: type = KeepMaskError) -> None:
    """``value`` must be a number in (0, 1] (not a bool, not NaN): else ``error`` (a
    :class:`KeepMaskError` by default, which is also a ValueError) naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not 0 < value <= 1:
        raise error(f"{name} must be a number in (0, 1], got {value!r}")


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` (a loss, a few losses) is finite: a step that sees a
    non-finite loss is skipped."""
    return bool(torch.isfinite(t).all())


def check_no_nan(t: torch.Tensor, message: str, error: type = ValueError) -> None:
    """``error(message)`` when the floating-point tensor ``t`` holds a NaN."""
    if t.is_floating_point() and bool(torch.isnan(t).any()):
        raise error(message)


def check_finite_scores(scores: torch.Tensor, what: str) -> None:
    """ValueError when ``scores`` (of ``what``) contain NaN: the scoring pass diverged."""
    check_no_nan(scores, f"the scores of {what} contain NaN; the scoring pass diverged "
                 "(try float64, a smaller learning-rate-free input, or another method)")


def top_mask(scores: torch.Tensor, k: int, what: str = "the scores") -> torch.Tensor:
    """Flat bool mask of exactly the ``k`` largest entries, ties to the lower index (the
    first k of a stable descending sort), found with one ``kthvalue`` (O(n)) instead of a
    full sort: the threshold only splits off the strict winners; the tied entries at the
    threshold are then taken in index order until exactly k are kept. Never a threshold
    alone (which would keep every tied entry). NaN scores raise ValueError."""
    s = scores.detach().flatten()
    check_finite_scores(s, what)
    n = s.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=s.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=s.device)
    thr = torch.kthvalue(s.cpu() if s.device.type == "mps" else s, n - k + 1).values.to(s.device)
    mask = s > thr
    need = k - int(mask.sum())
    tied = torch.nonzero(s == thr).flatten()[:need]
    mask[tied] = True
    return mask


def random_keep(graph: ChannelGraph, ratio: float, generator: torch.Generator | None = None) -> dict[int, torch.Tensor]:
    """Keep round(ratio * size) random channels of every prunable group (at least one)."""
    check_fraction(ratio, "keep ratio")
    out = {}
    for g in graph.prunable_groups:
        k = max(1, round(ratio * g.size))
        idx = torch.randperm(g.size, generator=generator)[:k]
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[idx] = True
        out[g.id] = mask
    return out


def topk_keep(graph: ChannelGraph, scores: dict[int, torch.Tensor], ratio: float) -> dict[int, torch.Tensor]:
    """Keep the round(ratio * size) highest-scoring channels of every prunable group (at least
    one); ties go to the lower channel index (:func:`top_mask`, the methods' rule)."""
    check_fraction(ratio, "keep ratio")
    out = {}
    for g in graph.prunable_groups:
        if g.id not in scores:
            raise KeepMaskError(f"no scores for prunable group {g.id}; pass a score tensor of size {g.size} for it")
        s = torch.as_tensor(scores[g.id]).flatten()
        if s.numel() != g.size:
            raise KeepMaskError(f"scores for group {g.id} have {s.numel()} entries, the group has {g.size} channels")
        out[g.id] = top_mask(s.float(), max(1, round(ratio * g.size)), f"group {g.id}")
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


def kept_indices(graph: ChannelGraph, keep) -> dict[str, dict[int, torch.Tensor]]:
    """{parameter or buffer name: {dim: kept indices}} for a keep pattern: what export keeps.
    A tied tensor is listed under its first name (the one ``named_parameters()`` gives)."""
    masks = normalize_keep(graph, keep or {})
    per_name: dict[str, dict[int, list]] = {}
    for g in graph.groups:
        keep_g = masks[g.id].numpy()
        if keep_g.all():
            continue
        for m in g.members:
            drop = np.concatenate([m.index[j] for j in np.nonzero(~keep_g)[0]])
            per_name.setdefault(m.param, {}).setdefault(m.dim, []).append(drop)
    drops = _one_entry_per_tensor(graph, per_name)
    sizes = dict(graph.gm.named_parameters())
    sizes.update(dict(graph.gm.named_buffers()))
    out = {}
    for name, per_dim in drops.items():
        out[name] = {}
        for dim, parts in per_dim.items():
            removed = np.unique(np.concatenate(parts))
            out[name][dim] = torch.as_tensor(np.setdiff1d(np.arange(sizes[name].shape[dim]), removed), dtype=torch.long)
    return out


def _one_entry_per_tensor(graph: ChannelGraph, per_name: dict) -> dict:
    """The dropped indices per tensor, a tied one under its first name: every name of it must
    drop the same ones (the analysis couples them), else the slice would fit one user only."""
    out = {}
    for first, aliases in tied_names(graph.gm).items():
        named = {name: per_name[name] for name in aliases if name in per_name}
        if not named:
            continue
        flat = {name: {dim: np.concatenate(parts) for dim, parts in dims.items()} for name, dims in named.items()}
        why = untied_drops(first, flat)
        if why is not None:
            raise ExportError(f"{why}. This is an fxsparse bug: the analysis should have coupled the tied "
                              "tensor's channels; please report it with the model.")
        out[first] = next(iter(named.values()))
    return out
