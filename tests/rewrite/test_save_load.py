"""``fxsparse.save`` / ``fxsparse.load``: a small model as safetensors weights plus a JSON
recipe, loaded back with no pickle (issue #30, point 3).

For a zoo CNN, a timm model, a transformers model (exported, and pruned in place) and a
model class written here: the loaded model gives the saved model's outputs at new inputs,
keeps its form (GraphModule / the user's class) and the files hold no pickle. A weights
file changed by one bit, a recipe pointing at another model and weights of another model
are ``SavedModelError``s that say so.
"""
import json
import os
import warnings

import pytest
import torch
import torch.nn as nn

import fxsparse
from fxsparse import zoo


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def _out(y):
    return y if isinstance(y, torch.Tensor) else y["logits"] if isinstance(y, dict) else y[0]


def _small(model, inputs, seed=0):
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fxsparse.analyze(model, inputs)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(seed))
    return graph, keep


HF_FILES = {"config.json", "generation_config.json"}  # a transformers model's own save_pretrained writes them too


def _roundtrip(small, path, new_inputs, load_kw=None, **save_kw):
    fxsparse.save(small, path, **save_kw)
    assert set(os.listdir(path)) - HF_FILES == {"model.json", "model.safetensors"}
    data = open(os.path.join(path, "model.safetensors"), "rb").read()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])  # safetensors: a JSON header, raw tensors
    assert all(set(v) == {"dtype", "shape", "data_offsets"} for k, v in header.items() if k != "__metadata__")
    loaded = fxsparse.load(str(path), **(load_kw or {}))
    assert type(loaded) is type(small) or type(small).__name__ == "GraphModule" == type(loaded).__name__
    assert not loaded.training
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(_out(loaded(*new_inputs)), _out(small(*new_inputs)), rtol=0, atol=0)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())
    return loaded


def test_zoo_cnn(tmp_path):
    model = zoo.load_model("zoo:resnet20", num_classes=10)
    graph, keep = _small(model, (torch.randn(2, 3, 32, 32),))
    small = fxsparse.export(model, graph, keep)
    with torch.no_grad():  # trained weights, not the factory's: the file must carry them
        for p in small.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loaded = _roundtrip(small, tmp_path / "resnet20", (torch.randn(3, 3, 40, 40),))
    recipe = json.load(open(tmp_path / "resnet20" / "model.json"))
    assert recipe["factory"] == {"spec": "zoo:resnet20", "kwargs": {"num_classes": 10, "in_chans": 3}}
    assert [s["kind"] for s in recipe["steps"]] == ["export"]
    assert recipe["steps"][0]["inputs"] == [{"shape": [2, 3, 32, 32], "dtype": "float32"}]
    # pruned again: both steps replay
    graph2, keep2 = _small(loaded, (torch.randn(2, 3, 32, 32),), seed=1)
    smaller = fxsparse.export(loaded, graph2, keep2)
    _roundtrip(smaller, tmp_path / "twice", (torch.randn(1, 3, 32, 32),))
    assert len(json.load(open(tmp_path / "twice" / "model.json"))["steps"]) == 2


def test_timm_model(tmp_path):
    timm = fxsparse.zoo.import_timm()
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    graph, keep = _small(model, (torch.randn(2, 3, 32, 32),))
    small = fxsparse.export(model, graph, keep)
    with pytest.raises(fxsparse.SavedModelError, match="factory="):  # timm's create kwargs are not recorded
        fxsparse.save(small, tmp_path / "no_factory")
    _roundtrip(small, tmp_path / "timm", (torch.randn(1, 3, 64, 64),), factory="timm:resnet18", num_classes=10)
    # a factory that builds another model is found when saving, not when deploying
    with pytest.raises(fxsparse.SavedModelError):
        fxsparse.save(small, tmp_path / "wrong", factory="timm:resnet34", num_classes=10)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64)
    return transformers.GPT2LMHeadModel(config)


@pytest.mark.slow  # torch.export of a transformers model, twice: ~13 s
def test_transformers_model_exported_and_pruned_in_place(tmp_path):
    model = _gpt2()
    ids = torch.randint(0, 100, (2, 16))
    graph, keep = _small(model, (ids,))
    small = fxsparse.export(model, graph, keep)
    _roundtrip(small, tmp_path / "exported", (torch.randint(0, 100, (3, 9)),))
    pruned = fxsparse.prune(model, graph, keep)
    assert type(pruned).__name__ == "GPT2LMHeadModel"
    loaded = _roundtrip(pruned, tmp_path / "in_place", (torch.randint(0, 100, (1, 20)),))
    recipe = json.load(open(tmp_path / "in_place" / "model.json"))
    assert recipe["factory"]["spec"] == "transformers:GPT2LMHeadModel"
    assert recipe["factory"]["kwargs"]["config"]["n_embd"] == 64  # the dense config, before prune changed it
    assert [s["kind"] for s in recipe["steps"]] == ["prune"]
    assert loaded.config.n_embd == pruned.config.n_embd < 64
    # the transformers convention reads the same directory (every layer pruned alike: the config says the sizes)
    again = type(pruned).from_pretrained(tmp_path / "in_place").eval()
    ids = torch.randint(0, 100, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, pruned(ids).logits, rtol=0, atol=0)
    config = tmp_path / "in_place" / "config.json"
    config.write_text(config.read_text().replace('"n_embd": 32', '"n_embd": 48'))
    with pytest.raises(fxsparse.SavedModelError, match="config.json.*SHA-256 differs"):
        fxsparse.load(str(tmp_path / "in_place"))


