"""Convs whose forward standardises their weight (timm's StdConv2d / ScaledStdConv2d
style: ``conv(x, f(weight))``): analyze traces them as leaves with a rule, so their
channels prune (traced into, the computed weight blocked every channel); export slices
the weight, and the masked reference / sparse step compute ``f`` over the kept input
channels only, as the exported model does."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from harness import check_export
from sparse_checks import check_steps

pytestmark = pytest.mark.usefixtures("single_thread")


class StdConv2d(nn.Conv2d):
    """timm.layers.StdConv2d: weight standardised per output channel with F.batch_norm."""

    def __init__(self, *args, eps=1e-6, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x):
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(nn.Conv2d):
    """timm.layers.ScaledStdConv2d: mean/var by hand, a learned per-output-channel gain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)
        self.scale = self.weight[0].numel() ** -0.5

    def forward(self, x):
        mean = self.weight.mean(dim=(1, 2, 3), keepdim=True)
        var = self.weight.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        weight = (self.weight - mean) * torch.rsqrt(var + 1e-5) * self.gain * self.scale
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


class WSNet(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.c1 = conv(3, 8, 3, padding=1)
        self.n1 = nn.GroupNorm(4, 8)
        self.c2 = conv(8, 12, 3, padding=1)
        self.c3 = conv(12, 12, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = F.relu(self.n1(self.c1(x)))
        y = F.relu(self.c2(x))
        y = y + F.relu(self.c3(y))
        return self.fc(F.group_norm(y, 3).mean((2, 3)))


@pytest.mark.parametrize("conv", [StdConv2d, ScaledStdConv2d])
def test_weight_standardised_convs_prune(conv):
    torch.manual_seed(0)
    model = WSNet(conv).eval()
    x = torch.randn(2, 3, 8, 8)
    graph = fxsparse.analyze(model, x)
    assert {"c1", "c2", "c3"} <= {m.layer for g in graph.prunable_groups for m in g.members}
    check_export(model, (x,), n_masks=4, ratios=None, graph=graph)
    target = torch.randint(0, 10, (2,))
    check_steps(WSNet(conv), (x,), target, F.cross_entropy, steps=1, train=False, dtype=torch.float64, tol=1e-9)
