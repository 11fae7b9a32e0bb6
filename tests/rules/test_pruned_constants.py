"""Constant sizes that name a pruned channel count: a relative-position bias table indexed
and reshaped with constant sizes (Swin's ``table[index].view(N, N, heads)``) and a parameter
expanded to constant sizes (``cls_token.expand(2, 1, 16)``). Export rewrites those sizes
(or the analysis keeps the channels): analyze -> export at random keeps -> the exported
model equals the masked reference, under both capture frontends."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from harness import check_export

pytestmark = pytest.mark.usefixtures("single_thread")

WINDOW, HEADS, DIM = 4, 4, 16
N = WINDOW * WINDOW


class RelativeBiasAttention(nn.Module):
    """Window attention with a relative-position bias: ``table[index].view(N, N, HEADS)``
    (constant sizes, the head count among them) added to the per-head scores."""

    size = WINDOW  # one window of WINDOW x WINDOW tokens

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, DIM, 1)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.table = nn.Parameter(torch.randn((2 * WINDOW - 1) ** 2, HEADS))
        coords = torch.stack(torch.meshgrid(torch.arange(WINDOW), torch.arange(WINDOW), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + WINDOW - 1
        self.register_buffer("index", (rel[:, :, 0] * (2 * WINDOW - 1) + rel[:, :, 1]).flatten())
        self.head = nn.Linear(DIM, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # [B, N, DIM]
        B = x.shape[0]
        q, k, v = self.qkv(x).reshape(B, N, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        bias = self.table[self.index].view(N, N, HEADS).permute(2, 0, 1)
        attn = (q @ k.transpose(-2, -1) + bias.unsqueeze(0)).softmax(-1)
        x = self.proj((attn @ v).transpose(1, 2).reshape(B, N, DIM))
        return self.head(x.mean(1))


class ExpandedToken(nn.Module):
    """A class token expanded to constant sizes (its width is the pruned embedding dim)."""

    size = 16

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, DIM, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, DIM))
        self.mlp = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(2, 1, DIM), x], dim=1)
        x = x + F.gelu(self.mlp(x))
        return self.head(x[:, 0])


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("cls", [RelativeBiasAttention, ExpandedToken])
def test_constant_sizes_of_pruned_dims(cls, frontend, monkeypatch):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(2, 3, cls.size, cls.size)
    if frontend == "export":  # as if symbolic tracing failed: the torch.export capture
        import fxsparse.analysis.analyze as analyze_module

        monkeypatch.setattr(analyze_module, "is_transformers_model", lambda m: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fxsparse.analyze(model, x)
    pruned_params = {m.param for g in graph.prunable_groups for m in g.members}
    assert {"table", "cls"} & pruned_params  # the dim the constant names is pruned, not kept whole
    check_export(model, (x,), n_masks=4, ratios=None, graph=graph)