class TwoBranch(nn.Module):
    """A model class written in the test: two convs summed, then a classifier."""

    def __init__(self, width=16, num_classes=5):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(3, width, 1)
        self.mid = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = torch.relu(self.a(x) + self.b(x))
        x = torch.relu(self.bn(self.mid(x)))
        return self.fc(x.mean((2, 3)))


def build_two_branch(width=16, num_classes=5):
    torch.manual_seed(0)
    return TwoBranch(width, num_classes)


def test_own_class_exported_and_pruned(tmp_path):
    model = build_two_branch(width=12)
    graph, keep = _small(model, (torch.randn(2, 3, 16, 16),))
    small = fxsparse.export(model, graph, keep)
    with pytest.raises(fxsparse.SavedModelError, match="factory='package.module:function'"):
        fxsparse.save(small, tmp_path / "x")
    _roundtrip(small, tmp_path / "exported", (torch.randn(4, 3, 24, 24),), factory=build_two_branch, width=12)
    pruned = fxsparse.prune(model, graph, keep)
    assert isinstance(pruned, TwoBranch)
    loaded = _roundtrip(pruned, tmp_path / "pruned", (torch.randn(1, 3, 16, 16),),
                        factory=f"{__name__}:build_two_branch", width=12)
    assert isinstance(loaded, TwoBranch) and loaded.mid.out_channels == pruned.mid.out_channels < 24
    # a factory that cannot be imported by name (a lambda, a function of __main__) is passed to load as well
    _roundtrip(pruned, tmp_path / "unnamed", (torch.randn(1, 3, 16, 16),), factory=lambda: build_two_branch(width=12),
               load_kw={"factory": lambda: build_two_branch(width=12)})
    assert json.load(open(tmp_path / "unnamed" / "model.json"))["factory"] is None
    with pytest.raises(fxsparse.SavedModelError, match="pass it, fxsparse.load"):
        fxsparse.load(str(tmp_path / "unnamed"))


def test_own_class_built_with_no_arguments_needs_no_factory(tmp_path):
    model = TwoBranch()  # its class is the factory: recorded by name, built with no arguments
    graph, keep = _small(model, (torch.randn(2, 3, 16, 16),))
    pruned = fxsparse.prune(model, graph, keep)
    _roundtrip(pruned, tmp_path / "p", (torch.randn(3, 3, 20, 20),))
    assert json.load(open(tmp_path / "p" / "model.json"))["factory"] == {"spec": f"{__name__}:TwoBranch", "kwargs": {}}
    dense = TwoBranch(width=8)  # a dense model saves and loads the same way
    _roundtrip(dense, tmp_path / "d", (torch.randn(1, 3, 8, 8),), factory=TwoBranch, width=8)


def test_tampered_or_foreign_files_are_refused(tmp_path):
    model = zoo.load_model("zoo:resnet20")
    graph, keep = _small(model, (torch.randn(2, 3, 32, 32),))
    fxsparse.save(fxsparse.export(model, graph, keep), tmp_path / "a")
    weights = tmp_path / "a" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(fxsparse.SavedModelError, match="SHA-256 differs"):
        fxsparse.load(str(tmp_path / "a"))

    # another model's recipe with these weights (hash updated, as a copy-paste would not do: still refused)
    other = zoo.load_model("zoo:resnet32")
    g2, k2 = _small(other, (torch.randn(2, 3, 32, 32),))
    fxsparse.save(fxsparse.export(other, g2, k2), tmp_path / "b")
    fxsparse.save(fxsparse.export(model, graph, keep), tmp_path / "a")
    recipe = json.load(open(tmp_path / "b" / "model.json"))
    recipe["weights_sha256"] = json.load(open(tmp_path / "a" / "model.json"))["weights_sha256"]
    json.dump(recipe, open(tmp_path / "b" / "model.json", "w"))
    (tmp_path / "b" / "model.safetensors").write_bytes((tmp_path / "a" / "model.safetensors").read_bytes())
    with pytest.raises(fxsparse.SavedModelError, match="does not fit"):
        fxsparse.load(str(tmp_path / "b"))

    # the recipe's factory changed to another model: its groups do not match
    recipe = json.load(open(tmp_path / "a" / "model.json"))
    recipe["factory"]["spec"] = "zoo:resnet32"
    json.dump(recipe, open(tmp_path / "a" / "model.json", "w"))
    with pytest.raises(fxsparse.SavedModelError, match="another model"):
        fxsparse.load(str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="model.json"):
        fxsparse.load(str(tmp_path))
