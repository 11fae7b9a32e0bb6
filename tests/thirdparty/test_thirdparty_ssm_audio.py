"""State-space, audio and the shallow-prune vision families of issue #31, from small configs
written here (random weights, nothing downloaded): a Mamba decoder (transformers, the
PyTorch path without the CUDA kernels) against a hand-written Mamba block sliced by hand,
CLIP's vision tower with its projection, Wav2Vec2, and timm's TinyViT and EfficientViM.

Chain per family: analyze -> export at two keep-0.5 masks -> forward/backward -> equal to
the masked reference -> FLOPs <= 0.35 of dense where the structure allows -> the sparse
model equal to the export. Where it does not, the test pins the reason per group."""
import importlib.util
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from harness import check_chain, check_export

FLOPS_BOUND = 0.35
VOCAB = 100


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def _first(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    return out[0]


def _analyze(model, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fxsparse.analyze(model, inputs)


def _flops_ratio(model, small, inputs):
    return fxsparse.count_flops(small, inputs)[0] / fxsparse.count_flops(model, inputs)[0]


def _chain(model, inputs, graph, bound=FLOPS_BOUND, compiled=False):
    """Two keep-0.5 exports == masked reference, backward, FLOPs <= bound, sparse == export."""
    model.zero_grad()
    _first(model(*inputs)).sum().backward()
    unused = {n for n, p in model.named_parameters() if p.grad is None}  # Wav2Vec2's masked_spec_embed
    model.zero_grad()
    ratios = []

    def flops(keep, small):
        ratios.append(_flops_ratio(model, small, inputs))
        assert ratios[-1] <= bound, ratios

    check_chain(model, inputs, graph, _first, compiled=compiled, unused=unused, on_export=flops)
    return ratios


def _groups_with(graph, suffix, dim):
    return [g for g in graph.groups if any(m.param.endswith(suffix) and m.dim == dim for m in g.members)]


def _rows(group, suffix, dim=0):
    return [sorted(int(i) for i in ix) for m in group.members if m.param.endswith(suffix) and m.dim == dim
            for ix in m.index]


# ----- Mamba (transformers) ------------------------------------------------------------------
def _mamba():
    import transformers

    cfg = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                                   conv_kernel=4, time_step_rank=4)
    return transformers.MambaForCausalLM(cfg)


def _tokens(batch=2, seq=8):
    return (torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0)),)


def test_mamba_prunes_its_inner_channels_and_stream():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, inputs = _mamba().eval(), _tokens()
    graph = _analyze(model, inputs)
    prunable = {g.id for g in graph.prunable_groups}
    for layer in range(2):
        mixer = f"layers.{layer}.mixer"
        (inner,) = _groups_with(graph, f"{mixer}.conv1d.weight", 0)
        assert inner.id in prunable and inner.size == 64
        # channel j: x row j and gate row 64 + j of in_proj, its conv, scan (A, D, dt) and out_proj column
        assert _rows(inner, f"{mixer}.in_proj.weight") == [[j, 64 + j] for j in range(64)]
        members = {(m.param.split(f"{mixer}.")[-1], m.dim) for m in inner.members}
        assert {("x_proj.weight", 1), ("dt_proj.weight", 0), ("dt_proj.bias", 0), ("A_log", 0), ("D", 0),
                ("out_proj.weight", 1)} <= members
        # the state dim (B and C rows of x_proj) stays: an outer product with the inner channels
        state = [g for g in _groups_with(graph, f"{mixer}.x_proj.weight", 0) if g.size == 8]
        assert len(state) == 2 and all(g.id not in prunable for g in state)
        assert any("outer product" in g.reason for g in state)
    (stream,) = _groups_with(graph, "layers.0.mixer.in_proj.weight", 1)
    assert stream.id in prunable
    _chain(model, inputs, graph)


