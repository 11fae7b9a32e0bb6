"""fxsparse: channel-level sparse training whose pruned channels are really gone.

    graph = fxsparse.analyze(model, example_inputs)   # channel groups (torch.fx)
    keep = fxsparse.random_keep(graph, 0.5)           # or topk_keep(graph, scores, 0.5)
    small = fxsparse.export(model, graph, keep)       # physically smaller nn.Module
"""
from . import rules  # noqa: F401  (registers the built-in channel rules)
from .analysis.analyze import analyze
from .analysis.graph import ChannelGraph, ChannelGroup, Member, count_flops
from .analysis.masks import normalize_keep, random_keep, topk_keep
from .core.errors import ExportError, FxsparseError, InputError, KeepMaskError, NoPrunableGroupError, TraceError
from .rewrite.export import export
from .rules.registry import Rule, register_rule
from .step.optim import MaskedOptimizer
from .step.sparse import SparseModel, compile
from .training.classifier import Classifier

__all__ = [
    "analyze", "export", "compile", "Classifier", "SparseModel", "MaskedOptimizer", "random_keep", "topk_keep", "normalize_keep", "register_rule", "Rule",
    "ChannelGraph", "ChannelGroup", "Member", "count_flops",
    "FxsparseError", "TraceError", "InputError", "KeepMaskError", "NoPrunableGroupError", "ExportError",
]
__version__ = "0.1.0"
