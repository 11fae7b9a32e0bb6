"""Channel scores that more than one method reads: the L1 norm of a channel's producing
filters (the ``l1_filter`` method's score, and the within-group order of VR-PGE's width
search)."""
from __future__ import annotations

from .select import group_scores, weight_out_dims


def filter_l1(graph, model, side: str = "out", reduce: str = "sum") -> dict:
    """{group id: float64 tensor[size]}: each prunable channel's L1 norm over the group's
    producing filters (``side="out"``) or every weight member (``"all"``); see the module
    docstring. Also the within-block order of the width-learning structure search."""
    out_dims = weight_out_dims(model)
    params = dict(model.named_parameters())
    absw = {n: params[n].detach().abs() for n in out_dims if n in params}
    every = group_scores(graph, absw, reduce=reduce)
    scores = every
    if side == "out":
        scores = group_scores(graph, absw, reduce=reduce, where=lambda m: m.dim == out_dims[m.param])
        scores = {gid: scores.get(gid, v) for gid, v in every.items()}
    if not scores:
        raise ValueError("l1_filter: no prunable group has a convolution or linear weight to score; "
                         "use another method (e.g. random)")
    return scores