# ----- a hand-written Mamba block ------------------------------------------------------------
class MambaBlock(nn.Module):
    """in_proj -> (x, z); causal depthwise conv over x; x_proj -> (dt, B, C); dt_proj; the
    selective scan, one recurrence per inner channel over a state of size ``state``; D skip;
    gated by silu(z); out_proj. Written from the paper's equations, not from transformers."""

    def __init__(self, dim=16, inner=24, state=4, rank=3, kernel=3):
        super().__init__()
        self.inner, self.state, self.rank = inner, state, rank
        self.norm_weight = nn.Parameter(torch.rand(dim) + 0.5)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, kernel, groups=inner, padding=kernel - 1)
        self.x_proj = nn.Linear(inner, rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float).repeat(inner, 1)))
        self.D = nn.Parameter(torch.rand(inner) + 0.5)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, h):
        batch, length, _ = h.shape
        x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm_weight
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv(x.transpose(1, 2))[..., :length])  # [batch, inner, length]
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.rank, self.state, self.state], dim=-1)
        dt = F.softplus(self.dt_proj(dt)).transpose(1, 2)  # [batch, inner, length]
        A = -torch.exp(self.A_log)
        decay = torch.exp(dt[..., None] * A[:, None, :])  # [batch, inner, length, state]
        drive = dt[..., None] * B[:, None, :, :] * x[..., None]
        s = torch.zeros(batch, self.inner, self.state)
        ys = []
        for t in range(length):
            s = decay[:, :, t] * s + drive[:, :, t]
            ys.append((s @ C[:, t, :, None])[..., 0])
        y = (torch.stack(ys, dim=-1) + x * self.D[:, None]) * F.silu(z.transpose(1, 2))
        return h + self.out_proj(y.transpose(1, 2))


class MambaNet(nn.Module):
    def __init__(self, dim=16, inner=24):
        super().__init__()
        self.embed = nn.Linear(5, dim)
        self.block = MambaBlock(dim, inner)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.block(self.embed(x)))


def _kept(graph, keep, param, dim):
    (group,) = _groups_with(graph, param, dim)
    return keep[group.id].nonzero().flatten() if group.prunable else torch.arange(group.size)


def test_handwritten_mamba_block_matches_a_reference_sliced_by_hand():
    torch.manual_seed(0)
    model, x = MambaNet().eval(), torch.randn(2, 6, 5)
    graph = fxsparse.analyze(model, (x,))
    (inner,) = _groups_with(graph, "block.conv.weight", 0)
    assert inner.prunable and inner.size == 24
    (stream,) = _groups_with(graph, "embed.weight", 0)
    assert stream.prunable
    _chain(model, (x,), graph, bound=0.45)  # B, C and the state (4 of 24 + 2*4 rows) stay

    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1))
    small = fxsparse.export(model, graph, keep).eval()
    s = _kept(graph, keep, "embed.weight", 0)
    i = _kept(graph, keep, "block.conv.weight", 0)
    ref = MambaNet(dim=len(s), inner=len(i)).eval()
    src, dst = model.block, ref.block
    with torch.no_grad():
        ref.embed.weight.copy_(model.embed.weight[s])
        ref.embed.bias.copy_(model.embed.bias[s])
        dst.norm_weight.copy_(src.norm_weight[s])
        dst.in_proj.weight.copy_(src.in_proj.weight[torch.cat([i, i + 24])][:, s])
        dst.conv.weight.copy_(src.conv.weight[i])
        dst.conv.bias.copy_(src.conv.bias[i])
        dst.x_proj.weight.copy_(src.x_proj.weight[:, i])
        dst.dt_proj.weight.copy_(src.dt_proj.weight[i])
        dst.dt_proj.bias.copy_(src.dt_proj.bias[i])
        dst.A_log.copy_(src.A_log[i])
        dst.D.copy_(src.D[i])
        dst.out_proj.weight.copy_(src.out_proj.weight[s][:, i])
        ref.head.weight.copy_(model.head.weight[:, s])
        ref.head.bias.copy_(model.head.bias)
        torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # torch.compile of the step: ~40 s
@pytest.mark.long
def test_handwritten_mamba_compiled_step_equals_the_export():
    """The one inductor-compiled check of this file: the capacity model's forward and one
    training step (its loss is the export's; only kept channels' weights move)."""
    _check_compiled_mamba_step()


@pytest.mark.slow  # ~7 s; tests/step/test_fake_strides.py checks the cause in the fast lane
def test_handwritten_mamba_compiled_step_equals_the_export_under_aot_eager(aot_eager):
    """The same through a backend that runs the eager kernels on the traced graph: the scan's
    ``softplus(...).transpose(1, 2)`` gets its gradient transposed, and the linear layer before
    it views that gradient with the strides the fake softplus backward promised."""
    _check_compiled_mamba_step()


