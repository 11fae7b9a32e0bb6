"""Model zoo for fxsparse: paper-faithful, randomly initialised reference networks.

Every model is written from scratch in this package (no torchvision), is traceable with
``torch.fx.symbolic_trace`` and uses only plain ``torch.nn`` modules, torch functions and
tensor methods, so that the channel analyzer can reason about it.  Each factory has the
signature ``f(num_classes=10, in_chans=3, **kw) -> nn.Module`` and every model accepts
both a ``[B, 1, 28, 28]`` input (``in_chans=1``) and a ``[B, 3, 32, 32]`` input
(``in_chans=3``), returning ``[B, num_classes]`` logits (U-Net: ``[B, num_classes, H, W]``).
The logits always come out of a final ``nn.Linear`` or convolution.

Usage::

    from fxsparse import zoo
    zoo.names()                        # sorted names
    model = zoo.create("resnet20", num_classes=10)
    zoo.info("resnet20")               # ModelInfo(name, family, paper, default_input)

Widths and depths follow the papers at the default arguments; the parameter counts are
checked against the published numbers in ``tests/test_zoo_architectures.py``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch.nn as nn

__all__ = ["ModelInfo", "register", "create", "names", "list_models", "info", "load_model"]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model besides its factory."""

    name: str
    family: str
    paper: str
    default_input: Tuple[int, ...] = (3, 32, 32)


_FACTORIES: Dict[str, Callable[..., nn.Module]] = {}
_INFOS: Dict[str, ModelInfo] = {}


def register(name: str, *, family: str, paper: str, default_input: Tuple[int, ...] = (3, 32, 32)):
    """Decorator registering ``factory(num_classes=10, in_chans=3, **kw) -> nn.Module`` as ``name``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FACTORIES:
            raise ValueError(f"model {name!r} is already registered")
        _FACTORIES[name] = factory
        _INFOS[name] = ModelInfo(name=name, family=family, paper=paper, default_input=tuple(default_input))
        return factory

    return deco


def _check(name: str) -> None:
    if name not in _FACTORIES:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(_FACTORIES))}")


def create(name: str, num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    """Build a freshly (randomly) initialised model by registry name."""
    _check(name)
    return _FACTORIES[name](num_classes=num_classes, in_chans=in_chans, **kw)


def names() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_FACTORIES)


def list_models() -> list[str]:
    """Alias of :func:`names`."""
    return names()


def info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model."""
    _check(name)
    return _INFOS[name]


def load_model(spec: str, num_classes: int = 10, in_chans: int | None = None) -> nn.Module:
    """'zoo:NAME' or 'package.module:factory' (called with no arguments)."""
    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in names():
            raise ValueError(f"no zoo model '{name}'. Available: {', '.join(names())}")
        kw = {} if in_chans is None else {"in_chans": in_chans}
        return create(name, num_classes=num_classes, **kw)
    if ":" not in spec:
        raise ValueError(f"MODEL must be 'zoo:NAME' or 'module.path:factory', got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {spec!r}: {exc}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


# Import every family module so that registration happens on ``import fxsparse.zoo``.
from . import (  # noqa: E402,F401
    convnext,
    densenet,
    efficientnet,
    inception,
    lenet,
    mobilenetv2,
    resnet,
    resnet_cifar,
    shufflenetv2,
    unet,
    vgg,
    vit,
)
