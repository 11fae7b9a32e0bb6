"""Mixture-of-experts decoders and Falcon's parallel decoder (issue #31), from small configs
of the `transformers` library written here (random weights, nothing downloaded), plus two
hand-written models that check the exported model against a reference sliced by hand:
a top-k routed MoE layer (experts in a ModuleList, a loop over the experts, gathers and
index_add of tokens) and a Falcon-style parallel block (fused QKV of grouped KV heads,
attention and MLP side by side).

Chain per family: analyze -> export at two keep-0.5 masks -> forward/backward -> equal to
the masked reference -> FLOPs <= 0.35 of dense -> the sparse model equal to the export."""
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse.analysis.flops import SubnetFlops
from fxsparse.rewrite.reference import masked_reference
from harness import check_chain, check_export

FLOPS_BOUND = 0.35
VOCAB = 100


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def _tokens(batch=2, seq=8):
    return (torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0)),)


def _mixtral(experts_implementation=None, layers=2):
    import transformers

    cfg = transformers.MixtralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=64)
    model = transformers.MixtralForCausalLM(cfg)
    if experts_implementation is not None:
        model.config._experts_implementation = experts_implementation
    return model


def _qwen2_moe():
    import transformers

    cfg = transformers.Qwen2MoeConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=48,
                                      shared_expert_intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                      max_position_embeddings=64, decoder_sparse_step=1)
    return transformers.Qwen2MoeForCausalLM(cfg)


def _qwen3_moe():
    import transformers

    cfg = transformers.Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      num_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
                                      decoder_sparse_step=1)
    return transformers.Qwen3MoeForCausalLM(cfg)


def _falcon():
    import transformers

    cfg = transformers.FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_kv_heads=2, new_decoder_architecture=True, parallel_attn=True, bias=True,
                                    max_position_embeddings=64)
    return transformers.FalconForCausalLM(cfg)


