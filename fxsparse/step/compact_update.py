"""The compact optimizer update: SGD / Adam / AdamW reading and writing only the kept entries of
the weights and of their optimizer state, from the compact step's gradients (pruned entries stay
bit-identical, no dense-size gradient exists). Any other optimizer runs on dense gradients
through :class:`~fxsparse.step.optim.MaskedOptimizer`."""
from __future__ import annotations

import math

import torch
import torch.utils.dlpack

from fxsparse.step.gather import gather, real_slots, scatter_


# Inductor config for compiled gathers and updates: they read and write the dense weights
# and state through slot indices in runs as short as a 3x3 kernel's 9 entries; inductor's
# vector code splits each into a vector of 8 and a masked tail, slower than plain scalar
# loops, and checks every index's bounds (ours are in range by construction). VGG-11, keep
# 0.5, AVX2 (fxsparse bench phases): update 10.0 -> 6.9 ms, dynamic gather 4.7 (eager)
# -> 3.3 ms, and it compiles in 6 s instead of 19 s.
INDEXED_KERNEL_OPTIONS = {"cpp.simdlen": 1, "assert_indirect_indexing": False}


def _store(full, where, new, old, real):
    if where is None:
        full.copy_(new)
    elif real is None:  # every slot holds a kept channel: no old value to keep
        scatter_(full, where, new)
    else:
        scatter_(full, where, torch.where(real, new, old))


def _read_view(t):
    """``t``'s memory as a tensor with a storage of its own (a DLPack view; None where the device
    has no DLPack): what a compiled update reads the old entries of a tensor it writes from.

    Inductor never fuses an indexed read of a buffer with an indexed write to the same buffer (it
    cannot tell that the two indices are the same), so an update reading the momentum it writes
    stores the new values in a compact temporary and scatters them in a second loop, and the
    dense cache lines it writes were read long before. Read through a view of its own storage
    (torch.compile then sees two tensors), each entry is read and written in one pass (the
    Mixtral-style bench decoder, keep 0.5, 1 thread, CPU time: the update from 1.76x to 1.26x the
    exported model's eager SGD, the whole step from 1.100x to 1.073x the exported model's;
    benchmarks/archive/compact_update_views.py). Exact because every entry the update writes is read at that
    entry only (slot indices are distinct: :func:`~fxsparse.step.gather.scatter_`) and each view is read once,
    by the values written into its own tensor: fused, an entry is read before it is written; split into two
    loops, the write needs the read's result, so no schedule can write first."""
    try:
        return torch.utils.dlpack.from_dlpack(t.detach())
    except (RuntimeError, TypeError, BufferError):
        return None


class _ReadViews:
    """:func:`_read_view` per tensor, kept while the tensor is (one is ~10 us: made once, not per
    step); only those of the latest call are kept, so a view holds a tensor the optimizer dropped
    for one step at most."""

    def __init__(self):
        self._views = {}

    def __call__(self, tensors):
        views, out = {}, []
        for t in tensors:
            if t is None:
                out.append(None)
                continue
            key = (id(t), t.data_ptr(), t.shape, t.stride(), t.device)
            if key not in views:
                views[key] = self._views[key] if key in self._views else _read_view(t)
            out.append(views[key])
        self._views = views
        return out


def _old(t, where, view):
    """The entries of ``t`` at ``where`` (None: all of ``t``), read through ``view`` where there is
    one (:func:`_read_view`)."""
    if where is None:
        return t
    return gather(t if view is None else view, where)


def _real(where, ndim, exact):
    """Which gathered entries a kernel may write (None: all of them). ``exact``: no parameter of
    the step has an empty slot, so the masking is skipped (the Mixtral-style bench decoder, keep
    0.5, 1 thread: the compiled update 59 -> 46 ms, its compile 29 -> 11 s); a bool, so a build
    holds at most two update graphs."""
    return None if where is None or exact else real_slots(where, ndim)


