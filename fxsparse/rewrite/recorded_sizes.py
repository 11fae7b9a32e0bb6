"""A model's sizes as plain data, and a dense model cut back to them: how ``fxsparse.load``
rebuilds a model pruned in place without pickle and without analysing it again.

A ``transformers`` config holds one size per field for all layers; a model whose layers were
pruned to different head counts or MLP widths cannot be rebuilt from it alone. So
:func:`sizes_of` records the shape and dtype of every parameter and buffer and the numbers
every module keeps (sizes, head counts, scales); :func:`resize` gives a freshly built dense
model (its class, a factory) those shapes and numbers, and :func:`load_weights` fills it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fxsparse.core.errors import SavedModelError
from fxsparse.rewrite.inplace import tensor_owners

__all__ = ["sizes_of", "resize", "load_weights"]


def sizes_of(model: nn.Module) -> dict:
    """{"tensors": {name: shape}, "dtypes": {name: dtype}, "attributes": {module path: {attribute: number}}}."""
    tensors = _tensors(model)
    return {"tensors": {name: list(t.shape) for name, t in tensors.items()},
            "dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in tensors.items()},
            "attributes": _attributes(model)}


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


def resize(model: nn.Module, sizes: dict, where: str) -> list[str]:
    """Set the recorded size attributes and replace each tensor whose shape differs by an
    empty one of the recorded shape (tied names stay one tensor; a dtype that differs is cast);
    returns the names of the emptied tensors, which the weights must fill."""
    modules = dict(model.named_modules())
    for path, attrs in sizes["attributes"].items():
        if path not in modules:
            raise SavedModelError(f"{where} names module '{path}', which the rebuilt {type(model).__name__} does not "
                                  "have: it was saved from another model")
        for attr, value in attrs.items():
            setattr(modules[path], attr, tuple(value) if isinstance(value, list) else value)
    owners = tensor_owners(model)
    dtypes = sizes.get("dtypes", {})
    done, emptied = set(), []
    for name, shape in sizes["tensors"].items():
        if name not in owners:
            raise SavedModelError(f"{where} names tensor '{name}', which the rebuilt {type(model).__name__} does not "
                                  "have: it was saved from another model")
        module, attr = owners[name][0]
        old = getattr(module, attr)
        dtype = getattr(torch, dtypes.get(name, ""), old.dtype)  # as saved (a bfloat16 model stays one)
        if not isinstance(dtype, torch.dtype):
            raise SavedModelError(f"{where} gives tensor '{name}' the dtype {dtypes.get(name)!r}, which is none")
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


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], emptied: list[str], where: str) -> None:
    """Load ``state`` into the resized ``model``: every saved tensor must fit, and every model
    tensor must be saved or tied to a saved one (an LM head)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that differs: the weights belong to another model
        raise SavedModelError(f"the weights in {where} do not fit the rebuilt {type(model).__name__} "
                              f"({str(exc).splitlines()[-1].strip()}): they belong to another model") from None
    owners = tensor_owners(model)
    loaded = {owners[k][0] for k in state if k in owners}
    really_missing = [k for k in list(missing) + [e for e in emptied if e not in missing]
                      if owners.get(k, [None])[0] not in loaded]  # an emptied buffer the file lacks too
    if unexpected or really_missing:
        raise SavedModelError(f"the weights in {where} do not fit the rebuilt {type(model).__name__}: "
                              f"missing {really_missing[:5]}, unexpected {unexpected[:5]}")
