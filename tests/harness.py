"""Shared checks: analyze a model, export random keep masks, compare with the masked reference."""
from __future__ import annotations

import math

import torch

import fxsparse
from fxsparse.rewrite.reference import masked_reference


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


def check_chain(model, inputs, graph, first, *, compiled=False, unused=(), on_export=None):
    """Two random keep-0.5 masks (seed 0, different): each export equals the masked reference
    (``first`` picks the compared tensor of an output) and its backward reaches every trainable
    parameter but those in ``unused``; ``on_export(keep, small)`` then checks more. Last, the
    sparse model (``compiled`` or eager) at the last mask equals that export and its backward
    reaches the model. Returns the masks."""
    gen = torch.Generator().manual_seed(0)
    keeps = [fxsparse.random_keep(graph, 0.5, gen) for _ in range(2)]
    assert any(not torch.equal(keeps[0][i], keeps[1][i]) for i in keeps[0])
    for keep in keeps:
        small = fxsparse.export(model, graph, keep).eval()
        out = first(small(*inputs))
        ref = first(masked_reference(graph, keep, *inputs))
        torch.testing.assert_close(out.detach(), ref.detach(), atol=1e-4, rtol=1e-4)
        out.sum().backward()
        assert all(p.grad is not None for n, p in small.named_parameters() if p.requires_grad and n not in unused)
        if on_export is not None:
            on_export(keep, small)
    sparse = fxsparse.compile(model, inputs, keep=0.5, compile=compiled, graph=graph)
    sparse.eval()
    sparse.masks = keeps[-1]
    out = first(sparse(*inputs))
    torch.testing.assert_close(out.detach(), first(small(*inputs)).detach(), atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    return keeps


# Widths/depths cut where the paper configuration is too slow for CI (structure unchanged).
ZOO_SMALL = {"vit_base": {"depth": 2}, "vit_small": {"depth": 2}, "unet": {"base_width": 16},
             "densenet121": {"growth_rate": 8}, "convnext_tiny": {"depths": (1, 1, 1, 1)}}


def zoo_small(name, in_chans):
    """A zoo model in its small CI configuration."""
    from fxsparse import zoo

    kw = ZOO_SMALL.get(name, {})
    try:
        return zoo.create(name, in_chans=in_chans, **kw)
    except TypeError:
        return zoo.create(name, in_chans=in_chans)
