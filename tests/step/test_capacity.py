"""Capacities follow the keep probabilities: planned from the scores, grown before masks
overflow, shrunk once the scores sharpen; masks beyond a capacity are redrawn, never
silently truncated; rebuilds never push torch.compile past its recompile limit (which
would silently run the step eagerly); a resumed learner gets the same capacities."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import numpy as np

import fxsparse
from fxsparse import zoo
from fxsparse.analysis.flops import SubnetFlops
from fxsparse.rewrite.export import export
from fxsparse.step.capacity import cpu_channel_block
from fxsparse.methods.vrpge import StructureLearner
from sparse_checks import ConvBNNet


def _sparse(compile=False, keep=0.5):
    torch.manual_seed(0)
    model = ConvBNNet(64, 48)
    x = torch.randn(8, 3, 6, 6)
    return model, x, fxsparse.compile(model, x, keep=keep, compile=compile, capacity="auto")


def _probs(sp, fill):
    return {g.id: fill(g.size) for g in sp.channel_graph.prunable_groups}


def _prunable_caps(sp):
    return [c for c, p in zip(sp.plan.caps, sp.plan.prunable) if p]


def test_planned_caps_cover_mean_plus_headroom_and_shrink_when_sharp():
    _, _, sp = _sparse()
    half = _probs(sp, lambda n: torch.full((n,), 0.5))
    caps = sp.planned_caps(half, headroom=3.5, slack=0.0)
    for (mean, std), cap, prunable in zip(sp.block_moments(half), caps, sp.plan.prunable):
        if prunable:
            assert mean + 3.5 * std <= cap < mean + 3.5 * std + 1
    sp.fit_capacity(half)
    wide = _prunable_caps(sp)
    # sharpened scores with the same expected count: far less padding, so the step is rebuilt smaller
    sharp = _probs(sp, lambda n: (torch.arange(n) < n // 2).double() * 0.99 + 0.005)
    rebuilds = sp.rebuilds
    assert sp.fit_capacity(sharp)
    assert sp.rebuilds == rebuilds + 1
    assert all(s < w for s, w in zip(_prunable_caps(sp), wide))
    # nothing changed: no rebuild
    assert not sp.fit_capacity(sharp)


def test_a_shrink_must_repay_its_recompile_over_the_steps_left():
    """Once the step has run (its graphs exist), a shrink priced at ``recompile_steps``
    happens only when its FLOPs cut times the steps left pays for them; before the first
    step it is free; growing is never priced."""
    model, x, sp = _sparse()
    half = _probs(sp, lambda n: torch.full((n,), 0.5))
    sharp = _probs(sp, lambda n: (torch.arange(n) < n // 2).double() * 0.99 + 0.005)
    sp.fit_capacity(half)
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.1))
    step(x, torch.randint(0, 4, (8,)))  # the step's functions now exist for these capacities
    caps = list(sp.plan.caps)
    planned = sp.planned_caps(sharp, headroom=3.5)
    flops = SubnetFlops(sp.channel_graph)
    cost = [float(flops(flops.flat(sp.plan.cap_keep(c)))) for c in (planned, caps)]
    cut = 1 - cost[0] / cost[1]
    assert 0.1 < cut < 0.9, cut
    too_few = int(200 / cut) - 5  # steps left that would not repay a 200-step recompile
    assert not sp.fit_capacity(sharp, remaining_steps=too_few, recompile_steps=200)
    assert sp.plan.caps == caps
    assert sp.fit_capacity(sharp, remaining_steps=int(200 / cut) + 5, recompile_steps=200)
    assert sp.plan.caps != caps
    # a fresh model whose step has not run shrinks whatever the steps left
    _, _, fresh = _sparse()
    fresh.fit_capacity(half)
    assert fresh.fit_capacity(sharp, remaining_steps=1, recompile_steps=200)


def test_grows_before_overflow_and_keeps_current_masks():
    _, _, sp = _sparse()
    sp.fit_capacity(_probs(sp, lambda n: torch.full((n,), 0.3)))
    low = _prunable_caps(sp)
    # a block's expected count moved past (cap - 3 std): grow now, before any mask overflows
    assert sp.fit_capacity(_probs(sp, lambda n: torch.full((n,), 0.6)), shrink=False)
    assert all(h > l for h, l in zip(_prunable_caps(sp), low))
    assert sp.fits(sp.masks)


def test_full_blocks_never_rebuild_and_growth_is_geometric():
    """A block already at its full size cannot grow: probabilities whose mean + 3 std pass
    it must not rebuild the step (they once did, every step). Probabilities that creep up
    grow a block by at least 25% at a time, so a slow rise costs a few rebuilds."""
    torch.manual_seed(0)
    model = ConvBNNet(16, 24)
    x = torch.randn(4, 3, 8, 8)
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, capacity="auto")
    groups = sp.channel_graph.prunable_groups
    high = {g.id: torch.full((g.size,), 0.97) for g in groups}
    sp.fit_capacity(high)
    full = list(sp.plan.caps)
    rebuilds = sp.rebuilds
    for _ in range(5):
        assert not sp.fit_capacity(high, shrink=False)
    assert sp.rebuilds == rebuilds and sp.plan.caps == full
    sp2 = fxsparse.compile(ConvBNNet(16, 24), x, keep=0.1, compile=False, capacity="auto")
    before = sp2.rebuilds
    for p in torch.linspace(0.1, 0.9, 81):
        sp2.fit_capacity({g.id: torch.full((g.size,), float(p)) for g in groups}, shrink=False)
    assert 1 <= sp2.rebuilds - before <= 12  # one per 0.01 step of the probabilities before the fix


def test_overflowing_samples_are_redrawn_not_truncated():
    _, x, sp = _sparse()
    learner = StructureLearner(sp, keep=0.5, lr=0.05, seed=3, granularity="channel")
    # squeeze the capacities: the tail beyond them is now frequent
    sp._set_caps([int(0.55 * len(b.classes)) if p else c
                  for c, b, p in zip(sp.plan.caps, sp.plan.blocks, sp.plan.prunable)])
    masks = learner.sample(200)
    assert learner.redrawn > 0
    assert all(sp.fits(learner.as_group_masks(m)) for m in masks)
    # each kept channel still appears: a redraw is a fresh Bernoulli draw, not a cut
    assert bool((masks.float().mean(0) > 0.2).all())


def test_capacity_model_still_equals_export_after_rebuilds():
    model, x, sp = _sparse()
    sp.eval()
    for fill in (0.2, 0.9, 0.5):
        sp.fit_capacity(_probs(sp, lambda n: torch.full((n,), fill)))
        sp.sample_masks(fill)
        ref = export(model, sp.channel_graph, sp.masks).eval()
        torch.testing.assert_close(sp(x), ref(x), rtol=1e-5, atol=1e-6)


def _counted_step(model, sp):
    """(train step, list growing by one per compiled graph, targets): an eager backend counts
    the graphs without the cost of inductor."""
    calls = []

    def counting_backend(gm, example_inputs):
        calls.append(1)
        return gm.forward

    sp.compiler.backend = counting_backend
    step = sp.make_train_step(F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.01))
    return step, calls, torch.randint(0, 4, (8,))


@pytest.mark.slow  # inductor compiles: ~20 s
def test_rebuilds_beyond_recompile_limit_stay_compiled():
    """torch.compile keeps at most 8 graphs per function, then runs it eagerly without an
    error. Each capacity set compiles its own copies of the step functions (builds beyond
    the last few are dropped), so 12 capacity sets give 12 compiled steps, each three
    graphs: the gather, forward + backward, and the optimizer update."""
    limit = torch._dynamo.config.recompile_limit
    model, x, sp = _sparse(compile=True)
    step, calls, y = _counted_step(model, sp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(limit + 4):
            if k:  # a new capacity per block every step, as many growths would give
                sp._set_caps([10 + k if p else c for c, p in zip(sp.plan.caps, sp.plan.prunable)])
            sp.sample_masks(0.1)
            step(x, y)
    assert sp.rebuilds == limit + 3
    assert len(calls) == 3 * (limit + 4), len(calls)


@pytest.mark.slow  # inductor compiles: ~5 s
def test_capacities_that_come_back_reuse_their_compiled_graphs():
    """The builds of the last few capacity sets are kept: A -> B -> A -> B compiles A and B
    once each (3 graphs per set), every step's loss equals the exported model's for its
    mask; a set pushed out of the cache (size 2: A -> B -> C -> A) compiles again."""
    model, x, sp = _sparse(compile=True)
    step, calls, y = _counted_step(model, sp)
    caps = {k: [k if p else c for c, p in zip(sp.plan.caps, sp.plan.prunable)] for k in (12, 16, 20)}
    seen = []
    sp.sample_masks(0.1)  # masks that fit every capacity set below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in (12, 16, 12, 16, 20, 12):
            if k == 20:
                sp.build_cache_size = 2  # keeps the current set and one more: 12 is pushed out
            sp._set_caps(caps[k])
            seen.append((k, sp.reused_build))
            sp.sample_masks(0.1)
            with torch.no_grad():
                ref = F.cross_entropy(export(model, sp.channel_graph, sp.masks).train()(x), y)
            loss = step(x, y)
            torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
            seen[-1] += (len(calls),)
    assert [r for _, r, _ in seen] == [False, False, True, True, False, False]
    assert [n for _, _, n in seen] == [3, 6, 6, 6, 9, 12]


def test_learner_state_restores_capacities():
    model, x, sp = _sparse()
    learner = StructureLearner(sp, keep=0.5, lr=0.05, granularity="channel")
    with torch.no_grad():
        learner.scores.copy_((torch.arange(len(learner.scores)) % 2).double() * 0.98 + 0.01)
    learner._project()
    sp.fit_capacity(learner.group_probs())
    state = learner.state_dict()
    _, _, sp2 = _sparse()
    learner2 = StructureLearner(sp2, keep=0.5, lr=0.05, granularity="channel")
    assert sp2.plan.caps != sp.plan.caps
    learner2.load_state_dict(state)
    assert sp2.plan.caps == sp.plan.caps


def gather_index(layout, slot_class, slot_valid):
    """The definition, one capacity dim at a time: a fixed position gathers itself; a slot
    position gathers the right occurrence of the channel class that the slot holds now."""
    idx = layout.fixed.copy()
    valid = np.ones(len(layout), dtype=np.float32)
    for p, (slot, occ) in enumerate(zip(layout.gslot.tolist(), layout.occ.tolist())):
        if slot >= 0:
            idx[p] = layout.rows[int(slot_class[slot])][occ]
            valid[p] = slot_valid[slot]
    return idx, valid


@pytest.mark.parametrize("capacity", ["auto", "dynamic"])
def test_vectorised_gather_index_equals_the_per_dim_definition(capacity):
    """GatherIndex (all dims in one numpy pass) gives exactly the per-dim definition (dynamic
    capacities: at the present slots only), and keys with equal layouts (a conv's output
    dim, the BN after it) share one set of tensors."""
    from fxsparse.rewrite.layout import GatherIndex
    from fxsparse.step.index import MemberDim

    torch.manual_seed(0)
    model = zoo.create("resnet20")
    sp = fxsparse.compile(model, torch.randn(2, 3, 32, 32), keep=0.5, compile=False, capacity=capacity, align=4)
    layouts = {key: l for key, l in sp.build.indexer.layouts.items() if isinstance(key, MemberDim)}
    fast = GatherIndex(layouts)
    for _ in range(5):
        sp.sample_masks(0.5)
        slot_class, slot_valid = sp.plan.slot_classes(sp.current_masks)
        present = sp.plan.present_slots(slot_valid) if capacity == "dynamic" else None
        got = fast(slot_class, slot_valid, present)
        for key, layout in layouts.items():
            idx, valid = gather_index(layout, slot_class, slot_valid)
            if present is not None:
                at = (layout.gslot < 0) | present[np.maximum(layout.gslot, 0)]
                idx, valid = idx[at], valid[at]
            assert np.array_equal(got[key][0].numpy(), idx) and np.array_equal(got[key][1].numpy(), valid), key
            assert np.array_equal(got[key][2].numpy(), valid > 0), key
            assert got[key][3] == bool((valid > 0).all()), key
        distinct = {l.signature() for l in layouts.values()}
        assert len({id(v[0]) for v in got.values()}) == len(distinct) < len(layouts)
        conv, bn = MemberDim("layer1.0.conv1.weight", 0), MemberDim("layer1.0.bn1.weight", 0)
        assert got[conv][0] is got[bn][0] and got[conv][2] is got[bn][2]


def test_align_rounds_slots_up_and_padding_stays_exact():
    """align=8 (the GPU default) pads every prunable block to a multiple of 8 slots (or its
    full size); the extra slots are empty and the step still equals the exported model."""
    torch.manual_seed(0)
    model = ConvBNNet(64, 45)
    x = torch.randn(8, 3, 6, 6)
    # CPU defaults: oneDNN's channel block for dynamic capacities, no padding for static ones
    assert fxsparse.compile(model, x, keep=0.5, compile=False).align == cpu_channel_block()
    assert fxsparse.compile(model, x, keep=0.5, compile=False, capacity="auto").align == 1
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, align=8, capacity="auto")
    for cap, block, prunable in zip(sp.plan.caps, sp.plan.blocks, sp.plan.prunable):
        if prunable:
            assert cap % 8 == 0 or cap == len(block.classes)
    sp.eval()
    for _ in range(3):
        sp.sample_masks(0.5)
        ref = export(model, sp.channel_graph, sp.masks).eval()
        torch.testing.assert_close(sp(x), ref(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="align must be a positive int"):
        fxsparse.compile(model, x, keep=0.5, compile=False, align=0)


def test_empty_slots_are_zero_in_the_leaves_and_the_dense_weights_are_kept_for_the_update():
    """gather_leaves zeroes empty slots outside autograd (no validity multiply in the
    forward); the update must still see the dense values there, and the forward must equal
    the one that multiplies by validity."""
    from fxsparse.step.forward import forward_gathered, times_validity
    from fxsparse.step.gather import gather, real_slots
    from fxsparse.step.leaves import gather_leaves

    model, x, sp = _sparse()
    sp.train()
    sp.sample_masks(0.2)  # far below the capacities: many empty slots
    step = sp.step_inputs((x,))
    index = step.index
    assert index.empty == {n for n, slots in index.slots.items() if not all(s.real.all() for s in slots)}
    assert index.empty
    leaves = gather_leaves(step, sp.compiler)
    tensors, weights = leaves.tensors, leaves.weights
    dense = dict(model.named_parameters())
    zeroed = 0
    for name, w in weights.items():
        assert torch.equal(w, gather(dense[name].detach(), index.slots[name]))
        real = real_slots(index.slots[name], w.dim()).expand_as(w)
        leaf = tensors[name]
        assert leaf.is_leaf and leaf.requires_grad
        assert torch.equal(leaf.detach()[real], w[real])
        assert not leaf.detach()[~real].any()
        zeroed += int((~real).sum())
    assert zeroed > 0
    sp.eval()  # no running-statistic updates: both forwards see the same buffers
    scaled = times_validity({n: (weights[n] if n in weights else t) for n, t in tensors.items()}, index.slots,
                            step.build.buffer_names)
    torch.testing.assert_close(forward_gathered(step.build, tensors, index.buffers, (x,)),
                               forward_gathered(step.build, scaled, index.buffers, (x,)), rtol=0, atol=0)


@pytest.mark.parametrize("capacity", ["auto", "dynamic"])
def test_the_gather_equals_the_masked_reference(capacity):
    """The one gather (:func:`fxsparse.step.gather.gather_tensors`) of the dense tensors at a
    step's slots, run through the capacity model, equals the dense model with the pruned
    channels zeroed (the masked reference), empty slots and aligned padding included."""
    from fxsparse.rewrite.reference import masked_reference
    from fxsparse.step.forward import forward_dense

    torch.manual_seed(0)
    model = zoo.create("resnet20").double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, capacity=capacity, align=4).eval()
    for keep in (0.2, 0.5):
        sp.sample_masks(keep)
        step = sp.step_inputs((x,))
        with torch.no_grad():
            got = forward_dense(step.build, step.dense, step.index, False, x)
            ref = masked_reference(sp.channel_graph, sp.masks, x)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)


def test_exact_capacity_masks_have_no_empty_slot():
    torch.manual_seed(0)
    model = ConvBNNet(64, 48)
    x = torch.randn(8, 3, 6, 6)
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, capacity="exact")
    sp.masks = fxsparse.random_keep(sp.channel_graph, 0.5, torch.Generator().manual_seed(3))
    index = sp.step_index()
    assert index.empty == frozenset()
    assert all(bool(s.real.all()) for slots in index.slots.values() for s in slots)


@pytest.mark.slow  # inductor compiles: ~6 s
def test_one_models_rebuild_leaves_another_models_graphs_alone():
    """torch.compile caches graphs per code object: the step functions of every SparseModel
    are private copies, so a rebuild of one model (which drops its stale graphs) does not
    drop the other's, and the models do not share the recompile limit."""
    def counting(sp):
        calls = []

        def backend(gm, example_inputs):
            calls.append(1)
            return gm.forward

        sp.compiler.backend = backend
        return calls

    _, x, first = _sparse(compile=True)
    _, _, second = _sparse(compile=True)
    first_calls, second_calls = counting(first), counting(second)
    y = torch.randint(0, 4, (8,))
    steps = [sp.make_train_step(F.cross_entropy, torch.optim.SGD(sp.model.parameters(), lr=0.01, momentum=0.9))
             for sp in (first, second)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sp, step in zip((first, second), steps):
            sp.sample_masks(0.3)
            step(x, y)
        assert len(first_calls) == len(second_calls) == 3
        first._set_caps([c + 1 if p else c for c, p in zip(first.plan.caps, first.plan.prunable)])
        for _ in range(2):
            for sp, step in zip((first, second), steps):
                sp.sample_masks(0.3)
                step(x, y)
    assert len(first_calls) == 6  # its new capacities: three new graphs
    assert len(second_calls) == 3  # untouched
