"""Op families: one file per family, all registered on import. What a rule is, what it is
called with and how an op reaches it under both captures: :mod:`fxsparse.rules.contract`."""
from . import attention, factories, layers, norms, pointwise, routing, scan, shapes, shuffles, spatial, weight_norm  # noqa: F401  (registration)
from .context import FreeRef
from .registry import Rule, lookup, register_rule

__all__ = ["FreeRef", "Rule", "lookup", "register_rule"]
