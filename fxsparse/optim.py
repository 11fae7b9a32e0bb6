"""Optimizer integration: pruned channels are untouched by a step in which they are pruned.

Their gradient is exactly zero already (the sparse step never reads them), but weight
decay, momentum and Adam's moments would still move them. :class:`MaskedOptimizer` wraps
any ``torch.optim`` optimizer (SGD with momentum/nesterov/weight decay, Adam, AdamW, ...):
around each step it restores the pruned entries of every parameter and of every state
tensor shaped like it, bit for bit (state created by this step starts at zero there).
"""
from __future__ import annotations

import math

import torch

from .export import kept_indices


class MaskedOptimizer:
    def __init__(self, optimizer: torch.optim.Optimizer, sparse):
        self.optimizer = optimizer
        self.sparse = sparse
        self._names = {id(p): n for n, p in sparse.model.named_parameters()}
        self._cache_key = None
        self._keep = {}

    def __getattr__(self, name):  # param_groups, state, state_dict, ... behave as usual
        return getattr(self.optimizer, name)

    def _keep_masks(self) -> dict[str, torch.Tensor]:
        masks = self.sparse._masks
        key = tuple((k, v.numpy().tobytes()) for k, v in sorted(masks.items()))
        if key != self._cache_key:
            params = dict(self.sparse.model.named_parameters())
            self._keep = {}
            for name, per_dim in kept_indices(self.sparse.channel_graph, masks).items():
                if name not in params:
                    continue
                p = params[name]
                keep = torch.ones(p.shape, dtype=torch.bool, device=p.device)
                for dim, idx in per_dim.items():
                    line = torch.zeros(p.shape[dim], dtype=torch.bool, device=p.device)
                    line[idx.to(p.device)] = True
                    shape = [1] * p.dim()
                    shape[dim] = -1
                    keep = keep & line.view(shape)
                self._keep[name] = keep
            self._cache_key = key
        return self._keep

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def union_keep(self, mask_dicts) -> dict[str, torch.Tensor]:
        """Entries kept by any of several masks (for an update averaged over sub-networks):
        an entry that none of them keeps stays untouched."""
        out = {}
        for masks in mask_dicts:
            self.sparse.masks = masks
            for name, k in self._keep_masks().items():
                out[name] = k.clone() if name not in out else out[name] | k
        return out

    @torch.no_grad()
    def step(self, closure=None, keep=None):
        """``keep``: {param name: bool tensor} to use instead of the current masks'."""
        keep = self._keep_masks() if keep is None else keep
        saved = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                name = self._names.get(id(p))
                if name not in keep:
                    continue
                state = self.optimizer.state.get(p, {})
                old_state = {k: v.clone() for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape}
                saved.append((p, keep[name], p.detach().clone(), old_state))
        loss = self.optimizer.step(closure)
        for p, k, old, old_state in saved:
            p.copy_(torch.where(k, p, old))
            for key, v in self.optimizer.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    before = old_state.get(key, torch.zeros_like(v))
                    v.copy_(torch.where(k, v, before))
        return loss

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)


class FlatSelection:
    """Where the kept entries of a dense tensor are, as flat (1-D) indices.

    ``all``: every slot of the gathered tensor (empty slots included), in its layout;
    ``real``: the real slots only, and ``pos`` their positions in the gathered tensor
    (None when every slot is real). One gather or scatter is then one pass over kept entries."""

    def __init__(self, shape, all_, real, pos):
        self.shape, self.all, self.real, self.pos = shape, all_, real, pos


