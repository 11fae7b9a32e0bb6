"""DropBack: train with a budget of k tracked weights; every other weight stays at its initial value.

Golub, Lemieux, Lis, "Full deep neural network training on a pruned weight budget"
(arXiv 1806.06949, SysML 2019). After every optimizer step, ``a = |w - w0|``; the k entries
with the largest ``a`` are "tracked", every other weight is reset to its initial value
``w0`` (not to zero: the initialisation is the scaffolding). Reference setting: the MLP
784-100-100-10 (89,610 parameters, ``zoo.create("mlp_784_100_100_10")``), plain SGD,
lr 0.4, batch 100 (:data:`REFERENCE_SETTINGS`).

Conventions chosen here (and why):

* ``w0`` is *regenerated*, never stored: element ``i`` of parameter number ``p`` (its position
  in ``model.named_parameters()``) gets ``w0 = F(hash(seed, p, i))`` with a counter-based
  32-bit hash (two rounds of Wellons' "lowbias32" integer mixer; see :func:`element_hash`)
  mapped to the layer's init distribution. ``init()`` re-initialises the model's managed
  parameters from this generator, so ``w0`` really is what training started from, and any
  subset of ``w0`` can be recomputed from (seed, p, i) alone. ``init="uniform"`` (default)
  is PyTorch's default for Linear / Conv weights *and* biases, U(-1/sqrt(fan_in),
  1/sqrt(fan_in)) (what the zoo MLPs use); ``init="kaiming_normal"`` is N(0, 2/fan_in) for
  the weights and 0 for the biases. Norm layers: weight 1, bias 0; Embedding: N(0, 1).
  A parameter of any other module raises; leave it dense with ``exclude=[name]``.
* Uniform values are exact: ``w0 = float32(2u + 1 - 2^24) * float32(bound * 2^-24)`` with
  ``u`` the top 24 bits of the hash (one float32 rounding, reproducible anywhere).
* Exact top-k (:func:`~fxsparse.methods.unstructured.topk_exact`), ties to the lower
  position in parameter order then flat index. The public Chainer code's partition
  threshold keeps every tied entry and so misses the budget.
* k is global over all managed parameters (``scope="global"``, the paper's single budget),
  ``k = round(keep * N)``; ``scope="layer"`` tracks ``round(keep * n_l)`` per tensor.
* Untracked weights hold no optimizer state: their momentum / Adam moments are zeroed at
  every reset (``reset_optimizer_state=True``), which is what the compact
  :class:`DropBackStore` does and what makes both bit-identical.
* ``freeze_after_steps`` / ``freeze_after_epochs``: the tracked set stops changing after
  that many steps / epochs (the paper's "freezing"); tracked weights keep training.
* DropBack never zeroes a weight, so :meth:`DropBack.weight_masks` is None (applying the
  tracked set as a zero mask would be a different method); read :meth:`DropBack.tracked_masks`.

The memory claim is made concrete by :class:`DropBackStore`: a training state that holds
only the seed, the tracked values, their int32 indices and the SGD momentum of the tracked
values; :meth:`DropBackStore.memory` measures its bytes against dense parameters plus
dense optimizer state. PyTorch's forward/backward still needs dense weight and gradient
tensors as *transient* working buffers (rebuilt from the store each step); a hardware
implementation would regenerate ``w0`` on the fly instead.

Channel variant (:class:`DropBackChannel`, ``"dropback_channel"``): the tracked units are
the channels of the prunable channel groups, scored by ``||W[c] - W0[c]||_1`` normalised by
fan-in, generalised to groups as the mean absolute change over every parameter entry that
belongs to channel c (for one conv's output channel this is exactly the L1 change divided by
in_channels * kh * kw). Untracked channels are reset to ``W0``: they stay in the network,
no compute is saved, ``channel_keep()`` is None and the method runs at level "weight" (densely).
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn as nn

from fxsparse.analysis.masks import check_fraction
from fxsparse.core.broadcast import along
from .base import Method, TrainState
from .registry import register_method
from .options import check_choice, check_number, check_options, check_state_keys
from .unstructured import reset_optimizer_state, topk_exact

__all__ = ["DropBack", "DropBackChannel", "DropBackStore", "REFERENCE_SETTINGS", "init_rules", "initial_values",
           "element_hash", "regenerate"]

REFERENCE_SETTINGS = {"model": "mlp_784_100_100_10", "params": 89610, "optimizer": "SGD", "lr": 0.4, "momentum": 0.0,
                      "batch_size": 100}

_M32 = 0xFFFFFFFF
_C1, _C2 = 0x7FEB352D, 0x846CA68B
_TWO24 = 1 << 24


# ----------------------------------------------------------------------------- regeneration of w0

def _mix32_int(x: int) -> int:
    x &= _M32
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    x ^= x >> 16
    return x


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) without int64 overflow (c split in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    return x ^ (x >> 16)


def _keys(seed: int, pindex: int, stream: int):
    s = int(seed)
    k = _mix32_int((s & _M32) ^ _mix32_int(((s >> 32) & _M32) ^ 0x9E3779B9))
    k = _mix32_int(k ^ ((pindex * 0x85EBCA6B + stream * 0xC2B2AE35 + 0x27D4EB2F) & _M32))
    return k, _mix32_int(k ^ 0x165667B1)


def element_hash(seed: int, pindex: int, index: torch.Tensor, stream: int = 0) -> torch.Tensor:
    """32-bit hash (int64 tensor in [0, 2^32)) of (seed, parameter number, element index, stream):
    ``mix(mix(i xor k1) xor k2)`` with ``mix`` = lowbias32 (x ^= x>>16; x *= 0x7feb352d; x ^= x>>15;
    x *= 0x846ca68b; x ^= x>>16, all mod 2^32) and the keys k1, k2 derived from (seed, p, stream)
    by the same mixer (see ``_keys``)."""
    k1, k2 = _keys(seed, pindex, stream)
    i = index.to(torch.int64)
    return _mix32(_mix32(i ^ k1) ^ k2)


def initial_values(seed: int, pindex: int, rule: tuple, index: torch.Tensor) -> torch.Tensor:
    """float32 ``w0`` at the flat positions ``index`` of parameter number ``pindex`` under ``rule``:
    ("uniform", bound) | ("normal", std) | ("const", value)."""
    kind, a = rule
    if kind == "const":
        return torch.full(index.shape, float(a), dtype=torch.float32)
    if kind == "uniform":
        u = element_hash(seed, pindex, index, 0) >> 8
        m = (2 * u + 1 - _TWO24).to(torch.float32)  # odd integers in (-2^24, 2^24): exact in float32
        scale = torch.tensor(float(a), dtype=torch.float32) * (2.0 ** -24)  # exact power-of-two scaling
        return m * scale
    if kind == "normal":  # Box-Muller in float64, one rounding to float32
        u1 = ((element_hash(seed, pindex, index, 1) >> 8) + 1).to(torch.float64) * (2.0 ** -24)  # (0, 1]
        u2 = (element_hash(seed, pindex, index, 2) >> 8).to(torch.float64) * (2.0 ** -24)  # [0, 1)
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        return (z * float(a)).to(torch.float32)
    raise ValueError(f"unknown init rule {rule!r}")


_CONV_LINEAR = (nn.Linear, nn.modules.conv._ConvNd)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def init_rules(model: nn.Module, init: str = "uniform", names: Optional[Iterable[str]] = None,
               exclude: Iterable[str] = ()) -> dict:
    """{parameter name: (parameter number, rule)} for the trainable parameters DropBack manages
    (``names`` if given, else all trainable ones) minus ``exclude``. See the module docstring."""
    check_choice("dropback", "init", init, ("uniform", "kaiming_normal"))
    all_names = [n for n, _ in model.named_parameters()]
    if any("parametrizations." in n for n in all_names):
        raise ValueError("DropBack needs a model without parametrizations (remove_weight_masks first)")
    pindex = {n: i for i, n in enumerate(all_names)}
    exclude = set(exclude)
    unknown = sorted(exclude - set(pindex))
    if unknown:
        raise ValueError(f"dropback: exclude names unknown parameters {unknown}; use names from model.named_parameters()")
    wanted = set(names) if names is not None else None
    rules = {}
    for mod_name, module in model.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            name = f"{mod_name}.{leaf}" if mod_name else leaf
            if name in exclude or not p.requires_grad or (wanted is not None and name not in wanted):
                continue
            if isinstance(module, _CONV_LINEAR) and leaf in ("weight", "bias"):
                w = module.weight
                fan_in = nn.init._calculate_fan_in_and_fan_out(w)[0] if w.dim() >= 2 else w.shape[0]
                if init == "uniform":
                    rule = ("uniform", 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)
                elif leaf == "weight":
                    rule = ("normal", math.sqrt(2.0 / fan_in))
                else:
                    rule = ("const", 0.0)
            elif isinstance(module, _NORMS) and leaf in ("weight", "bias"):
                rule = ("const", 1.0 if leaf == "weight" else 0.0)
            elif isinstance(module, nn.Embedding) and leaf == "weight":
                rule = ("normal", 1.0)
            else:
                raise ValueError(f"dropback: cannot regenerate the initial value of {name!r} "
                                 f"({type(module).__name__}.{leaf}); leave it dense with exclude=[{name!r}]")
            if p.numel() >= 1 << 32:
                raise ValueError(f"dropback: {name!r} has {p.numel()} entries; the element hash covers 2^32")
            rules[name] = (pindex[name], rule)
    if wanted is not None and set(rules) != wanted - exclude:
        raise ValueError(f"dropback: not trainable parameters: {sorted(wanted - exclude - set(rules))}")
    return rules


def regenerate(seed: int, pindex: int, rule: tuple, shape) -> torch.Tensor:
    """The whole initial tensor of one parameter."""
    n = math.prod(shape)
    return initial_values(seed, pindex, rule, torch.arange(n, dtype=torch.int64)).view(tuple(shape))


def _draw_seed(options_seed, generator: torch.Generator) -> int:
    if options_seed is not None:
        return int(options_seed)
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator).item())


def _freeze_opts(name, opts):
    for key in ("freeze_after_steps", "freeze_after_epochs"):
        check_number(name, key, opts[key], lo=1, integer=True, allow_none=True)
    check_choice(name, "reset_optimizer_state", opts["reset_optimizer_state"], (True, False))
    if opts["seed"] is not None:
        check_number(name, "seed", opts["seed"], lo=0, hi=2 ** 63 - 1, integer=True)


def _as_names(name, value):
    if isinstance(value, str):
        return [value]
    try:
        out = list(value)
    except TypeError:
        raise ValueError(f"{name}: option exclude must be a list of parameter names, got {value!r}") from None
    if not all(isinstance(v, str) for v in out):
        raise ValueError(f"{name}: option exclude must be a list of parameter names, got {value!r}")
    return out


# ----------------------------------------------------------------------------- unstructured DropBack

class _TrackedSchedule:
    """What both DropBack variants share: binding on ``init`` or lazily after a resume, the
    step/epoch counters, and the optional freeze of the tracked set."""

    def init(self, state: TrainState) -> None:
        self._bind(state, reinit=True)

    def _ensure_bound(self, state: TrainState) -> None:
        """Resume without ``init`` (``load_state_dict`` then hooks): bind to ``state.model``
        without re-initialising it (its weights come from the checkpoint)."""
        if self._model is None:
            if self._pending is None:
                raise RuntimeError(f"{self.name}: call init(state) (or load_state_dict) before the training hooks")
            self._bind(state, reinit=False)

    def _bound_seed(self, state: TrainState) -> int:
        """The checkpoint's seed on resume, else a fresh one (option or ``state.generator``)."""
        if self._pending is not None and self._pending.get("seed") is not None:
            return int(self._pending["seed"])
        return _draw_seed(self.opts["seed"], state.generator)

    def _start(self, reinit: bool) -> None:
        """Set the managed weights to w0 (fresh start) and apply a pending checkpoint."""
        if reinit:
            with torch.no_grad():
                for n, p in self._params.items():
                    p.copy_(self.w0(n))
        if self._pending is not None:
            self._apply_loaded(self._pending)
            self._pending = None

    def _maybe_freeze_after_step(self) -> None:
        fs = self.opts["freeze_after_steps"]
        if fs is not None and self.steps >= fs:
            self.frozen = True

    def end_epoch(self, state: TrainState) -> None:
        self._ensure_bound(state)
        self.epochs += 1
        fe = self.opts["freeze_after_epochs"]
        if fe is not None and self.epochs >= fe and self._tracked is not None:
            self.frozen = True