def _check_compiled_mamba_step():
    torch.manual_seed(0)
    model, x = MambaNet().eval(), torch.randn(2, 3, 5)  # 3 steps of the scan: a quicker compile
    graph = fxsparse.analyze(model, (x,))
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(2))
    small = fxsparse.export(model, graph, keep).eval()
    sparse = fxsparse.compile(model, (x,), keep=0.5, compile=True, graph=graph)
    sparse.eval()
    sparse.masks = keep
    torch.testing.assert_close(sparse(x).detach(), small(x).detach(), atol=1e-4, rtol=1e-4)
    target = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(3))
    expected = float(F.mse_loss(small(x), target))
    (inner,) = _groups_with(graph, "block.conv.weight", 0)
    dropped, before = ~keep[inner.id], model.block.conv.weight.detach().clone()
    step = sparse.make_train_step(F.mse_loss, torch.optim.SGD(model.parameters(), lr=0.1))
    assert abs(float(step(x, target)) - expected) <= 1e-4 * max(1.0, expected)
    assert torch.equal(model.block.conv.weight[dropped], before[dropped])  # removed channels stay as they were
    assert not torch.equal(model.block.conv.weight[~dropped], before[~dropped])


class FillNet(nn.Module):
    """Fresh tensors of one value and literal sizes meeting channels: an accumulator added to
    and a zero history concatenated along time take the channels they meet (export writes the
    kept counts into their sizes); one read through a slice keeps fixed values."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv1d(3, 8, 1), nn.Conv1d(8, 6, 3), nn.Conv1d(6, 4, 1)

    def forward(self, x):  # [batch, 3, 5]
        h = torch.zeros(x.shape[0], 8, 5) + self.a(x)
        h = torch.cat([torch.zeros(x.shape[0], 8, 2), h], dim=2)  # causal history for the kernel of 3
        g = self.b(h)
        return self.c(g * torch.ones(6, 2)[:, :1])


def test_constant_fills_take_the_channels_they_meet():
    torch.manual_seed(0)
    model, x = FillNet().eval(), torch.randn(2, 3, 5)
    graph = fxsparse.analyze(model, (x,))
    (a,) = _groups_with(graph, "a.weight", 0)
    (b,) = _groups_with(graph, "b.weight", 0)
    assert a.prunable and not b.prunable and "cannot be removed" in b.reason
    check_export(model, (x,), graph=graph, n_masks=3)
    keep = {a.id: torch.tensor([True, False] * 4)}
    small = fxsparse.export(model, graph, keep)
    assert small(x).shape == (2, 4, 5)


# ----- shallow prunes ---------------------------------------------------------------------------
def _image(size=32):
    return (torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)),)


def _clip():
    import transformers

    cfg = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, projection_dim=16)
    return transformers.CLIPVisionModelWithProjection(cfg)


class ImageEmbeds(nn.Module):
    """What a retrieval user keeps of CLIP's vision tower: the projected embedding only."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, x):
        return self.clip(x).image_embeds


