"""The faster builds of a SparseModel (issue #31: a ViT-H took over 300 s before its first
step) compute exactly what the slower code did: the vectorised capacity-model layouts equal
the per-position loop they replaced, and an export, which no longer deep-copies the
parameters it slices, still never shares or writes the model's tensors."""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fxsparse
from fxsparse import zoo
from fxsparse.rewrite.layout import DimLayout


def dim_layout_loop(plan, dense_classes):
    """The per-position definition of Plan.dim_layout (the code it replaced)."""
    cap_kept = set()
    for b, slots in zip(plan.blocks, plan.caps):
        cap_kept.update(b.classes[:slots].tolist())
    rows, gslot, occ, fixed, seen = {}, [], [], [], {}
    for p, c in enumerate(dense_classes.tolist()):
        if c >= 0:
            rows.setdefault(c, []).append(p)
    for p, c in enumerate(dense_classes.tolist()):
        if c >= 0 and c not in cap_kept:
            continue  # removed in the capacity model
        if c < 0 or c not in plan.block_of:
            gslot.append(-1), occ.append(0), fixed.append(p)
            continue
        k = seen.get(c, 0)
        seen[c] = k + 1
        gslot.append(int(plan.offsets[plan.block_of[c]] + plan.slot_of[c])), occ.append(k), fixed.append(p)
    any_prunable = any(plan.prunable[plan.block_of[c]] for c in rows if c in plan.block_of)
    return DimLayout(gslot=np.array(gslot, dtype=np.int64), occ=np.array(occ, dtype=np.int64),
                     fixed=np.array(fixed, dtype=np.int64), rows={c: np.array(v, dtype=np.int64) for c, v in rows.items()},
                     any_prunable=any_prunable)


def assert_same_layout(got, want):
    for field in ("gslot", "occ", "fixed"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field
        assert getattr(got, field).dtype == np.int64, field
    assert got.any_prunable == want.any_prunable
    assert sorted(got.rows) == sorted(want.rows)
    for c, positions in want.rows.items():
        assert np.array_equal(got.rows[c], positions), c
    assert got.signature() == want.signature()


@pytest.mark.parametrize("name,shape,capacity", [("resnet20", (2, 3, 32, 32), "auto"),
                                                 ("shufflenetv2", (2, 3, 32, 32), "exact"),
                                                 ("vit_tiny", (2, 3, 32, 32), None)])
def test_vectorised_layouts_equal_the_per_position_loop(name, shape, capacity):
    """Every member dim and validity layout of the capacity model, at the first capacities and
    after a rebuild at others (the per-capacity table must follow)."""
    torch.manual_seed(0)
    model = zoo.create(name)
    sp = fxsparse.compile(model, torch.randn(*shape), keep=0.5, compile=False, capacity=capacity)
    graph = sp.channel_graph
    checked = 0
    for caps_round in range(2):
        for (param, dim), ids in graph.raw_members.items():
            classes = graph.elements.canonical(ids)
            assert_same_layout(sp.plan.dim_layout(classes), dim_layout_loop(sp.plan, classes))
            checked += 1
        if sp.dynamic:
            break
        sp._set_caps([min(len(b.classes), c + 3) for c, b in zip(sp.plan.caps, sp.plan.blocks)])  # masks still fit
    assert checked > 20
    # classes outside every block and positions without a channel (-1) are fixed positions
    odd = np.array([-1, 10 ** 9, -1], dtype=np.int64)
    assert_same_layout(sp.plan.dim_layout(odd), dim_layout_loop(sp.plan, odd))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 6)
        self.d = nn.Linear(6, 6)
        self.e = nn.Linear(6, 6)
        self.e.weight = self.d.weight  # tied: two parallel layers on one input

    def forward(self, x):
        h = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
        return self.e(h) + self.d(h)


def test_export_owns_every_tensor_and_keeps_ties():
    torch.manual_seed(0)
    model = Tied().eval()
    x = torch.randn(3, 6)
    graph = fxsparse.analyze(model, x)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for keep in ({g.id: torch.ones(g.size, dtype=torch.bool) for g in graph.groups},
                 fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1))):
        # (exporting from ``model`` itself trips on the tie: named_parameters() hides 'e.weight')
        small = fxsparse.export(graph.gm, graph, keep)
        params = dict(small.named_parameters(remove_duplicate=False))
        assert not {p.untyped_storage().data_ptr() for p in params.values()} & storages
        assert params["d.weight"] is params["e.weight"]
        assert params["d.weight"].requires_grad
        with torch.no_grad():
            for p in small.parameters():
                p.add_(1.0)  # writing the export leaves the model alone
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    full = fxsparse.export(graph.gm, graph, {g.id: torch.ones(g.size, dtype=torch.bool) for g in graph.groups})
    torch.testing.assert_close(full(x), model(x), rtol=0, atol=0)
