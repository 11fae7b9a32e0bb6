"""Per-weight (unstructured) masks and the helpers the weight-level methods share.

:func:`apply_weight_masks` multiplies chosen parameters by a boolean mask through
``torch.nn.utils.parametrize``: ``module.weight`` becomes ``original * mask``, where
``original`` is the same ``nn.Parameter`` object as before (an optimizer built earlier
keeps working) and ``mask`` is a registered bool buffer that SET and RigL update in place.
``model.state_dict()`` then holds ``<module>.parametrizations.<name>.original`` and
``...<name>.0.mask``; it loads into any model with masks applied to the same parameters
(whatever their current values), and :func:`remove_weight_masks` bakes the masks in.

Honest cost: this is *dense*. The forward and backward passes still run the full dense
matrix products (plus one elementwise multiply per masked weight), and the optimizer still
holds dense state. Weight-level methods therefore report their accuracy at a given density,
never a speed-up; only channel-level methods (run through the sparse step or ``export``)
remove work.

Also here: Erdos-Renyi-Kernel layer densities (:func:`erk_densities`, as RigL's code
computes them), integer per-layer counts that meet a global budget exactly
(:func:`density_counts`), deterministic exact top-k (:func:`topk_exact`, the tie rule of
:func:`fxsparse.analysis.masks.top_mask`) and resetting an optimizer's per-weight state
(:func:`reset_optimizer_state`). Option checking: :mod:`fxsparse.methods.options`.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from fxsparse.analysis.masks import check_fraction, check_no_nan, top_mask
from .options import check_choice

__all__ = ["WeightMask", "MaskDict", "apply_weight_masks", "remove_weight_masks", "weight_mask_modules", "dense_state_dict",
           "erk_densities", "uniform_densities", "density_counts", "random_masks", "sparsifiable_weights",
           "topk_exact", "reset_optimizer_state", "get_tensor"]


# ----------------------------------------------------------------------------- masks

class WeightMask(nn.Module):
    """Parametrization ``X -> X * mask`` with ``mask`` a bool buffer of X's shape.

    Gradients: the parameter underneath (``original``) receives ``grad * mask`` (the true
    gradient of the masked model), so masked entries of ``original`` do not move under
    SGD/momentum/Adam. The gradient with respect to the *effective* weight, dense at masked
    entries too (what RigL grows by), is kept in ``dense_grad`` while ``capture_grad`` is
    True (summed over the backward passes since it was last cleared).
    """

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().to(torch.bool))
        self.capture_grad = False
        self.dense_grad: Optional[torch.Tensor] = None

    def forward(self, X):
        out = X * self.mask
        if self.capture_grad and out.requires_grad:
            out.register_hook(self._store_grad)
        return out

    def _store_grad(self, grad):
        self.dense_grad = grad.detach().clone() if self.dense_grad is None else self.dense_grad + grad.detach()

    def extra_repr(self):
        return f"density={self.mask.float().mean().item():.4f}, shape={tuple(self.mask.shape)}"


class MaskDict(dict):
    """A ``{parameter name: mask}`` dict that may ask :func:`apply_weight_masks` to turn on
    dense-gradient capture in the masks it creates."""
    capture_grad = False


def _split(name: str):
    return name.rsplit(".", 1) if "." in name else ("", name)


def get_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The (effective) tensor ``name`` of ``model``, parametrized or not."""
    prefix, leaf = _split(name)
    return getattr(model.get_submodule(prefix) if prefix else model, leaf)


def weight_mask_modules(model: nn.Module) -> dict:
    """{parameter name: its :class:`WeightMask`} for every masked parameter of ``model``."""
    out = {}
    for mod_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tname, plist in module.parametrizations.items():
                for p in plist:
                    if isinstance(p, WeightMask):
                        out[f"{mod_name}.{tname}" if mod_name else tname] = p
    return out


def _plain_names(model: nn.Module) -> dict:
    """{plain parameter name: parameter}, mapping parametrized ``...parametrizations.w.original`` to ``...w``."""
    out = {}
    for n, p in model.named_parameters():
        if ".parametrizations." in n or n.startswith("parametrizations."):
            n = n.replace("parametrizations.", "").rsplit(".original", 1)[0]
        out[n] = p
    return out


