"""The compact update's ``exact`` path (issue #31): a step in which no updated parameter has an
empty slot writes the gathered entries without masking them; it must equal the masked update
bit for bit and train like the exported model, and the step must take it only then."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse.step.compact_update import adam_kernel, sgd_kernel
from fxsparse.step.gather import gather
from fxsparse.step.index import Slots


def _slots(dense, dims_kept):
    """Slots over ``dims_kept`` ({dim: kept count}) of ``dense``: random distinct indices, all real."""
    out = []
    for dim, n in sorted(dims_kept.items()):
        index = torch.randperm(dense.shape[dim])[:n].sort().values
        real = torch.ones(n, dtype=torch.bool)
        out.append(Slots(dim, index, real, real.to(dense.dtype)))
    return tuple(out)


def _case():
    """Two gathered parameters (a 3-D expert-like one over two dims, a 2-D one over its inner
    dim) and a dense one, with their compact weights and gradients."""
    torch.manual_seed(0)
    params = [torch.randn(4, 12, 10, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64),
              torch.randn(5, dtype=torch.float64)]
    wheres = [_slots(params[0], {1: 6, 2: 5}), _slots(params[1], {1: 4}), None]
    ws = [p.clone() if w is None else gather(p, w) for p, w in zip(params, wheres)]
    gs = [torch.randn_like(w) for w in ws]
    return params, wheres, ws, gs


def _run(kernel_args, exact):
    """Copies of the kernel's tensors (the originals untouched), updated with ``exact``."""
    kernel, args = kernel_args
    copied = [[t.clone() if isinstance(t, torch.Tensor) else t for t in a] if isinstance(a, list) else a
              for a in args]
    kernel(*copied, exact)
    return [t for a in copied if isinstance(a, list) for t in a if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_exact_update_equals_the_masked_update_bit_for_bit(kind):
    params, wheres, ws, gs = _case()
    lrs = torch.tensor([0.1, 0.05, 0.2], dtype=torch.float64)
    if kind == "sgd":
        bufs = [torch.randn_like(p) for p in params]
        hyper = ((0.9, 0.0, 1e-3, True), (0.9, 0.1, 0.0, False), (0.8, 0.0, 1e-2, False))
        args = (sgd_kernel, (params, bufs, ws, gs, wheres, lrs, hyper))
    else:
        avgs, sqs = [torch.randn_like(p) for p in params], [torch.rand_like(p) for p in params]
        steps, bc2 = lrs / 0.9, torch.full((3,), 0.3, dtype=torch.float64)
        hyper = tuple((0.9, 0.999, 1e-8, 1e-2, kind == "adamw") for _ in params)
        args = (adam_kernel, (params, avgs, sqs, ws, gs, wheres, lrs, steps, bc2, hyper))
    masked, exact = _run(args, False), _run(args, True)
    for a, b in zip(masked, exact):
        assert torch.equal(a, b)
    assert not torch.equal(masked[0], params[0])  # the update did write


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 5)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _spy_exact(step) -> list:
    """The ``exact`` flag of every update the step runs."""
    seen, arguments = [], step.update.arguments

    def spy(opt, compact, exact=False):
        seen.append(exact)
        return arguments(opt, compact, exact)

    step.update.arguments = spy
    return seen


@pytest.mark.parametrize("capacity,exact", [("exact", True), ("auto", False)])
def test_step_skips_the_masking_only_without_empty_slots(capacity, exact):
    """Exact capacities with fixed-count masks: no empty slot, the unmasked update; Bernoulli
    masks in padded capacities: empty slots, the masked one. Both train like the exported model
    and leave pruned weights and momentum untouched."""
    torch.manual_seed(0)
    model = _Net().double()
    x, y = torch.randn(8, 12, dtype=torch.float64), torch.randint(0, 5, (8,))
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, capacity=capacity)
    if capacity == "exact":
        sp.masks = fxsparse.random_keep(sp.channel_graph, 0.5, sp.generator)
    else:
        prunable = {g.id for g in sp.channel_graph.prunable_groups}
        sp.masks = {g: (torch.arange(len(m)) < len(m) // 2 - 2) if g in prunable else m  # under the capacities
                    for g, m in sp.masks.items()}
    assert bool(sp.step_index().empty) != exact
    small = sp.export().train()
    make = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)  # noqa: E731
    step = sp.make_train_step(F.cross_entropy, make(model.parameters()))
    opt_small = make(small.parameters())
    seen = _spy_exact(step)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sp.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            step(x, y)
            opt_small.zero_grad()
            F.cross_entropy(small(x), y).backward()
            opt_small.step()
    assert seen == [exact] * 3
    ref = dict(small.named_parameters())
    for name, t in sp.export().named_parameters():
        assert torch.allclose(t, ref[name], rtol=1e-9, atol=1e-12), name
    for name, p in model.named_parameters():  # pruned entries: weights and momentum as they were
        kept = _kept(sp, name, p)
        assert torch.equal(p.detach()[~kept], before[name][~kept]), name
        assert not step.optimizer.state[p]["momentum_buffer"][~kept].any(), name


def _kept(sp, name, p):
    keep = torch.ones(p.shape, dtype=torch.bool)
    for s in sp.step_index().slots.get(name, ()):
        line = torch.zeros(p.shape[s.dim], dtype=torch.bool)
        line[s.index[s.real]] = True
        keep &= line.view([-1 if d == s.dim else 1 for d in range(p.dim())])
    return keep


def test_a_build_that_had_empty_slots_stays_masked():
    """Exact capacities, first a mask under them (empty slots), then fixed-count masks: the
    update stays masked for the build (one update graph, not one per kind of step), and pruned
    entries stay untouched throughout."""
    torch.manual_seed(0)
    model = _Net().double()
    x, y = torch.randn(8, 12, dtype=torch.float64), torch.randint(0, 5, (8,))
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, capacity="exact")
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    seen = _spy_exact(step)
    prunable = {g.id for g in sp.channel_graph.prunable_groups}
    sp.train()
    for i in range(3):
        if i == 0:
            sp.masks = {g: (torch.arange(len(m)) < 2) if g in prunable else m for g, m in sp.masks.items()}
        else:
            sp.masks = fxsparse.random_keep(sp.channel_graph, 0.5, sp.generator)
        assert bool(sp.step_index().empty) == (i == 0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        step(x, y)
        for name, p in model.named_parameters():
            kept = _kept(sp, name, p)
            assert torch.equal(p.detach()[~kept], before[name][~kept]), name
    assert seen == [False] * 3 and sp.rebuilds == 0
