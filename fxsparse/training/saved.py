"""Models as files that load without running code: safetensors weights plus a JSON recipe.

Two kinds of directory hold ``model.safetensors`` (the weights, tensors only) and
``model.json`` (how to rebuild the network around them, and the SHA-256 of the weights):

* a ``fxsparse train`` run's ``--out`` (format ``fxsparse-run-model/1``): the model's name
  (``zoo:NAME``, ``timm:NAME``, ``module.path:factory``), its number of classes and input
  channels, the input shape it was analysed at, the kept channels of every pruned group and
  the preprocessing; :func:`load` returns a :class:`fxsparse.Classifier`.
* :func:`save` of any model ``fxsparse.export`` or ``fxsparse.prune`` returned (format
  ``fxsparse-model/1``): the dense model's factory (a ``transformers`` class and its config,
  a ``zoo:`` / ``timm:`` / ``torchvision:`` name, or ``module:function``, with its keyword
  arguments) and the steps of :mod:`fxsparse.rewrite.recipe` (per export / prune: the
  example inputs' shapes and the kept channels); :func:`load` returns the small model itself
  (the ``GraphModule`` of an export, the user's own class after a prune).

:func:`load` rebuilds the model from its factory, replays the recorded analysis and export
(or prune) and loads the weights (strictly: every name and shape must match), so nothing in
either file is ever executed. A weights file whose hash differs from the recipe's (edited,
truncated, or another model's) and a recipe whose groups do not match the rebuilt model are
a :class:`SavedModelError`, never a half-loaded model.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch
import torch.nn as nn

from fxsparse.core.errors import SavedModelError
from fxsparse.rewrite.recipe import example_inputs, recipe_of, replay

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

    ``factory``: how to build the dense model again, where fxsparse cannot tell by itself
    (it can for a ``transformers`` model and for one ``fxsparse.zoo.load_model`` / ``zoo.create``
    built): ``"zoo:NAME"``, ``"timm:NAME"``, ``"torchvision:NAME"`` or ``"package.module:function"``,
    called with ``factory_kwargs`` (JSON values: ``num_classes=10, img_size=32``).
    ``check``: load the files back and compare the outputs on the recorded example inputs, so
    that a file that would not load is found now, not where it is deployed.
    """
    from safetensors.torch import save_model

    spec = recipe_of(model)
    if factory is not None:
        spec["factory"] = {"spec": _spec_name(factory), "kwargs": factory_kwargs}
    elif factory_kwargs:
        raise TypeError(f"save(): keyword arguments {sorted(factory_kwargs)} are for the factory: pass factory= too")
    if spec["factory"] is None:
        raise SavedModelError(
            f"fxsparse cannot tell how to build the dense {_dense_name(model)} again: pass factory='package.module:function' "
            "(a function that returns it, with factory keyword arguments after it), 'timm:NAME' or 'zoo:NAME'")
    json.dumps(spec["factory"])  # a keyword argument that is not JSON fails here, not at load
    if any(step.get("inputs") is None for step in spec["steps"]):
        raise SavedModelError("the model was analysed at inputs that are not tensors: its recipe cannot be replayed")
    os.makedirs(path, exist_ok=True)
    wpath, rpath = os.path.join(path, WEIGHTS), os.path.join(path, RECIPE)
    save_model(model, wpath)  # tied tensors once
    record = {"format": MODEL_FORMAT, "class": f"{type(model).__module__}.{type(model).__qualname__}",
              "factory": spec["factory"], "steps": spec["steps"], "weights": WEIGHTS, "weights_sha256": sha256(wpath)}
    with open(rpath, "w") as f:
        json.dump(record, f, indent=1)
    if check:
        _check_loads_back(model, path, spec["steps"])