@register_method("dropback")
class DropBack(_TrackedSchedule, Method):
    """DropBack (Golub et al., arXiv 1806.06949): keep the k weights that moved most from init.

    ``keep``: fraction of the managed parameters that are tracked (k = round(keep * N)).
    Options: ``seed`` (None: drawn from ``state.generator``), ``init`` ("uniform" | "kaiming_normal"),
    ``exclude`` (parameter names left dense and untouched), ``scope`` ("global" | "layer"),
    ``freeze_after_steps`` / ``freeze_after_epochs`` (None or int), ``reset_optimizer_state``
    (True), ``cache_w0`` (False: regenerate w0 every step, O(N) hashing; True: keep one dense
    copy for speed, which gives up the memory claim for this emulation only).
    Reference: MLP 784-100-100-10, SGD lr 0.4 (no momentum), batch 100.
    """
    level = "weight"
    paper = "Golub, Lemieux, Lis. Full deep neural network training on a pruned weight budget. arXiv:1806.06949"
    DEFAULTS = {"seed": None, "init": "uniform", "exclude": (), "scope": "global", "freeze_after_steps": None,
                "freeze_after_epochs": None, "reset_optimizer_state": True, "cache_w0": False}

    def __init__(self, keep: float = 0.1, **options):
        super().__init__(keep, **options)
        o = check_options("dropback", options, self.DEFAULTS)
        check_choice("dropback", "init", o["init"], ("uniform", "kaiming_normal"))
        check_choice("dropback", "scope", o["scope"], ("global", "layer"))
        check_choice("dropback", "cache_w0", o["cache_w0"], (True, False))
        _freeze_opts("dropback", o)
        o["exclude"] = _as_names("dropback", o["exclude"])
        self.opts = o
        self.seed: Optional[int] = None
        self.rules: dict = {}
        self.steps = 0
        self.epochs = 0
        self.frozen = False
        self._tracked: Optional[dict] = None  # name -> bool mask (flat); None before the first step
        self._model = None
        self._params: dict = {}
        self._w0_cache: dict = {}
        self._pending: Optional[dict] = None

    # ----- helpers
    def w0(self, name: str) -> torch.Tensor:
        """The regenerated initial value of parameter ``name`` (its shape)."""
        if name in self._w0_cache:
            return self._w0_cache[name]
        pidx, rule = self.rules[name]
        t = regenerate(self.seed, pidx, rule, self._params[name].shape).to(self._params[name].device)
        if self.opts["cache_w0"]:
            self._w0_cache[name] = t
        return t

    def _k(self):
        sizes = {n: p.numel() for n, p in self._params.items()}
        if self.opts["scope"] == "global":
            return int(math.floor(self.keep * sum(sizes.values()) + 0.5))
        return {n: int(math.floor(self.keep * s + 0.5)) for n, s in sizes.items()}

    # ----- hooks
    def _bind(self, state: TrainState, reinit: bool) -> None:
        model = state.model
        self.rules = init_rules(model, self.opts["init"], exclude=self.opts["exclude"])
        if not self.rules:
            raise ValueError("dropback: the model has no trainable parameter to manage")
        params = dict(model.named_parameters())
        self._params = {n: params[n] for n in self.rules}
        self._model = model
        self._w0_cache = {}
        self.seed = self._bound_seed(state)
        k = self._k()
        total = sum(p.numel() for p in self._params.values())
        if (k if isinstance(k, int) else min(k.values())) < 1:
            raise ValueError(f"dropback: keep={self.keep} tracks 0 weights (of {total}); raise keep")
        self._start(reinit)

    def after_step(self, state: TrainState) -> None:
        self._ensure_bound(state)
        self.steps += 1
        if self.frozen and self._tracked is not None:
            tracked = self._tracked
        else:
            tracked = self._select()
            self._tracked = tracked
        self._reset(tracked, state.optimizer)
        self._maybe_freeze_after_step()

    def _select(self) -> dict:
        names = list(self._params)
        with torch.no_grad():
            scores = {n: (self._params[n].detach() - self.w0(n)).abs().reshape(-1) for n in names}
        k = self._k()
        out = {}
        if isinstance(k, int):
            flat = torch.cat([scores[n] for n in names])
            mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
            mask[topk_exact(flat, k)] = True
            off = 0
            for n in names:
                m = scores[n].numel()
                out[n] = mask[off: off + m]
                off += m
        else:
            for n in names:
                mask = torch.zeros(scores[n].numel(), dtype=torch.bool, device=scores[n].device)
                mask[topk_exact(scores[n], k[n])] = True
                out[n] = mask
        return out

    def _reset(self, tracked: dict, optimizer) -> None:
        with torch.no_grad():
            for n, p in self._params.items():
                m = tracked[n].view(p.shape)
                p.copy_(torch.where(m, p, self.w0(n)))
                if self.opts["reset_optimizer_state"]:
                    reset_optimizer_state(optimizer, p, ~m)

    # ----- results
    def tracked_masks(self) -> Optional[dict]:
        """{parameter name: bool mask of the tracked weights}; None before the first step."""
        if self._tracked is None:
            return None
        return {n: m.view(self._params[n].shape).clone() for n, m in self._tracked.items()}

    def weight_masks(self) -> Optional[dict]:
        return None  # DropBack resets untracked weights to w0, it never zeroes them

    def state_dict(self) -> dict:
        return {"seed": self.seed, "steps": self.steps, "epochs": self.epochs, "frozen": self.frozen,
                "tracked": None if self._tracked is None else
                {n: m.nonzero().view(-1).cpu() for n, m in self._tracked.items()}}

    def load_state_dict(self, state: dict) -> None:
        check_state_keys("dropback", state, {"seed", "steps", "epochs", "frozen", "tracked"})
        if self._model is None:
            self._pending = dict(state)
            self.steps, self.epochs, self.frozen = int(state["steps"]), int(state["epochs"]), bool(state["frozen"])
            return
        self._apply_loaded(state)

    def _apply_loaded(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self._w0_cache = {}
        self.steps, self.epochs, self.frozen = int(state["steps"]), int(state["epochs"]), bool(state["frozen"])
        if state["tracked"] is None:
            self._tracked = None
            return
        if set(state["tracked"]) != set(self._params):
            raise ValueError("dropback.load_state_dict: the saved tracked sets name other parameters than this model's")
        self._tracked = {}
        for n, idx in state["tracked"].items():
            m = torch.zeros(self._params[n].numel(), dtype=torch.bool, device=self._params[n].device)
            m[idx.to(m.device)] = True
            self._tracked[n] = m


# ----------------------------------------------------------------------------- compact store

class DropBackStore:
    """DropBack training whose persistent state is only the tracked weights.

    Holds: the seed (8 bytes), and per managed parameter the tracked flat indices (int32, or
    int64 past 2^31 entries), their values (float32) and, with ``momentum > 0``, their SGD
    momentum (float32). Parameters in ``exclude`` are trained densely (dense value + dense
    momentum, counted as such). Usage::

        store = DropBackStore(model, keep=0.1, seed=1, lr=0.4)   # re-initialises model to w0
        for x, y in batches:
            model.zero_grad(); loss_fn(model(x), y).backward()
            store.step()          # SGD on the tracked values + top-k re-selection, writes model back

    The model's parameter tensors are only the dense working copy the forward/backward needs
    (rebuilt from the store after every step). SGD: ``g += weight_decay * w``;
    ``buf = momentum * buf + g`` (``buf = g`` for a weight without state, i.e. untracked or
    newly tracked); ``w -= lr * buf``: the same arithmetic, in the same order, as
    ``torch.optim.SGD`` with :class:`DropBack` (``reset_optimizer_state=True``), so both give
    bit-identical weights and losses.
    """

    def __init__(self, model: nn.Module, keep: float, *, seed: int, lr: float = 0.4, momentum: float = 0.0,
                 weight_decay: float = 0.0, init: str = "uniform", exclude: Iterable[str] = (),
                 scope: str = "global", freeze_after_steps: Optional[int] = None):
        check_fraction(keep, "keep")
        check_number("DropBackStore", "lr", lr, lo=0, lo_open=True)
        check_number("DropBackStore", "momentum", momentum, lo=0, hi=1)
        check_number("DropBackStore", "weight_decay", weight_decay, lo=0)
        check_number("DropBackStore", "seed", seed, lo=0, hi=2 ** 63 - 1, integer=True)
        check_choice("DropBackStore", "scope", scope, ("global", "layer"))
        check_number("DropBackStore", "freeze_after_steps", freeze_after_steps, lo=1, integer=True, allow_none=True)
        self.model = model
        self.keep, self.seed = float(keep), int(seed)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.scope, self.freeze_after_steps = scope, freeze_after_steps
        self.rules = init_rules(model, init, exclude=_as_names("DropBackStore", exclude))
        params = dict(model.named_parameters())
        self._params = {n: params[n] for n in self.rules}
        self._dense = {n: p for n, p in params.items() if p.requires_grad and n not in self.rules}
        self._dense_buf = {n: None for n in self._dense}
        self.idx, self.val, self.buf = {}, {}, {}
        for n, p in self._params.items():
            itype = torch.int32 if p.numel() < 2 ** 31 else torch.int64
            self.idx[n] = torch.zeros(0, dtype=itype, device=p.device)
            self.val[n] = torch.zeros(0, dtype=p.dtype, device=p.device)
            self.buf[n] = torch.zeros(0, dtype=p.dtype, device=p.device)
        self.steps = 0
        self.frozen = False
        self.materialize()

    def _w0(self, n):
        pidx, rule = self.rules[n]
        return regenerate(self.seed, pidx, rule, self._params[n].shape).to(self._params[n].device)

    def materialize(self) -> None:
        """Write w0 (regenerated) with the tracked values on top into the model's parameters."""
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(self._w0(n))
                p.view(-1)[self.idx[n].long()] = self.val[n]

    @torch.no_grad()
    def step(self) -> None:
        """One SGD step from the gradients in ``param.grad``, then the DropBack selection."""
        new, bufs, scores = {}, {}, {}
        for n, p in self._params.items():
            if p.grad is None:
                raise RuntimeError(f"DropBackStore.step: {n!r} has no gradient; call loss.backward() first")
            g = p.grad
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum:
                b = torch.zeros_like(p).view(-1)
                b[self.idx[n].long()] = self.buf[n]
                b = b.view(p.shape).mul_(self.momentum).add_(g)
                # weights without state start from buf = g, as torch's SGD does (exact: 0 * m + g == g)
                g = b
                bufs[n] = b
            new[n] = p.add(g, alpha=-self.lr)
            scores[n] = (new[n] - self._w0(n)).abs().reshape(-1)
        for n, p in self._dense.items():  # excluded parameters: plain dense SGD
            if p.grad is None:
                continue
            g = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            if self.momentum:
                if self._dense_buf[n] is None:
                    self._dense_buf[n] = g.clone()
                else:
                    self._dense_buf[n].mul_(self.momentum).add_(g)
                g = self._dense_buf[n]
            p.add_(g, alpha=-self.lr)
        self.steps += 1
        if self.frozen:
            sel = {n: self.idx[n].long() for n in self._params}
        else:
            sel = self._select(scores)
        for n, p in self._params.items():
            ix = sel[n]
            self.idx[n] = ix.to(self.idx[n].dtype)
            self.val[n] = new[n].reshape(-1)[ix].clone()
            if self.momentum:
                self.buf[n] = bufs[n].reshape(-1)[ix].clone()
        if self.freeze_after_steps is not None and self.steps >= self.freeze_after_steps:
            self.frozen = True
        self.materialize()

    def _select(self, scores: dict) -> dict:
        names = list(self._params)
        if self.scope == "global":
            flat = torch.cat([scores[n] for n in names])
            k = int(math.floor(self.keep * flat.numel() + 0.5))
            top = topk_exact(flat, k)
            out, off = {}, 0
            for n in names:
                m = scores[n].numel()
                sel = top[(top >= off) & (top < off + m)] - off
                out[n] = sel
                off += m
            return out
        return {n: topk_exact(scores[n], int(math.floor(self.keep * scores[n].numel() + 0.5))) for n in names}

    def tracked_masks(self) -> dict:
        out = {}
        for n, p in self._params.items():
            m = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
            m[self.idx[n].long()] = True
            out[n] = m.view(p.shape)
        return out

    def memory(self) -> dict:
        """Bytes held between steps vs. a dense trainer, measured from the tensors held:
        ``{"held_bytes", "dense_bytes", "ratio", "tracked", "total", "parts"}``. Held = seed +
        indices + values + tracked momentum (+ excluded parameters and their momentum,
        dense); dense = every trainable parameter, plus one momentum buffer per parameter
        when ``momentum > 0``."""
        idx = sum(_nbytes(t) for t in self.idx.values())
        val = sum(_nbytes(t) for t in self.val.values())
        buf = sum(_nbytes(t) for t in self.buf.values()) if self.momentum else 0
        excl = sum(_nbytes(p) for p in self._dense.values())
        excl_buf = sum(_nbytes(b) for b in self._dense_buf.values())
        seed = 8
        held = seed + idx + val + buf + excl + excl_buf
        all_params = list(self._params.values()) + list(self._dense.values())
        dense = sum(_nbytes(p) for p in all_params) * (2 if self.momentum else 1)
        return {"held_bytes": held, "dense_bytes": dense, "ratio": held / dense,
                "tracked": sum(t.numel() for t in self.idx.values()),
                "total": sum(p.numel() for p in self._params.values()),
                "parts": {"seed": seed, "indices": idx, "values": val, "momentum": buf, "excluded": excl + excl_buf}}


def _nbytes(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.numel() * t.element_size()


# ----------------------------------------------------------------------------- channel variant

@register_method("dropback_channel")
class DropBackChannel(_TrackedSchedule, Method):
    """DropBack over channels (Golub et al. 2018, applied per channel): track the top channels by
    ``||W[c] - W0[c]||_1`` normalised by fan-in, reset every untracked channel to W0.

    A channel of a prunable group (``state.graph``; analysed from ``state.example_inputs``
    when None) is scored by the mean absolute change of all parameter entries that belong
    to it, over every member of the group (buffers skipped). ``keep``: fraction of the
    prunable channels tracked, one global budget (round(keep * C)), ties to the earlier
    group / channel. A weight entry is reset when *any* of its channels (e.g. its row or its
    column) is untracked. Parameters in no prunable group train normally. ``level`` is
    "weight" because that is how it must run: densely, with nothing removed (the trainer runs
    channel-level methods through the sparse step / export, which would delete the untracked
    channels instead of keeping them at W0). Options:
    ``seed``, ``init``, ``freeze_after_steps``, ``freeze_after_epochs``, ``reset_optimizer_state``.
    """
    level = "weight"  # how it runs: dense, nothing removed (untracked channels stay at W0)
    paper = DropBack.paper + " (channel variant)"
    DEFAULTS = {"seed": None, "init": "uniform", "freeze_after_steps": None, "freeze_after_epochs": None,
                "reset_optimizer_state": True}

    def __init__(self, keep: float = 0.5, **options):
        super().__init__(keep, **options)
        o = check_options("dropback_channel", options, self.DEFAULTS)
        check_choice("dropback_channel", "init", o["init"], ("uniform", "kaiming_normal"))
        _freeze_opts("dropback_channel", o)
        self.opts = o
        self.seed = None
        self.steps = self.epochs = 0
        self.frozen = False
        self._tracked: Optional[torch.Tensor] = None  # bool over all prunable channels, group order
        self._model = None
        self._pending = None

    def _bind(self, state: TrainState, reinit: bool) -> None:
        graph = state.graph
        if graph is None:
            from fxsparse.analysis.analyze import analyze
            graph = analyze(state.model, state.example_inputs)
        model = state.model
        params = dict(model.named_parameters())
        self.groups = [g for g in graph.groups if g.prunable]
        if not self.groups:
            raise ValueError("dropback_channel: the model has no prunable channel group")
        self.offsets, off = [], 0
        for g in self.groups:
            self.offsets.append(off)
            off += g.size
        self.num_channels = off
        self.k = int(math.floor(self.keep * off + 0.5))
        if self.k < 1:
            raise ValueError(f"dropback_channel: keep={self.keep} tracks 0 of {off} channels; raise keep")
        # members on trainable parameters: (param name, dim, position -> global channel id (-1: none))
        self.members = []
        counts = torch.zeros(off, dtype=torch.float64)
        for g, o in zip(self.groups, self.offsets):
            for m in g.members:
                p = params.get(m.param)
                if p is None or not p.requires_grad:
                    continue
                chan = torch.full((p.shape[m.dim],), -1, dtype=torch.long)
                for j, ix in enumerate(m.index):
                    chan[torch.as_tensor(ix, dtype=torch.long)] = o + j
                per_pos = p.numel() // p.shape[m.dim]
                sel = chan >= 0
                counts.index_add_(0, chan[sel], torch.full((int(sel.sum()),), float(per_pos), dtype=torch.float64))
                self.members.append((m.param, m.dim, chan))
        if (counts == 0).any():
            raise ValueError("dropback_channel: some prunable channels touch no trainable parameter")
        self.counts = counts
        names = sorted({n for n, _, _ in self.members}, key=list(params).index)
        self.rules = init_rules(model, self.opts["init"], names=names)
        self._params = {n: params[n] for n in names}
        self._model = model
        self.seed = self._bound_seed(state)
        self._start(reinit)

    def w0(self, name):
        pidx, rule = self.rules[name]
        p = self._params[name]
        return regenerate(self.seed, pidx, rule, p.shape).to(p.device)

    def channel_scores(self) -> torch.Tensor:
        """Mean |W - W0| over each prunable channel's entries (float64, group order)."""
        sums = torch.zeros(self.num_channels, dtype=torch.float64)
        with torch.no_grad():
            w0 = {n: self.w0(n) for n in self._params}
            for name, dim, chan in self.members:
                d = (self._params[name].detach() - w0[name]).abs().to(torch.float64)
                along = d.transpose(0, dim).reshape(d.shape[dim], -1).sum(1).cpu()
                sel = chan >= 0
                sums.index_add_(0, chan[sel], along[sel])
        return sums / self.counts

    def _element_masks(self, tracked: torch.Tensor) -> dict:
        masks = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in self._params.items()}
        for name, dim, chan in self.members:
            keep_pos = torch.where(chan >= 0, tracked[chan.clamp(min=0)], torch.ones_like(chan, dtype=torch.bool))
            masks[name] &= along(keep_pos, dim, masks[name].dim())
        return masks

    def after_step(self, state: TrainState) -> None:
        self._ensure_bound(state)
        self.steps += 1
        if not (self.frozen and self._tracked is not None):
            tracked = torch.zeros(self.num_channels, dtype=torch.bool)
            tracked[topk_exact(self.channel_scores(), self.k)] = True
            self._tracked = tracked
        masks = self._element_masks(self._tracked)
        with torch.no_grad():
            for n, p in self._params.items():
                m = masks[n].to(p.device)
                p.copy_(torch.where(m, p, self.w0(n)))
                if self.opts["reset_optimizer_state"]:
                    reset_optimizer_state(state.optimizer, p, ~m)
        self._maybe_freeze_after_step()

    def tracked_channels(self) -> Optional[dict]:
        """{group id: bool mask of its tracked channels}; None before the first step."""
        if self._tracked is None:
            return None
        return {g.id: self._tracked[o: o + g.size].clone() for g, o in zip(self.groups, self.offsets)}

    def tracked_masks(self) -> Optional[dict]:
        """{parameter name: bool mask of the entries not reset to W0}; None before the first step."""
        return None if self._tracked is None else self._element_masks(self._tracked)

    def channel_keep(self) -> Optional[dict]:
        return None  # untracked channels stay in the network (at W0): nothing to remove

    def state_dict(self) -> dict:
        return {"seed": self.seed, "steps": self.steps, "epochs": self.epochs, "frozen": self.frozen,
                "tracked": None if self._tracked is None else self._tracked.clone()}

    def load_state_dict(self, state: dict) -> None:
        check_state_keys("dropback_channel", state, {"seed", "steps", "epochs", "frozen", "tracked"})
        if self._model is None:
            self._pending = dict(state)
            return
        self._apply_loaded(state)

    def _apply_loaded(self, state):
        self.seed = int(state["seed"])
        self.steps, self.epochs, self.frozen = int(state["steps"]), int(state["epochs"]), bool(state["frozen"])
        t = state["tracked"]
        if t is not None and t.numel() != self.num_channels:
            raise ValueError(f"dropback_channel.load_state_dict: {t.numel()} channels saved, this model has "
                             f"{self.num_channels} prunable channels")
        self._tracked = None if t is None else t.clone().to(torch.bool)
