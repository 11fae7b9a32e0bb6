"""The last vision failures of issue #31, each on a tiny model: timm ViT heads (an optional
``attn_mask`` input that holds None), a Swin-V2-style attention whose relative-position bias
comes from an MLP with one output per head, a relative-position table viewed to a constant
size, a ConvMixer's depthwise conv in the capacity model, and a tensor cached as a plain
attribute during torch.export capture."""
import itertools
import math
from typing import Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

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


# 2. Swin V2: the relative-position bias comes from an MLP with one output unit per head, the
# logits are scaled per head, and the attention is cosine (F.normalize)
def relative_position_bias_v2(table, index, window: int):
    """[1, heads, N, N] from the [(2w-1)^2, heads] table (wrapped like torchvision's helper)."""
    n = window * window
    return table[index].view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)


torch.fx.wrap("relative_position_bias_v2")


def window_attention_v2(x, qkv_weight, proj_weight, bias, window: int, num_heads: int, shift: int,
                        logit_scale, qkv_bias: Optional[torch.Tensor] = None, proj_bias: Optional[torch.Tensor] = None):
    """Windowed cosine attention over [B, H, W, C] (wrapped, so the capture goes to torch.export)."""
    B, H, W, C = x.shape
    w = window
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)
    if qkv_bias is not None:  # no key bias in Swin V2
        qkv_bias = qkv_bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length:2 * length].zero_()
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    attn = attn + bias
    attn = F.softmax(attn, dim=-1)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = F.linear(x, proj_weight, proj_bias)
    x = x.view(B, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x


torch.fx.wrap("window_attention_v2")


class WindowAttentionV2(nn.Module):
    """Swin-V2-style window attention (torchvision's structure, written from its description):
    cosine attention scaled by a per-head learned logit scale, plus a continuous relative-
    position bias from a small MLP over log-spaced coordinates with one output unit per head."""

    def __init__(self, dim, window, num_heads, shift=0):
        super().__init__()
        self.window, self.num_heads, self.shift = window, num_heads, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)) + 0.1 * torch.randn(num_heads, 1, 1))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 64), nn.ReLU(inplace=True), nn.Linear(64, num_heads, bias=False))
        r = torch.arange(-(window - 1), window, dtype=torch.float32)
        table = torch.stack(torch.meshgrid(r, r, indexing="ij")).permute(1, 2, 0).unsqueeze(0) / (window - 1) * 8
        self.register_buffer("relative_coords_table", torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0)
        c = torch.arange(window)
        coords = torch.stack(torch.meshgrid(c, c, indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_position_index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten())

    def forward(self, x):
        bias = relative_position_bias_v2(self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads),
                                         self.relative_position_index, self.window)
        bias = 16 * torch.sigmoid(bias)
        return window_attention_v2(x, self.qkv.weight, self.proj.weight, bias, self.window, self.num_heads,
                                   self.shift, self.logit_scale, self.qkv.bias, self.proj.bias)


class BlockV2(nn.Module):
    """Swin V2's post-norm residual block."""

    def __init__(self, dim, window, num_heads, shift):
        super().__init__()
        self.attn = WindowAttentionV2(dim, window, num_heads, shift)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.norm1(self.attn(x))
        return x + self.norm2(self.mlp(x))


