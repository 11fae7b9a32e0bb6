"""What a small model was made from, so that it can be rebuilt without pickling its code.

``fxsparse.export`` and ``fxsparse.prune`` leave on the model they return a recipe: the
factory of the dense model (where it is known: a ``transformers`` class and its config, or
the ``zoo:`` / ``timm:`` / ``module:function`` name ``fxsparse.zoo.load_model`` built it
from) and one step per export or prune (which kind, the shapes and dtypes of the example
inputs it was analysed at, and the kept channels of every pruned group). Pruning a pruned
model again appends a step. :func:`replay` rebuilds the small model from the dense one by
re-running the steps; ``fxsparse.save`` writes the recipe as JSON beside the weights and
``fxsparse.load`` replays it (``fxsparse/training/saved.py``).
"""
from __future__ import annotations

import copy
import json

import torch
import torch.nn as nn

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.analysis.masks import normalize_keep
from fxsparse.core.errors import SavedModelError

__all__ = ["RECIPE_ATTR", "FACTORY_ATTR", "dense_factory", "record", "recipe_of", "example_inputs", "replay"]

RECIPE_ATTR = "_fxsparse_recipe"    # on a model export / prune returned: {"factory", "steps"}
FACTORY_ATTR = "_fxsparse_factory"  # on a model fxsparse.zoo.load_model built: {"spec", "kwargs"}


def _is_transformers(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


def dense_factory(model: nn.Module) -> dict | None:
    """How to build ``model`` again, dense and randomly initialised: its recipe's factory, the
    name ``load_model`` built it from, or a ``transformers`` class with its config (read now:
    ``prune`` rewrites the config's sizes). None where fxsparse cannot tell."""
    recipe = vars(model).get(RECIPE_ATTR)
    if recipe and recipe.get("factory"):
        return copy.deepcopy(recipe["factory"])
    if vars(model).get(FACTORY_ATTR):
        return copy.deepcopy(vars(model)[FACTORY_ATTR])
    if _is_transformers(model):
        config = json.loads(model.config.to_json_string(use_diff=False))
        return {"spec": f"transformers:{type(model).__name__}", "kwargs": {"config": config}}
    return None


def _input_spec(x) -> dict:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"an example input is a {type(x).__name__}: only tensors can be recorded")
    return {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch.")}


def record(result: nn.Module, source: nn.Module, graph: ChannelGraph, keep, kind: str, factory=None) -> None:
    """Leave on ``result`` the recipe of ``source`` plus this step (``kind``: "export" or
    "prune"); ``factory``: the dense factory read before ``source`` changed (prune)."""
    masks = normalize_keep(graph, keep or {})
    groups = {str(g.id): {"size": int(g.size), "kept": torch.nonzero(masks[g.id]).flatten().tolist()}
              for g in graph.groups if not bool(masks[g.id].all())}
    try:
        inputs = [_input_spec(x) for x in graph.example_inputs or ()]
    except TypeError:
        inputs = None  # not replayable; fxsparse.save says so
    previous = vars(source).get(RECIPE_ATTR) or {}
    step = {"kind": kind, "inputs": inputs, "group_count": len(graph.groups), "groups": groups}
    vars(result)[RECIPE_ATTR] = {"factory": factory if factory is not None else dense_factory(source),
                                 "steps": copy.deepcopy(previous.get("steps", [])) + [step]}


def recipe_of(model: nn.Module) -> dict:
    """The recipe on ``model`` ({"factory": None, "steps": []} for a model fxsparse never cut)."""
    return copy.deepcopy(vars(model).get(RECIPE_ATTR) or {"factory": dense_factory(model), "steps": []})


def example_inputs(specs) -> tuple:
    """Inputs of the recorded shapes and dtypes: floats from a fixed seed, integers and
    booleans all ones (a valid token id and an attention mask that attends everywhere)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for spec in specs:
        dtype = getattr(torch, spec["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise SavedModelError(f"the recipe names the input dtype {spec['dtype']!r}, which torch does not have")
        out.append(torch.randn(spec["shape"], generator=gen).to(dtype) if dtype.is_floating_point
                   else torch.ones(spec["shape"], dtype=dtype))
    return tuple(out)


def _masks(step: dict, graph: ChannelGraph, where: str) -> dict:
    if step.get("group_count") != len(graph.groups):
        raise SavedModelError(f"{where}: the rebuilt model has {len(graph.groups)} channel groups where the saved one had "
                              f"{step.get('group_count')}: the recipe belongs to another model (or another version of its code)")
    masks = {}
    for gid, info in step["groups"].items():
        g = graph.groups[int(gid)]
        kept = torch.as_tensor(info["kept"], dtype=torch.long)
        if g.size != info["size"] or not g.prunable or (kept.numel() and int(kept.max()) >= g.size):
            raise SavedModelError(f"{where}: group {gid} of the rebuilt model ({g.size} channels) is not the saved "
                                  f"prunable group of {info['size']}: the recipe belongs to another model")
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[kept] = True
        masks[g.id] = mask
    return masks


def replay(model: nn.Module, steps: list, where: str = "the recipe") -> nn.Module:
    """The small model: ``model`` (the dense one, freshly built) cut by each recorded step."""
    from fxsparse.analysis.analyze import analyze
    from fxsparse.rewrite.export import export
    from fxsparse.rewrite.inplace import prune

    factory = dense_factory(model)
    for i, step in enumerate(steps):
        if step.get("inputs") is None:
            raise SavedModelError(f"{where}: step {i} was analysed at inputs that are not tensors; it cannot be replayed")
        inputs = example_inputs(step["inputs"])
        graph = analyze(model.eval(), inputs)
        masks = _masks(step, graph, f"{where}, step {i}")
        if step["kind"] == "prune":
            model = prune(model, graph, masks, fallback="raise")
        else:
            model = export(model, graph, masks)
        vars(model)[RECIPE_ATTR] = {"factory": factory, "steps": copy.deepcopy(steps[:i + 1])}
    return model.eval()
