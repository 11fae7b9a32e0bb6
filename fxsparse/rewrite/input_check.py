"""The exported model checks the input sizes its graph fixes.

A dim the capture fixed (:mod:`fxsparse.analysis.dynamic_dims`: the model's code pins it, or
the capture kept it at the example's size) would make the exported model fail deep inside,
at a reshape or a broadcast, with sizes that say nothing about the input, or, for a reshape
that still fits, return a wrongly shaped result. A forward pre-hook compares the inputs with
the fixed sizes first and names the dim.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fxsparse.analysis.dynamic_dims import CODE, COST, FAILED, GRAPH, FixedDim, fixed_dims_of
from fxsparse.core.errors import InputError

__all__ = ["InputSizeCheck", "check_fixed_inputs"]


class InputSizeCheck:
    """A forward pre-hook (a class, not a closure: the module stays picklable)."""

    def __init__(self, fixed: list[FixedDim], what: str):
        self.fixed, self.what = list(fixed), what

    def __call__(self, module: nn.Module, args):
        for f in self.fixed:
            x = args[f.input] if f.input < len(args) else None
            if isinstance(x, torch.Tensor) and f.dim < x.dim() and x.shape[f.dim] != f.size:
                raise InputError(f"{self.what} takes {f} only, got size {x.shape[f.dim]} (input shape "
                                 f"{tuple(x.shape)}): the graph it was exported from fixed that size. "
                                 f"{_HOW[f.why]}")
        return None


_HOW = {CODE: "The model's own code fixes it (the dense model fails at other sizes too).",
        COST: "Symbolic, it costs too many shape guards to capture: analyze and export at the size you will run.",
        FAILED: "torch.export could not capture the model with it symbolic: analyze and export at the size you "
                  "will run.",
        GRAPH: "The captured graph holds the example's size there (a feature map of size 1, a comparison in the "
                 "model's code): analyze at a larger example, or at the size you will run."}


def check_fixed_inputs(exported: nn.Module, captured: nn.Module) -> None:
    """Give ``exported`` (a copy of the ``captured`` graph) a check of the input sizes the
    capture fixed; nothing where it fixed none."""
    fixed = fixed_dims_of(captured)
    if fixed:
        exported.register_forward_pre_hook(InputSizeCheck(fixed, "the exported model"))