def sgd_kernel(params, bufs, ws, gs, wheres, lrs, hyper, exact=False, views=None):
    """SGD (momentum, dampening, nesterov, weight decay) on the kept entries: ``ws``/``gs``
    compact weights and gradients, ``wheres`` their slots (None: a dense parameter),
    ``lrs`` a float64 vector (a tensor, so a new learning rate never recompiles),
    ``hyper`` per parameter (momentum, dampening, weight decay, nesterov), ``exact``: no slot
    is empty (see :func:`_real`), ``views``: None, or per parameter None or the views (of the
    parameter, of its momentum buffer) its old entries are read from (:func:`_read_view`; the
    old weights then come from the parameter, equal to ``ws``). Pure tensor code:
    torch.compile fuses each parameter's gather, update and scatter into one pass."""
    for i, (p, buf, w, g, where) in enumerate(zip(params, bufs, ws, gs, wheres)):
        mom, damp, wd, nesterov = hyper[i]
        real = _real(where, w.dim(), exact)
        p_view, buf_view = views[i] if views and views[i] else (None, None)
        if p_view is not None:
            w = _old(p, where, p_view)
        if wd:
            g = g + wd * w
        if mom:
            old = _old(buf, where, buf_view)
            b = old * mom + g * (1 - damp)
            g = g + b * mom if nesterov else b
            _store(buf, where, b, old, real)
        _store(p, where, w - lrs[i] * g, w, real)


def adam_kernel(params, avgs, sqs, ws, gs, wheres, lrs, step_sizes, bc2_sqrts, hyper, exact=False, views=None):
    """Adam / AdamW on the kept entries (see :func:`sgd_kernel`); ``step_sizes`` = lr / (1 -
    beta1^t), ``bc2_sqrts`` = sqrt(1 - beta2^t), ``hyper`` = (beta1, beta2, eps, weight
    decay, decoupled) per parameter, ``views``: per parameter None or (of the parameter, of
    exp_avg, of exp_avg_sq)."""
    for i, (p, avg, sq, w, g, where) in enumerate(zip(params, avgs, sqs, ws, gs, wheres)):
        b1, b2, eps, wd, decoupled = hyper[i]
        real = _real(where, w.dim(), exact)
        p_view, avg_view, sq_view = views[i] if views and views[i] else (None, None, None)
        if p_view is not None:
            w = _old(p, where, p_view)
        if wd and not decoupled:
            g = g + wd * w
        old_m = _old(avg, where, avg_view)
        old_v = _old(sq, where, sq_view)
        m = old_m * b1 + g * (1 - b1)
        v = old_v * b2 + g * g * (1 - b2)
        denom = v.sqrt() / bc2_sqrts[i] + eps
        base = w * (1 - lrs[i] * wd) if (wd and decoupled) else w
        _store(avg, where, m, old_m, real)
        _store(sq, where, v, old_v, real)
        _store(p, where, base - step_sizes[i] * m / denom, w, real)


def _entries(opt, compact):
    """Per updated parameter: (group, param, weights, gradient, slots). ``compact``: [(param,
    leaf holding the gradient, the gathered dense weights, slots)] (no second gather)."""
    kept = {id(p): (leaf, w, where) for p, leaf, w, where in compact}
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            if id(p) in kept:
                leaf, w, where = kept[id(p)]
                if leaf.grad is not None:
                    out.append((group, p, w.detach() if w.requires_grad else w, leaf.grad, where))
            elif p.grad is not None:
                out.append((group, p, p.detach(), p.grad, None))
    return out


def _scalars(values, like):
    return torch.tensor(values, dtype=torch.float64, device=like.device)


def _columns(entries):
    """params, weights, gradients, slots of :func:`_entries` as four lists."""
    return (list(x) for x in zip(*[e[1:] for e in entries]))