def test_clip_vision_with_projection():
    """The tower returns its stream (``last_hidden_state``) next to the embedding, so the
    stream cannot shrink there; asked for the embedding only, it does."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, inputs = _clip().eval(), _image()
    graph = _analyze(model, inputs)
    (stream,) = _groups_with(graph, "encoder.layers.0.self_attn.q_proj.weight", 1)
    assert not stream.prunable and "reaches the model output" in stream.reason
    _chain(model, inputs, graph, bound=0.7)
    embeds = ImageEmbeds(model).eval()
    graph = _analyze(embeds, inputs)
    (stream,) = _groups_with(graph, "encoder.layers.0.self_attn.q_proj.weight", 1)
    assert stream.prunable
    _chain(embeds, inputs, graph)


def _wav2vec2(head=False):
    import transformers

    cfg = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                      conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                                      feat_extract_norm="group", vocab_size=20)
    return (transformers.Wav2Vec2ForCTC if head else transformers.Wav2Vec2Model)(cfg)


def test_wav2vec2_prunes_heads_widths_and_the_feature_encoder():
    """The stream meets the weight-normed positional conv (its norm runs over every channel
    of each kernel tap: the pruned model's norm runs over the kept ones, the rule's masked
    form) and prunes once it is not the output: the bare model returns it (and the last
    feature conv's channels), the CTC head reads it."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = _wav2vec2().eval()
    inputs = (torch.randn(2, 800, generator=torch.Generator().manual_seed(0)),)
    graph = _analyze(model, inputs)
    (stream,) = _groups_with(graph, "encoder.layers.0.attention.q_proj.weight", 1)
    assert not stream.prunable and "reaches the model output" in stream.reason
    assert {(m.param, m.dim) for m in stream.members} >= {
        ("encoder.pos_conv_embed.conv.parametrizations.weight.original1", d) for d in (0, 1)}
    (features,) = _groups_with(graph, "feature_extractor.conv_layers.2.conv.weight", 0)
    assert not features.prunable and "reaches the model output" in features.reason
    assert [g.reason for g in graph.groups if not g.prunable] == ["reaches the model output (node 'output')"] * 2
    assert _groups_with(graph, "feature_extractor.conv_layers.0.conv.weight", 0)[0].prunable
    assert _groups_with(graph, "encoder.layers.0.feed_forward.intermediate_dense.weight", 0)[0].prunable
    _chain(model, inputs, graph, bound=0.6)  # 0.58: the stream and the last feature conv are outputs
    ctc = _wav2vec2(head=True).eval()
    graph = _analyze(ctc, inputs)
    (stream,) = _groups_with(graph, "encoder.layers.0.attention.q_proj.weight", 1)
    assert stream.prunable
    # the positional conv has 4 groups: channel j of every group is one unit (8 units of 4)
    assert stream.size == 8 and {len(ix) for ix in _rows(stream, "encoder.layers.0.attention.q_proj.weight", 1)} == {4}
    assert [g.reason for g in graph.groups if not g.prunable] == ["reaches the model output (node 'output')"]  # the vocab
    _chain(ctc, inputs, graph, bound=0.28)  # 0.263


def _timm(name, **kw):
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    timm = fxsparse.zoo.import_timm()
    return timm.create_model(name, pretrained=False, num_classes=10, **kw)


def test_tiny_vit():
    torch.manual_seed(0)
    model = _timm("tiny_vit_5m_224", embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4),
                  window_sizes=(2, 2, 2, 2)).eval()
    inputs = _image(64)
    graph = _analyze(model, inputs)
    assert [g.reason for g in graph.groups if not g.prunable] == ["reaches the model output (node 'output')"]
    _chain(model, inputs, graph)


def test_efficientvim_prunes_its_stream_past_the_state_space_mixer():
    """HSM-SSD's ``x @ (a * b)^T`` is an outer product of the stream and the state dim:
    the stream is kept prunable, the (smaller) state dim stays, with that reason."""
    torch.manual_seed(0)
    model = _timm("efficientvim_m1", embed_dim=(16, 32, 48), depths=(1, 1, 1), state_dim=(8, 6, 4)).eval()
    inputs = _image(64)
    graph = _analyze(model, inputs)
    fixed = [g for g in graph.groups if not g.prunable]
    assert all(any(m.param.endswith("BCdt_proj.conv.weight") for m in g.members) for g in fixed[:-1])
    assert any("outer product" in g.reason for g in fixed)
    assert _groups_with(graph, "stages.0.blocks.0.mixer.hz_proj.conv.weight", 1)[0].prunable
    _chain(model, inputs, graph)


# ----- Mamba2 (transformers' chunked scan on the CPU) ----------------------------------------------
def _mamba2(groups):
    import transformers

    cfg = transformers.Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=1, expand=2,
                                    conv_kernel=4, num_heads=8, head_dim=8, n_groups=groups, chunk_size=4)
    return transformers.Mamba2ForCausalLM(cfg)


def _heads(graph):
    (heads,) = _groups_with(graph, "layers.0.mixer.out_proj.weight", 1)
    return heads


