"""MODEL by name: ``timm:NAME`` and ``torchvision:NAME`` beside ``zoo:NAME`` and
``module:factory``. The dispatch, the pass-through of num_classes/in_chans and the errors are
checked against stand-in modules (so they run without either package); the real packages'
models are built when they are installed (skipped otherwise)."""
import importlib
import sys
import types

import pytest
import torch
import torch.nn as nn

from fxsparse.cli import main as cli_main
from fxsparse.zoo import load_model
from fxsparse.zoo._timm_import import import_timm


def _fake_timm(calls):
    timm = types.ModuleType("timm")
    timm.is_model = lambda name: name == "tiny_net"

    def create_model(name, pretrained, num_classes, in_chans):
        calls.append(dict(name=name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans))
        return nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    timm.create_model = create_model
    return timm


def _fake_torchvision(calls):
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(list_models=lambda: ["tiny_net"])

    def get_model(name, weights, num_classes):
        calls.append(dict(name=name, weights=weights, num_classes=num_classes))
        return nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)),
                             nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    tv.models.get_model = get_model
    return tv


def test_timm_name_passes_num_classes_and_in_chans(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "timm", _fake_timm(calls))
    model = load_model("timm:tiny_net", num_classes=7, in_chans=1)
    assert calls == [dict(name="tiny_net", pretrained=False, num_classes=7, in_chans=1)]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    load_model("timm:tiny_net", num_classes=5)
    assert calls[-1]["in_chans"] == 3


def test_torchvision_name_passes_num_classes_and_adapts_the_stem(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "torchvision", _fake_torchvision(calls))
    model = load_model("torchvision:tiny_net", num_classes=6)
    assert calls == [dict(name="tiny_net", weights=None, num_classes=6)]
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 6)
    gray = load_model("torchvision:tiny_net", num_classes=6, in_chans=1)
    stem = gray[0][0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, stem.bias) == \
        (1, 4, (3, 3), (2, 2), (1, 1), None)
    assert gray(torch.randn(2, 1, 8, 8)).shape == (2, 6)


@pytest.mark.parametrize("prefix", ["timm", "torchvision"])
def test_unknown_name_is_a_one_line_error(monkeypatch, prefix, capsys):
    fake = _fake_timm([]) if prefix == "timm" else _fake_torchvision([])
    monkeypatch.setitem(sys.modules, prefix, fake)
    with pytest.raises(ValueError, match=f"no {prefix} model 'no_such_net'"):
        load_model(f"{prefix}:no_such_net")
    assert cli_main(["analyze", f"{prefix}:no_such_net"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_net" in err and f"import {prefix}" in err


@pytest.mark.parametrize("prefix", ["timm", "torchvision"])
def test_absent_package_names_an_install_that_keeps_torch(monkeypatch, prefix, tmp_path, capsys, idx_small):
    """The hint installs the package with --no-deps: with its dependencies (timm needs
    torchvision, which pins one torch) pip would replace a CPU torch with a CUDA build."""
    monkeypatch.setitem(sys.modules, prefix, None)  # `import prefix` now fails, installed or not
    with pytest.raises(ValueError, match=rf"pip install --no-deps '?{prefix}"):
        load_model(f"{prefix}:resnet18")
    out = tmp_path / "run"
    assert cli_main(["train", "--model", f"{prefix}:resnet18", "--data", "mnist", "--data-root", idx_small,
                     "--no-progress", "--out", str(out)]) == 2
    assert cli_main(["analyze", f"{prefix}:resnet18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("--no-deps" in line and "fxsparse[" not in line for line in err)
    assert not out.exists()


def test_bad_spec_names_every_form():
    with pytest.raises(ValueError, match="timm:NAME"):
        load_model("resnet18")


def _importable(name):
    try:
        import_timm() if name == "timm" else importlib.import_module(name)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("prefix, name", [("timm", "resnet10t"), ("torchvision", "resnet18")])
def test_real_package_model_by_name(prefix, name):
    """A small model of the installed package by name, 1 input channel, 4 classes (skipped
    without the package; timm runs without torchvision, see fxsparse.zoo._timm_import)."""
    if not _importable(prefix):
        pytest.skip(f"{prefix} is not installed")
    import fxsparse

    model = load_model(f"{prefix}:{name}", num_classes=4, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 4)
    assert fxsparse.analyze(model, (x,)).prunable_groups
    with pytest.raises(ValueError, match=f"no {prefix} model"):
        load_model(f"{prefix}:no_such_net_at_all")