class _CompactUpdate:
    """A compact optimizer update: ``kernel(*arguments)`` with ``arguments`` read from the
    torch optimizer's groups and state for the parameters that got a gradient.
    ``read_views``: the kernel reads the old entries of the gathered parameters and their state
    through :func:`_read_view` (off: from the tensors it writes, a second loop per tensor; for
    benchmarks)."""

    kernel = None
    read_views = True

    def __init__(self):
        self._views = _ReadViews()

    @torch.no_grad()
    def arguments(self, opt, compact, exact: bool = False):
        """(kernel arguments or None when nothing has a gradient, whether the step must run eagerly).
        ``exact``: no parameter in ``compact`` has an empty slot (the kernels' ``exact``)."""
        entries = _entries(opt, compact)
        if not entries:
            return None, True
        arguments, eager = self._arguments(opt, entries)
        return arguments + (bool(exact), self._read_views(arguments, entries)), eager

    def _read_views(self, arguments, entries):
        """The kernel's ``views``: per gathered parameter, those of it and of its state tensors."""
        if not self.read_views:
            return None
        written = list(zip(arguments[0], *self._state(arguments)))
        flat = self._views([t if e[4] is not None else None for e, ts in zip(entries, written) for t in ts])
        n = len(written[0])
        return [tuple(flat[i * n:(i + 1) * n]) if e[4] is not None else None for i, e in enumerate(entries)]


class CompactSGD(_CompactUpdate):
    """SGD (momentum, dampening, nesterov, weight decay) on the kept entries only."""

    kernel = staticmethod(sgd_kernel)

    @staticmethod
    def _state(arguments):
        return (arguments[1],)  # the momentum buffers (None without momentum)

    def _arguments(self, opt, entries):
        bufs, hyper, eager = [], [], False
        for group, p, *_ in entries:
            mom, damp = float(group["momentum"]), float(group["dampening"])
            buf = None
            if mom:
                state = opt.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:  # torch's first step is buf = g: the same as 0 * mom + g without dampening
                    buf = state["momentum_buffer"] = torch.zeros_like(p)
                    if damp:  # an eager step: a constant that changes would recompile the graph
                        damp, eager = 0.0, True
            bufs.append(buf)
            hyper.append((mom, damp, float(group["weight_decay"]), bool(group["nesterov"])))
        params, ws, gs, wheres = _columns(entries)
        lrs = _scalars([e[0]["lr"] for e in entries], params[0])
        return (params, bufs, ws, gs, wheres, lrs, tuple(hyper)), eager


class CompactAdam(_CompactUpdate):
    """Adam / AdamW (amsgrad off) on the kept entries only."""

    kernel = staticmethod(adam_kernel)

    @staticmethod
    def _state(arguments):
        return arguments[1], arguments[2]  # exp_avg, exp_avg_sq

    def _arguments(self, opt, entries):
        decoupled = isinstance(opt, torch.optim.AdamW)
        avgs, sqs, hyper, lrs, step_sizes, bc2 = [], [], [], [], [], []
        for group, p, *_ in entries:
            state = opt.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            t = float(state["step"])
            b1, b2 = group["betas"]
            avgs.append(state["exp_avg"])
            sqs.append(state["exp_avg_sq"])
            hyper.append((float(b1), float(b2), float(group["eps"]), float(group["weight_decay"]), decoupled))
            lrs.append(group["lr"])
            step_sizes.append(group["lr"] / (1 - b1 ** t))
            bc2.append(math.sqrt(1 - b2 ** t))
        params, ws, gs, wheres = _columns(entries)
        like = params[0]
        return (params, avgs, sqs, ws, gs, wheres, _scalars(lrs, like), _scalars(step_sizes, like),
                _scalars(bc2, like), tuple(hyper)), False


def compact_update_for(optimizer):
    """The compact update for a torch optimizer, or None when only MaskedOptimizer fits."""
    if type(optimizer) is torch.optim.SGD and not optimizer.defaults.get("maximize"):
        return CompactSGD()
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW) and not optimizer.defaults.get("maximize") \
            and not optimizer.defaults.get("amsgrad"):
        return CompactAdam()
    return None
