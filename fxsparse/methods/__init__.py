"""Training methods (``fxsparse train --method NAME``): one file per method, one interface
(:class:`Method`), one registry. VR-PGE is the default.

The names below are imported on first use, and the registry imports the built-in methods on
its first look-up (``get_method``, ``list_methods``): the torch-free modules of this package
(:mod:`.flags`, :mod:`.defaults`) then load without torch, for ``fxsparse train --help``."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .defaults import DEFAULT_METHOD, DEFAULT_METHOD_TRAINED, default_method  # noqa: F401  (plain names)

# public name -> the module that defines it
_EXPORTS = {
    "TRAINER_PHASES": "fxsparse.methods.base", "Method": "fxsparse.methods.base",
    "PhaseSetup": "fxsparse.methods.base", "RunContext": "fxsparse.methods.base", "TrainState": "fxsparse.methods.base",
    "create": "fxsparse.methods.registry", "get_method": "fxsparse.methods.registry",
    "list_methods": "fxsparse.methods.registry", "register_method": "fxsparse.methods.registry",
    "unregister_method": "fxsparse.methods.registry",
}

__all__ = [*_EXPORTS, "DEFAULT_METHOD", "DEFAULT_METHOD_TRAINED", "default_method"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("__"):  # a method's module: fxsparse.methods.vrpge, ...
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .base import TRAINER_PHASES, Method, PhaseSetup, RunContext, TrainState
    from .registry import create, get_method, list_methods, register_method, unregister_method
