"""Channel rules: one file per op family, all registered on import."""
from . import attention, layers, norms, pointwise, shapes, spatial  # noqa: F401  (registration)
from .context import AnalysisContext, FreeRef
from .registry import Rule, lookup, register_rule

__all__ = ["AnalysisContext", "FreeRef", "Rule", "lookup", "register_rule"]
