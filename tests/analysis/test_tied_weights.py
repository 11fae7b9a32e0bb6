"""Tied weights: one nn.Parameter under several module names. The analysis couples every
name's channels (one tensor is sliced once), export keeps the names one tensor, and the
exported model equals the masked reference; a name used by an op without a channel rule
keeps its tied dim whole, and the reason names the tie."""
import pytest
import torch
import torch.nn as nn

import fxsparse
from fxsparse.analysis.masks import kept_indices
from fxsparse.core.errors import ExportError
from fxsparse.rewrite.reference import masked_reference
from sparse_checks import check_steps

pytestmark = pytest.mark.usefixtures("single_thread")


class TwoBranchTied(nn.Module):
    """``d`` and ``e`` share one weight but read different branches: without coupling, the
    branches' hidden channels would be two groups that each slice the one tensor."""

    def __init__(self):
        super().__init__()
        self.a1, self.a2 = nn.Linear(6, 8), nn.Linear(6, 8)
        self.d, self.e = nn.Linear(8, 5), nn.Linear(8, 5, bias=False)
        self.e.weight = self.d.weight

    def forward(self, x):
        return self.d(torch.relu(self.a1(x))) * self.e(torch.tanh(self.a2(x)))


class TiedLM(nn.Module):
    """An embedding and the LM head sharing one [vocab, hidden] table, traced symbolically."""

    def __init__(self, vocab=30, hidden=16, inner=24):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.up, self.down = nn.Linear(hidden, inner), nn.Linear(inner, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(self.norm(h))


class Opaque(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return x @ self.weight.t()


class TiedToOpaque(nn.Module):
    """``d``'s weight is also read by a leaf module no rule knows."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.d = nn.Linear(8, 5)
        self.opaque = Opaque(self.d.weight)

    def forward(self, x):
        return self.d(torch.relu(self.a(x))) + self.opaque(self.b(x))


def _check_against_reference(model, graph, x, seeds=(1, 2)):
    for seed in seeds:
        keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(seed))
        small = fxsparse.export(model, graph, keep)
        out, ref = small(x), masked_reference(graph, keep, x)
        out = out if isinstance(out, torch.Tensor) else out["logits"]
        ref = ref if isinstance(ref, torch.Tensor) else ref["logits"]
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        out.sum().backward()
    return small


def test_tied_linears_in_two_branches_prune_as_one_group():
    torch.manual_seed(0)
    model = TwoBranchTied().eval()
    x = torch.randn(4, 6)
    graph = fxsparse.analyze(model, x)
    hidden = [g for g in graph.prunable_groups if {m.param for m in g.members} >= {"d.weight", "e.weight"}]
    assert len(hidden) == 1 and {"a1.weight", "a2.weight"} <= {m.param for m in hidden[0].members}
    small = _check_against_reference(model, graph, x)
    params = dict(small.named_parameters(remove_duplicate=False))
    assert params["d.weight"] is params["e.weight"] and params["d.weight"].shape == (5, 4)
    assert model.d.weight is model.e.weight and model.d.weight.shape == (5, 8)  # the model is untouched


def test_tied_embedding_and_head_symbolically_traced():
    torch.manual_seed(0)
    model = TiedLM().eval()
    ids = torch.randint(0, 30, (2, 7))
    graph = fxsparse.analyze(model, ids)
    assert any({m.param for m in g.members} >= {"embed.weight", "head.weight"} for g in graph.prunable_groups)
    small = _check_against_reference(model, graph, ids)
    assert small.embed.weight is small.head.weight and small.embed.weight.shape[1] < 16


def test_prune_in_place_keeps_the_tie():
    torch.manual_seed(0)
    model = TiedLM().eval()
    ids = torch.randint(0, 30, (2, 7))
    graph = fxsparse.analyze(model, ids)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(3))
    ref = masked_reference(graph, keep, ids)
    pruned = fxsparse.prune(model, graph, keep, fallback="raise")
    assert pruned.embed.weight is pruned.head.weight and pruned.embed.weight.shape[1] < 16
    torch.testing.assert_close(pruned(ids), ref, rtol=1e-5, atol=1e-5)


def test_sparse_step_of_a_tied_model_equals_the_export():
    model = TwoBranchTied()
    x, target = torch.randn(4, 6), torch.randn(4, 5)
    check_steps(model, (x,), target, nn.functional.mse_loss, steps=2)


def test_tied_name_read_without_a_rule_keeps_its_dim_whole():
    torch.manual_seed(0)
    model = TiedToOpaque().eval()
    x = torch.randn(3, 6)
    graph = fxsparse.analyze(model, x, leaf_modules=["opaque"])
    (hidden,) = [g for g in graph.groups if any(m.param == "d.weight" and m.dim == 1 for m in g.members)]
    assert not hidden.prunable and "tied to 'opaque.weight'" in hidden.reason
    assert graph.prunable_groups == []  # 'b' feeds the opaque module: nothing is left
    with pytest.raises(fxsparse.KeepMaskError, match="not prunable"):
        fxsparse.export(model, graph, {hidden.id: torch.arange(8) < 4})


def test_keep_that_slices_a_tie_two_ways_is_an_export_error():
    """A graph whose groups slice one tied tensor differently (what the coupling prevents)
    is caught before any slicing, naming both names."""
    model = TwoBranchTied().eval()
    x = torch.randn(4, 6)
    graph = fxsparse.analyze(model, x)
    (hidden,) = [g for g in graph.prunable_groups if any(m.param == "e.weight" for m in g.members)]
    for m in hidden.members:  # undo the coupling by hand: 'e.weight' now drops other columns
        if m.param == "e.weight":
            m.index = m.index[1:] + m.index[:1]
    keep = {hidden.id: torch.arange(hidden.size) % 2 == 0}
    with pytest.raises(ExportError, match="'d.weight' and 'e.weight' are one tied tensor"):
        kept_indices(graph, keep)


def test_transformers_tied_word_embeddings():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 50, (2, 6))
    graph = fxsparse.analyze(model, ids)
    small = _check_against_reference(model, graph, ids)
    shared = dict(small.named_parameters(remove_duplicate=False))
    assert shared["lm_head.weight"] is shared["model.embed_tokens.weight"]
    assert shared["lm_head.weight"].shape == (50, 16)
