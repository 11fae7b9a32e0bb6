"""The exported (small) model runs at any batch size, and wherever the dense model does, at
any sequence length and image size (issue #30, point 1).

Each model is analysed at one input shape, exported at keep 0.5 and run at two other
shapes; its output must equal the dense model's masked reference at those same inputs, and
at keep 1 the exported model must equal the dense model itself (run eagerly, independent of
the captured graph). Sizes the captured graph cannot follow (a dim the model's code pins,
found by torch.export or, for a torch.fx trace, by running the graph at other sizes; the image
size of a windowed model, too costly to capture symbolically) must be named in a
``PinnedSizeWarning``, and the exported model refuses other sizes there with an error naming
the dim (its graph asserts them) instead of failing somewhere inside.
"""
import copy
import pickle
import re

import pytest
import torch
import torch.nn as nn

import fxsparse
from captures import Captured, analyzed, captured  # each model captured once per session (other files read it too)
from fxsparse.rewrite.reference import masked_reference
from lanes import HF_FAST, fast_subset
from thirdparty.chain import first_tensor as _first_tensor
from thirdparty.transformers_models import MODELS as HF_MODELS, VOCAB


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def _tokens(batch, length, seed=1):
    return (torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed)),)


def _images(batch, size, seed=1):
    return (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)),)


def _reference(graph, keep, inputs, chunk):
    """The masked reference, run ``chunk`` samples at a time where given, the last piece padded
    with copies of its first sample (a model that folds the batch into a channel dim, MobileViT's
    patches or nn.MultiheadAttention's batch * heads, has masks of the example's batch). In eval
    mode a sample's output does not depend on the others."""
    if not chunk:
        return _first_tensor(masked_reference(graph, keep, *inputs))
    outs = []
    for i in range(0, inputs[0].shape[0], chunk):
        piece = [x[i:i + chunk] for x in inputs]
        n = piece[0].shape[0]
        piece = [torch.cat([p] + [p[:1]] * (chunk - n)) for p in piece]
        outs.append(_first_tensor(masked_reference(graph, keep, *piece))[:n])
    return torch.cat(outs)


def _check_sizes(model, graph, others, atol=1e-4, chunk=None):
    """At every input of ``others``: the small model equals the masked reference (keep 0.5)
    and, at keep 1, the dense model run eagerly."""
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))
    small = fxsparse.export(model, graph, keep).eval()
    whole = fxsparse.export(model, graph, {}).eval()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        for inputs in others:
            out = _first_tensor(small(*inputs))
            ref = _reference(graph, keep, inputs, chunk)
            assert out.shape == ref.shape and out.shape[0] == inputs[0].shape[0]
            torch.testing.assert_close(out, ref, atol=atol, rtol=atol)
            torch.testing.assert_close(_first_tensor(whole(*inputs)), _first_tensor(model(*inputs)), atol=atol, rtol=atol)


# ---- the issue's example: a transformers GPT-2 analysed at length 16 ---------------------------

def test_gpt2_of_the_issue_runs_at_other_lengths_and_batches():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    graph, pinned = analyzed(model, _tokens(2, 16))
    assert not pinned, pinned
    _check_sizes(model, graph, [_tokens(2, 8), _tokens(2, 20), _tokens(3, 16), _tokens(1, 5)])


# ---- every transformers model the tests build ---------------------------------------------------

# image models: ViT and DeiT pin the image size in their own code (the dense model fails elsewhere);
# Swin's windows and MobileViT's patch folds cost hundreds of shape guards, so the capture keeps the
# size (see fxsparse/analysis/dynamic_dims.py); ConvNeXt runs at any size
IMAGE_MODELS = {"vit": "code", "deit": "code", "swin": "cost", "mobilevit": "cost", "convnext": "free"}
IMAGE_SIZE = {"mobilevit": 64}
# Mamba's scan without its CUDA kernels loops over the tokens in Python: torch.export unrolls
# the loop at the example's length, which the warning names; other batches still run
PINNED_LENGTH = {"mamba"}


# fast lane: one model per kind (the image models cover each outcome; the pinned length:
# test_a_length_the_code_pins_is_named_and_the_batch_stays_free), Mamba and the rest in the full suite
@pytest.mark.reads_capture("transformers")
@pytest.mark.parametrize("name", fast_subset(sorted(HF_MODELS), HF_FAST))
def test_transformers_model_at_other_sizes(name):
    pytest.importorskip("transformers")
    shared = captured(f"transformers:{name}")
    if name in IMAGE_MODELS:
        size = IMAGE_SIZE.get(name, 32)
        got = _check_every_size_the_dense_model_takes(shared, [_images(1, 2 * size), _images(3, size + 16)], chunk=2)
        assert got == IMAGE_MODELS[name], got
        return
    model, inputs, graph, pinned = shared.model, shared.inputs, shared.graph, shared.pinned
    length = inputs[0].shape[1]
    if name in PINNED_LENGTH:
        assert len(pinned) == 1 and f"input 0 (input_ids) dim 1 (size {length})" in pinned[0], pinned
        _check_sizes(model, graph, [_tokens(3, length), _tokens(1, length)])
        return
    assert not pinned, pinned
    _check_sizes(model, graph, [_tokens(3, length - 3), _tokens(1, length + 5)])


