"""Models as files that load without running code: safetensors weights plus a JSON recipe.

Two kinds of directory hold ``model.safetensors`` (the weights, tensors only) and
``model.json`` (how to rebuild the network around them, and the SHA-256 of the weights):

* a ``fxsparse train`` run's ``--out`` (format ``fxsparse-run-model/1``): the model's name
  (``zoo:NAME``, ``timm:NAME``, ``module.path:factory``), its number of classes and input
  channels, the input shape it was analysed at, the kept channels of every pruned group and
  the preprocessing; :func:`load` returns a :class:`fxsparse.Classifier`.
* :func:`save` of any model (format ``fxsparse-model/1``): the dense model's factory (a
  ``transformers`` class and its config, a ``zoo:`` / ``timm:`` / ``torchvision:`` name, or
  ``module:function``, with its keyword arguments) and the steps of
  :mod:`fxsparse.rewrite.recipe` (per export / prune: the example inputs' shapes and the kept
  channels). A ``GraphModule`` of ``fxsparse.export`` is rebuilt by replaying the steps (the
  analysis and export); a model of your own class (pruned in place, or dense) by its sizes
  (:mod:`fxsparse.rewrite.recorded_sizes`: every tensor's shape and every module's size
  attributes, so layers pruned to different sizes come back). A ``transformers`` model is also
  written by its own ``save_pretrained`` (``config.json``), for ``Class.from_pretrained``.

:func:`load` rebuilds the model from its factory, cuts it as recorded and loads the weights
(every name and shape must match), so nothing in the files is ever executed. A file whose
hash differs from the recipe's (edited, truncated, or another model's) and a recipe whose
groups or tensors do not match the rebuilt model are a :class:`SavedModelError`, never a
half-loaded model.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.fx as fx
import torch.nn as nn

from fxsparse.core.errors import SavedModelError
from fxsparse.analysis.capture import is_transformers_model
from fxsparse.analysis.dynamic_dims import pinned_sizes_expected
from fxsparse.rewrite.recipe import RECIPE_ATTR, example_inputs, recipe_of, replay
from fxsparse.rewrite.recorded_sizes import load_weights, resize, sizes_of
from fxsparse.training.dense_factory import dense_model, factory_name

__all__ = ["save", "load", "SavedModelError", "RECIPE", "WEIGHTS"]

RECIPE = "model.json"
WEIGHTS = "model.safetensors"
FORMAT = "fxsparse-run-model/1"       # a fxsparse train run's model (a Classifier)
MODEL_FORMAT = "fxsparse-model/1"     # fxsparse.save of any exported or pruned model


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def recipe(model_spec, num_classes: int, in_chans: int, input_shape, masks, classifier, weights_path: str) -> dict:
    """The recipe of a run's model (``masks``: {group id: bool mask}, or None for the dense
    model; ``model_spec``: None when the model was passed as an object)."""
    kept = None if masks is None else {str(gid): torch.nonzero(torch.as_tensor(m)).flatten().tolist()
                                       for gid, m in masks.items()}
    sizes = None if masks is None else {str(gid): int(torch.as_tensor(m).numel()) for gid, m in masks.items()}
    return {"format": FORMAT, "model": model_spec, "num_classes": int(num_classes), "in_chans": int(in_chans),
            "input_shape": list(input_shape), "kept_channels": kept, "group_sizes": sizes,
            "preprocessing": {"mean": classifier.mean.flatten().tolist(), "std": classifier.std.flatten().tolist(),
                              "class_names": classifier.class_names},
            "weights": os.path.basename(weights_path), "weights_sha256": sha256(weights_path)}


# ---- fxsparse.save ---------------------------------------------------------------------------------

def save(model: nn.Module, path, factory=None, *, check: bool = True, **factory_kwargs) -> None:
    """Write ``model`` (what ``fxsparse.export`` or ``fxsparse.prune`` returned, or a dense model)
    to directory ``path`` as ``model.safetensors`` + ``model.json``; :func:`load` rebuilds it.

    A ``transformers`` model (dense or pruned in place) is written by its own ``save_pretrained``
    as well (``config.json`` beside the weights), so ``Class.from_pretrained(path)`` reads it
    wherever its config can say the sizes (every layer pruned alike); :func:`load` always can.

    ``factory``: how to build the dense model again, where fxsparse cannot tell by itself
    (it can for a ``transformers`` model, for one ``fxsparse.zoo.load_model`` / ``zoo.create``
    built, and for your own class pruned in place, if it builds with no arguments):
    ``"zoo:NAME"``, ``"timm:NAME"``, ``"torchvision:NAME"``, ``"package.module:function"`` or
    the function or class itself, called with ``factory_kwargs`` (JSON values). One that
    cannot be imported by name (defined in ``__main__``) is not recorded: pass it to
    :func:`load` too.
    ``check``: load the files back and compare the outputs on the recorded example inputs, so
    that a file that would not load is found now, not where it is deployed.
    """
    spec = recipe_of(model)
    sliced = not isinstance(model, fx.GraphModule)  # the user's class: rebuilt by its sizes, not replayed
    given = None  # a factory to check with that cannot be recorded by name
    if factory is not None:
        name = factory_name(factory)
        spec["factory"] = {"spec": name, "kwargs": factory_kwargs} if name else None
        given = None if name else factory
    elif factory_kwargs:
        raise TypeError(f"save(): keyword arguments {sorted(factory_kwargs)} are for the factory: pass factory= too")
    elif spec["factory"] is None and sliced:  # your class, built with no arguments
        name = factory_name(type(model))
        spec["factory"] = {"spec": name, "kwargs": {}} if name else None
        given = None if name else type(model)
    if spec["factory"] is None and given is None:
        raise SavedModelError(
            f"fxsparse cannot tell how to build the dense {_dense_name(model)} again: pass factory='package.module:function' "
            "(a function that returns it, with factory keyword arguments after it), 'timm:NAME', 'zoo:NAME' or the "
            "function or class itself")
    json.dumps(spec["factory"])  # a keyword argument that is not JSON fails here, not at load
    if not sliced and any(step.get("inputs") is None for step in spec["steps"]):
        raise SavedModelError("the model was analysed at inputs that are not tensors: its recipe cannot be replayed")
    os.makedirs(path, exist_ok=True)
    wpath, rpath = os.path.join(path, WEIGHTS), os.path.join(path, RECIPE)
    written = _write_weights(model, path, wpath)
    record = {"format": MODEL_FORMAT, "class": f"{type(model).__module__}.{type(model).__qualname__}",
              "factory": spec["factory"], "steps": spec["steps"], "sizes": sizes_of(model) if sliced else None,
              "weights": WEIGHTS, "weights_sha256": sha256(wpath),
              "files_sha256": {f: sha256(os.path.join(path, f)) for f in written}}
    with open(rpath, "w") as f:
        json.dump(record, f, indent=1)
    if check:
        _check_loads_back(model, path, spec["steps"], given, factory_kwargs if given else {})


def _write_weights(model: nn.Module, path, wpath) -> list[str]:
    """The weights as safetensors (tied tensors once); a ``transformers`` model through its own
    ``save_pretrained`` (its config too). Returns the other files written, for their hashes."""
    from safetensors.torch import save_model

    if is_transformers_model(model):
        model.save_pretrained(path)
        if not os.path.isfile(wpath):
            raise SavedModelError(f"{type(model).__name__}.save_pretrained wrote its weights in shards, not one "
                                  f"{WEIGHTS}: fxsparse.save takes models below its 50 GB shard size")
        return sorted(f for f in _HF_FILES if os.path.isfile(os.path.join(path, f)))
    save_model(model, wpath)
    return []


_HF_FILES = ("config.json", "generation_config.json")


def _dense_name(model) -> str:
    return type(model).__name__ if type(model).__name__ != "GraphModule" else "model this GraphModule was exported from"


def _check_loads_back(model: nn.Module, path, steps, factory, factory_kwargs) -> None:
    inputs = example_inputs(steps[-1]["inputs"]) if steps and steps[-1].get("inputs") else None
    try:
        loaded = load(path, factory, **factory_kwargs) if factory is not None else load(path)
    except SavedModelError as exc:
        raise SavedModelError(f"the model saved in {path!r} does not load back: {exc}. Pass the factory (and keyword "
                              "arguments) that build the dense model that was pruned") from None
    if inputs is None:
        return
    with torch.no_grad():
        was = model.training
        try:
            want, got = _first_tensor(model.eval()(*inputs)), _first_tensor(loaded(*inputs))
        finally:
            model.train(was)
    if want is not None and not torch.allclose(want.float(), got.float(), atol=1e-4, rtol=1e-4):
        raise SavedModelError(f"the model in {path!r} loads back with other outputs (max difference "
                              f"{float((want.float() - got.float()).abs().max()):.3g}): its factory does not build the "
                              "model that was pruned; pass the factory and keyword arguments that do")


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    for item in out if isinstance(out, (list, tuple)) else ():
        t = _first_tensor(item)
        if t is not None:
            return t
    return None


# ---- fxsparse.load ---------------------------------------------------------------------------------

def load(path: str, factory=None, **factory_kwargs) -> nn.Module:
    """The model in ``path`` (a directory :func:`save` wrote, or the ``--out`` directory of a
    ``fxsparse train`` run, or its ``model.json``), in eval mode. Reads no pickle.

    A run's model comes back as a :class:`fxsparse.Classifier` (raw images scaled to [0, 1] in,
    logits out; ``.net`` the bare pruned network); a saved model as what was saved: the
    ``GraphModule`` of an export, your own class after ``fxsparse.prune`` (or a dense model).
    ``factory`` (with ``factory_kwargs``): what builds the dense model, where the files do not
    name it (a class or function of ``__main__``); a ``transformers`` class is built from the
    ``config.json`` in ``path``."""
    rpath, spec, wpath = _read(path)
    if spec.get("format") == MODEL_FORMAT:
        return _load_model(rpath, spec, wpath, factory, factory_kwargs)
    if factory is not None or factory_kwargs:
        raise TypeError(f"{rpath!r} is a fxsparse train run's model, rebuilt from its own recipe: load(path) takes no factory")
    return _load_run(rpath, spec, wpath)


def _read(path: str):
    rpath = os.path.join(path, RECIPE) if os.path.isdir(path) else str(path)
    if not os.path.isfile(rpath):
        raise FileNotFoundError(f"no {RECIPE} at {str(path)!r}: pass a directory fxsparse.save wrote or the --out "
                                "directory of a finished `fxsparse train` run")
    try:
        with open(rpath) as f:
            spec = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SavedModelError(f"{rpath!r} is not a readable recipe ({exc})") from None
    if not isinstance(spec, dict) or spec.get("format") not in (FORMAT, MODEL_FORMAT):
        raise SavedModelError(f"{rpath!r} is not a fxsparse model (format {MODEL_FORMAT!r} or {FORMAT!r})")
    folder = os.path.dirname(rpath)
    wpath = os.path.join(folder, os.path.basename(str(spec.get("weights", ""))))
    if not os.path.isfile(wpath):
        raise FileNotFoundError(f"the weights {wpath!r} that {rpath!r} names are missing")
    hashes = {os.path.basename(wpath): spec.get("weights_sha256"), **(spec.get("files_sha256") or {})}
    for name, digest in hashes.items():
        file = os.path.join(folder, os.path.basename(name))
        if not os.path.isfile(file) or sha256(file) != digest:
            raise SavedModelError(f"{file!r} is not the file {rpath!r} was written with (its SHA-256 differs): it was "
                                  "changed after it was saved, or belongs to another model")
    return rpath, spec, wpath


def _load_model(rpath: str, spec: dict, wpath: str, factory, factory_kwargs) -> nn.Module:
    from safetensors.torch import load_file, load_model

    model = dense_model(rpath, spec, factory, factory_kwargs)
    if spec.get("sizes") is not None:  # the user's class: cut to the saved sizes, no analysis
        emptied = resize(model, spec["sizes"], rpath)
        load_weights(model, load_file(wpath), emptied, wpath)
        vars(model)[RECIPE_ATTR] = {"factory": spec.get("factory"), "steps": spec.get("steps", [])}
        return model.eval()
    model = replay(model, spec.get("steps", []), where=rpath)
    try:
        load_model(model, wpath, strict=True)
    except RuntimeError as exc:
        raise SavedModelError(f"{wpath!r} does not fit the model {rpath!r} rebuilds ({spec['factory']['spec']}): "
                              f"{' '.join(str(exc).split())[:300]}") from None
    return model.eval()


def _load_run(rpath: str, spec: dict, wpath: str) -> nn.Module:
    from fxsparse.analysis.analyze import analyze
    from fxsparse.rewrite.export import export
    from fxsparse.training.classifier import Classifier
    from fxsparse.zoo import load_model

    if spec["model"] is None:
        raise SavedModelError(f"the run's model was given as an object, so {rpath!r} cannot rebuild it: build the "
                              f"model yourself, export it with the recipe's kept_channels and load {wpath!r} into it")
    from safetensors.torch import load_file

    net = load_model(spec["model"], num_classes=spec["num_classes"], in_chans=spec["in_chans"]).eval()
    if spec["kept_channels"] is not None:
        with pinned_sizes_expected():  # the run's model at the run's input size
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