def flat_selection(shape, where) -> FlatSelection:
    """``where`` = [(dim, index, real-slot mask)] for the gathered dims of a tensor of ``shape``."""
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    device = where[0][1].device
    picked = {dim: (idx, ok) for dim, idx, ok in where}
    flat = torch.zeros((), dtype=torch.long, device=device)
    ok_all = torch.ones((), dtype=torch.bool, device=device)
    out_shape = []
    for d, n in enumerate(shape):
        view = [1] * len(shape)
        view[d] = -1
        if d in picked:
            idx, ok = picked[d]
            flat = flat + (idx * strides[d]).view(view)
            ok_all = ok_all & ok.view(view)
            out_shape.append(idx.numel())
        else:
            flat = flat + (torch.arange(n, device=device) * strides[d]).view(view)
            out_shape.append(n)
    flat = flat.expand(out_shape).reshape(-1)
    ok_all = ok_all.expand(out_shape).reshape(-1)
    if bool(ok_all.all()):
        return FlatSelection(tuple(out_shape), flat, flat, None)
    pos = ok_all.nonzero().flatten()
    return FlatSelection(tuple(out_shape), flat, flat[pos], pos)


def _entries(p, kept):
    """(selection or None, kept weights, their gradient) for parameter p."""
    if id(p) in kept:
        leaf, sel = kept[id(p)]
        if leaf.grad is None:
            return None
        g = leaf.grad.reshape(-1)
        w = leaf.detach().reshape(-1)  # the leaf already holds the kept weights: no second gather
        return sel, (w if sel.pos is None else w[sel.pos]), (g if sel.pos is None else g[sel.pos])
    if p.grad is None:
        return None
    return None, p, p.grad


def _put(full, sel, values):
    if sel is None:
        full.copy_(values)
    else:
        full.view(-1).index_copy_(0, sel.real, values)


def _get(full, sel):
    return full if sel is None else full.view(-1)[sel.real]


@torch.no_grad()
def compact_sgd(opt, compact, names):
    """SGD (momentum, dampening, nesterov, weight decay) on the kept entries only."""
    kept = {id(p): (g, where) for p, g, where in compact}
    for group in opt.param_groups:
        lr, mom, damp, wd, nesterov = (group["lr"], group["momentum"], group["dampening"], group["weight_decay"],
                                       group["nesterov"])
        for p in group["params"]:
            e = _entries(p, kept)
            if e is None:
                continue
            sel, w, g = e
            if wd:
                g = g + wd * w
            if mom:
                state = opt.state[p]
                buf_full = state.get("momentum_buffer")
                if buf_full is None:
                    buf_full = state["momentum_buffer"] = torch.zeros_like(p)
                    buf = g.clone()
                else:
                    buf = _get(buf_full, sel) * mom + g * (1 - damp)
                _put(buf_full, sel, buf)
                g = g + buf * mom if nesterov else buf
            _put(p, sel, w - lr * g)


@torch.no_grad()
def compact_adam(opt, compact, names):
    """Adam / AdamW (amsgrad off) on the kept entries only."""
    decoupled = isinstance(opt, torch.optim.AdamW)
    kept = {id(p): (g, where) for p, g, where in compact}
    for group in opt.param_groups:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            e = _entries(p, kept)
            if e is None:
                continue
            sel, w, g = e
            state = opt.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t = float(state["step"])
            if wd and not decoupled:
                g = g + wd * w
            m = _get(state["exp_avg"], sel) * b1 + g * (1 - b1)
            v = _get(state["exp_avg_sq"], sel) * b2 + g * g * (1 - b2)
            denom = v.sqrt() / math.sqrt(1 - b2 ** t) + eps
            base = w * (1 - lr * wd) if (wd and decoupled) else w
            _put(state["exp_avg"], sel, m)
            _put(state["exp_avg_sq"], sel, v)
            _put(p, sel, base - (lr / (1 - b1 ** t)) * m / denom)


def compact_update_fn(optimizer):
    """The compact update for a torch optimizer, or None when only MaskedOptimizer fits."""
    if type(optimizer) is torch.optim.SGD and not optimizer.defaults.get("maximize"):
        return compact_sgd
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW) and not optimizer.defaults.get("maximize") \
            and not optimizer.defaults.get("amsgrad"):
        return compact_adam
    return None