def apply_weight_masks(model: nn.Module, masks: dict, zero_masked: bool = True) -> nn.Module:
    """Mask ``model``'s parameters in place: ``{parameter name: bool tensor of its shape}``.

    A parameter that already carries a :class:`WeightMask` gets its mask overwritten in
    place (no stacking), so calling this twice is harmless. ``zero_masked`` also zeroes the
    masked entries of the underlying parameter (then ``original == original * mask``).
    ``masks=None`` does nothing. A mask dict with attribute ``capture_grad = True``
    (:class:`MaskDict`) creates its new :class:`WeightMask` modules with gradient capture on
    (RigL's masks on resume, so the first step's dense gradient is recorded).
    Returns ``model``. Cost is dense (see the module docstring).
    """
    if masks is None:  # a weight-level method without masks (DropBack): nothing to apply
        return model
    if not isinstance(masks, dict):
        raise ValueError(f"masks must be a dict {{parameter name: bool tensor}}, got {type(masks).__name__}")
    capture = bool(getattr(masks, "capture_grad", False))
    params = _plain_names(model)
    existing = weight_mask_modules(model)
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"apply_weight_masks: the model has no parameter {name!r}; "
                             f"use names from model.named_parameters(), e.g. {', '.join(list(params)[:4])}")
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(f"apply_weight_masks: the mask of {name!r} must be boolean (or 0/1)")
            mask = mask.to(torch.bool)
        p = params[name]
        if tuple(mask.shape) != tuple(p.shape):
            raise ValueError(f"apply_weight_masks: mask of {name!r} has shape {tuple(mask.shape)}, "
                             f"the parameter has {tuple(p.shape)}; pass a mask of the parameter's shape")
        mask = mask.to(p.device)
        if name in existing:
            existing[name].mask.copy_(mask)
            if capture:
                existing[name].capture_grad = True
        else:
            prefix, leaf = _split(name)
            module = model.get_submodule(prefix) if prefix else model
            wm = WeightMask(mask)
            wm.capture_grad = capture
            parametrize.register_parametrization(module, leaf, wm)
        if zero_masked:
            with torch.no_grad():
                p.masked_fill_(~mask, 0)
    return model


def remove_weight_masks(model: nn.Module) -> nn.Module:
    """Bake every :class:`WeightMask` into its parameter (``weight = original * mask``), in place.

    Other parametrizations on the same tensor (if any) are kept: only tensors whose
    parametrization list is exactly one WeightMask are unwrapped.
    """
    for name, wm in list(weight_mask_modules(model).items()):
        prefix, leaf = _split(name)
        module = model.get_submodule(prefix) if prefix else model
        plist = module.parametrizations[leaf]
        if len(plist) != 1:
            raise ValueError(f"remove_weight_masks: {name!r} carries other parametrizations besides the mask; "
                             f"remove them first with torch.nn.utils.parametrize.remove_parametrizations")
        with torch.no_grad():
            plist.original.mul_(wm.mask)
        parametrize.remove_parametrizations(module, leaf, leave_parametrized=False)
    return model


def dense_state_dict(model: nn.Module) -> dict:
    """``model.state_dict()`` with masked weights baked in under their plain names
    (loadable into the unmasked model). The model is not changed."""
    sd = model.state_dict()
    out = {}
    masks = {k: v for k, v in sd.items() if ".parametrizations." in k and k.endswith(".0.mask")}
    for k, v in sd.items():
        if ".parametrizations." in k or k.startswith("parametrizations."):
            if k.endswith(".original"):
                plain = k.replace("parametrizations.", "").rsplit(".original", 1)[0]
                mk = k[: -len("original")] + "0.mask"
                out[plain] = v * masks[mk] if mk in masks else v
            continue
        out[k] = v
    return out


# ----------------------------------------------------------------------------- densities

def sparsifiable_weights(model: nn.Module, exclude: Iterable[str] = ()) -> list:
    """Names of the trainable parameters with 2 or more dims (conv / linear kernels,
    embeddings), minus ``exclude``; biases and norm parameters stay dense (RigL's convention)."""
    params = _plain_names(model)
    exclude = list(exclude)
    unknown = [n for n in exclude if n not in params]
    if unknown:
        raise ValueError(f"exclude names unknown parameters {unknown}; use names from model.named_parameters()")
    names = [n for n, p in params.items() if p.requires_grad and p.dim() >= 2 and n not in exclude]
    if not names:
        raise ValueError("the model has no trainable parameter with 2 or more dims to sparsify "
                         "(or all of them are excluded)")
    return names


def uniform_densities(names: Iterable[str], density: float) -> dict:
    return {n: float(density) for n in names}