@pytest.mark.slow  # a Mamba2 capture: ~11 s; Mamba (HF and the hand-written block) stays in the fast lane
def test_mamba2_prunes_heads_that_have_their_own_B_and_C():
    """n_groups == num_heads: a head's x, z, dt, A, D rows, its B and C group and its state all
    go together; the chunked scan's einsums and cumulative sums keep them apart per head."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, inputs = _mamba2(groups=8).eval(), _tokens()
    graph = _analyze(model, inputs)
    heads = _heads(graph)
    assert heads.prunable and heads.size == 8
    assert [len(ix) for ix in _rows(heads, "layers.0.mixer.out_proj.weight", 1)] == [8] * 8  # head_dim columns
    _chain(model, inputs, graph)


@pytest.mark.slow  # a Mamba2 capture: ~9 s
def test_mamba2_with_B_and_C_shared_by_all_heads_prunes_its_heads():
    """n_groups == 1: B and C are copied to every head (repeat_interleave of the group dim) before
    they meet the per-head decays; the copies carry channels of their own, which couple with the
    heads, so the heads prune (export repeats B and C for the kept heads only). B's and C's state
    rows stay: copies times state is an outer product, and the copies keep their channels."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, inputs = _mamba2(groups=1).eval(), _tokens()
    graph = _analyze(model, inputs)
    heads = _heads(graph)
    assert heads.prunable and heads.size == 8
    assert [len(ix) for ix in _rows(heads, "layers.0.mixer.out_proj.weight", 1)] == [8] * 8  # head_dim columns
    state = [g for g in _groups_with(graph, "layers.0.mixer.in_proj.weight", 0) if g.size == 8 and g is not heads]
    assert len(state) == 2 and not any(g.prunable for g in state)
    assert all("copies a value shared by all" in g.reason and "outer product" in g.reason for g in state)
    assert [g.reason for g in graph.groups if not g.prunable and g not in state] == [
        "reaches the model output (node 'output')"]  # the vocab
    _chain(model, inputs, graph, bound=0.38)  # 0.377: the state rows and the vocab stay


# ----- hand-written: a weight-normed conv, copies of a shared value ------------------------------
class WeightNormNet(nn.Module):
    """A stream through a weight-normed grouped conv with a residual (Wav2Vec2's positional
    conv, ``dim=2``: one norm per kernel tap over every (out, in) pair) and a plain one."""

    def __init__(self, width=16, groups=2, dim=2, hidden=12):
        super().__init__()
        self.a = nn.Conv1d(3, width, 1)
        self.pos = torch.nn.utils.parametrizations.weight_norm(
            nn.Conv1d(width, width, 5, padding=2, groups=groups), name="weight", dim=dim)
        self.mid = torch.nn.utils.parametrizations.weight_norm(nn.Conv1d(width, hidden, 3, padding=1), dim=dim)
        self.b = nn.Conv1d(hidden, 4, 1)

    def forward(self, x):
        h = self.a(x)
        h = h + F.gelu(self.pos(h))
        return self.b(torch.relu(self.mid(h)))


@pytest.mark.parametrize("dim", [2, 0, None])
def test_weight_normed_convs_prune_with_the_norm_over_the_kept_channels(dim):
    """Both captures meet ``_weight_norm(v, g, dim)`` (torch.fx keeps a parametrized conv whole,
    so the model is read with torch.export); the stream and the inner width prune, and the export
    equals the masked reference, whose norm runs over the kept channels only."""
    torch.manual_seed(0)
    model, x = WeightNormNet(dim=dim).eval(), torch.randn(2, 3, 10)
    graph = _analyze(model, (x,))
    assert len(graph.mixing) == 2 and all("weight norm" in why for _, why in graph.mixing)
    (stream,) = _groups_with(graph, "a.weight", 0)
    (inner,) = _groups_with(graph, "mid.parametrizations.weight.original1", 0)
    assert stream.prunable and inner.prunable and stream.size == 8 and inner.size == 12
    if dim == 0:  # g is [out, 1, 1]: it prunes with v's output rows
        assert ("mid.parametrizations.weight.original0", 0) in {(m.param, m.dim) for m in inner.members}
    _chain(model, (x,), graph, bound=0.6)


