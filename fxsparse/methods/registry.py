"""Name -> method class. ``fxsparse train --method NAME`` and ``fxsparse.methods.create`` use it;
users add their own with ``@register_method("name")``."""
from __future__ import annotations

from .base import Method

_METHODS: dict[str, type] = {}


def register_method(name: str):
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}) expects a subclass of fxsparse.methods.Method, got {cls!r}")
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"a method named {name!r} is already registered ({_METHODS[name].__name__})")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def unregister_method(name: str) -> None:
    """Forget the method registered as ``name`` (a test's own method, say)."""
    _METHODS.pop(name, None)


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type:
    if name not in _METHODS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(list_methods())}")
    return _METHODS[name]


def create(name: str, keep: float = 0.5, **options) -> Method:
    return get_method(name)(keep=keep, **options)
