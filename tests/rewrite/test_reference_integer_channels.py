"""The masked reference of boolean and integer tensors that carry channels (#31): a removed
channel is False / 0 there, which is what the exported model (it has no such channel) adds
to a count or any() over channels; max/min/prod/all over channels leave it out through their
masked forms, with a neutral value of the tensor's dtype.

Each model: a conv, a mask or count of its output reduced over the channels, added to a
second conv's output. On a removed channel the conv's output is 0, so ``h <= 0.1`` is True
there: a reference that kept it would count it. Compared with the export at two keep-0.5
masks under both captures."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import fxsparse
import fxsparse.analysis.analyze as analyze_module
from fxsparse.core.errors import TraceError

pytestmark = pytest.mark.usefixtures("single_thread")

# name -> op(h) over the first conv's output, reduced over its channels (dim 1)
OPS = {
    "bool_sum": lambda h: (h <= 0.1).sum(1, keepdim=True),
    "long_count": lambda h: (h <= 0.1).long().sum(1, keepdim=True),
    "where_count": lambda h: torch.where(h > 0, 0, 1).sum(1, keepdim=True),
    "masked_fill_count": lambda h: torch.zeros_like(h, dtype=torch.long).masked_fill(h <= 0.1, 1).sum(1, keepdim=True),
    "where_int_amin": lambda h: torch.where(h > 0, 2, 3).amin(1, keepdim=True),
    "where_int_max": lambda h: torch.where(h > 0, 3, 2).max(1, keepdim=True)[0],
    "bool_amax": lambda h: (h > 0.1).amax(1, keepdim=True),
    "bool_any": lambda h: (h <= 0.1).any(1, keepdim=True),
    "bool_all": lambda h: (h > -0.1).all(1, keepdim=True),
}


class Counted(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 4, 1)
        self.op = op

    def forward(self, x):
        h = self.c1(x)
        return self.c2(torch.relu(h)) + self.op(h)


def _analyze(model, x, capture):
    if capture == "fx":
        return fxsparse.analyze(model, (x,))
    real = analyze_module.trace

    def no_trace(*args, **kwargs):
        raise TraceError("forced: capture with torch.export")

    analyze_module.trace = no_trace
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export keeps the image size (PinnedSizeWarning)
            return fxsparse.analyze(model, (x,))
    finally:
        analyze_module.trace = real


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("name", list(OPS))
def test_a_reduced_boolean_or_integer_tensor_matches_the_export(name, capture):
    torch.manual_seed(0)
    model, x = Counted(OPS[name]).eval(), torch.randn(2, 3, 6, 6)
    graph = _analyze(model, x, capture)
    (group,) = [g for g in graph.groups if any(m.param == "c1.weight" and m.dim == 0 for m in g.members)]
    assert group.prunable, group.reason
    gen = torch.Generator().manual_seed(0)
    keeps = [fxsparse.random_keep(graph, 0.5, gen) for _ in range(2)]
    assert not torch.equal(keeps[0][group.id], keeps[1][group.id])
    for keep in keeps:
        small = fxsparse.export(model, graph, keep).eval()
        check = fxsparse.check_against_reference(small, graph, keep, (x,), atol=1e-5)
        assert check.ok, check.message