class TinySwinV2(nn.Module):
    """Patch embedding, a plain and a shifted-window block, mean pool, classifier."""

    def __init__(self, dim=24, heads=6, window=4, classes=10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(BlockV2(dim, window, heads, 0), BlockV2(dim, window, heads, window // 2))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.blocks(self.embed(x).permute(0, 2, 3, 1))
        return self.head(x.mean((1, 2)))


def test_swin_v2_bias_follows_heads():
    torch.manual_seed(0)
    model = TinySwinV2().eval()
    x = (torch.randn(2, 3, 32, 32),)
    graph = fxsparse.analyze(model, x)
    for b in range(2):
        (heads,) = [g for g in graph.groups if g.size == 6 and any(m.param == f"blocks.{b}.attn.logit_scale" for m in g.members)]
        assert heads.prunable, heads.reason
        dims = {(m.param, m.dim) for m in heads.members}
        assert {(f"blocks.{b}.attn.cpb_mlp.2.weight", 0), (f"blocks.{b}.attn.logit_scale", 0)} <= dims
    check_export(model, x, n_masks=2, ratios=(0.5,), graph=graph)
    small = fxsparse.export(model, graph, fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1)))
    params = dict(small.named_parameters())
    assert params["blocks.0.attn.cpb_mlp.2.weight"].shape[0] == params["blocks.0.attn.logit_scale"].shape[0] == 3
    assert flops_at(model, graph, x) <= 0.35


@needs_timm
def test_timm_swinv2_heads_prune():
    torch.manual_seed(0)
    model = timm.create_model("swinv2_cr_tiny_ns_224", img_size=32, window_size=4, embed_dim=24, depths=(1, 1),
                              num_heads=(3, 6), pretrained=False, num_classes=10).eval()
    x = (torch.randn(2, 3, 32, 32),)
    graph = fxsparse.analyze(model, x)
    heads = [g for g in graph.groups if any(m.param.endswith("attn.logit_scale") for m in g.members)]
    assert len(heads) == 2 and all(g.prunable for g in heads), [g.reason for g in heads]
    check_export(model, x, n_masks=2, ratios=(0.5,), graph=graph)
    assert flops_at(model, graph, x) <= 0.35


# 3. timm's relative-position MLP (pos_embed_rel.RelPosMlp) gives SDPA a per-head float mask
# viewed to a constant [N, N, heads]: its heads must be the attention's heads
@needs_timm
@pytest.mark.parametrize("rel_pos_type", ["mlp", "bias"])
def test_timm_relpos_mask_follows_heads(rel_pos_type):
    torch.manual_seed(0)
    model = timm.create_model("vit_relpos_small_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=48,
                              num_heads=3, rel_pos_type=rel_pos_type, pretrained=False, num_classes=10).eval()
    x = (torch.randn(2, 3, 32, 32),)
    graph = fxsparse.analyze(model, x)
    heads = [g for g in graph.groups if any(m.param.endswith("attn.proj.weight") and m.dim == 1 for m in g.members)]
    assert len(heads) == 2 and all(g.prunable for g in heads), [g.reason for g in heads]
    table = "rel_pos.mlp.fc2.weight" if rel_pos_type == "mlp" else "rel_pos.relative_position_bias_table"
    assert all(any(m.param.endswith(table) for m in g.members) for g in heads)
    check_export(model, x, n_masks=2, ratios=(0.5,), graph=graph)
    assert flops_at(model, graph, x) <= 0.35


# 4. ConvMixer: a depthwise conv (padding='same') after a pruned pointwise conv, in a residual
class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


class TinyConvMixer(nn.Module):
    """ConvMixer's structure: patch conv, then per block a depthwise conv with groups=dim
    (residual) and a pointwise conv, each with GELU and BatchNorm."""

    def __init__(self, dim=32, depth=2, kernel_size=3, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), nn.GELU(), nn.BatchNorm2d(dim))
        self.blocks = nn.Sequential(*[nn.Sequential(
            Residual(nn.Sequential(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"), nn.GELU(),
                                   nn.BatchNorm2d(dim))),
            nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim)) for _ in range(depth)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("kernel_size", [3, 4])  # 4: 'same' pads unevenly, so the groups stay static
def test_convmixer_depthwise_in_the_capacity_model(kernel_size):
    from sparse_checks import check_steps

    torch.manual_seed(0)
    model = TinyConvMixer(kernel_size=kernel_size)
    x = (torch.randn(2, 3, 32, 32),)
    # keep 0.5 of 32 channels: fewer slots than the dense groups=32 of the depthwise convs
    sp = check_steps(model, x, torch.tensor([1, 2]), F.cross_entropy, steps=2, compile=False)
    assert sp.capacity_mode == ("dynamic" if kernel_size == 3 else "auto"), sp.static_reason
    graph = fxsparse.analyze(model.eval(), x)
    assert len(graph.prunable_groups) == 3
    # the depthwise convs and the 3-channel stem cost half at half width, not a quarter
    assert flops_at(model, graph, x) <= 0.4


# 5. a tensor cached by an earlier eval forward (LeViT's attention biases) is a constant to
# torch.export, cut from the parameter it was computed from
class CachedBiasAttention(nn.Module):
    """LeViT's pattern: in eval mode the per-head attention biases, gathered from a parameter
    table, are computed once and cached, in a dict per device (``cache="dict"``, as timm) or
    in a plain attribute (``cache="attribute"``)."""

    def __init__(self, dim=32, heads=4, side=4, cache="dict"):
        super().__init__()
        self.heads, self.hd, self.cache = heads, dim // heads, cache
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(side), range(side)))
        offsets, idxs = {}, []
        for p1, p2 in itertools.product(points, points):
            idxs.append(offsets.setdefault((abs(p1[0] - p2[0]), abs(p1[1] - p2[1])), len(offsets)))
        self.attention_biases = nn.Parameter(torch.randn(heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(len(points), len(points)),
                             persistent=False)
        self.bias_cache, self.cached_bias = {}, None

    def biases(self, device):
        if self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        if self.cache == "attribute":
            if self.cached_bias is None:
                self.cached_bias = self.attention_biases[:, self.attention_bias_idxs]
            return self.cached_bias
        if str(device) not in self.bias_cache:
            self.bias_cache[str(device)] = self.attention_biases[:, self.attention_bias_idxs]
        return self.bias_cache[str(device)]

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * self.hd ** -0.5 + self.biases(x.device)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class CachedBiasNet(nn.Module):
    def __init__(self, dim=32, cache="dict"):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, stride=8)
        self.block = CachedBiasAttention(dim, cache=cache)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        if x.dim() != 4:  # a check torch.fx cannot trace: the capture goes to torch.export
            raise ValueError("expected NCHW images")
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.block(x)
        return self.head(x.mean(1))


