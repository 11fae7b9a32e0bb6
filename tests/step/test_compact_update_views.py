"""The compiled compact update reads the old entries of the tensors it writes through views with a
storage of their own (issue #31: inductor then reads and writes each momentum entry in one pass,
instead of writing a compact temporary and scattering it in a second loop). The values must not
change: compiled by inductor and reading through the views, the update equals the eager one bit
for bit, in the exact and in the masked (empty slots) form, and leaves every other entry as it was."""
import collections

import pytest
import torch

from fxsparse.step.compact_update import INDEXED_KERNEL_OPTIONS, CompactAdam, CompactSGD
from fxsparse.step.gather import gather
from fxsparse.step.index import Slots

pytestmark = pytest.mark.usefixtures("single_thread")


def _slots(dense, dims_kept, empty):
    """Random distinct indices over ``dims_kept`` ({dim: count}); with ``empty`` the last slot of
    each dim is an empty one."""
    out = []
    for dim, n in sorted(dims_kept.items()):
        index = torch.randperm(dense.shape[dim])[:n].sort().values
        real = torch.ones(n, dtype=torch.bool)
        real[-1] = not empty
        out.append(Slots(dim, index, real, real.to(dense.dtype)))
    return tuple(out)


def _written(p, where):
    """Bool tensor: the entries of ``p`` an update at ``where`` may write (the real slots)."""
    keep = torch.ones(p.shape, dtype=torch.bool)
    for s in where:
        line = torch.zeros(p.shape[s.dim], dtype=torch.bool)
        line[s.index[s.real]] = True
        keep &= line.view([-1 if d == s.dim else 1 for d in range(p.dim())])
    return keep


def _inductor(fn):
    def backend(gm, example_inputs):
        from torch._inductor import config
        from torch._inductor.compile_fx import compile_fx

        with config.patch(INDEXED_KERNEL_OPTIONS):
            return compile_fx(gm, example_inputs)
    return torch.compile(fn, backend=backend, dynamic=False)


class _Opt:
    """What the compact updates read of a torch optimizer: its groups and state."""

    def __init__(self, params, group, state):
        self.param_groups = [dict(group, params=params)]
        self.state = collections.defaultdict(dict, state)


def _state(kind, params):
    g = torch.Generator().manual_seed(1)
    if kind == "sgd":
        return {p: {"momentum_buffer": torch.randn(p.shape, generator=g)} for p in params}
    return {p: {"step": torch.tensor(3.0), "exp_avg": torch.randn(p.shape, generator=g),
                "exp_avg_sq": torch.rand(p.shape, generator=g)} for p in params}


# an inductor compile each (~10 s on a busy machine): two in the fast lane
@pytest.mark.parametrize("kind,exact", [("sgd", False), ("adamw", True), pytest.param("sgd", True, marks=pytest.mark.slow),
                                        pytest.param("adamw", False, marks=pytest.mark.slow)])
def test_compiled_update_through_views_equals_eager_bit_for_bit(kind, exact):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 12, 10)), torch.nn.Parameter(torch.randn(6, 8)),
              torch.nn.Parameter(torch.randn(5))]
    wheres = [_slots(params[0], {1: 6, 2: 5}, not exact), _slots(params[1], {1: 4}, False)]
    if kind == "sgd":
        update, group = CompactSGD(), dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=1e-3, nesterov=True)
    else:
        update, group = CompactAdam(), dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    compact = []
    for p, where in zip(params, wheres):
        leaf = gather(p.detach(), where).requires_grad_()
        leaf.grad = torch.randn_like(leaf)
        compact.append((p, leaf, leaf.detach().clone(), where))
    params[2].grad = torch.randn_like(params[2])
    before = [p.detach().clone() for p in params]
    results = []
    for kernel in (update.kernel, _inductor(update.kernel)):
        for p, b in zip(params, before):
            p.data.copy_(b)
        opt = _Opt(params, group, _state(kind, params))
        state_before = {p: {k: v.clone() for k, v in opt.state[p].items()} for p in params}
        arguments, eager = update.arguments(opt, compact, exact)
        assert not eager
        views = arguments[-1]
        assert views[2] is None  # the dense parameter reads itself
        for i in range(2):  # the gathered ones: views of the tensors written, with storages of their own
            written = (params[i],) + tuple(a[i] for a in update._state(arguments))
            for view, t in zip(views[i], written):
                assert view.data_ptr() == t.data_ptr()
                assert view.untyped_storage()._cdata != t.untyped_storage()._cdata
        with torch.no_grad():
            kernel(*arguments)
        for p, b, where in zip(params, before, wheres):
            keep = _written(p, where)
            assert torch.equal(p.detach()[~keep], b[~keep]) and not torch.equal(p.detach()[keep], b[keep])
            for k, v in opt.state[p].items():
                if v.shape == p.shape:
                    assert torch.equal(v[~keep], state_before[p][k][~keep]), k
        results.append([p.detach().clone() for p in params]
                       + [v.clone() for p in params for v in opt.state[p].values() if v.shape == p.shape])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_views_are_made_once_per_tensor():
    """The views of a step are those of the step before while the tensors are the same ones."""
    p = torch.nn.Parameter(torch.randn(6, 8))
    where = _slots(p, {1: 4}, False)
    leaf = gather(p.detach(), where).requires_grad_()
    leaf.grad = torch.randn_like(leaf)
    update = CompactSGD()
    opt = _Opt([p], dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False), {})
    first = update.arguments(opt, [(p, leaf, leaf.detach(), where)])[0][-1][0]
    again = update.arguments(opt, [(p, leaf, leaf.detach(), where)])[0][-1][0]
    assert all(a is b for a, b in zip(first, again))
    update.read_views = False
    assert update.arguments(opt, [(p, leaf, leaf.detach(), where)])[0][-1] is None
