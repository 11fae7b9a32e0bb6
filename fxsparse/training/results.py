"""What a finished run leaves in its ``--out``: the trained model as ``model.safetensors`` +
``model.json`` (weights and a recipe, no pickle: ``fxsparse.load(out)`` rebuilds it), and the
summary, printed as a table and written as ``summary.json``."""
from __future__ import annotations

import os

import torch.nn as nn
from tabulate import tabulate

from fxsparse.training import checkpoint, saved
from fxsparse.training.classifier import Classifier

FILES = (saved.WEIGHTS, saved.RECIPE, "summary.json", "history.json", "history.csv", "steps.csv", checkpoint.RUN_FILE)


def run_files(out: str) -> dict:
    """{file name: its path} of the files a run writes."""
    return {name: os.path.join(out, name) for name in FILES}


def as_classifier(model: nn.Module, info: dict, example) -> Classifier:
    """The delivered model on the CPU (its weights load on any machine), with the data set's
    normalisation and class names."""
    names = info.get("classes")
    return Classifier(model.eval().cpu(), info.get("mean"), info.get("std"),
                      class_names=names if names and len(names) == info["num_classes"] else None,
                      input_shape=example.shape[1:])


def write_model(final: Classifier, files: dict, model_spec, info: dict, example, masks) -> None:
    """``model.safetensors`` and the ``model.json`` recipe that rebuilds ``final``."""
    checkpoint.save_safetensors_atomic(final.net.state_dict(), files[saved.WEIGHTS])
    checkpoint.write_json_atomic(saved.recipe(model_spec, info["num_classes"], info["in_chans"], example.shape,
                                              masks, final, files[saved.WEIGHTS]), files[saved.RECIPE])


def summary_lines(summary: dict, out: str) -> tuple[str, str]:
    """The summary as a table, and what each file in ``out`` holds: the lines the CLI prints."""
    shown = [[k, _fmt(v)] for k, v in summary.items() if not isinstance(v, dict)]
    return ("\n" + tabulate(shown, headers=["summary", ""]),
            f"files in {out}: {saved.WEIGHTS} and {saved.RECIPE} (the trained model as weights and a "
            "recipe, no code: fxsparse.load(OUT) rebuilds it, taking raw images scaled to [0, 1], see the README's "
            "'Using the trained model'; `--init OUT` reads the weights), summary.json "
            "(this summary and the preprocessing), "
            "history.json (a row per epoch; history.csv the same as CSV), steps.csv (a row per step), last.pt (the "
            "checkpoint --resume reads)")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return v