@pytest.mark.parametrize("cache", ["dict", "attribute"])
def test_cached_tensor(cache):
    """A dict cache is emptied while the graph is captured: the biases come from their table,
    whose rows follow the heads. A plain attribute is captured as it is: a fixed value, no
    member, so its heads stay (before: a member, and KeyError 'block.cached_bias' or
    'block.lifted_tensor_0' at export)."""
    from fxsparse.rewrite.reference import masked_reference

    torch.manual_seed(0)
    model = CachedBiasNet(cache=cache).eval()
    x = (torch.randn(2, 3, 32, 32),)
    with torch.no_grad():
        model(*x)  # fills the cache, as evaluating the model before pruning it does
    graph = fxsparse.analyze(model, x)
    assert not any("lifted" in m.param for g in graph.groups for m in g.members)
    (heads,) = [g for g in graph.groups if any(m.param == "block.proj.weight" and m.dim == 1 for m in g.members)]
    if cache == "dict":
        assert heads.prunable and ("block.attention_biases", 0) in {(m.param, m.dim) for m in heads.members}
        assert list(model.block.bias_cache) == ["cpu"]  # the model's own cache is back
        check_export(model, x, n_masks=2, ratios=(0.5,), graph=graph)
    else:
        assert not heads.prunable and "cached_bias" in heads.reason
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    small = fxsparse.export(model, graph, keep).eval()
    with torch.no_grad():
        out, ref = small(*x), masked_reference(graph, keep, *x)
    assert torch.allclose(out, ref, atol=1e-5)
    # the sparse model has the same groups, and its forward is the export's
    sp = fxsparse.compile(model, x, keep=0.5, compile=False)
    assert [(g.size, g.prunable) for g in sp.channel_graph.groups] == [(g.size, g.prunable) for g in graph.groups]
    sp.eval()
    sp.masks = keep
    with torch.no_grad():
        assert torch.allclose(sp(*x), out, atol=1e-5)


class TracedWrongNet(CachedBiasNet):
    """The same, fresh, with a branch torch.fx takes wrongly (its proxy is no Tensor): the traced
    graph fails, the model is run once to tell that from bad inputs, then torch.export captures."""

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            x = x.flatten(1)
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.head((x + self.block(x)).mean(1))


def test_cache_filled_during_analysis_is_not_captured():
    torch.manual_seed(0)
    model = TracedWrongNet().eval()
    x = (torch.randn(2, 3, 32, 32),)
    graph = fxsparse.analyze(model, x)
    (heads,) = [g for g in graph.groups if any(m.param == "block.attention_biases" for m in g.members)]
    assert heads.prunable and heads.size == 4, heads.reason
    assert model.block.bias_cache == {}  # as before the analysis
    check_export(model, x, n_masks=2, ratios=(0.5,), graph=graph)


# 2b. timm's Swin V2 and BEiT pass F.linear a bias concatenated from q_bias, a zero k_bias
# buffer and v_bias: each piece is sliced with the output channels (the heads) it covers
@needs_timm
@pytest.mark.parametrize("name,kwargs", [
    ("swinv2_tiny_window8_256", dict(window_size=4, embed_dim=24, depths=(1, 1), num_heads=(3, 6))),
    ("beit_base_patch16_224", dict(patch_size=8, depth=2, embed_dim=48, num_heads=3)),
])
def test_timm_concatenated_qkv_bias(name, kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=32, pretrained=False, num_classes=10, **kwargs).eval()
    x = (torch.randn(2, 3, 32, 32),)
    graph = fxsparse.analyze(model, x)
    heads = [g for g in graph.groups if any(m.param.endswith("attn.q_bias") for m in g.members)]
    assert len(heads) == 2 and all(g.prunable for g in heads), [g.reason for g in heads]
    assert all({m.param.rsplit(".", 1)[1] for m in g.members} >= {"q_bias", "k_bias", "v_bias"} for g in heads)
    check_export(model, x, n_masks=2, ratios=(0.5,), graph=graph)
    assert flops_at(model, graph, x) <= 0.35
