"""Which layer of a model pruned in place first computes something else than the masked
reference: a size pinned by the model's code that does not raise (a slice ``x[:, :16]``, a
reshape whose numbers still fit) shows only as other numbers downstream, and the first layer
that sees them is where to look.

Works where the graph keeps modules as ``call_module`` nodes (``torch.fx`` tracing); a graph
captured by ``torch.export`` has none, and the answer is None.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from fxsparse.analysis.graph import ChannelGraph
from fxsparse.rewrite.reference import MaskedInterpreter


class _Recording(MaskedInterpreter):
    """The masked reference, keeping each called module's output restricted to its kept entries
    (what the pruned module returns)."""

    def __init__(self, graph: ChannelGraph, keep):
        super().__init__(graph, keep)
        self.outputs: dict[str, torch.Tensor] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.op == "call_module" and isinstance(out, torch.Tensor):
            mask = self.ectx.kept_mask(n)
            if mask is None:
                self.outputs[n.target] = out
            else:
                full = np.broadcast_to(mask, out.shape)
                shape = [int(full.any(axis=tuple(a for a in range(out.dim()) if a != d)).sum()) for d in range(out.dim())]
                self.outputs[n.target] = out[torch.as_tensor(full.copy(), device=out.device)].reshape(shape)
        return out


def record_reference(graph: ChannelGraph, keep, inputs) -> dict[str, torch.Tensor]:
    """{module path: its masked output, kept entries only} on ``inputs``."""
    rec = _Recording(graph, keep)
    rec.run(*inputs)
    return rec.outputs


def module_calls(graph: ChannelGraph) -> list[str]:
    """The paths of the modules the graph calls exactly once, in call order (a module called
    twice has no one output to compare)."""
    order = [n.target for n in graph.gm.graph.nodes if n.op == "call_module"]
    return [p for p in order if order.count(p) == 1]


class OutputHooks:
    """Forward hooks on the named modules of the pruned model, recording their outputs."""

    def __init__(self, model: nn.Module, paths):
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for path in paths:
            module = model.get_submodule(path)
            self._handles.append(module.register_forward_hook(
                lambda mod, args, out, path=path: self.outputs.__setitem__(path, out)))

    def remove(self):
        for h in self._handles:
            h.remove()


def first_divergence(reference: dict, order: list, got: dict, atol: float, rtol: float) -> str | None:
    """'module PATH (Class)' of the first module whose output differs from the reference."""
    for path in order:
        a, b = got.get(path), reference.get(path)
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            continue
        scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
        if a.shape != b.shape or not torch.allclose(a.detach().float(), b.detach().float(), atol=atol * scale, rtol=rtol):
            return path
    return None
