"""The last vision failures of issue #31, each on a tiny model: timm ViT heads (an optional
``attn_mask`` input that holds None), a Swin-V2-style attention whose relative-position bias
comes from an MLP with one output per head, a relative-position table viewed to a constant
size, a ConvMixer's depthwise conv in the capacity model, and a tensor cached as a plain
attribute during torch.export capture."""
import pytest
import torch

import fxsparse
from harness import check_export

timm = fxsparse.zoo.import_timm()
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def flops_at(model, graph, inputs, keep=0.5):
    """FLOPs of the export at ``keep`` of every prunable group, as a fraction of dense."""
    small = fxsparse.export(model, graph, fxsparse.random_keep(graph, keep, torch.Generator().manual_seed(0)))
    return fxsparse.count_flops(small, inputs)[0] / fxsparse.count_flops(model, inputs)[0]


def head_groups(graph, param_suffix):
    return [g for g in graph.groups if any(m.param.endswith(param_suffix) for m in g.members)]


# 1. timm's Attention passes its optional attn_mask input (None) to SDPA as a graph node
@needs_timm
def test_timm_vit_heads_prune():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                              pretrained=False, num_classes=10).eval()
    x = (torch.randn(2, 3, 32, 32),)
    graph = fxsparse.analyze(model, x)
    heads = head_groups(graph, "attn.proj.weight")
    heads = [g for g in heads if g.size == 3]  # vit_tiny: 3 heads per block
    assert len(heads) == 2 and all(g.prunable for g in heads), [(g.size, g.reason) for g in heads]
    check_export(model, x, n_masks=2, ratios=(0.5,), graph=graph)
    assert flops_at(model, graph, x) <= 0.35