def test_weight_normed_conv_export_matches_a_reference_sliced_by_hand():
    torch.manual_seed(0)
    model, x = WeightNormNet().eval(), torch.randn(2, 3, 10)
    graph = _analyze(model, (x,))
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1))
    small = fxsparse.export(model, graph, keep).eval()
    (stream,) = _groups_with(graph, "a.weight", 0)
    (inner,) = _groups_with(graph, "mid.parametrizations.weight.original1", 0)
    s = torch.cat([j + torch.tensor([0, 8]) for j in keep[stream.id].nonzero().flatten()]).sort().values
    i = keep[inner.id].nonzero().flatten()
    ref = WeightNormNet(width=len(s), hidden=len(i)).eval()
    pos, mid = model.pos.parametrizations.weight, model.mid.parametrizations.weight
    with torch.no_grad():
        ref.a.weight.copy_(model.a.weight[s])
        ref.a.bias.copy_(model.a.bias[s])
        per_group = s[: len(s) // 2]  # the same positions in both groups of the grouped conv
        ref.pos.parametrizations.weight.original1.copy_(pos.original1[s][:, per_group])
        ref.pos.parametrizations.weight.original0.copy_(pos.original0)
        ref.pos.bias.copy_(model.pos.bias[s])
        ref.mid.parametrizations.weight.original1.copy_(mid.original1[i][:, s])
        ref.mid.parametrizations.weight.original0.copy_(mid.original0)
        ref.mid.bias.copy_(model.mid.bias[i])
        ref.b.weight.copy_(model.b.weight[:, i])
        ref.b.bias.copy_(model.b.bias)
        torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)
        # the norm runs over the kept channels: the kept weights are not the dense model's
        assert not torch.allclose(model.pos.weight[s][:, per_group], ref.pos.weight)


class SharedCopies(nn.Module):
    """A value shared by all heads, ``[B, groups, state]``, copied to ``[B, heads, state]`` by
    ``repeat_interleave`` and multiplied with per-head values (Mamba2's B with one group)."""

    def __init__(self, dim=6, heads=4, groups=1, state=3):
        super().__init__()
        self.heads, self.groups, self.state = heads, groups, state
        self.shared = nn.Linear(dim, groups * state)
        self.values = nn.Linear(dim, heads * state)
        self.out = nn.Linear(heads * state, 5)

    def forward(self, x):  # [B, dim]
        b = self.shared(x).view(-1, self.groups, self.state)
        copies = b.repeat_interleave(self.heads // self.groups, dim=1, output_size=self.heads)  # [B, heads, state]
        y = copies * self.values(x).view(-1, self.heads, self.state)
        return self.out(y.flatten(1))


def test_copies_of_a_shared_value_prune_with_the_heads_they_meet():
    torch.manual_seed(0)
    model, x = SharedCopies().eval(), torch.randn(3, 6)
    graph = fxsparse.analyze(model, (x,))
    (heads,) = _groups_with(graph, "values.weight", 0)
    assert heads.prunable and heads.size == 4 and _rows(heads, "out.weight", 1) == [[3 * h + j for j in range(3)]
                                                                                    for h in range(4)]
    (state,) = _groups_with(graph, "shared.weight", 0)
    assert not state.prunable and "outer product" in state.reason
    _chain(model, (x,), graph, bound=0.8)

    keep = {heads.id: torch.tensor([True, False, True, True])}
    small = fxsparse.export(model, graph, keep).eval()
    h = torch.tensor([0, 2, 3])
    cols = torch.cat([3 * k + torch.arange(3) for k in h])
    ref = SharedCopies(heads=3).eval()
    with torch.no_grad():
        ref.shared.load_state_dict(model.shared.state_dict())
        ref.values.weight.copy_(model.values.weight[cols])
        ref.values.bias.copy_(model.values.bias[cols])
        ref.out.weight.copy_(model.out.weight[:, cols])
        ref.out.bias.copy_(model.out.bias)
        torch.testing.assert_close(small(x), ref(x), atol=1e-6, rtol=1e-6)


def test_copies_of_grouped_values_go_with_their_group():
    """Values with a channel per group (``groups`` > 1): each copy is its group's channel (a KV
    head's copies go with it), so the heads of one group prune together."""
    torch.manual_seed(0)
    model, x = SharedCopies(heads=4, groups=2).eval(), torch.randn(3, 6)
    graph = fxsparse.analyze(model, (x,))
    (groups,) = _groups_with(graph, "shared.weight", 0)
    assert groups.prunable and groups.size == 2
    assert ("values.weight", 0) in {(m.param, m.dim) for m in groups.members}
    check_export(model, (x,), graph=graph, n_masks=3)