@pytest.mark.parametrize("name", fast_subset(["mixtral", "qwen2_moe", "qwen3_moe", "falcon_new_decoder"], {"mixtral"}))
def test_transformers_mixture_of_experts_at_other_lengths(name):
    pytest.importorskip("transformers")
    from thirdparty import test_thirdparty_moe  # the families tests/thirdparty/test_thirdparty_moe.py builds

    torch.manual_seed(0)
    model = test_thirdparty_moe.FAMILIES[name]().eval()
    graph, pinned = analyzed(model, _tokens(2, 8))
    assert not pinned, pinned
    _check_sizes(model, graph, [_tokens(3, 5), _tokens(1, 13)])


# ---- timm models by name and the mirrored timm / torchvision models of tests/thirdparty ---------

def _dense_runs(model, inputs) -> bool:
    try:
        with torch.no_grad():
            model(*inputs)
        return True
    except Exception:  # the model's own code fixes the size (a position table, a window grid)
        return False


def _why_image_fixed(pinned, size):
    """"code" / "cost" / "failed" as the warning says why the image size is fixed, None where it does not."""
    parts = [p for m in pinned for p in m.split("; ") if re.search(rf"dim 2 \(size {size}\).*dim 3 \(size {size}\)", p)]
    if not parts:
        return None
    return ("cost" if "shape guards" in parts[0] else "failed" if "cannot capture" in parts[0]
            else "graph" if "captured graph holds" in parts[0] else "code")


def _check_every_size_the_dense_model_takes(shared: Captured, others, chunk=None):
    """The rule for image models: at the example size, other batches always. At other sizes:
    the exported model runs wherever the dense model does ("free"), unless the warning names the
    image dims: then the exported model refuses other sizes with an error naming the dim,
    and where the warning blames the model's code ("code") the dense model fails there too;
    "cost": a windowed model the capture keeps at its size; "graph": torch.export specialised a
    size computed from it (a 1x1 feature map at the example). ``shared``: the model, its
    example inputs and their analysis (only read)."""
    model, inputs, graph, pinned = shared.model, shared.inputs, shared.graph, shared.pinned
    size = inputs[0].shape[-1]
    _check_sizes(model, graph, [_images(3, size), _images(1, size)], chunk=chunk or inputs[0].shape[0])
    runs = [x for x in others if _dense_runs(model, x)]
    why = _why_image_fixed(pinned, size)
    if why is None:
        assert not pinned, pinned
        assert runs, "the dense model runs at no other size, but no warning said so"
        _check_sizes(model, graph, runs, chunk=chunk)
        return "free"
    small = fxsparse.export(model, graph, fxsparse.random_keep(graph, 0.5)).eval()
    for x in others:
        with pytest.raises(AssertionError, match=rf"takes input 0 \(\w+\) dim 2 \(size {size}\) only"):
            small(*x)
    if why == "code":
        assert not runs, "the warning blames the model's code, but the dense model runs at other sizes"
    return why


# the fast lane: a free image size (ResNet, MobileNet v3, ConvNeXt) and one the model's code fixes
# (ViT); the other timm models in the full suite (tests/thirdparty/test_thirdparty_timm.py runs more of them fast)
TIMM_FAST = {"resnet18", "mobilenetv3_small_100", "convnext_atto", "vit_tiny_patch16_224"}
# windows or patch folds cut from the image: hundreds of shape guards, the capture keeps the size
TIMM_COST = {"mobilevitv2_050", "tiny_vit_5m_224"}
# captured by torch.export at 32x32, where its last feature map is 1x1: a size torch.export specialises
TIMM_GRAPH = {"efficientvit_b0"}
# img_size fixes their token count or window grid in their own code: the dense model runs only there
TIMM_CODE = {"vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "levit_128s",
             "mixer_s16_224"}


def _timm_names():
    from thirdparty.timm_models import MODELS

    return [n if n in TIMM_FAST else pytest.param(n, marks=pytest.mark.slow) for n in MODELS]


@pytest.mark.reads_capture("timm")
@pytest.mark.parametrize("name", _timm_names())
def test_timm_model_at_other_sizes(name):
    from thirdparty.timm_models import import_timm

    if import_timm() is None:
        pytest.skip("timm is not installed")
    got = _check_every_size_the_dense_model_takes(captured(f"timm:{name}"), [_images(3, 64), _images(1, 48)])
    assert got == ("cost" if name in TIMM_COST else "graph" if name in TIMM_GRAPH else "code" if name in TIMM_CODE
                   else "free"), got


# windowed (captured by torch.export: torch.fx cannot trace them, or their wrapped functions have no rule)
MIRRORS_COST = {"timm_swin_dynamic", "tv_swin_t", "tv_maxvit_t"}
# timm's resample of the position table is skipped where the grid is the old one: torch.export keeps that
# branch without narrowing the input's range, the graph holds the example's grid
MIRRORS_GRAPH = {"timm_vit_dynamic"}
# their own code fixes the image size (a position table, a window grid, a fixed token count)
MIRRORS_CODE = {"timm_vit_tiny", "timm_deit", "timm_swin", "timm_cait", "timm_mlp_mixer", "timm_levit", "tv_vit_b_16"}