def erk_densities(model: nn.Module, names: Iterable[str], density: float, erk_power_scale: float = 1.0) -> dict:
    """Erdos-Renyi-Kernel density of each named tensor, as RigL's ``get_sparsities_erdos_renyi``.

    Tensor l of shape (n_1, ..., n_r) gets density ``eps * ((n_1 + ... + n_r) / (n_1 * ... * n_r)) ** erk_power_scale``
    (for a linear layer ``eps (n_in + n_out) / (n_in n_out)``, Erdos-Renyi), with one
    ``eps`` solved so that the densities weighted by tensor size average to ``density``.
    A tensor whose density would exceed 1 is made dense (every tensor sharing the largest
    raw value at once, as RigL does) and ``eps`` is re-solved for the rest, until none exceeds 1.

    One deviation from RigL's code, on purpose: RigL budgets each tensor as
    ``n - floor((1 - density) n)`` (integer per tensor), so its overall density is off by up
    to (number of tensors) / N; here the budget is the real ``density * n``, the weighted
    density is exact, and rounding to counts happens once, globally (:func:`density_counts`).
    """
    check_fraction(density, "density")
    density = float(density)
    shapes = {n: tuple(get_tensor(model, n).shape) for n in names}
    dense: set = set()
    while True:
        rhs, divisor, raw = 0.0, 0.0, {}
        for n, shape in shapes.items():
            size = math.prod(shape)
            if n in dense:
                rhs -= (1.0 - density) * size
            else:
                rhs += density * size
                raw[n] = (sum(shape) / size) ** erk_power_scale
                divisor += raw[n] * size
        if not raw:
            break
        eps = rhs / divisor
        max_raw = max(raw.values())
        if max_raw * eps > 1:
            dense |= {n for n, r in raw.items() if r == max_raw}
        else:
            break
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def density_counts(sizes: dict, densities: dict, density: float) -> dict:
    """Integer kept counts per tensor: close to ``densities[n] * sizes[n]`` and summing to
    exactly ``round(density * sum(sizes))`` (largest remainder, ties in order), each within [0, size]."""
    total = sum(sizes.values())
    target = int(math.floor(density * total + 0.5))
    ideal = {n: min(max(densities[n], 0.0), 1.0) * sizes[n] for n in sizes}
    counts = {n: min(int(math.floor(v)), sizes[n]) for n, v in ideal.items()}
    rest = target - sum(counts.values())
    order = sorted(sizes, key=lambda n: -(ideal[n] - counts[n]))  # stable: ties keep order
    while rest > 0:
        progressed = False
        for n in order:
            if rest == 0:
                break
            if counts[n] < sizes[n]:
                counts[n] += 1
                rest -= 1
                progressed = True
        if not progressed:
            break
    while rest < 0:  # only if the densities over-shoot the budget
        for n in reversed(order):
            if rest == 0:
                break
            if counts[n] > 0:
                counts[n] -= 1
                rest += 1
    return counts


def random_masks(model: nn.Module, names: list, keep: float, distribution: str, generator: torch.Generator,
                 erk_power_scale: float = 1.0) -> dict:
    """Random masks with exact per-tensor counts (:func:`density_counts` of the ERK or uniform
    densities), drawn with ``torch.randperm(.., generator=generator)`` in ``names`` order."""
    check_choice("random_masks", "distribution", distribution, ("erk", "uniform"))
    if distribution == "erk":
        dens = erk_densities(model, names, keep, erk_power_scale)
    else:
        dens = uniform_densities(names, keep)
    sizes = {n: get_tensor(model, n).numel() for n in names}
    counts = density_counts(sizes, dens, keep)
    masks = {}
    for n in names:
        t = get_tensor(model, n)
        flat = torch.zeros(t.numel(), dtype=torch.bool)
        flat[torch.randperm(t.numel(), generator=generator)[: counts[n]]] = True
        masks[n] = flat.view(t.shape).to(t.device)
    return masks


# ----------------------------------------------------------------------------- selection

