"""Models of the `transformers` library (small configs, random weights, nothing downloaded):
analyze -> export at 2 random keep-0.5 masks -> forward/backward -> equality with the masked
reference -> FLOPs -> one sparse (capacity) step. Skipped when transformers (the optional
`hf` extra) is not installed."""
import pytest
import torch

pytest.importorskip("transformers")

import fxsparse  # noqa: E402
from captures import captured  # noqa: E402
from fxsparse.rewrite.reference import masked_reference  # noqa: E402
from lanes import HF_FAST, fast_subset  # noqa: E402
from thirdparty.transformers_models import MODELS  # noqa: E402  (the builders tests/thirdparty/survey.py reports on)

# Every dimension of these models is structurally prunable (heads, MLP hidden, residual
# stream): keep 0.5 must reach FLOPs <= 0.35 of dense (issue #17).
FLOPS_BOUND = 0.35
DECODERS = {"gpt2", "llama_gqa", "mistral", "qwen2", "gemma", "phi3", "opt", "gpt_neox"}


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out["logits"] if isinstance(out, dict) else out[0]


def _flops(model, inputs):
    return fxsparse.count_flops(model, inputs)[0]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def _analyzed(name):
    """(model, inputs, graph) of ``MODELS[name]`` (seed 0, eval mode), analyzed once per session
    (tests/captures.py; test_any_input_size.py reads them too): only read here."""
    shared = captured(f"transformers:{name}")
    return shared.model, shared.inputs, shared.graph


@pytest.mark.reads_capture("transformers")
@pytest.mark.parametrize("name", fast_subset(sorted(MODELS), HF_FAST))  # one per kind in the fast lane
def test_transformers_model(name):
    model, inputs, graph = _analyzed(name)
    assert graph.prunable_groups, graph.summary()
    original_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    dense_flops = _flops(model, inputs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        keep = fxsparse.random_keep(graph, 0.5, gen)
        small = fxsparse.export(model, graph, keep)
        out = _logits(small(*inputs))
        ref = _logits(masked_reference(graph, keep, *inputs))
        assert out.shape == ref.shape
        torch.testing.assert_close(out.detach(), ref.detach(), atol=1e-4, rtol=1e-4)
        out.sum().backward()
        assert all(p.grad is not None for p in small.parameters() if p.requires_grad)
        assert {n for n, _ in small.named_parameters(remove_duplicate=False)} <= original_names  # same names
        assert _flops(small, inputs) <= FLOPS_BOUND * dense_flops
    # the vocabulary / label side is never pruned: output width as dense
    with torch.no_grad():
        assert _logits(small(*inputs)).shape == _logits(model(*inputs)).shape
    stepped, _ = captured(f"transformers:{name}").fresh()  # the sparse step trains a model of its own
    sparse = fxsparse.compile(stepped, inputs, keep=0.5, compile=False, graph=graph)
    _logits(sparse(*inputs)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stepped.parameters())


@pytest.mark.reads_capture("transformers")
@pytest.mark.parametrize("name", ["llama_gqa"])
def test_grouped_query_attention_prunes_a_kv_head_with_its_query_heads(name):
    _, _, graph = _analyzed(name)  # 4 query heads share 2 KV heads, head_dim 16
    attn = [g for g in graph.prunable_groups if any(m.param.endswith("k_proj.weight") and m.dim == 0 for m in g.members)]
    assert attn and all(g.size == 2 for g in attn)  # one unit per KV head
    rows = {m.param.rsplit(".", 2)[-2]: len(m.index[0]) for m in attn[0].members if m.dim == 0}
    assert rows == {"q_proj": 32, "k_proj": 16, "v_proj": 16}  # 2 query heads ride with each KV head


@pytest.mark.reads_capture("transformers")
@pytest.mark.parametrize("name", ["llama_gqa", "gpt2"])
def test_decoder_vocabulary_and_gated_mlp(name):
    _, _, graph = _analyzed(name)
    for g in graph.prunable_groups:
        for m in g.members:  # embedding rows / LM head rows are the vocabulary
            assert not (m.param.endswith(("embed_tokens.weight", "wte.weight")) and m.dim == 0)
            assert not (m.param == "lm_head.weight" and m.dim == 0)
    if name == "llama_gqa":
        mlp = [g for g in graph.prunable_groups if any("gate_proj" in m.param and m.dim == 0 for m in g.members)]
        params = {m.param.rsplit(".", 2)[-2] for m in mlp[0].members}
        assert params == {"gate_proj", "up_proj", "down_proj"}  # gate and up pruned together
