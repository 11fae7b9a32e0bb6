"""Saving and loading a model pruned in place (``fxsparse.prune``), no pickle of code.

A ``transformers`` config holds one size per field for all layers; a model whose layers were
pruned to different head counts or MLP widths cannot be rebuilt from it alone. So
:func:`save_pretrained` writes the model's own files (``model.save_pretrained(path)`` where the
model has it, else ``model.safetensors``) plus ``fxsparse_sizes.json``: the shape of every
parameter and buffer and the numbers every module keeps (sizes, head counts, scales). :func:`load_pretrained`
builds the dense model from the class (or a factory), slices it to the recorded shapes
and attributes and loads the weights: the logits are those of the saved model.

Where every layer has the same new sizes, ``prune`` has already written them into the
config and ``cls.from_pretrained(path)`` loads the model too.
"""
from __future__ import annotations

import glob
import json
import os

import torch
import torch.nn as nn

from fxsparse.core.errors import InputError
from fxsparse.rewrite.inplace import tensor_owners

__all__ = ["save_pretrained", "load_pretrained", "SIZES_FILE"]

SIZES_FILE = "fxsparse_sizes.json"
SCHEMA = "fxsparse.sizes/1"
WEIGHTS_FILE = "model.safetensors"


def save_pretrained(model: nn.Module, path) -> None:
    """Write ``model`` (pruned by :func:`fxsparse.prune`, or any module) to directory ``path``:
    its weights as safetensors (``model.save_pretrained`` for a ``transformers`` model, which
    also writes its config) and the sizes :func:`load_pretrained` rebuilds it to."""
    os.makedirs(path, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(path)
    else:
        from safetensors.torch import save_model

        save_model(model, os.path.join(path, WEIGHTS_FILE))  # tied tensors once
    record = {"schema": SCHEMA, "class": f"{type(model).__module__}.{type(model).__qualname__}",
              "tensors": {name: list(t.shape) for name, t in _tensors(model).items()},
              "dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in _tensors(model).items()},
              "attributes": _attributes(model)}
    with open(os.path.join(path, SIZES_FILE), "w") as f:
        json.dump(record, f, indent=1)


def load_pretrained(cls_or_factory, path) -> nn.Module:
    """The model saved by :func:`save_pretrained` in ``path``, rebuilt without pickle.

    ``cls_or_factory``: a ``transformers`` model class (built from the config in ``path``), or
    a callable that returns the dense model (its class, a zoo factory, a lambda). The model is
    built dense, sliced to the recorded shapes and size attributes, then loaded (every saved
    tensor must fit, every model tensor must be saved or tied to a saved one); in eval mode.
    """
    sizes_file = os.path.join(path, SIZES_FILE)
    if not os.path.exists(sizes_file):
        raise InputError(f"{path} has no {SIZES_FILE}: save the pruned model with fxsparse.save_pretrained(model, path)")
    with open(sizes_file) as f:
        record = json.load(f)
    if record.get("schema") != SCHEMA:
        raise InputError(f"{sizes_file} has schema {record.get('schema')!r}, this fxsparse reads {SCHEMA!r}")
    model = _build(cls_or_factory, path)
    emptied = _resize(model, record, sizes_file)
    _load_weights(model, path, emptied)
    return model.eval()


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update(dict(model.named_buffers(remove_duplicate=False)))
    return out


def _attributes(model: nn.Module) -> dict[str, dict]:
    """{module path: {attribute: value}}: every public number (and tuple of numbers) a module
    keeps in its own attributes. Not only the sizes: a value the constructor derived from a
    size (GPT-2's ``scaling`` from ``head_dim``) must stay what the saved model computed with,
    not what a rebuild from the config would derive."""
    out = {}
    for path, module in model.named_modules():
        found = {a: (list(v) if isinstance(v, tuple) else v) for a, v in vars(module).items()
                 if not a.startswith("_") and a != "training" and _is_number(v)}
        if found:
            out[path] = found
    return out


def _is_number(v) -> bool:
    if isinstance(v, tuple):
        return bool(v) and all(_is_number(x) for x in v)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _build(cls_or_factory, path) -> nn.Module:
    config_class = getattr(cls_or_factory, "config_class", None)
    if isinstance(cls_or_factory, type) and config_class is not None and hasattr(config_class, "from_pretrained"):
        model = cls_or_factory(config_class.from_pretrained(path))  # the config prune kept in step
    elif callable(cls_or_factory):
        model = cls_or_factory()
    else:
        raise TypeError("load_pretrained(cls_or_factory, path): pass a transformers model class or a callable that "
                        f"returns the dense model, got {type(cls_or_factory).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_pretrained: the factory returned a {type(model).__name__}, not an nn.Module")
    return model


def _resize(model: nn.Module, record: dict, sizes_file: str) -> list[str]:
    """Set the recorded size attributes and replace each tensor whose shape differs by an
    empty one of the recorded shape (tied names stay one tensor; a dtype that differs is cast);
    returns the names of the emptied tensors, which the weights must fill."""
    modules = dict(model.named_modules())
    for path, attrs in record["attributes"].items():
        if path not in modules:
            raise InputError(f"{sizes_file} names module '{path}', which the rebuilt {type(model).__name__} does not "
                             "have: was it saved from another model?")
        for attr, value in attrs.items():
            setattr(modules[path], attr, tuple(value) if isinstance(value, list) else value)
    owners = tensor_owners(model)
    dtypes = record.get("dtypes", {})
    done, emptied = set(), []
    for name, shape in record["tensors"].items():
        if name not in owners:
            raise InputError(f"{sizes_file} names tensor '{name}', which the rebuilt {type(model).__name__} does not "
                             "have: was it saved from another model?")
        module, attr = owners[name][0]
        old = getattr(module, attr)
        dtype = getattr(torch, dtypes.get(name, ""), old.dtype)  # as saved (a bfloat16 model stays one)
        if not isinstance(dtype, torch.dtype):
            raise InputError(f"{sizes_file} gives tensor '{name}' the dtype {dtypes.get(name)!r}, which is none")
        if (tuple(old.shape) == tuple(shape) and old.dtype == dtype) or (id(module), attr) in done:
            continue
        if tuple(old.shape) == tuple(shape):
            new = old.detach().to(dtype)  # the values stay (a buffer the file does not hold)
        else:
            new = torch.empty(shape, dtype=dtype, device=old.device)
            emptied.append(name)
        new = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
        for m, a in owners[name]:
            (m._parameters if a in m._parameters else m._buffers)[a] = new
            done.add((id(m), a))
    return emptied


def _load_weights(model: nn.Module, path, emptied: list[str]) -> None:
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise InputError(f"{path} has no .safetensors weights")
    state = {}
    for file in files:
        state.update(load_file(file))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that differs: the weights belong to another model
        raise InputError(f"the weights in {path} do not fit the rebuilt {type(model).__name__} "
                         f"({str(exc).splitlines()[-1].strip()}): were they saved from another model?") from exc
    owners = tensor_owners(model)
    loaded = {owners[k][0] for k in state if k in owners}
    # a name left out of the file is fine when it is tied to a saved tensor (an LM head)
    really_missing = [k for k in list(missing) + [e for e in emptied if e not in missing]
                      if owners.get(k, [None])[0] not in loaded]  # an emptied buffer the file lacks too
    if unexpected or really_missing:
        raise InputError(f"the weights in {path} do not fit the rebuilt {type(model).__name__}: "
                         f"missing {really_missing[:5]}, unexpected {unexpected[:5]}")
