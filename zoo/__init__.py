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
    timm = zoo.import_timm()           # timm, also where torchvision is not installed

Widths and depths follow the papers at the default arguments; the parameter counts are
checked against the published numbers in ``tests/zoo/test_zoo_architectures.py``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch.nn as nn

from ._timm_import import import_timm

__all__ = ["ModelInfo", "register", "create", "names", "list_models", "info", "load_model", "import_timm"]


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
    return _tagged(_FACTORIES[name](num_classes=num_classes, in_chans=in_chans, **kw), f"zoo:{name}",
                   dict(num_classes=num_classes, in_chans=in_chans, **kw))


# The attribute fxsparse.rewrite.recipe.FACTORY_ATTR reads: how the model was built, so that
# fxsparse.save can record it and fxsparse.load rebuild it (the zoo does not import rewrite/).
_FACTORY_ATTR = "_fxsparse_factory"


def _tagged(model, spec: str, kwargs: dict):
    if isinstance(model, nn.Module):
        vars(model)[_FACTORY_ATTR] = {"spec": spec, "kwargs": kwargs}
    return model


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


# MODEL prefixes of the model libraries fxsparse can build from, and the pip extra of each
EXTERNAL = ("timm", "torchvision")


def load_model(spec: str, num_classes: int = 10, in_chans: int | None = None) -> nn.Module:
    """A model by name, randomly initialised:

    * ``zoo:NAME``: this zoo (:func:`create`);
    * ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=...)``
      (``pip install --no-deps timm``; where torchvision is not installed, timm is imported
      with a stand-in for the few torchvision names it imports, see ``_timm_import``);
    * ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None, num_classes=...)``
      (the torchvision release built for the installed torch, installed with ``--no-deps``:
      ``_timm_import.torchvision_install_hint()``); torchvision's models take 3 channels, so for
      another ``in_chans`` the first convolution (in registration order: the stem of every
      torchvision classifier) is replaced by a freshly initialised one with ``in_chans`` inputs;
    * ``package.module:factory``: ``factory()``, called with no arguments.

    A bad name, or a model library that is not installed, is a one-line ``ValueError``."""
    prefix, _, name = spec.partition(":")
    if prefix == "zoo":
        if name not in names():
            raise ValueError(f"no zoo model '{name}'. Available: {', '.join(names())}")
        kw = {} if in_chans is None else {"in_chans": in_chans}
        return create(name, num_classes=num_classes, **kw)
    if prefix in EXTERNAL:
        lib = _import_extra(prefix, spec)
        build = _timm_model if prefix == "timm" else _torchvision_model
        return _tagged(_checked(build(lib, name, num_classes, in_chans), spec), spec,
                       {"num_classes": num_classes, "in_chans": in_chans})
    if not name:
        raise ValueError(f"MODEL must be 'zoo:NAME', 'timm:NAME', 'torchvision:NAME' or 'module.path:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(prefix), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {spec!r}: {exc}") from None
    return _tagged(_checked(factory(), spec), spec, {})


def _checked(model, spec: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _import_extra(package: str, spec: str):
    """The model library ``package``, or a one-line ValueError that says how to install it
    without letting pip replace the installed torch."""
    from ._timm_import import torchvision_install_hint

    if package == "timm":
        try:
            return import_timm()
        except ImportError as exc:  # its message says what to install, and how
            raise ValueError(f"MODEL {spec!r} needs timm: {exc}") from None
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name != package:
            raise ValueError(f"MODEL {spec!r} needs torchvision, which is installed but cannot be imported "
                             f"({exc}); {torchvision_install_hint()}") from None
        raise ValueError(f"MODEL {spec!r} needs torchvision, which is not installed: {torchvision_install_hint()}") \
            from None
    except Exception as exc:  # installed, but built for another torch (RuntimeError or ImportError)
        raise ValueError(f"MODEL {spec!r} needs torchvision, which is installed but cannot be imported "
                         f"({type(exc).__name__}: {exc}); {torchvision_install_hint()}") from None


def _timm_model(timm, name: str, num_classes: int, in_chans: int | None) -> nn.Module:
    if not timm.is_model(name):
        raise ValueError(f"no timm model {name!r}; list them with: python -c \"import timm; "
                         f"print(timm.list_models('*{name[:4]}*'))\"")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=3 if in_chans is None else in_chans)


def _torchvision_model(torchvision, name: str, num_classes: int, in_chans: int | None) -> nn.Module:
    models = torchvision.models
    if name not in models.list_models():
        raise ValueError(f"no torchvision model {name!r}; list them with: python -c \"import torchvision; "
                         "print(torchvision.models.list_models())\"")
    model = models.get_model(name, weights=None, num_classes=num_classes)
    if in_chans is not None and in_chans != 3:
        _replace_stem(model, name, in_chans)
    return model


def _replace_stem(model: nn.Module, name: str, in_chans: int) -> None:
    """Swap the first ``nn.Conv2d`` (registration order) for a fresh one with ``in_chans`` inputs."""
    path, conv = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(f"torchvision:{name} has no plain 3-channel first convolution to give {in_chans} input "
                         "channels; use a 3-channel data set or a timm: model (timm takes in_chans)")
    parent_path, _, attr = path.rpartition(".")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    setattr(model.get_submodule(parent_path), attr, new)


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
