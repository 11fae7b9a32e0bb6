"""Optimizer integration: pruned channels are untouched by a step in which they are pruned.

Their gradient is exactly zero already (the sparse step never reads them), but weight
decay, momentum and Adam's moments would still move them. :class:`MaskedOptimizer` wraps
any ``torch.optim`` optimizer (SGD with momentum/nesterov/weight decay, Adam, AdamW, ...):
around each step it restores the pruned entries of every parameter and of every state
tensor shaped like it, bit for bit (state created by this step starts at zero there).
"""
from __future__ import annotations

import torch

from fxsparse.core.broadcast import along
from fxsparse.analysis.masks import kept_indices


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
        masks = self.sparse.current_masks
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
                    keep = keep & along(line, dim, p.dim())
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
