"""``fxsparse.prune``: the user's own model sliced in place (issue #30, point 2).

Each test keeps the model's class and compares the pruned model with the masked reference
(the dense model with pruned channels zeroed, computed before pruning, on inputs prune did
not check on where the model allows it); a model whose code pins a size falls back to the
GraphModule export or raises; transformers decoders generate the tokens of the masked
reference's greedy decode and reload to identical logits.
"""
import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import fxsparse
from fxsparse import zoo
from fxsparse.analysis.masks import kept_indices
from fxsparse.rewrite.reference import masked_reference


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def _close(a, b):
    torch.testing.assert_close(a.detach(), b.detach(), atol=1e-5 * max(1.0, float(b.abs().max())), rtol=1e-4)


def _prune_quietly(model, graph, keep, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fxsparse.prune(model, graph, keep, **kw)
    return out, [str(w.message) for w in caught if "fxsparse.prune" in str(w.message)]


def _sizes_match_weights(model):
    """Every standard layer's size attributes say what its weights hold."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels == m.weight.shape[0] and m.in_channels == m.weight.shape[1] * m.groups, name
        elif isinstance(m, nn.Linear):
            assert (m.out_features, m.in_features) == tuple(m.weight.shape), name
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.num_features == m.weight.shape[0] == m.running_mean.shape[0] == m.running_var.shape[0], name
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            assert m.normalized_shape == tuple(m.weight.shape), name


# ----- zoo CNNs -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet20", "vgg11_bn", "mobilenetv2"])
def test_zoo_cnn_is_sliced_in_place(name):
    torch.manual_seed(0)
    model = zoo.create(name).eval()
    cls, n_dense = type(model), sum(p.numel() for p in model.parameters())
    x, other = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    graph = fxsparse.analyze(model, x)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1))
    bn_name = next(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    bn = model.get_submodule(bn_name)
    bn.running_mean.copy_(torch.randn_like(bn.running_mean))  # statistics that tell slices apart
    stats_dense = bn.running_mean.clone()
    kept = kept_indices(graph, keep).get(f"{bn_name}.running_mean", {0: torch.arange(stats_dense.numel())})[0]
    with torch.no_grad():  # before pruning: a traced graph shares the model's modules
        ref, ref_other = masked_reference(graph, keep, x), masked_reference(graph, keep, other)

    small, why = _prune_quietly(model, graph, keep)
    assert small is model and type(small) is cls and not isinstance(small, fx.GraphModule), why
    assert sum(p.numel() for p in small.parameters()) < 0.5 * n_dense
    _sizes_match_weights(small)
    torch.testing.assert_close(small.get_submodule(bn_name).running_mean, stats_dense[kept])
    with torch.no_grad():
        _close(small(x), ref)
        _close(small(other), ref_other)  # another batch size than the check's
    small.train()
    small(x).sum().backward()  # trains: new parameters, gradients of their new shapes
    assert all(p.grad is not None and p.grad.shape == p.shape for p in small.parameters())


# ----- a model class written here ----------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise: groups follows the kept channels
        self.conv2 = nn.Conv2d(16, 32, 1)
        self.gn = nn.GroupNorm(8, 32)
        self.norm = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10)

    def features(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.gn(self.conv2(self.dw(x))))
        return self.norm(x.mean((2, 3)))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.features(x))))

    def predict(self, x):
        return self.forward(x).argmax(1)


def test_own_class_keeps_its_methods_hooks_and_attributes(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    seen = []
    model.fc1.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    x, other = torch.randn(2, 3, 16, 16), torch.randn(4, 3, 8, 8)
    graph = fxsparse.analyze(model, x)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, ref_other = masked_reference(graph, keep, x), masked_reference(graph, keep, other)
    small, why = _prune_quietly(model, graph, keep)
    assert small is model and isinstance(small, Net), why
    _sizes_match_weights(small)
    assert small.dw.groups == small.dw.in_channels == small.dw.out_channels == small.bn1.num_features < 16
    assert small.gn.num_channels == small.conv2.out_channels and small.gn.num_channels % small.gn.num_groups == 0
    assert small.norm.normalized_shape == (small.fc1.in_features,) and small.fc1.in_features < 32
    seen.clear()
    with torch.no_grad():
        _close(small(x), ref)
        _close(small(other), ref_other)
        assert torch.equal(small.predict(x), ref.argmax(1))  # the class's own method
    assert seen == [(2, small.fc1.out_features), (4, small.fc1.out_features), (2, small.fc1.out_features)]  # the hook
    # safe files: safetensors + the kept sizes, rebuilt from the class (recorded by name: Net())
    fxsparse.save(small, tmp_path / "net")
    for again in (fxsparse.load(tmp_path / "net"), fxsparse.load(tmp_path / "net", Net)):
        assert isinstance(again, Net) and again.dw.groups == small.dw.groups
        with torch.no_grad():
            assert torch.equal(again(x), small(x))
    with pytest.raises(fxsparse.SavedModelError, match="another model"):
        fxsparse.load(tmp_path / "net", lambda: nn.Sequential(nn.Linear(3, 3)))
    small.double()  # the dtype comes back as saved
    fxsparse.save(small, tmp_path / "net64", check=False)  # its recorded example inputs are float32
    again = fxsparse.load(tmp_path / "net64")
    assert {p.dtype for p in again.parameters()} == {torch.float64}
    with torch.no_grad():
        assert torch.equal(again(x.double()), small(x.double()))


# ----- a size pinned by the model's code ---------------------------------------------------
class PinnedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = x.view(x.shape[0], 16, -1).mean(-1)  # 16: a channel count written into the code
        return self.fc(x)


class Pinned(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = PinnedHead()

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def _pinned():
    torch.manual_seed(0)
    model = Pinned().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = fxsparse.analyze(model, x)
    (group,) = [g for g in graph.prunable_groups if any(m.param == "conv.weight" and m.dim == 0 for m in g.members)]
    keep = {group.id: torch.arange(16) < 8}
    return model, x, graph, keep


def test_pinned_size_falls_back_to_the_graphmodule_with_a_warning():
    model, x, graph, keep = _pinned()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    ref = masked_reference(graph, keep, x)
    small, why = _prune_quietly(model, graph, keep)
    assert isinstance(small, fx.GraphModule) and small is not model
    assert len(why) == 1 and "module 'head' (PinnedHead.forward" in why[0] and "GraphModule" in why[0]
    with torch.no_grad():
        _close(small(x), ref)
    # the model is as it was: same parameter objects, same values, same sizes
    assert [id(p) for p in model.parameters()] == params and model.conv.out_channels == 16
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_pinned_size_raises_when_asked():
    model, x, graph, keep = _pinned()
    with pytest.raises(fxsparse.PruneCheckError, match=r"module 'head' \(PinnedHead.forward") as info:
        fxsparse.prune(model, graph, keep, fallback="raise")
    assert isinstance(info.value, fxsparse.ExportError)
    assert model.conv.weight.shape[0] == 16 and model.head.fc.in_features == 16  # left unchanged
    with torch.no_grad():
        model(x)


class SilentlyPinned(nn.Module):
    """A pinned reshape whose numbers still fit: no error, other numbers (the mean over half rows)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(1, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x.reshape(x.shape[0], 16, -1).mean(-1).sum(1, keepdim=True)
        return self.fc(x)


def test_silently_pinned_size_names_the_first_layer_that_differs():
    torch.manual_seed(0)
    model = SilentlyPinned().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = fxsparse.analyze(model, x)
    (group,) = graph.prunable_groups
    keep = {group.id: torch.arange(16) % 2 == 0}
    ref = masked_reference(graph, keep, x)
    small, why = _prune_quietly(model, graph, keep)
    assert isinstance(small, fx.GraphModule) and model.conv.out_channels == 16
    assert len(why) == 1 and "differs from the masked reference" in why[0]
    assert "first layer whose output differs is module 'fc' (Linear)" in why[0] and "SilentlyPinned" in why[0]
    with torch.no_grad():
        _close(small(x), ref)


class WithMultiheadAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.out = nn.Linear(32, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.attn(h, h, h, need_weights=False)[0])


def test_multihead_attention_falls_back_naming_it():
    """torch's own multi-head attention needs its heads as wide as its input: pruned apart, the
    model falls back (the export prunes them apart)."""
    torch.manual_seed(0)
    model = WithMultiheadAttention().eval()
    x = torch.randn(2, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fxsparse.analyze(model, x)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    ref = masked_reference(graph, keep, x)
    small, why = _prune_quietly(model, graph, keep)
    assert isinstance(small, fx.GraphModule) and model.attn.in_proj_weight.shape == (96, 32)
    assert len(why) == 1 and "module 'attn' (MultiheadAttention.forward" in why[0]
    assert "called from module '(the model)' (WithMultiheadAttention.forward" in why[0]
    with torch.no_grad():
        _close(small(x), ref)


def test_bad_arguments_are_named():
    model, x, graph, keep = _pinned()
    with pytest.raises(ValueError, match="fallback"):
        fxsparse.prune(model, graph, keep, fallback="export")
    with pytest.raises(TypeError, match="ChannelGraph"):
        fxsparse.prune(model, keep, keep)


# ----- timm ---------------------------------------------------------------------------------
def test_timm_swin_heads_in_place():
    """Swin's window attention stores its head count and no head_dim: the count follows the
    heads' channel group (and its relative position bias table, one column per head)."""
    timm = zoo.import_timm()
    if timm is None:
        pytest.skip("timm is not installed")
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=32,
                              window_size=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fxsparse.analyze(model, x)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = masked_reference(graph, keep, x)
    cls = type(model)
    small, why = _prune_quietly(model, graph, keep)
    assert small is model and type(small) is cls, why
    attn = small.layers[0].blocks[0].attn
    assert attn.num_heads == 2 == attn.relative_position_bias_table.shape[1]  # 3 heads of 32 -> 2
    assert attn.qkv.out_features == 3 * attn.proj.in_features == 3 * 2 * 32
    _sizes_match_weights(small)
    with torch.no_grad():
        _close(small(x), ref)


# ----- transformers decoders ----------------------------------------------------------------
VOCAB, LENGTH, PROMPT = 100, 12, 5


def _llama():
    import transformers

    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64))


def _gpt2():
    import transformers

    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0))


