"""The small model deploys (issue #30, point 4): ``torch.export`` captures it with symbolic
batch / sequence / image sizes, and ``torch.onnx.export`` writes an ONNX file whose
onnxruntime outputs equal PyTorch's, at inputs of other sizes than the example's.

Models: a zoo CNN and a timm CNN (exported ``GraphModule``), a transformers GPT-2 (exported,
and pruned in place: its own class) and a model class written here (pruned in place). The
ONNX tests are skipped where onnxruntime (``pip install 'fxsparse[onnx]'``) is not installed.
"""
import copy
import functools
import importlib.util
import warnings

import pytest
import torch
import torch.nn as nn

import fxsparse
from fxsparse import zoo

AUTO = torch.export.Dim.AUTO
HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx, onnxruntime or onnxscript is not installed: "
                                                      "pip install 'fxsparse[onnx]'")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_thread):
    yield


def _logits(y):
    return y if isinstance(y, torch.Tensor) else y["logits"] if isinstance(y, dict) else y[0]


def _keep(model, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fxsparse.analyze(model.eval(), inputs)
    return graph, fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(0))


def _image_dims(x):
    return ({0: AUTO, 2: AUTO, 3: AUTO},)


def _token_dims(x):
    return ({0: AUTO, 1: AUTO},)


def _cnn():
    model = zoo.load_model("zoo:resnet20")
    x = torch.randn(2, 3, 32, 32)
    graph, keep = _keep(model, (x,))
    return fxsparse.export(model, graph, keep), x, _image_dims, [torch.randn(3, 3, 40, 40), torch.randn(1, 3, 64, 48)]


def _timm_cnn():
    timm = fxsparse.zoo.import_timm()
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    graph, keep = _keep(model, (x,))
    # deployed from a 64x64 example: at 32x32 the last feature map is 1x1, and torch.export
    # specialises a size of 1 (its guard would then refuse larger images)
    return (fxsparse.export(model, graph, keep), torch.randn(2, 3, 64, 64), _image_dims,
            [torch.randn(3, 3, 96, 96), torch.randn(1, 3, 64, 80)])


def _gpt2(in_place):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64, use_cache=False)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 100, (2, 16))
    graph, keep = _keep(model, (ids,))
    small = fxsparse.prune(model, graph, keep) if in_place else fxsparse.export(model, graph, keep)
    assert (type(small).__name__ == "GPT2LMHeadModel") == in_place
    return small, ids, _token_dims, [torch.randint(0, 100, (3, 9)), torch.randint(0, 100, (1, 30))]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def _own_class():
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(2, 3, 32, 32)
    graph, keep = _keep(model, (x,))
    small = fxsparse.prune(model, graph, keep)
    assert isinstance(small, Net) and small.conv.out_channels < 16
    return small, x, _image_dims, [torch.randn(5, 3, 24, 24), torch.randn(1, 3, 40, 56)]


CASES = {"zoo_cnn": _cnn, "timm_cnn": _timm_cnn, "gpt2_exported": lambda: _gpt2(False),
         "gpt2_in_place": lambda: _gpt2(True), "own_class_in_place": _own_class}


@functools.cache
def _built(name):
    small, x, dims, others = CASES[name]()
    return small.eval(), x, dims(x), others


def _build(name):
    """Each case's small model is analysed and exported (or pruned) once per module, not once
    per test (cut for #32: the torch.export and the ONNX test of a case share it, which halves
    the analyses); each test gets its own deep copy, so an exporter that changed the model it
    was given could not reach the other test's reference."""
    if name == "timm_cnn" and importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    small, x, dims, others = _built(name)
    return copy.deepcopy(small), x, dims, others


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_export_of_the_small_model(name):
    small, x, dims, others = _build(name)
    program = torch.export.export(small, (x,), dynamic_shapes=dims, strict=False)
    exported = program.module()
    with torch.no_grad():
        for y in [x] + others:  # other batch sizes, lengths and image sizes: the sizes stayed symbolic
            torch.testing.assert_close(_logits(exported(y)), _logits(small(y)), rtol=1e-5, atol=1e-5)


@needs_onnx
# the ONNX exporter takes 6-12 s a model: the own class (a CNN pruned in place) in the fast lane, all in the full suite
@pytest.mark.parametrize("name", [n if n == "own_class_in_place" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(CASES)])
def test_onnx_round_trip(name, tmp_path):
    import onnx
    import onnxruntime

    small, x, dims, others = _build(name)
    path = str(tmp_path / f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on torchvision ops it skips
        torch.onnx.export(small, (x,), path, dynamic_shapes=dims, dynamo=True)
    onnx.checker.check_model(onnx.load(path))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name_in = session.get_inputs()[0].name
    with torch.no_grad():
        for y in [x] + others:
            got = torch.from_numpy(session.run(None, {name_in: y.numpy()})[0])
            want = _logits(small(y))
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
