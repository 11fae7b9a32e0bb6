"""FLOPs of a sub-network, for a keep mask or in expectation under keep-probabilities.

Each layer's forward FLOPs (measured once by ``analyze`` with torch.utils.flop_counter)
scale with the kept fraction of every weight dim its channel groups touch:
``F_layer * prod_d kept_d / size_d``. With 0/1 masks this is exact for conv and linear
layers (the test compares it with FlopCounterMode on the exported model); with
probabilities it is the expected FLOPs under independent Bernoulli channels (exact when
a layer's dims belong to different groups, the common case). FLOPs of ops without a
weight (attention matmuls, pooling) are counted as dense: an upper bound.

Training FLOPs use the usual convention: a training step costs 3x its forward
(forward + backward for inputs and for weights).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from fxsparse.rules.meta_keys import FLOPS, FREE

TRAIN_FACTOR = 3.0  # forward + two backward matmuls per layer


def flops_per_layer(gm: fx.GraphModule) -> dict[str, float]:
    """{layer: forward FLOPs of the example batch} (see :func:`layer_of`). A module call counts
    for its path; a function call that reads a weight (``F.linear(x, self.fc.weight)``, and
    every layer of a graph captured by torch.export, which has no module calls) counts for
    that weight's layer. Other FLOPs (attention matmuls) belong to no layer:
    :class:`SubnetFlops` counts them as dense."""
    out: dict[str, float] = {}
    for node in gm.graph.nodes:
        flops = node.meta.get(FLOPS, 0.0)
        if not flops:
            continue
        layer = node.target if node.op == "call_module" else _weight_layer(node)
        if layer is not None:
            out[layer] = out.get(layer, 0.0) + flops
    return out


def layer_of(param: str) -> str | None:
    """The layer whose FLOPs scale with ``param``'s kept sizes: a ``*weight`` belongs to its
    module (``Member.layer``); another parameter that is an op's weight operand (fused experts'
    ``gate_up_proj`` [experts, out, in]) is a layer of its own, since its module may hold
    several; a bias is none."""
    owner, _, name = param.rpartition(".")
    if name.endswith("weight"):
        return owner or name
    return None if name.endswith("bias") else param


def _weight_layer(node: fx.Node) -> str | None:
    """The layer of the weight ``node`` reads (through shape-only ops), a ``*weight`` first."""
    if node.op not in ("call_function", "call_method"):
        return None
    refs = [ref.qualname for arg in node.all_input_nodes for ref in arg.meta.get(FREE) or ()]
    weights = [r for r in refs if r.endswith("weight")] or [r for r in refs if layer_of(r) is not None]
    return layer_of(weights[0]) if weights else None


class SubnetFlops:
    """``forward(keep)``: per-sample forward FLOPs for a flat keep vector over the prunable
    channels (groups in ``graph.prunable_groups`` order; bool masks or probabilities; a
    differentiable function of float input)."""

    def __init__(self, graph):
        self.graph = graph
        batch = int(graph.example_inputs[0].shape[0]) if graph.example_inputs else 1
        per_module = graph.flops.get("per_module", {})
        total = float(graph.flops.get("total", 0.0))
        if total <= 0:
            raise ValueError("the channel graph has no FLOPs counts; analyze the model with flops=True")
        groups = graph.prunable_groups
        offsets = np.cumsum([0] + [g.size for g in groups])
        self.num_channels = int(offsets[-1])
        params = dict(graph.gm.named_parameters(remove_duplicate=False))  # a tied weight under the name its layer reads
        rows, cols, vals = [], [], []  # counts[(layer, dim)] = base + sum_j s_j * len(index_j)
        dims, base, size = {}, [], []
        for gi, g in enumerate(groups):
            for m in g.members:
                layer = layer_of(m.param)
                if layer not in per_module or m.param not in params:
                    continue
                key = (layer, m.dim)
                if key not in dims:
                    dims[key] = len(base)
                    n = params[m.param].shape[m.dim]
                    base.append(float(n))
                    size.append(float(n))
                r = dims[key]
                for j, ix in enumerate(m.index):
                    base[r] -= len(ix)
                    rows.append(r)
                    cols.append(int(offsets[gi]) + j)
                    vals.append(float(len(ix)))
        layers = sorted({layer for layer, _ in dims})
        per_layer = [[r for (layer, _), r in dims.items() if layer == name] for name in layers]
        width = max((len(r) for r in per_layer), default=1)
        pad = len(base)  # an extra entry whose kept fraction is always 1
        self._dims_of_layer = torch.tensor([r + [pad] * (width - len(r)) for r in per_layer], dtype=torch.long).reshape(-1, width)
        self._layer_flops = torch.tensor([per_module[layer] / batch for layer in layers], dtype=torch.float64)
        self._base = torch.tensor(base + [1.0], dtype=torch.float64)
        self._size = torch.tensor(size + [1.0], dtype=torch.float64)
        self._rows = torch.tensor(rows, dtype=torch.long)
        self._cols = torch.tensor(cols, dtype=torch.long)
        self._vals = torch.tensor(vals, dtype=torch.float64)
        self.dense = total / batch
        self.constant = self.dense - float(self._layer_flops.sum())  # FLOPs no prunable group touches

    def forward(self, keep) -> torch.Tensor:
        """Per-sample forward FLOPs (float64 scalar tensor)."""
        s = torch.as_tensor(keep).to(torch.float64).reshape(-1)
        if s.numel() != self.num_channels:
            raise ValueError(f"keep vector has {s.numel()} entries, the model has {self.num_channels} prunable channels")
        frac = self._base.index_add(0, self._rows, s[self._cols] * self._vals) / self._size
        prod = frac[self._dims_of_layer].prod(dim=1)
        return self.constant + (self._layer_flops * prod).sum()

    __call__ = forward

    def fraction(self, keep) -> float:
        """Forward FLOPs of the sub-network as a fraction of the dense model's."""
        return float(self.forward(keep)) / self.dense

    def marginal(self) -> torch.Tensor:
        """Per-sample forward FLOPs that removing each prunable channel alone saves from the
        dense model (flat, prunable-group order). FLOPs are multilinear in the keep vector, so
        the gradient at the dense model is exactly F(dense) - F(dense without channel j)."""
        ones = torch.ones(self.num_channels, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(self.forward(ones), ones)
        return grad.detach()

    def flat(self, masks: dict) -> torch.Tensor:
        """{group id: mask} -> flat keep vector in prunable-group order."""
        return torch.cat([torch.as_tensor(masks[g.id]).reshape(-1).to(torch.float64) for g in self.graph.prunable_groups])
