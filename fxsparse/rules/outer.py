"""Outer products of two channel axes (``dt[:, :, None] * B[:, None, :]``, ``x @ (a * b)^T``,
``einsum('bclhn,bclhp->bchpn')``): every output position belongs to a channel of each side,
which one ids array cannot hold, so one side keeps its channels and the other's cannot be
removed. The side kept is the one whose channels hold the most parameter entries so far (a
state-space model's inner channels or heads, not its small state dim), by count on a tie.
"""
from __future__ import annotations

import numpy as np


def parameter_weight(ctx, line) -> float:
    """Parameter entries held by the channel classes of ``line`` (the members seen so far)."""
    classes = set(int(e) for e in np.unique(ctx.elements.canonical(np.asarray(line))) if e >= 0)
    total = 0.0
    for (qualname, dim), ids in ctx.members.items():
        canon = ctx.elements.canonical(ids)
        hits = int(np.isin(canon, list(classes)).sum()) if classes else 0
        if hits:
            p = ctx.param(qualname)
            total += hits * p.numel() / p.shape[dim]
    return total


def keep_one_axis(ctx, sides, loc) -> int:
    """``sides``: [(label, 1-D ids)]. Marks every side but the heaviest unprunable, naming
    both; returns the index of the side kept."""
    weights = [(parameter_weight(ctx, line), len(line)) for _, line in sides]
    kept = max(range(len(sides)), key=lambda i: weights[i])
    for i, (label, line) in enumerate(sides):
        if i != kept:
            ctx.unprunable(line, f"{loc}: an outer product of the channels of {sides[kept][0]} and {label}; one ids "
                                 f"array holds one of them, and {sides[kept][0]}'s hold more parameters")
    return kept


__all__ = ["keep_one_axis", "parameter_weight"]
