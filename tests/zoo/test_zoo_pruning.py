"""Every zoo model: analyze, export at keep 0.5, forward + backward, equal to the masked
reference, fewer FLOPs and parameters than the dense model."""
import warnings

import pytest
import torch

import fxsparse
from fxsparse import zoo
from fxsparse.analysis.graph import count_flops
from harness import check_export, zoo_small as build
from lanes import zoo_fast_subset

# one model per family in the fast lane, every model in the full suite
@pytest.mark.parametrize("name", zoo_fast_subset(zoo.names()))
def test_zoo_model_prunes(name):
    torch.manual_seed(0)
    shape = (1,) + zoo.info(name).default_input
    model = build(name, shape[1]).eval()
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a zoo model must trace without falling back to leaves
        warnings.simplefilter("ignore", fxsparse.PinnedSizeWarning)  # LeNet's flatten, ViT's position table
        graph = fxsparse.analyze(model, (x,))
    assert graph.prunable_groups, "every zoo family has prunable channels"
    check_export(model, x, n_masks=5, ratios=(0.2, 0.375, 0.55, 0.725, 0.9), graph=graph)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1))
    small = fxsparse.export(model, graph, keep)
    dense_flops, _ = count_flops(model, (x,))
    small_flops, _ = count_flops(small, (x,))
    assert small_flops < dense_flops
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
