"""The check that an exported model computes what the masked reference computes: the one
oracle of ``fxsparse zoo --check``, the tests and the third-party benchmarks.

    check = fxsparse.check_against_reference(small, graph, keep, (x,))
    assert check.ok, check.message   # "output 'logits' differs from the masked reference by 3.1e-02 (...)"

Every tensor the model returns at the top level is compared (by key for a dict or
``ModelOutput``, by position for a tuple). Nested values are left out on purpose: a
``transformers`` cache holds per-head tensors whose pruned sizes the reference, being dense
with zeros, does not share.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.rewrite.reference import masked_reference


@dataclass(frozen=True)
class ReferenceCheck:
    """What :func:`check_against_reference` found."""

    outputs: Any  # the exported model's outputs, autograd graph kept: a caller may check the backward
    output: str | None  # the first output that differs ("0", "logits"), None where every output matches
    max_abs_diff: float  # the largest |exported - reference| over the outputs compared (inf: shapes differ)
    message: str  # one line: which output differs and by how much, or that they all match

    @property
    def ok(self) -> bool:
        return self.output is None

    @property
    def first_output(self) -> torch.Tensor | None:
        """The exported model's first tensor output (``logits`` of a ``ModelOutput``), for a backward check."""
        return next(iter(output_tensors(self.outputs).values()), None)


def check_against_reference(exported, graph: ChannelGraph, keep, inputs, *, atol: float = 1e-4,
                            rtol: float = 0.0) -> ReferenceCheck:
    """Runs ``exported(*inputs)`` and the masked reference of ``graph`` under ``keep`` (the dense
    model with the removed channels zeroed) on the same inputs, and compares their outputs: an
    output matches where ``|got - want| <= atol * max(1, max|want|) + rtol * |want|`` (the
    tolerance scales with the output, so large logits are not held to 1e-4 absolute). The
    caller puts ``exported`` in the mode it wants compared (``eval()`` for most checks)."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    outputs = exported(*inputs)
    with torch.no_grad():
        reference = masked_reference(graph, keep, *inputs)
    got, want = output_tensors(outputs), output_tensors(reference)
    common = [k for k in want if k in got]
    if not common:
        return ReferenceCheck(outputs, "?", float("inf"), f"the exported model returns outputs {sorted(got)}, "
                              f"the masked reference {sorted(want)}: no output to compare")
    largest = 0.0
    for key in common:
        a, b = got[key].detach().double(), want[key].detach().double()
        if a.shape != b.shape:
            return ReferenceCheck(outputs, key, float("inf"), f"output {key!r} has shape {tuple(a.shape)}, the "
                                  f"masked reference {tuple(b.shape)}")
        if not a.numel():
            continue
        scale = max(1.0, float(b.abs().max()))
        diff = float((a - b).abs().max())
        largest = max(largest, diff)
        if not torch.allclose(a, b, atol=atol * scale, rtol=rtol):
            return ReferenceCheck(outputs, key, diff, f"output {key!r} differs from the masked reference by "
                                  f"{diff:.3g} (tolerance {atol:g} x scale {scale:.3g})")
    return ReferenceCheck(outputs, None, largest, f"{len(common)} output(s) equal to the masked reference "
                          f"(largest difference {largest:.3g})")


def output_tensors(out) -> dict[str, torch.Tensor]:
    """The tensors of a model output by key (a ModelOutput or dict) or position, top level only."""
    if isinstance(out, torch.Tensor):
        return {"0": out}
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items() if isinstance(v, torch.Tensor)}
    if isinstance(out, (tuple, list)):
        return {str(i): v for i, v in enumerate(out) if isinstance(v, torch.Tensor)}
    return {}
