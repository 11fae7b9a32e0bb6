"""Checks shared by the sparse-step tests: a step equals the exported model for the same masks."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse.analysis.masks import kept_indices


class ConvBNNet(nn.Module):
    """conv-BN-relu x2, global mean, linear: two prunable groups of ``c1`` and ``c2`` channels."""

    def __init__(self, c1=16, c2=24, classes=4):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, c1, 3, padding=1), nn.BatchNorm2d(c1)
        self.c2, self.b2 = nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2, classes)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def gather_kept(t: torch.Tensor, per_dim: dict) -> torch.Tensor:
    for dim in sorted(per_dim):
        t = t.index_select(dim, per_dim[dim])
    return t


def rel_err(a, b):
    return float((a - b).abs().max() / max(1e-12, float(b.abs().max())))


def check_steps(model, inputs, target, loss_fn, *, steps=3, keep=0.5, bernoulli=True, compile=False, tol=1e-5,
                optimizer="sgd", seed=0, train=True, dtype=None, align=None):
    """Runs ``steps`` sparse training steps; before each optimizer step compares output,
    loss and kept gradients with the exported model; after it checks pruned entries. A
    float32 step is compared with the exported model in float64 (a float32 reference has
    rounding errors of its own, 1e-3 relative in some of DenseNet's BatchNorm gradients,
    which agree with the step's only when both sum in the same order)."""
    torch.manual_seed(seed)
    if dtype is not None:
        model = model.to(dtype)
        inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    model.train(train)  # `if self.training` branches are fixed when the graph is traced
    sp = fxsparse.compile(model, inputs, keep=keep, compile=compile, seed=seed, align=align)
    sp.train(train)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    masked = fxsparse.MaskedOptimizer(opt, sp)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    for _ in range(steps):
        if bernoulli:
            sp.sample_masks(keep)
        else:
            sp.masks = fxsparse.random_keep(sp.channel_graph, keep, sp.generator)
        kept = kept_indices(sp.channel_graph, sp.masks)
        small = sp.export().train(train)
        # reference: the physically smaller model
        ref_dtype = torch.float64 if next(model.parameters()).dtype == torch.float32 else None
        if ref_dtype is not None:
            small = copy.deepcopy(small).to(ref_dtype)
        ref_out = small(*(x.to(ref_dtype) if ref_dtype and x.is_floating_point() else x for x in inputs))
        ref_loss = loss_fn(ref_out, target)
        ref_loss.backward()
        # the sparse step
        opt.zero_grad(set_to_none=True)
        out = sp(*inputs)
        loss = loss_fn(out, target)
        loss.backward()
        out = out.to(ref_out.dtype)
        assert rel_err(out.detach(), ref_out.detach()) <= tol, f"output differs: {rel_err(out.detach(), ref_out.detach())}"
        assert abs(float(loss) - float(ref_loss)) <= tol * max(1.0, abs(float(ref_loss)))
        small_params = dict(small.named_parameters())
        scale = max(float(q.grad.abs().max()) for q in small_params.values() if q.grad is not None)
        for name, p in params.items():
            sub = gather_kept(p.grad if p.grad is not None else torch.zeros_like(p), kept.get(name, {}))
            sub = sub.to(ref_dtype) if ref_dtype else sub
            ref = small_params[name].grad
            ref = torch.zeros_like(sub) if ref is None else ref
            assert sub.shape == ref.shape, name
            # relative to the larger of this gradient and (a share of) the largest one: a gradient
            # that is zero in exact arithmetic (a conv bias before BN) is rounding noise, whose size
            # follows the summed terms, not the result (fp32 VGG-11, channels-last convolutions:
            # 1.4e-6 against a float64 gradient of 3e-16, the largest gradient being 1.0)
            err = float((sub - ref).abs().max())
            assert err <= tol * max(float(ref.abs().max()), 0.5 * scale), f"grad of {name}: {err} (max {float(ref.abs().max())})"
        # pruned entries must not move during the optimizer step
        before_p = {n: p.detach().clone() for n, p in params.items()}
        before_b = {n: b.detach().clone() for n, b in buffers.items()}
        before_s = {n: {k: v.clone() for k, v in opt.state.get(p, {}).items() if torch.is_tensor(v) and v.shape == p.shape}
                    for n, p in params.items()}
        masked.step()
        for name, p in params.items():
            pruned = _pruned_mask(p, kept.get(name, {}))
            if pruned is None:
                continue
            assert torch.equal(p.detach()[pruned], before_p[name][pruned]), f"pruned entries of {name} changed"
            for k, v in opt.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    old = before_s[name].get(k, torch.zeros_like(v))
                    assert torch.equal(v[pruned], old[pruned]), f"optimizer state {k} of pruned {name} changed"
        for name, b in buffers.items():
            pruned = _pruned_mask(b, kept.get(name, {}))
            if pruned is not None and b.is_floating_point():
                assert torch.equal(b[pruned], before_b[name][pruned]), f"running statistic {name} of pruned channels changed"
    return sp


def _pruned_mask(t, per_dim):
    if not per_dim:
        return None
    keep = torch.ones(t.shape, dtype=torch.bool)
    for dim, idx in per_dim.items():
        line = torch.zeros(t.shape[dim], dtype=torch.bool)
        line[idx] = True
        shape = [1] * t.dim()
        shape[dim] = -1
        keep = keep & line.view(shape)
    return ~keep
