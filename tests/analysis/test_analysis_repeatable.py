"""``analyze`` leaves the model's Python state as it was: a forward that caches (timm's LeViT
keeps its attention biases in a dict in eval mode) must not change the next analysis, so
``analyze`` and ``fxsparse.compile`` of one model give the same groups, and masks from one
apply to the other."""
import time

import pytest
import torch
import torch.nn as nn

import fxsparse


class CachingBlock(nn.Module):
    """A learned per-channel bias, cached in eval mode as LeViT caches its attention biases."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.bias_table = nn.Parameter(torch.randn(c))
        self.cache = {}

    def bias(self, device):
        if self.training:
            return self.bias_table
        key = str(device)
        if key not in self.cache:
            self.cache[key] = self.bias_table * 1.0
        return self.cache[key]

    def forward(self, x):  # traced by torch.fx, the cache would keep a Proxy of the trace
        return torch.relu(self.conv(x) + self.bias(x.device).view(1, -1, 1, 1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = CachingBlock(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def _signature(graph):
    return [(g.id, g.size, g.prunable, g.reason) for g in graph.groups]


def test_analysis_is_repeatable_on_a_model_that_caches():
    model = Net().eval()
    x = torch.randn(2, 3, 6, 6)
    first = fxsparse.analyze(model, x)
    assert model.block.cache == {}  # left as it was
    assert _signature(fxsparse.analyze(model, x)) == _signature(first)
    assert all(m.param in dict(model.named_parameters()) for g in first.groups for m in g.members
               if not m.param.endswith(("running_mean", "running_var")))  # no captured cache among them
    keep = fxsparse.random_keep(first, 0.5, torch.Generator().manual_seed(0))
    sp = fxsparse.compile(model, x, keep=0.5, compile=False)
    sp.masks = keep  # analyze's mask applies to compile's model
    assert _signature(sp.channel_graph) == _signature(first)


def test_levit_gives_the_same_groups_to_analyze_and_compile():
    from fxsparse.zoo import import_timm

    timm = import_timm()
    model = timm.create_model("levit_128s", pretrained=False, num_classes=10, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    graph = fxsparse.analyze(model, x)
    assert len(graph.prunable_groups) > 20
    sp = fxsparse.compile(model, x, keep=0.5, compile=False)
    assert _signature(sp.channel_graph) == _signature(graph)
    sp.masks = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
