"""Every code block of the README runs as written: all python blocks (in a scratch
directory, after a short `fxsparse train` that leaves `runs/fxsparse` as the main job does),
and the cheap command lines. The model the README loads classifies the raw Fashion-MNIST
test images at the accuracy `summary.json` reports."""
import json
import os
import re
import shlex

import pytest

from fxsparse.cli import main as cli_main

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")


def blocks(lang: str) -> list[str]:
    text = open(README).read()
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A scratch directory holding runs/fxsparse from a short run of the main job."""
    d = tmp_path_factory.mktemp("readme")
    cwd = os.getcwd()
    os.chdir(d)
    try:
        assert cli_main(["train", "--limit-batches", "40", "--epochs", "0.5", "--finetune-epochs", "0.5", "--lr", "0.03",
                         "--no-compile", "--no-progress"]) == 0
        yield d
    finally:
        os.chdir(cwd)


def test_the_readme_has_its_blocks():
    assert len(blocks("python")) == 7
    assert blocks("bash")[0].startswith("apt-get update")  # the install command: not run here


@pytest.mark.parametrize("index", range(7))
def test_python_block_runs_as_written(scratch, index, monkeypatch, capsys):
    monkeypatch.chdir(scratch)
    code = blocks("python")[index]
    if "import onnxruntime" in code:  # the deployment block needs the onnx extra
        for module in ("onnx", "onnxruntime", "onnxscript"):
            pytest.importorskip(module, reason="the README's ONNX block needs pip install 'fxsparse[onnx]'")
    namespace = {"__name__": f"readme_block_{index}"}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)
    if "runs/fxsparse" in code:  # Using the trained model: the documented loading path
        summary = json.load(open(scratch / "runs" / "fxsparse" / "summary.json"))
        assert namespace["accuracy"] == pytest.approx(summary["test_acc_pct"], abs=1e-6)
        assert summary["test_acc_pct"] > 20  # a trained model (chance: 10 %), so agreement means something
        out = capsys.readouterr().out
        assert f"test accuracy {summary['test_acc_pct']:.2f} %" in out
        model = namespace["model"]
        assert summary["preprocessing"]["mean"] == model.mean.flatten().tolist()
        assert summary["preprocessing"]["class_names"] == model.class_names and len(model.class_names) == 10
        # without the preprocessing the bare network scores differently: the wrapper is what makes it right
        import torch

        with torch.no_grad():
            bare = 100 * (model.net(namespace["images"]).argmax(1) == namespace["labels"]).double().mean().item()
        assert bare != pytest.approx(summary["test_acc_pct"], abs=0.5)


def test_cheap_command_lines_run_as_written(scratch, monkeypatch, capsys):
    monkeypatch.chdir(scratch)
    lines = [ln.split("#")[0].strip() for b in blocks("bash") for ln in b.splitlines()]
    cheap = [ln for ln in lines if ln in ("fxsparse train --list-methods",)]
    assert cheap, "the README lost its --list-methods line"
    for ln in cheap:
        assert cli_main(shlex.split(ln)[1:]) == 0
    assert "l1_filter (default)" in capsys.readouterr().out
    # the report line, on the run the main job left
    report = [ln for ln in lines if ln.startswith("fxsparse report ")]
    assert report and cli_main(["report", "runs/fxsparse"]) == 0
    # the main job is a fixed-mask run (l1_filter, the default): no search, so no scores.png (a search's
    # three plots: tests/cli/test_report_plots.py)
    written = {f for f in os.listdir(scratch / "runs" / "fxsparse") if f.endswith(".png")}
    assert written == {"curves.png", "keep_per_layer.png"}
    assert json.load(open(scratch / "runs" / "fxsparse" / "summary.json"))["method"] == "l1_filter"