def _spec_name(factory) -> str:
    if isinstance(factory, str):
        if ":" not in factory:
            raise ValueError(f"factory {factory!r}: use 'zoo:NAME', 'timm:NAME', 'torchvision:NAME' or 'package.module:function'")
        return factory
    name = f"{getattr(factory, '__module__', '')}:{getattr(factory, '__qualname__', '')}"
    if callable(factory) and "<" not in name and not name.startswith("__main__:"):
        return name  # an importable function or class
    raise ValueError(f"factory {factory!r} cannot be imported by name where the model is loaded: pass "
                     "'package.module:function' of a function defined in a module")


def _dense_name(model) -> str:
    return type(model).__name__ if type(model).__name__ != "GraphModule" else "model this GraphModule was exported from"


def _check_loads_back(model: nn.Module, path, steps) -> None:
    inputs = example_inputs(steps[-1]["inputs"]) if steps else None
    loaded = load(path)
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

def load(path: str) -> nn.Module:
    """The model in ``path`` (a directory :func:`save` wrote, or the ``--out`` directory of a
    ``fxsparse train`` run, or its ``model.json``), in eval mode. Reads no pickle.

    A run's model comes back as a :class:`fxsparse.Classifier` (raw images scaled to [0, 1] in,
    logits out; ``.net`` the bare pruned network); a saved model as what was saved."""
    rpath, spec, wpath = _read(path)
    if spec.get("format") == MODEL_FORMAT:
        return _load_model(rpath, spec, wpath)
    return _load_run(rpath, spec, wpath)


def _read(path: str):
    rpath = os.path.join(path, RECIPE) if os.path.isdir(path) else path
    if not os.path.isfile(rpath):
        raise FileNotFoundError(f"no {RECIPE} at {path!r}: pass a directory fxsparse.save wrote or the --out directory "
                                "of a finished `fxsparse train` run")
    try:
        with open(rpath) as f:
            spec = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SavedModelError(f"{rpath!r} is not a readable recipe ({exc})") from None
    if not isinstance(spec, dict) or spec.get("format") not in (FORMAT, MODEL_FORMAT):
        raise SavedModelError(f"{rpath!r} is not a fxsparse model (format {MODEL_FORMAT!r} or {FORMAT!r})")
    wpath = os.path.join(os.path.dirname(rpath), os.path.basename(str(spec.get("weights", ""))))
    if not os.path.isfile(wpath):
        raise FileNotFoundError(f"the weights {wpath!r} that {rpath!r} names are missing")
    if sha256(wpath) != spec.get("weights_sha256"):
        raise SavedModelError(f"{wpath!r} is not the weights file {rpath!r} was written with (its SHA-256 differs): "
                              "it was changed after it was saved, or belongs to another model")
    return rpath, spec, wpath


def build_dense(factory: dict, where: str) -> nn.Module:
    """The dense model a recipe's factory names, randomly initialised."""
    import importlib

    from fxsparse.zoo import create, import_timm, load_model

    name, kwargs = factory.get("spec", ""), dict(factory.get("kwargs") or {})
    prefix, _, rest = name.partition(":")
    try:
        if prefix == "transformers":
            import transformers

            cls = getattr(transformers, rest)
            model = cls(cls.config_class.from_dict(kwargs["config"]))
        elif prefix in ("zoo", "timm", "torchvision") and set(kwargs) <= {"num_classes", "in_chans"}:
            model = load_model(name, **kwargs)
        elif prefix == "zoo":
            model = create(rest, **kwargs)
        elif prefix == "timm":
            model = import_timm().create_model(rest, pretrained=False, **kwargs)
        else:
            module, _, qualname = name.partition(":")
            obj = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            model = obj(**kwargs)
    except SavedModelError:
        raise
    except Exception as exc:
        raise SavedModelError(f"{where}: cannot build the dense model {name!r} with {sorted(kwargs)}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(model, nn.Module):
        raise SavedModelError(f"{where}: the factory {name!r} returned a {type(model).__name__}, not an nn.Module")
    return model.eval()


def _load_model(rpath: str, spec: dict, wpath: str) -> nn.Module:
    from safetensors.torch import load_model

    model = replay(build_dense(spec["factory"], rpath), spec.get("steps", []), where=rpath)
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
