"""SynFlow: data-free pruning by iteratively conserving synaptic flow.

Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by
iteratively conserving synaptic flow", NeurIPS 2020 (arXiv 2006.05467); authors' code
ganguli-lab/Synaptic-Flow.

One round: replace every parameter AND buffer by its absolute value (the code
``abs_()``es the whole state_dict, BN running statistics included), feed an all-ones
input shaped like one example (batch 1), R = sum(output), score = |theta * dR/dtheta|.
``rounds`` (default 100) rounds prune to density ``keep ** (k / rounds)``, k = 1..rounds,
each round scoring the network with the pruned weights zeroed.

BN and precision, as in the authors' code: the model is scored in eval mode (their
``prune_loop`` calls ``model.eval()``), so BN is the affine map with |running stats|;
their ``model.double()`` is present but commented out -- here the scoring runs in float64
by default (``dtype``), because the product of absolute weights over a deep network
overflows float32 (VGG-19 / ResNet-50 at init) and float64 only removes that failure
without changing the ranking. The model itself is never modified: scoring uses absolute
float64 copies through ``torch.func.functional_call``, so the original signed weights,
the BN buffers, ``requires_grad``, ``.grad`` and the train/eval mode are exactly as before.

Selection: exact top-k each round (the code's ``kthvalue`` + ``score <= threshold``
over-prunes on ties); weights or channels pruned in an earlier round score
-inf so masks only shrink. Weight level: conv/linear weights are masked (biases and BN
not, as in the code's defaults). Channel level: the channel score is the sum of the
per-parameter scores over the group's parameter members, and each round keeps the
top ``keep ** (k / rounds)`` fraction of channels (or of FLOPs with ``budget="flops"``).
"""
from __future__ import annotations

import torch

from .base import TrainState
from .registry import register_method
from .select import (
    ScoreMethod,
    call_model,
    group_scores,
    keep_top,
    member_masks,
    model_device,
    scoring_mode,
    sum_outputs,
    weight_top,
)


def _dtype(d):
    if isinstance(d, torch.dtype):
        return d
    table = {"float64": torch.float64, "double": torch.float64, "float32": torch.float32, "float": torch.float32}
    if d not in table:
        raise ValueError(f"synflow: dtype must be torch.float64 or torch.float32 (or their names), got {d!r}")
    return table[d]


def synflow_scores(model, example_inputs, *, masks=None, dtype=torch.float64) -> dict:
    """{parameter name: |theta * dR/dtheta|} for every parameter, with theta = |theta| * mask
    (``masks``: {name: 0/1 tensor}), BN buffers |.|, eval mode, an all-ones batch-1 input
    shaped like ``example_inputs``. The model is not changed."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    dtype = _dtype(dtype)
    device = model_device(model)
    masks = masks or {}
    params = [n for n, _ in model.named_parameters()]
    with scoring_mode(model, False, None), torch.enable_grad():
        tensors = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            c = t.detach().clone()
            if c.is_floating_point():
                c = c.to(dtype).abs_()
                if name in masks:
                    c = c * masks[name].to(device=c.device, dtype=dtype)
            tensors[name] = c
        leaves = [tensors[n].requires_grad_(True) for n in params]
        ones = []
        for x in example_inputs:
            if isinstance(x, torch.Tensor):
                shape = [1] + list(x.shape[1:])
                ones.append(torch.ones(shape, dtype=dtype if x.is_floating_point() else x.dtype, device=device))
            else:
                ones.append(x)
        R = sum_outputs(call_model(model, tensors, tuple(ones)))
        if R is None:
            raise ValueError("synflow: the model output holds no tensor to sum")
        if not torch.isfinite(R):
            raise ValueError(f"synflow: the synaptic flow R = sum(output) is {float(R)} in {dtype}; "
                             "use dtype=torch.float64 (the default) or a shallower model")
        grads = torch.autograd.grad(R, leaves, allow_unused=True)
    return {n: (torch.zeros_like(t) if g is None else (g * t).abs()).detach() for n, g, t in zip(params, grads, leaves)}


@register_method("synflow")
class SynFlow(ScoreMethod):
    """SynFlow (Tanaka et al., NeurIPS 2020): data-free, iterative, exact top-k.
    Options: ``level`` ("channel" default, "weight" = the paper), ``scope``, ``budget``,
    ``rounds`` (100), ``dtype`` (torch.float64)."""
    paper = "Tanaka et al., Pruning neural networks without any data by iteratively conserving synaptic flow, NeurIPS 2020"
    level = "channel"
    extra_options = {"rounds": 100, "dtype": torch.float64}

    def validate_options(self) -> None:
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"synflow: rounds must be a positive int, got {self.rounds!r}")
        _dtype(self.dtype)

    def init(self, state: TrainState) -> None:
        dtype = _dtype(self.dtype)
        model, ex = state.model, state.example_inputs
        if self.level == "weight":
            names = self.weight_names(state)
            params = dict(model.named_parameters())
            mask = {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}
            for k in range(1, self.rounds + 1):
                density = self.keep ** (k / self.rounds)
                sc = synflow_scores(model, ex, masks=mask, dtype=dtype)
                scores = {n: torch.where(mask[n], sc[n], torch.full_like(sc[n], float("-inf"))) for n in names}
                mask = weight_top(scores, density, scope=self.scope)
            self.scores = {n: sc[n] for n in names}
            self._weight_masks = mask
        else:
            graph = self.channel_graph(state)
            params = dict(model.named_parameters())
            keep = {g.id: torch.ones(g.size, dtype=torch.bool) for g in graph.prunable_groups}
            for k in range(1, self.rounds + 1):
                density = self.keep ** (k / self.rounds)
                sc = synflow_scores(model, ex, masks=member_masks(graph, keep, params), dtype=dtype)
                per = group_scores(graph, sc, reduce="sum")
                scores = {gid: torch.where(keep[gid], v, torch.full_like(v, float("-inf"))) for gid, v in per.items()}
                new = keep_top(graph, scores, density, scope=self.scope, budget=self.budget)
                keep.update(new)
            self.scores = per
            self._keep_masks = {gid: keep[gid] for gid in per}