DECODERS = {"llama": _llama, "gpt2": _gpt2}


def _decoder(name):
    pytest.importorskip("transformers")
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = DECODERS[name]().eval()
    # analysed at the full length the test decodes to: a causal model's logits at position t do
    # not depend on later tokens, so the reference decodes on right-padded ids
    ids = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(0))
    graph = fxsparse.analyze(model, ids)
    return model, graph, ids


def _reference_greedy(graph, keep, prompt):
    ids, logits = prompt, []
    while ids.shape[1] < LENGTH:
        padded = torch.cat([ids, torch.zeros(ids.shape[0], LENGTH - ids.shape[1], dtype=ids.dtype)], 1)
        with torch.no_grad():
            step = masked_reference(graph, keep, padded)["logits"][:, ids.shape[1] - 1]
        logits.append(step)
        ids = torch.cat([ids, step.argmax(-1, keepdim=True)], 1)
    return ids, logits


def _generate(model, prompt):
    return model.generate(prompt, max_new_tokens=LENGTH - PROMPT, do_sample=False, use_cache=True, pad_token_id=0,
                          eos_token_id=None, return_dict_in_generate=True, output_logits=True)


def _group(graph, param_suffix, dim):
    (g,) = [g for g in graph.prunable_groups if any(m.param.endswith(param_suffix) and m.dim == dim for m in g.members)]
    return g


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_generates_the_reference_tokens_and_reloads(name, tmp_path):
    import transformers

    model, graph, ids = _decoder(name)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))  # every layer the same sizes
    prompt = ids[:, :PROMPT]
    want_ids, want_logits = _reference_greedy(graph, keep, prompt)
    cls = type(model)
    small, why = _prune_quietly(model, graph, keep)
    assert small is model and type(small) is cls, why
    out = _generate(small, prompt)
    assert isinstance(out.past_key_values, transformers.DynamicCache)  # decoded with its KV cache
    assert torch.equal(out.sequences, want_ids)
    for got, want in zip(out.logits, want_logits):
        _close(got, want)
    # uniform sizes: the config says them, so transformers' own from_pretrained rebuilds the model
    assert small.config.hidden_size == 32 and small.config.num_attention_heads == 2
    small.save_pretrained(tmp_path / "hf")
    fxsparse.save(small, tmp_path / "fx")  # the model's own files too, plus the recipe
    with torch.no_grad():
        logits = small(ids).logits
        for path in (tmp_path / "hf", tmp_path / "fx"):
            assert torch.equal(cls.from_pretrained(path).eval()(ids).logits, logits)
        again = fxsparse.load(tmp_path / "fx")
        assert type(again) is cls and torch.equal(again(ids).logits, logits)
    assert torch.equal(_generate(again, prompt).sequences, want_ids)


