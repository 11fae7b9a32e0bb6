"""The exported model checks the input sizes its graph fixes.

A dim the capture fixed (:mod:`fxsparse.analysis.dynamic_dims`: the model's code pins it, or
the capture kept it at the example's size) would make the exported model fail deep inside,
at a reshape or a broadcast, with sizes that say nothing about the input, or, for a reshape
that still fits, return a wrongly shaped result. So the exported graph starts with one
``torch._assert(x.size(d) == n, ...)`` per fixed dim, naming it: as graph code, the check
stays through ``copy.deepcopy``, pickling and tracing again, and ``torch.export`` of the
small model specialises the dim instead of claiming any size.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from fxsparse.analysis.dynamic_dims import CODE, COST, FAILED, GRAPH, fixed_dims_of

__all__ = ["check_fixed_inputs"]

_HOW = {CODE: "the model's own code fixes it (the dense model fails at other sizes too)",
        COST: "symbolic, it costs too many shape guards to capture: analyze and export at the size you will run",
        FAILED: "torch.export could not capture the model with it symbolic: analyze and export at the size you "
                "will run",
        GRAPH: "the captured graph holds the example's size there (a feature map of size 1, a comparison in the "
               "model's code): analyze at a larger example, or at the size you will run"}


def check_fixed_inputs(exported: fx.GraphModule, captured: fx.GraphModule) -> None:
    """Make ``exported`` (a copy of the ``captured`` graph) check the input sizes the capture
    fixed before it computes anything; nothing where it fixed none."""
    fixed = fixed_dims_of(captured)
    if not fixed:
        return
    graph = exported.graph
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    # after the last input (a torch.export capture may list attributes before its inputs)
    with graph.inserting_before(inputs[-1].next):
        for f in fixed:
            if f.input < len(inputs):
                size = graph.call_method("size", (inputs[f.input], f.dim))
                same = graph.call_function(operator.eq, (size, f.size))
                graph.call_function(torch._assert, (same, f"the exported model takes {f} only: {_HOW[f.why]}"))
    exported.recompile()
