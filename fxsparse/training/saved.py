"""The trained model of a ``fxsparse train`` run as files that load without running code.

A run writes, beside ``model.pt`` (a pickled :class:`fxsparse.Classifier`, which only
``torch.load(..., weights_only=False)`` reads: it executes whatever the file holds):

* ``model.safetensors``: the network's weights, tensors only;
* ``model.json``: the recipe that rebuilds the network around them: the model's name
  (``zoo:NAME``, ``timm:NAME``, ``module.path:factory``), its number of classes and input
  channels, the input shape it was analysed at, the kept channels of every pruned group,
  the preprocessing (per-channel mean/std, class names), and the SHA-256 of the weights file.

:func:`load` rebuilds the model from its factory, analyses it at the recorded input shape,
exports it with the recorded channels and loads the weights (strictly: every name and
shape must match), so nothing in either file is ever executed. A weights file whose hash
differs from the recipe's (edited, truncated, or another run's) and a recipe whose groups
do not match the rebuilt model are clear errors, never a half-loaded model.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn as nn

RECIPE = "model.json"
WEIGHTS = "model.safetensors"
FORMAT = "fxsparse-run-model/1"


class SavedModelError(ValueError):
    """A saved run model that cannot be rebuilt: missing, altered, or not this model's."""


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recipe(model_spec, num_classes: int, in_chans: int, input_shape, masks, classifier, weights_path: str) -> dict:
    """The recipe :func:`load` rebuilds from (``masks``: {group id: bool mask}, or None for the
    dense model; ``model_spec``: None when the model was passed as an object)."""
    kept = None if masks is None else {str(gid): torch.nonzero(torch.as_tensor(m)).flatten().tolist()
                                       for gid, m in masks.items()}
    sizes = None if masks is None else {str(gid): int(torch.as_tensor(m).numel()) for gid, m in masks.items()}
    return {"format": FORMAT, "model": model_spec, "num_classes": int(num_classes), "in_chans": int(in_chans),
            "input_shape": list(input_shape), "kept_channels": kept, "group_sizes": sizes,
            "preprocessing": {"mean": classifier.mean.flatten().tolist(), "std": classifier.std.flatten().tolist(),
                              "class_names": classifier.class_names},
            "weights": os.path.basename(weights_path), "weights_sha256": sha256(weights_path)}


def load(path: str) -> nn.Module:
    """The trained model of a ``fxsparse train`` run (``path``: its ``--out`` directory or its
    ``model.json``) as a :class:`fxsparse.Classifier` in eval mode: raw images scaled to [0, 1]
    in, logits out; ``.net`` the bare (pruned) network. Reads no pickle."""
    from fxsparse.analysis.analyze import analyze
    from fxsparse.rewrite.export import export
    from fxsparse.training.classifier import Classifier
    from fxsparse.zoo import load_model

    rpath = os.path.join(path, RECIPE) if os.path.isdir(path) else path
    if not os.path.isfile(rpath):
        raise FileNotFoundError(f"no {RECIPE} at {path!r}: pass the --out directory of a finished `fxsparse train` run")
    try:
        with open(rpath) as f:
            spec = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SavedModelError(f"{rpath!r} is not a readable recipe ({exc})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise SavedModelError(f"{rpath!r} is not a fxsparse run model (format {FORMAT!r})")
    wpath = os.path.join(os.path.dirname(rpath), spec["weights"])
    if not os.path.isfile(wpath):
        raise FileNotFoundError(f"the weights {wpath!r} that {rpath!r} names are missing")
    if sha256(wpath) != spec["weights_sha256"]:
        raise SavedModelError(f"{wpath!r} is not the weights file {rpath!r} was written with (its SHA-256 differs): "
                              "it was changed after the run, or belongs to another run")
    if spec["model"] is None:
        raise SavedModelError(f"the run's model was given as an object, so {rpath!r} cannot rebuild it: build the "
                              f"model yourself, export it with the recipe's kept_channels and load {wpath!r} into it")
    from safetensors.torch import load_file

    net = load_model(spec["model"], num_classes=spec["num_classes"], in_chans=spec["in_chans"]).eval()
    if spec["kept_channels"] is not None:
        graph = analyze(net, (torch.zeros(spec["input_shape"]),))
        masks = {}
        for gid, kept in spec["kept_channels"].items():
            gid = int(gid)
            size = spec["group_sizes"][str(gid)]
            if gid >= len(graph.groups) or graph.groups[gid].size != size or not graph.groups[gid].prunable:
                raise SavedModelError(f"{rpath!r} does not fit {spec['model']}: its group {gid} of {size} channels is "
                                      "not a prunable group of that size in the rebuilt model (another version of the "
                                      "model's code?)")
            mask = torch.zeros(size, dtype=torch.bool)
            mask[torch.as_tensor(kept, dtype=torch.long)] = True
            masks[gid] = mask
        net = export(net, graph, masks)
    state = load_file(wpath)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SavedModelError(f"{wpath!r} does not fit the rebuilt {spec['model']}: {str(exc).splitlines()[0]}") from None
    pre = spec["preprocessing"]
    return Classifier(net, pre["mean"], pre["std"], class_names=pre["class_names"],
                      input_shape=spec["input_shape"][1:]).eval()
