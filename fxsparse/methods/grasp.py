"""GraSP: prune at initialisation by preserving gradient flow.

Wang, Zhang, Grosse, "Picking Winning Tickets Before Training by Preserving Gradient
Flow", ICLR 2020 (arXiv 2002.07376); authors' code alecwangcq/GraSP.

Removing a set of weights (delta = -theta on it) changes the gradient norm g^T g by
about 2 delta^T H g, so score = -theta * (H g). Following the authors' code, the weights
with the LARGEST score are removed, i.e. the LOWEST ``keep`` fraction is kept (removing a
high-score weight reduces the gradient norm the most). Details as in the authors' code:
g from a class-balanced sample (``samples_per_class`` per class, default 10, ordered by
class), logits divided by the temperature T = 200 for both g and H g, H g by a
Hessian-vector product (double backward of g_stopped . grad L), conv and linear weights
only at weight level, and the model in train mode (BN batch statistics). Scores are
divided by |sum of scores| + 1e-10 as in the code (ranking unchanged).

Channel level: score_j = sum over the group's parameter members of -theta * (H g),
keeping the sign (the first-order change of the gradient norm when the whole channel is
removed is exactly this sum), and the lowest-scoring channels are kept. Here g and H g
run over all parameters (removing a channel also removes its biases and BN scales).

Deviations from the authors' code, on purpose: the authors' Linear-layer Xavier
re-initialisation (``reinit=True``) is not applied (a method must not change the model);
the sample is scored in one forward pass (the code splits it into two halves for memory,
which only changes the BN batch statistics; ``chunk_size`` splits it here too); masks use
an exact top-k instead of ``score <= threshold`` (which keeps ties and one extra weight).
"""
from __future__ import annotations

import torch

from .base import TrainState
from .registry import register_method
from .select import (
    ScoreMethod,
    call_model,
    detached_state,
    first_output,
    group_scores,
    model_device,
    scoring_mode,
    to_device,
)

EPS = 1e-10


def _index(inputs, idx):
    if isinstance(inputs, torch.Tensor):
        return inputs[idx]
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_index(x, idx) for x in inputs)
    raise ValueError(f"grasp: cannot select samples from inputs of type {type(inputs).__name__}; pass tensors")


def _cat(parts):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))


def class_balanced_sample(batches, num_classes: int, per_class: int):
    """(inputs, targets) with exactly ``per_class`` samples of each class 0..num_classes-1,
    ordered by class (then by order of appearance), read from an iterable of batches."""
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"samples_per_class must be a positive int, got {per_class!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"grasp needs state.num_classes (a positive int), got {num_classes!r}")
    taken = [[] for _ in range(num_classes)]
    counts = [0] * num_classes
    for batch in batches:
        inputs, targets = batch[0], batch[1]
        t = torch.as_tensor(targets).flatten().cpu()
        if t.is_floating_point() or (t.numel() and (t.min() < 0 or t.max() >= num_classes)):
            raise ValueError(f"grasp needs integer class targets in [0, {num_classes}); got {t[:8].tolist()}...")
        for c in range(num_classes):
            need = per_class - counts[c]
            if need <= 0:
                continue
            idx = torch.nonzero(t == c).flatten()[:need]
            if len(idx):
                taken[c].append((_index(inputs, idx), torch.as_tensor(targets).flatten()[idx]))
                counts[c] += len(idx)
        if all(n >= per_class for n in counts):
            break
    short = [c for c in range(num_classes) if counts[c] < per_class]
    if short:
        raise ValueError(f"grasp needs {per_class} samples of every class, but the training batches ran out with "
                         f"classes {short[:10]} short (counts {[counts[c] for c in short[:10]]}); "
                         "lower samples_per_class or check num_classes")
    parts = [p for c in range(num_classes) for p in taken[c]]
    return _cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def grasp_hg(model, inputs, targets, loss_fn, names, *, temperature=200.0, train_mode=True, generator=None,
             chunk_size=None):
    """({name: g}, {name: H g}) for the parameters ``names``: g = d L(f(x)/T, y)/d theta
    (mean loss over the sample), H g by double backward. The model is not changed."""
    device = model_device(model)
    inputs, targets = to_device(inputs, device), to_device(targets, device)
    n = len(targets)
    step = n if not chunk_size else int(chunk_size)
    chunks = [(_index(inputs, slice(a, a + step)), targets[a:a + step]) for a in range(0, n, step)]
    with scoring_mode(model, train_mode, generator):
        tensors = detached_state(model, requires_grad=names)
        leaves = [tensors[k] for k in names]

        def loss_of(x, y, create_graph):
            out = first_output(call_model(model, tensors, x)) / temperature
            loss = loss_fn(out, y) * (len(y) / n)
            grads = torch.autograd.grad(loss, leaves, create_graph=create_graph, allow_unused=True)
            return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]

        g = [torch.zeros_like(t) for t in leaves]
        for x, y in chunks:
            for acc, gi in zip(g, loss_of(x, y, False)):
                acc.add_(gi.detach())
        hg = [torch.zeros_like(t) for t in leaves]
        for x, y in chunks:
            gf = loss_of(x, y, True)
            z = sum((gs * gi).sum() for gs, gi in zip(g, gf) if gi.requires_grad)
            if isinstance(z, torch.Tensor) and z.requires_grad:
                for acc, h in zip(hg, torch.autograd.grad(z, leaves, allow_unused=True)):
                    if h is not None:
                        acc.add_(h)
    return dict(zip(names, g)), dict(zip(names, [h.detach() for h in hg]))