FAMILIES = {"mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "qwen3_moe": _qwen3_moe, "falcon_new_decoder": _falcon}


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out["logits"] if isinstance(out, dict) else out[0]


def _analyze(model, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fxsparse.analyze(model, inputs)


_ANALYZED = {}


def _analyzed(name):
    """(model, inputs, graph) of ``FAMILIES[name]`` (seed 0, eval mode), analyzed once per test
    module: the chain test exports from the graph, the other tests only read it."""
    if name not in _ANALYZED:
        torch.manual_seed(0)
        model, inputs = FAMILIES[name]().eval(), _tokens()
        _ANALYZED[name] = model, inputs, _analyze(model, inputs)
    return _ANALYZED[name]


def _groups_with(graph, suffix, dim):
    return [g for g in graph.groups if any(m.param.endswith(suffix) and m.dim == dim for m in g.members)]


def _chain(model, inputs, graph, compiled=False):
    """Export at two keep-0.5 masks == masked reference, backward, FLOPs bound, sparse == export."""
    dense_flops = fxsparse.count_flops(model, inputs)[0]
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    estimate = SubnetFlops(graph)

    def flops(keep, small):
        assert {n for n, _ in small.named_parameters(remove_duplicate=False)} <= names
        small_flops = fxsparse.count_flops(small, inputs)[0]
        assert small_flops <= FLOPS_BOUND * dense_flops
        # the estimate the methods budget with counts the experts' fused weights too
        assert estimate.fraction(estimate.flat(keep)) == pytest.approx(small_flops / dense_flops, rel=1e-6)

    check_chain(model, inputs, graph, _logits, compiled=compiled, on_export=flops)


# ----- the transformers families ------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_prunes_and_exports(name):
    pytest.importorskip("transformers")
    model, inputs, graph = _analyzed(name)
    assert graph.prunable_groups, graph.summary()
    _chain(model, inputs, graph)


# The suite's one inductor compile of a transformers model's sparse step (attention, the grouped
# expert products), full suite only and started first (`long`): a one-layer Mixtral has every op of
# the two-layer one, whose chain the test above checks eagerly, at about half the compile
@pytest.mark.slow
@pytest.mark.long
def test_mixtral_inductor_sparse_model_equals_the_export():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, inputs = _mixtral(layers=1).eval(), _tokens()
    _chain(model, inputs, _analyze(model, inputs), compiled=True)


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_expert_widths_prune_and_the_router_does_not(name):
    pytest.importorskip("transformers")
    _, _, graph = _analyzed(name)
    prunable = {g.id for g in graph.prunable_groups}
    for layer in range(2):
        experts = f"layers.{layer}.mlp.experts"
        width = _groups_with(graph, f"{experts}.gate_up_proj", 1)
        assert len(width) == 1 and width[0].id in prunable  # [gate; up] rows of every expert
        members = {(m.param.rsplit(".", 1)[-1], m.dim) for m in width[0].members}
        assert members == {("gate_up_proj", 1), ("down_proj", 2)}
        gate_rows = [ix for m in width[0].members if m.param.endswith("gate_up_proj") for ix in m.index]
        assert all(len(ix) == 2 for ix in gate_rows)  # a gate row and its up row go together
        router = _groups_with(graph, f"layers.{layer}.mlp.gate.weight", 0)
        assert router and router[0].id not in prunable and "choices, not channels" in router[0].reason
    if name == "qwen2_moe":  # the shared expert is a dense MLP of its own
        assert all(g.id in prunable for g in _groups_with(graph, "shared_expert.gate_proj.weight", 0))


@pytest.mark.slow  # three Mixtral captures: ~10 s
def test_mixtral_experts_implementations_agree():
    """transformers runs experts as a grouped product (default), as gathered per-token weights
    (batched_mm) or in a loop over the experts hit (eager, captured in its grouped form): same
    groups, and the same exported model for the same masks."""
    pytest.importorskip("transformers")
    inputs = _tokens()
    exported = []
    for impl in ("grouped_mm", "batched_mm", "eager"):
        torch.manual_seed(0)
        model = _mixtral(impl).eval()
        graph = _analyze(model, inputs)
        keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(3))
        small = fxsparse.export(model, graph, keep).eval()
        out = _logits(small(*inputs)).detach()
        torch.testing.assert_close(out, _logits(masked_reference(graph, keep, *inputs)).detach(), atol=1e-4, rtol=1e-4)
        exported.append(([(g.size, g.prunable) for g in graph.groups], out))
        assert model.config._experts_implementation == impl  # capture restores the user's choice
    for groups, out in exported[1:]:
        assert groups == exported[0][0]
        torch.testing.assert_close(out, exported[0][1], atol=1e-5, rtol=1e-5)


def test_falcon_prunes_kv_groups_with_their_query_heads():
    pytest.importorskip("transformers")
    _, _, graph = _analyzed("falcon_new_decoder")
    qkv = _groups_with(graph, "h.0.self_attention.query_key_value.weight", 0)
    heads = [g for g in qkv if g.prunable and g.size == 2]  # 2 KV groups of (2 query heads, k, v)
    assert len(heads) == 1
    rows = [ix for m in heads[0].members if m.param.endswith("query_key_value.weight") and m.dim == 0 for ix in m.index]
    assert [len(ix) for ix in rows] == [4 * 16, 4 * 16]
    assert _groups_with(graph, "h.0.mlp.dense_h_to_4h.weight", 0)[0].prunable  # the parallel MLP's width


# ----- hand-written references ----------------------------------------------------------------
class Expert(nn.Module):
    def __init__(self, dim, width):
        super().__init__()
        self.gate = nn.Linear(dim, width, bias=False)
        self.up = nn.Linear(dim, width, bias=False)
        self.down = nn.Linear(width, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class TopKMoE(nn.Module):
    """Top-k routing over experts of their own widths, Mixtral's eager form: one_hot of the
    chosen experts, a loop over the experts, token gathers, index_add of the results."""

    def __init__(self, dim, widths, k=2):
        super().__init__()
        self.k = k
        self.router = nn.Linear(dim, len(widths), bias=False)
        self.experts = nn.ModuleList(Expert(dim, w) for w in widths)

    def forward(self, x):
        batch, seq, dim = x.shape
        x = x.reshape(-1, dim)
        weights, chosen = torch.topk(F.softmax(self.router(x), dim=-1), self.k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        hits = F.one_hot(chosen, num_classes=len(self.experts)).permute(2, 1, 0)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            slot, token = torch.where(hits[e])
            out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        return out.reshape(batch, seq, dim)


class MoENet(nn.Module):
    def __init__(self, dim=16, widths=(12, 8, 10, 6)):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.moe = TopKMoE(dim, widths)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        h = self.embed(x)
        return self.head(h + self.moe(h))


def _kept(graph, keep, param, dim):
    """Kept indices of ``param``'s ``dim``, read off the one group that slices it."""
    (group,) = _groups_with(graph, param, dim)
    (member,) = [m for m in group.members if m.param == param and m.dim == dim]
    assert [list(ix) for ix in member.index] == [[j] for j in range(group.size)]  # channel j is index j
    return keep[group.id].nonzero().flatten() if group.prunable else torch.arange(group.size)


def test_handwritten_topk_moe_matches_a_reference_sliced_by_hand():
    torch.manual_seed(0)
    model, x = MoENet().eval(), torch.randn(2, 6, 8)
    graph = fxsparse.analyze(model, (x,))
    for e, width in enumerate((12, 8, 10, 6)):  # each expert's width is its own unit
        (group,) = _groups_with(graph, f"moe.experts.{e}.gate.weight", 0)
        assert group.prunable and group.size == width
        assert {m.param for m in group.members} == {f"moe.experts.{e}.{p}.weight" for p in ("gate", "up", "down")}
    (router,) = _groups_with(graph, "moe.router.weight", 0)
    assert not router.prunable
    check_export(model, (x,), graph=graph, n_masks=2, ratios=(0.5,))

    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1))
    small = fxsparse.export(model, graph, keep).eval()
    stream = _kept(graph, keep, "embed.weight", 0)
    ref = MoENet(widths=tuple(int(keep[g.id].sum()) if g.prunable else g.size
                              for e in range(4) for g in _groups_with(graph, f"moe.experts.{e}.gate.weight", 0)),
                 dim=len(stream)).eval()
    with torch.no_grad():
        ref.embed.weight.copy_(model.embed.weight[stream])
        ref.embed.bias.copy_(model.embed.bias[stream])
        ref.moe.router.weight.copy_(model.moe.router.weight[:, stream])
        for e, expert in enumerate(model.moe.experts):
            inner = _kept(graph, keep, f"moe.experts.{e}.gate.weight", 0)
            ref.moe.experts[e].gate.weight.copy_(expert.gate.weight[inner][:, stream])
            ref.moe.experts[e].up.weight.copy_(expert.up.weight[inner][:, stream])
            ref.moe.experts[e].down.weight.copy_(expert.down.weight[stream][:, inner])
        ref.head.weight.copy_(model.head.weight[:, stream])
        ref.head.bias.copy_(model.head.bias)
        torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)
    sparse = fxsparse.compile(model, (x,), keep=0.5, compile=False, graph=graph)
    sparse.eval()
    sparse.masks = keep
    torch.testing.assert_close(sparse(x).detach(), small(x).detach(), atol=1e-5, rtol=1e-5)


