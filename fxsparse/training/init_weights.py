"""Trained weights to start a run from (``fxsparse train --init PATH``).

``PATH`` is one of:

* a ``state_dict`` saved with ``torch.save(model.state_dict(), PATH)`` (read with
  ``weights_only=True``: a file that pickles code is refused, never executed);
* a safetensors file (``.safetensors``);
* the ``--out`` directory of an earlier ``fxsparse train`` run, or its ``model.safetensors``
  (the run's final network; a ``--method dense`` run's is the trained dense model).

Keys may carry one wrapper prefix that the model's own keys lack (``module.`` of
DistributedDataParallel, ``_orig_mod.`` of ``torch.compile``, ``net.`` of a
:class:`fxsparse.Classifier`). Every key and shape must match the model exactly: the first
missing, unexpected or differently shaped key is named in the error, so a file of another
model (or of an already pruned one) never loads half-way.
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from fxsparse.training.saved import WEIGHTS as RUN_WEIGHTS  # what every `fxsparse train` run writes
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.")


class InitWeightsError(ValueError):
    """The ``--init`` file cannot be read, or does not belong to the model."""


def weights_path(path: str) -> str:
    """The weights file ``path`` names (a run directory names its ``model.safetensors``)."""
    if os.path.isdir(path):
        inner = os.path.join(path, RUN_WEIGHTS)
        if not os.path.isfile(inner):
            raise InitWeightsError(f"--init {path!r} is a directory without {RUN_WEIGHTS}; pass the --out directory of "
                                   "a finished `fxsparse train` run, or a state_dict / safetensors file")
        return inner
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--init {path!r}: no such file or directory")
    return path


def read_state_dict(path: str) -> dict:
    """{name: tensor} from a safetensors file or a ``torch.save``'d state_dict (no code unpickled)."""
    path = weights_path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if path.endswith(".safetensors") or _looks_like_safetensors(head):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise InitWeightsError(f"--init {path!r} is not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError (not a torch file), EOFError, ...
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch's message carries terminal colours
        first = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise InitWeightsError(
            f"--init {path!r} is not a file of weights that loads without running code ({first[:200]}). Save the "
            "weights with torch.save(model.state_dict(), PATH) or as safetensors, or pass the --out directory of an "
            f"`fxsparse train` run (its {RUN_WEIGHTS})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # a checkpoint holding one
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitWeightsError(f"--init {path!r} holds a {type(state).__name__}, not a state_dict ({{name: tensor}})")
    return state


def _looks_like_safetensors(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    return len(head) >= 9 and head[8:9] == b"{"


def _strip_wrapper(state: dict, expected: set) -> dict:
    if set(state) & expected:
        return state
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) & expected:
                return stripped
    return state


def load_init_weights(model: nn.Module, path: str) -> nn.Module:
    """Copy the weights in ``path`` into ``model`` (in place; returns it). Raises
    :class:`InitWeightsError` naming the first key or shape that differs."""
    own = model.state_dict()
    state = _strip_wrapper(read_state_dict(path), set(own))
    where = weights_path(path)
    missing = [k for k in own if k not in state]
    if missing:
        raise _unmatched(where, f"it has no {missing[0]!r} (shape {tuple(own[missing[0]].shape)}), the first of the "
                         "model's keys it lacks", len(missing) - 1, "missing")
    extra = [k for k in state if k not in own]
    if extra:
        raise _unmatched(where, f"the file has {extra[0]!r} (shape {tuple(state[extra[0]].shape)}), which the model "
                         "has not", len(extra) - 1, "such keys in the file")
    for name, tensor in own.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise InitWeightsError(f"--init {where!r} does not fit the model: {name!r} has shape "
                                   f"{tuple(state[name].shape)} in the file and {tuple(tensor.shape)} in the model"
                                   f"{_hint(state, own)}")
    model.load_state_dict(state, strict=True)
    return model


def _unmatched(where: str, first: str, more: int, kind: str) -> InitWeightsError:
    return InitWeightsError(f"--init {where!r} does not fit the model: {first}" + (f" ({more} more {kind})" if more else "")
                            + "; is it the weights of another model?")


def _hint(state: dict, own: dict) -> str:
    """Same keys, other sizes: a pruned copy, or the model built with other settings."""
    smaller = all(state[k].dim() == v.dim() and all(a <= b for a, b in zip(state[k].shape, v.shape))
                  for k, v in own.items())
    if smaller:
        return ("; the file's model is smaller: if it is a pruned copy, pass the weights of the dense model instead "
                "(e.g. the --out of a `fxsparse train --method dense` run); else build the model with the file's "
                "settings (number of classes, input channels)")
    return "; build the model with the file's settings (number of classes, input channels), or pass its own weights"