MIRRORS_SIZES_FAST = {"tv_resnet18", "tv_mobilenet_v2", "tv_densenet", "timm_efficientnet", "timm_vit_tiny",
                      "timm_swin", "timm_levit", "tv_vit_b_16"}


def _mirror_names():
    from thirdparty import MODELS

    # the fast lane: each outcome of the rule (free, fixed by the model's code) on a few models;
    # every mirrored model (the windowed ones the capture keeps at their size too) in the full suite
    return fast_subset(sorted(MODELS), MIRRORS_SIZES_FAST)


@pytest.mark.reads_capture("vendored")
@pytest.mark.parametrize("name", _mirror_names())
def test_mirrored_model_at_other_sizes(name):
    got = _check_every_size_the_dense_model_takes(captured(f"vendored:{name}"), [_images(3, 64), _images(1, 48)])
    assert got == ("cost" if name in MIRRORS_COST else "graph" if name in MIRRORS_GRAPH else "code" if name in MIRRORS_CODE
                   else "free"), got


# ---- the zoo --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vit_tiny"])
def test_zoo_model_at_other_sizes(name):
    model, inputs = fxsparse.zoo.load_model(f"zoo:{name}", num_classes=10).eval(), _images(2, 32)
    got = _check_every_size_the_dense_model_takes(Captured(model, inputs, *analyzed(model, inputs)),
                                                  [_images(3, 64), _images(1, 48)])
    assert got == ("code" if name == "vit_tiny" else "free"), got  # the zoo's ViT: a position table of 8x8 patches


# ---- model classes written here ---------------------------------------------------------------------

class TinyAttention(nn.Module):
    """Token ids -> heads by ``view(B, L, heads, -1)``: torch.fx keeps B and L as the input's."""

    def __init__(self, vocab=50, width=32, heads=4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 64), nn.Linear(64, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        x = self.embed(ids)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, -1))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x)


def test_own_attention_class_runs_at_other_lengths():
    torch.manual_seed(0)
    model = TinyAttention().eval()
    ids = torch.randint(0, 50, (2, 12))
    graph, pinned = analyzed(model, (ids,))
    assert not pinned
    _check_sizes(model, graph, [(torch.randint(0, 50, (3, 7)),), (torch.randint(0, 50, (1, 30)),)])


class PinsItsLength(TinyAttention):
    """Checks the length against a constant (torch.fx cannot trace the check: torch.export
    specialises the length to 12) and reshapes with it."""

    def forward(self, ids):
        if ids.shape[1] != 12:
            raise ValueError("this model takes 12 tokens")
        return super().forward(ids).reshape(ids.shape[0], 12, -1)


def test_a_length_the_code_pins_is_named_and_the_batch_stays_free():
    torch.manual_seed(0)
    model = PinsItsLength().eval()
    graph, pinned = analyzed(model, (torch.randint(0, 50, (2, 12)),))
    assert len(pinned) == 1 and "input 0 (ids) dim 1 (size 12)" in pinned[0] and "dim 0" not in pinned[0], pinned
    _check_sizes(model, graph, [(torch.randint(0, 50, (3, 12)),), (torch.randint(0, 50, (5, 12)),)])


class FoldsItsBatch(nn.Module):
    """Traced by torch.fx with a batch size written in its code: ``reshape(2, ...)`` folds a batch
    of 4 into 2 rows without an error, a silently wrong result the exported model must refuse."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc(y.reshape(2, -1, 16).mean(1))


def test_a_batch_an_fx_traced_model_pins_is_named_and_checked():
    torch.manual_seed(0)
    model = FoldsItsBatch().eval()
    x = torch.randn(2, 3, 16, 16)
    graph, pinned = analyzed(model, (x,))
    assert isinstance(graph.gm, torch.fx.GraphModule) and "call_module" in {n.op for n in graph.gm.graph.nodes}  # torch.fx
    assert len(pinned) == 1 and "input 0 (x) dim 0 (size 2)" in pinned[0] and "dim 2" not in pinned[0], pinned
    assert model(torch.randn(4, 3, 16, 16)).shape == (2, 5)  # the dense model folds a batch of 4 silently
    small = fxsparse.export(model, graph, fxsparse.random_keep(graph, 0.5)).eval()
    for again in (small, copy.deepcopy(small), pickle.loads(pickle.dumps(small))):  # the check is graph code
        with pytest.raises(AssertionError, match=r"takes input 0 \(x\) dim 0 \(size 2\) only: the model's own code"):
            again(torch.randn(4, 3, 16, 16))
    program = torch.export.export(small, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO},))
    assert [str(r) for r in program.range_constraints.values()] == ["VR[2, int_oo]"]  # the image size; the batch is 2
    _check_sizes(model, graph, [(torch.randn(2, 3, 24, 24),), (torch.randn(2, 3, 9, 9),)])  # its image size is free