class ParallelBlock(nn.Module):
    """Falcon's new decoder layer: two norms, attention and MLP side by side, one fused QKV
    projection laid out per KV group as [q heads of the group, k, v]."""

    def __init__(self, dim=32, heads=4, kv_heads=2, head_dim=8, hidden=48):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.ln_attn, self.ln_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * head_dim)
        self.dense = nn.Linear(heads * head_dim, dim)
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        b, s, _ = x.shape
        fused = self.qkv(self.ln_attn(x)).view(b, s, self.kv_heads, -1, self.head_dim)
        q = fused[:, :, :, :-2].flatten(2, 3).transpose(1, 2)
        k = fused[:, :, :, -2].transpose(1, 2).repeat_interleave(self.heads // self.kv_heads, dim=1)
        v = fused[:, :, :, -1].transpose(1, 2).repeat_interleave(self.heads // self.kv_heads, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / math.sqrt(self.head_dim))
        attn = self.dense(attn.transpose(1, 2).reshape(b, s, -1))
        return x + attn + self.down(F.gelu(self.up(self.ln_mlp(x))))


class ParallelNet(nn.Module):
    def __init__(self, dim=32, **kw):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.block = ParallelBlock(dim, **kw)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        return self.head(self.block(self.embed(x)))


def test_handwritten_parallel_block_matches_a_reference_sliced_by_hand():
    torch.manual_seed(0)
    model, x = ParallelNet().eval(), torch.randn(2, 6, 8)
    with torch.no_grad():  # norms with non-trivial affines, so dropped channels matter
        for ln in (model.block.ln_attn, model.block.ln_mlp):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_(0, 0.1)
    graph = fxsparse.analyze(model, (x,))
    (kv,) = [g for g in _groups_with(graph, "block.qkv.weight", 0) if g.size == 2]
    assert kv.prunable  # a KV group goes with its query heads
    check_export(model, (x,), graph=graph, n_masks=2, ratios=(0.5,))

    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(2))
    keep[kv.id] = torch.tensor([False, True])  # drop KV group 0 with its 2 query heads
    small = fxsparse.export(model, graph, keep).eval()
    stream = _kept(graph, keep, "embed.weight", 0)
    hidden = _kept(graph, keep, "block.up.weight", 0)
    ref = ParallelNet(dim=len(stream), heads=2, kv_heads=1, hidden=len(hidden)).eval()
    src, dst = model.block, ref.block
    rows = torch.arange(32, 64)  # group 1's rows of the fused QKV: [q2, q3, k1, v1] x head_dim 8
    with torch.no_grad():
        ref.embed.weight.copy_(model.embed.weight[stream])
        ref.embed.bias.copy_(model.embed.bias[stream])
        for name in ("ln_attn", "ln_mlp"):
            getattr(dst, name).weight.copy_(getattr(src, name).weight[stream])
            getattr(dst, name).bias.copy_(getattr(src, name).bias[stream])
        dst.qkv.weight.copy_(src.qkv.weight[rows][:, stream])
        dst.qkv.bias.copy_(src.qkv.bias[rows])
        dst.dense.weight.copy_(src.dense.weight[stream][:, 16:32])  # query heads 2 and 3
        dst.dense.bias.copy_(src.dense.bias[stream])
        dst.up.weight.copy_(src.up.weight[hidden][:, stream])
        dst.up.bias.copy_(src.up.bias[hidden])
        dst.down.weight.copy_(src.down.weight[stream][:, hidden])
        dst.down.bias.copy_(src.down.bias[stream])
        ref.head.weight.copy_(model.head.weight[:, stream])
        ref.head.bias.copy_(model.head.bias)
        torch.testing.assert_close(small(x), ref(x), atol=1e-5, rtol=1e-5)
