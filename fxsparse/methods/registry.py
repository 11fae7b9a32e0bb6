"""Name -> method class. ``fxsparse train --method NAME`` and ``fxsparse.methods.create`` use it;
users add their own with ``@register_method("name")``. The built-in methods register
themselves when :mod:`.builtin` imports them, on the first look-up: importing the package
(or its torch-free :mod:`.flags`) imports no method."""
from __future__ import annotations

import importlib

from . import flags
from .base import Method

_METHODS: dict[str, type] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # first: the modules call register_method while they load
    try:
        importlib.import_module("fxsparse.methods.builtin")
    except BaseException:
        _builtins_loaded = False  # the next look-up says the same error again
        raise


def register_method(name: str):
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) expects a subclass of fxsparse.methods.Method, got {cls!r}")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"a method named {name!r} is already registered ({_METHODS[name].__name__})")
        cls.name = name
        if name in flags.FLAGS and "cli_options" not in vars(cls):  # a built-in's flags: declared in .flags
            cls.cli_options = flags.FLAGS[name]
        _METHODS[name] = cls
        return cls
    return deco


def unregister_method(name: str) -> None:
    """Forget the method registered as ``name`` (a test's own method, say)."""
    _METHODS.pop(name, None)


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def get_method(name: str) -> type:
    _load_builtins()
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(list_methods())}")
    return _METHODS[name]


def registered_cli_options() -> list:
    """``cli_options`` of the methods registered so far (a user's, a test's), loading none."""
    return [cls.cli_options for cls in _METHODS.values()]


def create(name: str, keep: float = 0.5, **options) -> Method:
    return get_method(name)(keep=keep, **options)