@register_method("grasp")
class GraSP(ScoreMethod):
    """GraSP (Wang et al., ICLR 2020): score = -theta * (H g); keep the LOWEST scores
    (authors' sign convention). Options: ``level`` ("channel" default, "weight" = the
    paper), ``scope``, ``budget``, ``temperature`` (200), ``samples_per_class`` (10),
    ``train_mode`` (True), ``chunk_size`` (None: one forward pass)."""
    paper = "Wang, Zhang, Grosse, Picking Winning Tickets Before Training by Preserving Gradient Flow, ICLR 2020"
    level = "channel"
    extra_options = {"temperature": 200.0, "samples_per_class": 10, "train_mode": True, "chunk_size": None}

    def validate_options(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"grasp: temperature must be a positive number, got {self.temperature!r}")
        if not isinstance(self.samples_per_class, int) or self.samples_per_class < 1:
            raise ValueError(f"grasp: samples_per_class must be a positive int, got {self.samples_per_class!r}")
        if self.chunk_size is not None and (not isinstance(self.chunk_size, int) or self.chunk_size < 1):
            raise ValueError(f"grasp: chunk_size must be None or a positive int, got {self.chunk_size!r}")

    def init(self, state: TrainState) -> None:
        model = state.model
        graph, names = self.scored_parameters(state)
        x, y = class_balanced_sample(state.batches(), state.num_classes, self.samples_per_class)
        _, hg = grasp_hg(model, x, y, state.loss_fn, names, temperature=float(self.temperature),
                         train_mode=self.train_mode, generator=state.generator, chunk_size=self.chunk_size)
        params = dict(model.named_parameters())
        raw = {n: -(params[n].detach().to(hg[n].dtype) * hg[n]) for n in names}
        if self.level == "weight":
            norm = abs(sum(float(v.double().sum()) for v in raw.values())) + EPS
            self.scores = {n: v / norm for n, v in raw.items()}
            self._weight_masks = self.select_weights({n: -v for n, v in self.scores.items()})
        else:
            per = group_scores(graph, raw, reduce="sum")
            norm = abs(sum(float(v.sum()) for v in per.values())) + EPS
            self.scores = {gid: v / norm for gid, v in per.items()}
            self._keep_masks = self.select_channels(graph, {gid: -v for gid, v in self.scores.items()})