def _uneven_keep(name, graph):
    """Layer 0 and layer 1 pruned to different head counts and MLP widths: no config says it."""
    gen = torch.Generator().manual_seed(3)
    keep = {}
    if name == "llama":
        heads = [_group(graph, f"layers.{i}.self_attn.k_proj.weight", 0) for i in range(2)]
        mlps = [_group(graph, f"layers.{i}.mlp.up_proj.weight", 0) for i in range(2)]
        residual = _group(graph, "layers.0.input_layernorm.weight", 0)
    else:
        heads = [_group(graph, f"h.{i}.attn.c_proj.weight", 0) for i in range(2)]
        mlps = [_group(graph, f"h.{i}.mlp.c_fc.bias", 0) for i in range(2)]
        residual = _group(graph, "h.0.ln_1.weight", 0)
    for g, count in [(heads[0], 1), (heads[1], heads[1].size), (mlps[0], 96), (mlps[1], 20), (residual, 40)]:
        keep[g.id] = torch.randperm(g.size, generator=gen)[:count]
    return keep


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_decoder_with_per_layer_sizes_reloads_through_fxsparse(name, tmp_path):
    model, graph, ids = _decoder(name)
    keep = _uneven_keep(name, graph)
    prompt = ids[:, :PROMPT]
    want_ids, want_logits = _reference_greedy(graph, keep, prompt)
    heads_before = model.config.num_attention_heads
    small, why = _prune_quietly(model, graph, keep)
    assert small is model, why
    assert small.config.num_attention_heads == heads_before  # the layers differ: the config keeps its value
    assert small.config.hidden_size == 40  # the residual width is one for all layers
    out = _generate(small, prompt)
    assert torch.equal(out.sequences, want_ids)
    for got, want in zip(out.logits, want_logits):
        _close(got, want)
    fxsparse.save(small, tmp_path)  # a config cannot say the sizes: the recipe does
    again = fxsparse.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, small(ids).logits)
    assert torch.equal(_generate(again, prompt).sequences, want_ids)