def topk_exact(score: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Flat indices (ascending) of exactly ``k`` entries of ``score`` with the largest (or
    smallest) values; ties at the boundary go to the lower index. Never a threshold (which
    would keep every tied entry). NaN scores raise."""
    score = score.reshape(-1)
    n = score.numel()
    k = int(k)
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=score.device)
    if k >= n:
        return torch.arange(n, device=score.device)
    check_no_nan(score, "topk_exact: the scores contain NaN (did training diverge?)", FloatingPointError)
    return torch.nonzero(top_mask(score if largest else -score, k)).view(-1)


# ----------------------------------------------------------------------------- optimizer state

def reset_optimizer_state(optimizer: Optional[torch.optim.Optimizer], param: torch.Tensor, where: torch.Tensor) -> None:
    """Zero, at the entries where ``where`` is True, every per-weight state tensor the
    optimizer holds for ``param`` (SGD ``momentum_buffer``, Adam ``exp_avg`` / ``exp_avg_sq``...).
    Scalars such as Adam's ``step`` are left alone."""
    if optimizer is None:
        return
    st = optimizer.state.get(param)
    if not st:
        return
    where = where.reshape(param.shape)
    for v in st.values():
        if torch.is_tensor(v) and tuple(v.shape) == tuple(param.shape):
            v.masked_fill_(where, 0)


# ----------------------------------------------------------------------------- options

# ----------------------------------------------------------------------------- shared base of SET / RigL

class DynamicMaskMethod:
    """Mixin for weight-level methods that keep one :class:`WeightMask` per sparse tensor and
    move connections around at constant per-tensor density (SET, RigL).

    Subclasses call :meth:`_setup_masks` from ``init`` and :meth:`_rewire` to change a mask.
    Resume: ``load_state_dict`` before ``init`` makes ``init`` use the saved masks instead of
    drawing new ones (no generator draw); after ``init`` it overwrites the masks in place.
    """

    def _setup_masks(self, state, names: list, distribution: str, erk_power_scale: float) -> None:
        model = state.model
        if getattr(self, "_pending_masks", None) is not None:
            masks = self._pending_masks
            self._pending_masks = None
        else:
            masks = random_masks(model, names, self.keep, distribution, state.generator, erk_power_scale)
        self._bind(model, names, masks)

    def _bind(self, model, names, masks) -> None:
        self._model = model
        self._names = names
        apply_weight_masks(model, masks, zero_masked=True)
        mods = weight_mask_modules(model)
        self._wm = {n: mods[n] for n in names}
        params = _plain_names(model)
        self._orig = {n: params[n] for n in names}

    def _ensure_bound(self, state) -> None:
        """Resume without ``init`` (``load_state_dict`` then hooks): bind to ``state.model``,
        applying the loaded masks (in place if the trainer applied them already)."""
        if getattr(self, "_wm", None) is not None:
            return
        masks = getattr(self, "_pending_masks", None)
        if masks is None:
            raise RuntimeError(f"{self.name}: call init(state) (or load_state_dict) before the training hooks")
        self._pending_masks = None
        self._bind(state.model, list(masks), masks)

    def weight_masks(self) -> Optional[dict]:
        """{parameter name: bool mask}: the current masks (the loaded ones before ``init``)."""
        if getattr(self, "_wm", None) is None:
            pending = getattr(self, "_pending_masks", None)
            if pending is None:
                return None
            out = MaskDict((n, m.clone()) for n, m in pending.items())
            out.capture_grad = self._capture_on_resume()
            return out
        return {n: wm.mask.clone() for n, wm in self._wm.items()}

    def _capture_on_resume(self) -> bool:
        return False

    def _masks_state(self) -> Optional[dict]:
        if getattr(self, "_wm", None) is None:
            return getattr(self, "_pending_masks", None)
        return {n: wm.mask.detach().cpu().clone() for n, wm in self._wm.items()}

    def _load_masks(self, masks: Optional[dict]) -> None:
        if masks is None:
            return
        if getattr(self, "_wm", None) is None:
            self._pending_masks = {n: m.clone() for n, m in masks.items()}
            return
        if set(masks) != set(self._wm):
            raise ValueError(f"{self.name}.load_state_dict: the saved masks name {sorted(masks)}, "
                             f"this model's sparse tensors are {sorted(self._wm)}")
        apply_weight_masks(self._model, masks, zero_masked=True)

    def _rewire(self, name: str, new_mask: torch.Tensor, optimizer, grown: Optional[torch.Tensor] = None,
                grown_values: Optional[torch.Tensor] = None) -> None:
        """Install ``new_mask`` (flat bool) for ``name``: entries leaving the mask are zeroed in
        the parameter, ``grown`` entries (flat indices) get ``grown_values`` (default 0);
        the optimizer state of every changed entry is zeroed."""
        wm, p = self._wm[name], self._orig[name]
        old = wm.mask.view(-1)
        changed = old ^ new_mask
        if grown is not None:
            changed = changed.clone()
            changed[grown] = True
        with torch.no_grad():
            flat = p.view(-1)
            flat.masked_fill_(old & ~new_mask, 0)
            if grown is not None and grown.numel():
                flat[grown] = 0 if grown_values is None else grown_values.to(device=flat.device, dtype=flat.dtype)
            wm.mask.copy_(new_mask.view(wm.mask.shape))
        reset_optimizer_state(optimizer, p, changed.view(p.shape))
