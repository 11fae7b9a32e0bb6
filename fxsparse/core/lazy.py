"""Names of a package imported on first use (PEP 562 ``__getattr__``), so that importing the
package costs nothing until a name is used: ``fxsparse`` and ``fxsparse.methods`` load torch
only when a command needs it."""
from __future__ import annotations

import importlib


def lazy_attribute(package: str, exports: dict[str, str], namespace: dict, name: str, before=None):
    """The value of ``package.name``: ``exports[name]`` names the module that defines it (after
    ``before()``, if given), else ``name`` is a submodule; cached in ``namespace`` (the package's
    globals) so that later look-ups skip this. AttributeError for anything else."""
    if name in exports:
        if before is not None:
            before()
        value = getattr(importlib.import_module(exports[name]), name)
    elif not name.startswith("__"):  # a submodule: fxsparse.zoo, fxsparse.methods.vrpge, ...
        try:
            value = importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    namespace[name] = value
    return value
