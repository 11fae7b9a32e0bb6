"""fxsparse: channel-level sparse training whose pruned channels are really gone.

    graph = fxsparse.analyze(model, example_inputs)   # channel groups (torch.fx)
    keep = fxsparse.random_keep(graph, 0.5)           # or topk_keep(graph, scores, 0.5)
    small = fxsparse.export(model, graph, keep)       # physically smaller nn.Module

The names below are imported on first use (``fxsparse.analyze`` imports torch and the
analysis then), so that ``import fxsparse`` and ``fxsparse --version`` / ``--help`` take no
time; ``from fxsparse import analyze`` and ``fxsparse.analyze`` work as with eager imports.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fxsparse.core.lazy import lazy_attribute

__version__ = "0.1.0"

# the module that defines them -> public names
_MODULES = {
    "fxsparse.analysis.analyze": ("analyze",),
    "fxsparse.analysis.graph": ("ChannelGraph", "ChannelGroup", "Member", "count_flops"),
    "fxsparse.analysis.masks": ("normalize_keep", "random_keep", "topk_keep"),
    "fxsparse.analysis.dynamic_dims": ("PinnedSizeWarning",),
    "fxsparse.core.errors": ("ExportError", "FxsparseError", "InputError", "KeepMaskError", "NoPrunableGroupError",
                             "TraceError", "PruneCheckError", "SavedModelError"),
    "fxsparse.rewrite.export": ("export",), "fxsparse.rewrite.inplace": ("prune",),
    "fxsparse.rewrite.reference_check": ("check_against_reference", "ReferenceCheck"),
    "fxsparse.rules.registry": ("Rule", "register_rule"),
    "fxsparse.step.optim": ("MaskedOptimizer",), "fxsparse.step.sparse": ("SparseModel", "compile"),
    "fxsparse.training.classifier": ("Classifier",), "fxsparse.training.saved": ("load", "save"),
}
# public name -> the module that defines it
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "analyze", "export", "prune", "compile", "Classifier", "SparseModel", "MaskedOptimizer", "random_keep", "topk_keep", "normalize_keep", "register_rule", "Rule",
    "check_against_reference", "ReferenceCheck",
    "ChannelGraph", "ChannelGroup", "Member", "count_flops", "load", "save",
    "FxsparseError", "SavedModelError", "PinnedSizeWarning", "TraceError", "InputError", "KeepMaskError", "NoPrunableGroupError", "ExportError", "PruneCheckError",
]


def _register_rules():
    importlib.import_module("fxsparse.rules")  # registers the built-in channel rules, as before


def __getattr__(name: str):
    return lazy_attribute(__name__, _EXPORTS, globals(), name, before=_register_rules)


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .analysis.analyze import analyze
    from .analysis.dynamic_dims import PinnedSizeWarning
    from .analysis.graph import ChannelGraph, ChannelGroup, Member, count_flops
    from .analysis.masks import normalize_keep, random_keep, topk_keep
    from .core.errors import (ExportError, FxsparseError, InputError, KeepMaskError, NoPrunableGroupError, PruneCheckError,
                              SavedModelError, TraceError)
    from .rewrite.export import export
    from .rewrite.inplace import prune
    from .rewrite.reference_check import ReferenceCheck, check_against_reference
    from .rules.registry import Rule, register_rule
    from .step.optim import MaskedOptimizer
    from .step.sparse import SparseModel, compile
    from .training.classifier import Classifier
    from .training.saved import load, save
