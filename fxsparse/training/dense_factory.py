"""How a saved model's dense network is built again: the factory a recipe names, or the one
the caller passes to ``fxsparse.load``.

A factory is recorded by the name it is imported by (``zoo:NAME``, ``timm:NAME``,
``torchvision:NAME``, ``transformers:Class`` with its config, ``package.module:function``) and
its keyword arguments, all JSON; a callable with no such name (a lambda, a function of
``__main__``) is not recorded, and ``fxsparse.load`` takes it as an argument instead.
"""
from __future__ import annotations

import json
import os

import torch.nn as nn

from fxsparse.core.errors import SavedModelError

__all__ = ["factory_name", "build_dense", "dense_model"]


def factory_name(factory) -> str | None:
    """``factory`` as the name it is imported by where the model is loaded ("module:qualname"),
    or None for a callable that has none (a lambda, a local function, one of ``__main__``)."""
    import importlib

    if isinstance(factory, str):
        if ":" not in factory:
            raise ValueError(f"factory {factory!r}: use 'zoo:NAME', 'timm:NAME', 'torchvision:NAME' or 'package.module:function'")
        return factory
    if not callable(factory):
        raise ValueError(f"factory {factory!r}: pass a function or class that returns the dense model, or its name")
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if obj is factory else None


def build_dense(factory: dict, where: str) -> nn.Module:
    """The dense model a recipe's factory names, randomly initialised."""
    import importlib

    from fxsparse.zoo import create, import_timm, load_model

    name, kwargs = factory.get("spec", ""), dict(factory.get("kwargs") or {})
    prefix, _, rest = name.partition(":")

    def build():
        if prefix == "transformers":
            import transformers

            cls = getattr(transformers, rest)
            return cls(cls.config_class.from_dict(kwargs["config"]))
        if prefix in ("zoo", "timm", "torchvision") and set(kwargs) <= {"num_classes", "in_chans"}:
            return load_model(name, **kwargs)
        if prefix == "zoo":
            return create(rest, **kwargs)
        if prefix == "timm":
            return import_timm().create_model(rest, pretrained=False, **kwargs)
        module, _, qualname = name.partition(":")
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj(**kwargs)

    return _built(build, where, repr(name), kwargs)


def _built(build, where: str, factory: str, kwargs: dict) -> nn.Module:
    """``build()``'s model in eval mode; a failure, or anything but a module, is a
    SavedModelError naming the file (``where``), the factory and its keywords."""
    try:
        model = build()
    except SavedModelError:
        raise
    except Exception as exc:
        raise SavedModelError(f"{where}: cannot build the dense model with {factory}({sorted(kwargs)}): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(model, nn.Module):
        raise SavedModelError(f"{where}: the factory {factory} returned a {type(model).__name__}, not an nn.Module")
    return model.eval()


def dense_model(rpath: str, spec: dict, factory, factory_kwargs) -> nn.Module:
    """The dense model: built by ``factory`` where given, else by the recorded one; a
    ``transformers`` model rebuilt by size from the ``config.json`` it saved (the config
    ``prune`` kept in step)."""
    config = os.path.join(os.path.dirname(rpath), "config.json")
    if factory is None:
        recorded = spec.get("factory")
        if recorded is None:
            raise SavedModelError(f"{rpath!r} does not say how to build the dense {spec.get('class')} (its factory could "
                                  "not be imported by name when it was saved): pass it, fxsparse.load(path, factory=...)")
        if spec.get("sizes") is not None and recorded["spec"].startswith("transformers:") and os.path.isfile(config):
            with open(config) as f:
                recorded = {"spec": recorded["spec"], "kwargs": {"config": json.load(f)}}
        return build_dense(recorded, rpath)
    if isinstance(factory, str):
        return build_dense({"spec": factory_name(factory), "kwargs": factory_kwargs}, rpath)
    config_class = getattr(factory, "config_class", None)
    if isinstance(factory, type) and hasattr(config_class, "from_pretrained") and os.path.isfile(config):
        return factory(config_class.from_pretrained(os.path.dirname(rpath))).eval()
    return _built(lambda: factory(**factory_kwargs), repr(rpath), repr(factory), factory_kwargs)
