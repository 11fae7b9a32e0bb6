"""Training methods (``fxsparse train --method NAME``): one file per method, one interface
(:class:`Method`), one registry. VR-PGE is the default.

The names below are imported on first use, and the registry imports the built-in methods on
its first look-up (``get_method``, ``list_methods``): the torch-free modules of this package
(:mod:`.flags`, :mod:`.defaults`) then load without torch, for ``fxsparse train --help``."""
from __future__ import annotations

from typing import TYPE_CHECKING

from fxsparse.core.lazy import lazy_attribute

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
    return lazy_attribute(__name__, _EXPORTS, globals(), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .base import TRAINER_PHASES, Method, PhaseSetup, RunContext, TrainState
    from .registry import create, get_method, list_methods, register_method, unregister_method
