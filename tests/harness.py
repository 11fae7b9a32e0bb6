"""Shared checks: analyze a model, export random keep masks, compare with the masked reference."""
from __future__ import annotations

import math

import torch

import fxsparse


def expected_param_count(model, graph, keep):
    """Parameter count after pruning, computed from the groups (independently of export)."""
    masks = fxsparse.normalize_keep(graph, keep)
    kept_per = {}  # (param, dim) -> set of removed indices
    for g in graph.groups:
        drop = (~masks[g.id]).nonzero().flatten().tolist()
        for m in g.members:
            s = kept_per.setdefault((m.param, m.dim), set())
            for j in drop:
                s.update(int(i) for i in m.index[j])
    total = 0
    for name, p in model.named_parameters():
        sizes = list(p.shape)
        for (pname, dim), removed in kept_per.items():
            if pname == name:
                sizes[dim] -= len(removed)
        total += math.prod(sizes)
    return total


def check_export(model, inputs, *, n_masks=5, ratios=(0.2, 0.5, 0.9), seed=0, atol=1e-4, graph=None):
    """Returns the graph; asserts export == masked reference for random masks."""
    model.eval()
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    graph = graph or fxsparse.analyze(model, inputs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dense = model(*inputs)
    for i in range(n_masks):
        ratio = ratios[i % len(ratios)] if ratios else float(torch.empty(1).uniform_(0.2, 0.9, generator=gen))
        keep = fxsparse.random_keep(graph, ratio, gen)
        small = fxsparse.export(model, graph, keep)
        small.eval()
        check = fxsparse.check_against_reference(small, graph, keep, inputs, atol=atol)
        assert check.ok, f"mask {i} (keep {ratio}): {check.message}"
        check.first_output.float().sum().backward()
        assert all(p.grad is not None for p in small.parameters() if p.requires_grad)
        n = sum(p.numel() for p in small.parameters())
        assert n == expected_param_count(model, graph, keep)
        if any(not bool(m.all()) for m in keep.values()):
            assert n < sum(p.numel() for p in model.parameters())
    # the original is untouched
    with torch.no_grad():
        assert torch.equal(model(*inputs), dense)
    return graph
