"""The trained model of a run loads without running code (``fxsparse.load``): equal to the
pickled ``model.pt`` for a pruned, a dense and a search-ending run; a changed weights file, a
recipe of another model and a model passed as an object are clear errors."""
import json
import os

import pytest
import torch

import fxsparse
from fxsparse.cli import main as cli_main
from fxsparse.training.saved import SavedModelError
from fxsparse.training.trainer import TrainConfig, Trainer


def _train(data_dir, out, *extra):
    assert cli_main(["train", "--model", "zoo:lenet5", "--data", "mnist", "--data-root", data_dir, "--batch-size", "32",
                     "--no-compile", "--threads", "1", "--no-progress", "--bn-batches", "2", "--out", str(out),
                     *extra]) == 0
    return str(out)


@pytest.mark.parametrize("extra", [("--method", "l1_filter", "--epochs", "0", "--finetune-epochs", "0.5"),
                                   ("--method", "dense", "--epochs", "0.5", "--finetune-epochs", "0"),
                                   ("--epochs", "0.5", "--finetune-epochs", "0")],  # vrpge, the search ends the run
                         ids=["pruned", "dense", "search-ends"])
def test_load_rebuilds_the_run_model_without_pickle(data_dir, tmp_path, extra):
    out = _train(data_dir, tmp_path / "run", *extra)
    model = fxsparse.load(out)
    pickled = torch.load(os.path.join(out, "model.pt"), weights_only=False).eval()
    assert isinstance(model, fxsparse.Classifier) and not model.training
    assert isinstance(model.net, torch.fx.GraphModule) == isinstance(pickled.net, torch.fx.GraphModule)
    assert str(model.net) == str(pickled.net)  # the same layers at the same sizes
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), pickled(x), rtol=0, atol=0)
    assert sum(p.numel() for p in model.parameters()) == json.load(open(os.path.join(out, "summary.json")))["params"]
    assert model.class_names == pickled.class_names
    assert torch.equal(model.mean, pickled.mean) and torch.equal(model.std, pickled.std)


def test_load_refuses_changed_or_foreign_files(data_dir, tmp_path):
    out = _train(data_dir, tmp_path / "run", "--method", "random", "--epochs", "0", "--finetune-epochs", "0.3")
    weights = os.path.join(out, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    data[-1] ^= 1  # one bit of one weight
    open(weights, "wb").write(bytes(data))
    with pytest.raises(SavedModelError, match="SHA-256 differs"):
        fxsparse.load(out)
    out2 = _train(data_dir, tmp_path / "run2", "--method", "random", "--epochs", "0", "--finetune-epochs", "0.3")
    recipe = json.load(open(os.path.join(out2, "model.json")))
    recipe["model"] = "zoo:resnet20"
    json.dump(recipe, open(os.path.join(out2, "model.json"), "w"))
    with pytest.raises(SavedModelError, match="does not fit zoo:resnet20"):
        fxsparse.load(out2)
    with pytest.raises(FileNotFoundError, match="model.json"):
        fxsparse.load(str(tmp_path))
    open(tmp_path / "model.json", "w").write("{not json")
    with pytest.raises(SavedModelError, match="not a readable recipe"):
        fxsparse.load(str(tmp_path))


def test_a_model_given_as_an_object_says_how_to_rebuild_it(data_dir, tmp_path):
    from fxsparse import zoo

    cfg = TrainConfig(model="zoo:lenet5", data="mnist", data_root=data_dir, batch_size=32, compile=False, method="random",
                      epochs=0, finetune_epochs=0.3, out=str(tmp_path / "obj"), bn_batches=2)
    Trainer(cfg, model=zoo.create("lenet5", in_chans=1), log=None, progress=False).run()
    with pytest.raises(SavedModelError, match="given as an object"):
        fxsparse.load(str(tmp_path / "obj"))
