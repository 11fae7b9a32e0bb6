"""The ``node.meta`` keys fxsparse's passes write and the rule contexts read.

Declared here, below the passes, because the contexts a rule is called with
(:mod:`fxsparse.rules.analysis_context`, :mod:`fxsparse.rules.export_context`) read them; a
rule itself never touches a key. Each key is written by exactly one pass, named beside it.
The pass manager (:mod:`fxsparse.passes.manager`) treats each key as a *fact*: a pass that
reads one can only run after the pass that writes it.
"""
from __future__ import annotations

# written by fxsparse.passes.shape_prop
SHAPE = "fxsparse_shape"  # the output's shape (a tuple, nested tuples for tuple outputs, None for non-tensors)
VALUE = "fxsparse_value"  # a small non-tensor result (a size read off a tensor)
FLOPS = "fxsparse_flops"  # forward FLOPs of this node (only with ShapeProp(count_flops=True))

# written by fxsparse.passes.channel_propagation
IDS = "fxsparse_ids"  # channel ids of the node's output (an array, a tuple of them, or None)
FREE = "fxsparse_free"  # parameters that reach this value through shape-only ops (FreeRefs)
CHANNEL_COUNT = "fxsparse_channel_count"  # this int was computed from a channel count (export must not reuse it)

__all__ = ["SHAPE", "VALUE", "FLOPS", "IDS", "FREE", "CHANNEL_COUNT"]
