"""The trained model of a run loads without running code (``fxsparse.load``): the model the
run evaluated last, for a pruned, a dense and a search-ending run (the run writes no pickle);
a changed weights file, a recipe of another model and a model passed as an object are clear
errors."""
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


@pytest.mark.parametrize("kw", [dict(method="l1_filter", epochs=0, finetune_epochs=0.5),
                                dict(method="dense", epochs=0.5, finetune_epochs=0),
                                dict(method="vrpge", epochs=0.5, finetune_epochs=0)],  # the search ends the run
                         ids=["pruned", "dense", "search-ends"])
def test_load_rebuilds_the_run_model_without_pickle(data_dir, tmp_path, kw):
    out = tmp_path / "run"
    cfg = TrainConfig(model="zoo:lenet5", data="mnist", data_root=data_dir, batch_size=32, compile=False,
                      out=str(out), bn_batches=2, **kw)
    tr = Trainer(cfg, log=None, progress=False)
    summary = tr.run()
    assert not any(name.endswith((".pt", ".pth")) and name != "last.pt" for name in os.listdir(out))  # no pickled model
    model = fxsparse.load(str(out))
    assert isinstance(model, fxsparse.Classifier) and not model.training
    assert isinstance(model.net, torch.fx.GraphModule) == (kw.get("method") != "dense")
    assert sum(p.numel() for p in model.parameters()) == summary["params"]
    # the model the run's last history row evaluated, rebuilt from the files
    assert 100 * tr.evaluator.accuracy(model.net, tr.test_loader) == tr.history[-1]["test_acc_pct"]
    assert model.preprocessing() == summary["preprocessing"]


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
