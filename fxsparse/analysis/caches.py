"""Tensor caches a model keeps in plain dicts, emptied while its graph is captured.

timm's LeViT gathers its attention biases from a parameter table and, in eval mode, caches
the result per device in a dict attribute. A model run in eval mode before ``analyze`` (to
measure its accuracy first) holds that cached tensor: torch.export would lift it as a
constant, cut from the table, and the heads it is added to could not be pruned (a fixed
value per head). Captured with the cache empty, the model computes it from the table, whose
rows then follow the heads. A model whose forward cannot run without a dict it does not
refill is captured as it is (:func:`fxsparse.analysis.analyze`'s retry).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

_MODULE_INTERNALS = frozenset(vars(nn.Module()))  # _parameters, _buffers, _modules, hooks...


def tensor_caches(model: nn.Module) -> list[dict]:
    """The non-empty dict attributes of the model's modules whose values are all tensors."""
    return [value for module in model.modules() for key, value in vars(module).items()
            if key not in _MODULE_INTERNALS and isinstance(value, dict) and value
            and all(isinstance(v, torch.Tensor) for v in value.values())]


@contextlib.contextmanager
def tensor_caches_emptied(caches: list[dict]):
    """Each dict of ``caches`` empty inside, refilled with its own entries afterwards."""
    saved = [(cache, dict(cache)) for cache in caches]
    for cache in caches:
        cache.clear()
    try:
        yield
    finally:
        for cache, entries in saved:
            cache.clear()
            cache.update(entries)
