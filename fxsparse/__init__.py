"""fxsparse: channel-level sparse training whose pruned channels are really gone.

    graph = fxsparse.analyze(model, example_inputs)   # channel groups (torch.fx)
    keep = fxsparse.random_keep(graph, 0.5)           # or topk_keep(graph, scores, 0.5)
    small = fxsparse.export(model, graph, keep)       # physically smaller nn.Module
"""
from . import rules  # noqa: F401  (registers the built-in channel rules)
from fxsparse.analysis.analyze import analyze
from fxsparse.training.classifier import Classifier
from fxsparse.core.errors import ExportError, FxsparseError, InputError, KeepMaskError, NoPrunableGroupError, TraceError
from fxsparse.rewrite.export import export
from fxsparse.analysis.graph import ChannelGraph, ChannelGroup, Member, count_flops
from fxsparse.analysis.masks import normalize_keep, random_keep, topk_keep
from fxsparse.step.optim import MaskedOptimizer
from fxsparse.step.sparse import SparseModel, compile
from .rules.registry import Rule, register_rule

__all__ = [
    "analyze", "export", "compile", "Classifier", "SparseModel", "MaskedOptimizer", "random_keep", "topk_keep", "normalize_keep", "register_rule", "Rule",
    "ChannelGraph", "ChannelGroup", "Member", "count_flops",
    "FxsparseError", "TraceError", "InputError", "KeepMaskError", "NoPrunableGroupError", "ExportError",
]
__version__ = "0.1.0"
