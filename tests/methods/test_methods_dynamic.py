"""During-training methods: DropBack (+ compact store, channel variant), SET, RigL, and the
weight-mask / ERK helpers they share. Every check compares against an independent computation
(NumPy re-implementation of the w0 hash, sorted brute-force selections, hand-solved ERK)."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse import zoo
from fxsparse.methods import TrainState, create
from fxsparse.methods.dropback import DropBackStore
from fxsparse.methods.rigl import rigl_drop_fraction
from fxsparse.methods.unstructured import (apply_weight_masks, dense_state_dict, density_counts, erk_densities,
                                           get_tensor, remove_weight_masks, topk_exact)

pytestmark = pytest.mark.usefixtures("single_thread")

MLP = "mlp_784_100_100_10"


def mlp(seed=0):
    torch.manual_seed(seed)
    return zoo.create(MLP, num_classes=10, in_chans=1)


def batches(n, bs=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 1, 28, 28, generator=g), torch.randint(0, 10, (bs,), generator=g)) for _ in range(n)]


def make_state(model, opt=None, seed=0, total_steps=100, steps_per_epoch=10, graph=None, data=None):
    data = data or batches(1)
    return TrainState(model=model, graph=graph, loss_fn=F.cross_entropy, batches=lambda: iter(data), num_classes=10,
                      example_inputs=(data[0][0],), generator=torch.Generator().manual_seed(seed), optimizer=opt,
                      total_steps=total_steps, steps_per_epoch=steps_per_epoch)


def sgd_step(model, opt, x, y):
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


# ----------------------------------------------------------------------------- independent w0 (NumPy)

M32 = 0xFFFFFFFF


def _mix_int(x):
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def _mix_np(x):
    x = x.astype(np.uint64) & np.uint64(M32)
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(M32)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & np.uint64(M32)
    return x ^ (x >> np.uint64(16))


def np_w0(seed, pindex, bound, numel):
    """Uniform w0 of the DropBack spec, re-implemented: keys from (seed, p, stream 0), two lowbias32 rounds."""
    k = _mix_int((seed & M32) ^ _mix_int(((seed >> 32) & M32) ^ 0x9E3779B9))
    k1 = _mix_int(k ^ ((pindex * 0x85EBCA6B + 0x27D4EB2F) & M32))
    k2 = _mix_int(k1 ^ 0x165667B1)
    i = np.arange(numel, dtype=np.uint64)
    h = _mix_np(_mix_np(i ^ np.uint64(k1)) ^ np.uint64(k2))
    u = (h >> np.uint64(8)).astype(np.int64)
    m = (2 * u + 1 - (1 << 24)).astype(np.float32)
    return m * (np.float32(bound) * np.float32(2.0 ** -24))


def mlp_w0(model, seed):
    """{name: float32 array} of every MLP parameter's regenerated init (torch-default uniform bounds)."""
    out = {}
    mods = dict(model.named_modules())
    for p_i, (name, p) in enumerate(model.named_parameters()):
        lin = mods[name.rsplit(".", 1)[0]]
        out[name] = np_w0(seed, p_i, 1.0 / math.sqrt(lin.in_features), p.numel()).reshape(p.shape)
    return out


def brute_topk(score, k):
    """Indices of the k largest, ties to the lower index, by a full sort."""
    order = np.lexsort((np.arange(len(score)), -score))
    return set(order[:k].tolist())


# ----------------------------------------------------------------------------- DropBack

def test_dropback_resets_untracked_to_regenerated_init_and_exact_topk():
    model = mlp()
    data = batches(50)
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    m = create("dropback", keep=0.05, seed=2 ** 40 + 12345)
    st = make_state(model, opt, data=data)
    m.init(st)
    names = [n for n, _ in model.named_parameters()]
    w0 = mlp_w0(model, 2 ** 40 + 12345)
    for n, p in model.named_parameters():  # init() re-initialised the model from the generator
        assert np.array_equal(p.detach().numpy(), w0[n]), n
    b = 1 / math.sqrt(784)
    assert np.abs(w0["features.0.weight"]).max() < b and abs(w0["features.0.weight"].std() - b / math.sqrt(3)) < 0.01 * b
    N = sum(p.numel() for p in model.parameters())
    k = math.floor(0.05 * N + 0.5)  # 4480.5 -> 4481: round half up, as documented
    for step, (x, y) in enumerate(data):
        sgd_step(model, opt, x, y)
        a = np.concatenate([np.abs(p.detach().numpy() - w0[n]).ravel() for n, p in model.named_parameters()])
        expect = brute_topk(a, k)
        m.after_step(st)
        tracked = np.concatenate([m.tracked_masks()[n].numpy().ravel() for n in names])
        assert set(np.flatnonzero(tracked).tolist()) == expect, step
    moved = 0
    for n, p in model.named_parameters():
        w, t = p.detach().numpy(), m.tracked_masks()[n].numpy()
        assert np.array_equal(w[~t], w0[n][~t]), n  # bit-exact reset to the regenerated init
        moved += int((w != w0[n]).sum())
    assert moved == k  # exactly k weights differ from w0


def test_topk_exact_against_sorted_brute_force_with_ties():
    g = torch.Generator().manual_seed(3)
    for n in (1, 7, 100, 1000):
        score = torch.randint(0, 5, (n,), generator=g).float()  # many ties
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            got = topk_exact(score, k).tolist()
            assert got == sorted(got) and set(got) == brute_topk(score.numpy(), k)
            low = set(topk_exact(score, k, largest=False).tolist())
            assert low == brute_topk(-score.numpy(), k)


@pytest.mark.parametrize("momentum,lr", [(0.0, 0.4), (0.9, 0.05)])
def test_dropback_store_memory_and_same_training_as_dense(momentum, lr):
    data = batches(25, bs=100)
    model_a, model_b = mlp(1), mlp(2)
    opt = torch.optim.SGD(model_a.parameters(), lr=lr, momentum=momentum)
    m = create("dropback", keep=0.1, seed=77)
    st = make_state(model_a, opt, data=data)
    m.init(st)
    store = DropBackStore(model_b, 0.1, seed=77, lr=lr, momentum=momentum)
    loss_a, loss_b = [], []
    for x, y in data:
        loss_a.append(sgd_step(model_a, opt, x, y))
        m.after_step(st)
        model_b.zero_grad()
        lb = F.cross_entropy(model_b(x), y)
        lb.backward()
        store.step()
        loss_b.append(lb.detach())
    assert all(torch.equal(a, b) for a, b in zip(loss_a, loss_b))  # bit-identical training
    ta, tb = m.tracked_masks(), store.tracked_masks()
    assert all(torch.equal(ta[n], tb[n]) for n in ta)
    assert all(torch.equal(pa, pb) for pa, pb in zip(model_a.parameters(), model_b.parameters()))
    mem = store.memory()
    N, k = 89610, 8961
    per = 4 + 4 + (4 if momentum else 0)  # int32 index + float32 value (+ float32 momentum)
    assert mem["tracked"] == k and mem["total"] == N
    assert mem["held_bytes"] == 8 + k * per
    assert mem["dense_bytes"] == N * 4 * (2 if momentum else 1)
    assert mem["ratio"] == pytest.approx(k * per / (N * 4 * (2 if momentum else 1)), abs=1e-4)
    assert mem["ratio"] < (0.21 if not momentum else 0.16)


def test_dropback_layer_scope_and_kaiming_normal_init():
    data = batches(4)
    model_a, model_b = mlp(1), mlp(2)
    opt = torch.optim.SGD(model_a.parameters(), lr=0.4)
    m = create("dropback", keep=0.1, seed=11, scope="layer", init="kaiming_normal")
    st = make_state(model_a, opt, data=data)
    m.init(st)
    w = model_a.features[0].weight.detach()
    assert abs(w.std().item() / math.sqrt(2 / 784) - 1) < 0.02 and abs(w.mean().item()) < 1e-3
    assert not model_a.features[0].bias.any() and not model_a.classifier.bias.any()
    store = DropBackStore(model_b, 0.1, seed=11, lr=0.4, scope="layer", init="kaiming_normal")
    for x, y in data:
        la = sgd_step(model_a, opt, x, y)
        m.after_step(st)
        model_b.zero_grad()
        lb = F.cross_entropy(model_b(x), y)
        lb.backward()
        store.step()
        assert torch.equal(la, lb.detach())
    for n, p in model_a.named_parameters():
        t = m.tracked_masks()[n]
        assert int(t.sum()) == math.floor(0.1 * p.numel() + 0.5)  # per tensor budget
        assert torch.equal(t, store.tracked_masks()[n])


def test_dropback_freeze_keeps_tracked_set():
    model = mlp()
    data = batches(15)
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    m = create("dropback", keep=0.02, seed=5, freeze_after_steps=5)
    st = make_state(model, opt, data=data)
    m.init(st)
    w0 = mlp_w0(model, 5)
    frozen = None
    for i, (x, y) in enumerate(data):
        sgd_step(model, opt, x, y)
        m.after_step(st)
        if i == 4:
            frozen = m.tracked_masks()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
        if i > 4:
            tm = m.tracked_masks()
            assert all(torch.equal(tm[n], frozen[n]) for n in tm)
    changed = 0
    for n, p in model.named_parameters():
        w = p.detach().numpy()
        assert np.array_equal(w[~frozen[n].numpy()], w0[n][~frozen[n].numpy()])
        changed += int((p.detach() != before[n])[frozen[n]].sum())
    assert changed > 0  # tracked weights still train after the freeze
    # without the freeze the set keeps moving on the same run
    model2 = mlp()
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.4)
    m2 = create("dropback", keep=0.02, seed=5)
    st2 = make_state(model2, opt2, data=data)
    m2.init(st2)
    for i, (x, y) in enumerate(data):
        sgd_step(model2, opt2, x, y)
        m2.after_step(st2)
    assert any(not torch.equal(m2.tracked_masks()[n], frozen[n]) for n in frozen)


def test_dropback_channel_variant_resets_whole_channels():
    model = mlp()
    data = batches(6)
    graph = fxsparse.analyze(model, (data[0][0],))
    opt = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9)
    m = create("dropback_channel", keep=0.3, seed=9)
    st = make_state(model, opt, data=data, graph=graph)
    m.init(st)
    w0 = {n: torch.from_numpy(v) for n, v in mlp_w0(model, 9).items()}
    params = dict(model.named_parameters())
    groups = [g for g in graph.groups if g.prunable]
    C = sum(g.size for g in groups)
    k = round(0.3 * C)
    for x, y in data:
        sgd_step(model, opt, x, y)
        # independent normalised score: mean |W - W0| over each channel's entries
        scores = []
        for g in groups:
            for j in range(g.size):
                tot, cnt = 0.0, 0
                for mem in g.members:
                    d = (params[mem.param].detach() - w0[mem.param]).abs().double()
                    sl = d.index_select(mem.dim, torch.as_tensor(mem.index[j]))
                    tot += sl.sum().item()
                    cnt += sl.numel()
                scores.append(tot / cnt)
        expect = brute_topk(np.array(scores), k)
        m.after_step(st)
        tracked = torch.cat([m.tracked_channels()[g.id] for g in groups])
        assert set(tracked.nonzero().view(-1).tolist()) == expect
    # every untracked channel is back at W0 in every member (rows, bias entries, consumer columns)
    off = 0
    n_reset = 0
    for g in groups:
        for j in range(g.size):
            if not tracked[off + j]:
                for mem in g.members:
                    ix = torch.as_tensor(mem.index[j])
                    assert torch.equal(params[mem.param].detach().index_select(mem.dim, ix),
                                       w0[mem.param].index_select(mem.dim, ix))
                    buf = opt.state[params[mem.param]]["momentum_buffer"]
                    assert not buf.index_select(mem.dim, ix).any()
                n_reset += 1
        off += g.size
    assert n_reset == C - k
    # a weight whose row and column channels are both tracked did move
    r = int(m.tracked_channels()[groups[1].id].nonzero()[0])
    c = int(m.tracked_channels()[groups[0].id].nonzero()[0])
    assert params["features.2.weight"][r, c] != w0["features.2.weight"][r, c]
    assert m.channel_keep() is None and m.weight_masks() is None


# ----------------------------------------------------------------------------- SET

def _set_brute_drop(w, mask, zeta):
    w, mask = w.ravel(), mask.ravel()
    idx = np.arange(len(w))
    pos, neg = idx[mask & (w > 0)], idx[mask & (w < 0)]
    pos = pos[np.lexsort((pos, w[pos]))][: int(math.floor(zeta * len(pos)))]
    neg = neg[np.lexsort((neg, -w[neg]))][: int(math.floor(zeta * len(neg)))]
    return set(pos.tolist()) | set(neg.tolist()) | set(idx[mask & (w == 0)].tolist())


@pytest.mark.parametrize("grow_init", ["zeros", "uniform"])
def test_set_drop_regrow_exact(grow_init):
    model = mlp()
    data = batches(12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = create("set", keep=0.1, zeta=0.3, grow_init=grow_init)
    st = make_state(model, opt, data=data, total_steps=12, steps_per_epoch=3)
    m.init(st)
    names = ["features.0.weight", "features.2.weight", "classifier.weight"]
    counts = {n: int(m.weight_masks()[n].sum()) for n in names}
    assert sum(counts.values()) == round(0.1 * (78400 + 10000 + 1000))
    for epoch in range(4):
        for x, y in data[3 * epoch: 3 * epoch + 3]:
            sgd_step(model, opt, x, y)
        before = {n: m.weight_masks()[n].clone() for n in names}
        weights = {n: get_tensor(model, n).detach().numpy().copy() for n in names}
        gen = torch.Generator()
        gen.set_state(st.generator.get_state())
        m.end_epoch(st)
        if epoch == 3:  # no rewiring after the last epoch
            assert all(torch.equal(m.weight_masks()[n], before[n]) for n in names)
            continue
        for n in names:
            mask = m.weight_masks()[n]
            assert int(mask.sum()) == counts[n]  # density exactly constant
            drop = _set_brute_drop(weights[n], before[n].numpy(), 0.3)
            assert set(m.last_update[n]["dropped"].tolist()) == drop
            after_drop = before[n].view(-1).clone()
            after_drop[list(drop)] = False
            cand = (~after_drop).nonzero().view(-1)
            grown = cand[torch.randperm(cand.numel(), generator=gen)[: len(drop)]]
            vals = get_tensor(model, n).detach().view(-1)[grown]
            if grow_init == "zeros":
                assert not vals.any()
            else:
                W = get_tensor(model, n)
                lim = math.sqrt(6 / (W.shape[0] + W.shape[1]))
                assert vals.abs().max() <= lim and vals.abs().min() > 0
                torch.rand(len(drop), generator=gen, dtype=torch.float64)  # keep the replay in step
            assert set(grown.tolist()) == set(m.last_update[n]["grown"].tolist())
            assert torch.equal(mask.view(-1), after_drop.index_fill(0, grown, True))
            orig = m._orig[n]
            assert not orig.detach()[~mask].any()  # parameter is 0 wherever the mask is 0
            buf = opt.state[orig]["momentum_buffer"].view(-1)
            assert not buf[grown].any()


# ----------------------------------------------------------------------------- RigL

def test_rigl_cosine_schedule():
    assert rigl_drop_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert rigl_drop_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert rigl_drop_fraction(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert rigl_drop_fraction(100, 0.3, 100) == 0 and rigl_drop_fraction(130, 0.3, 100) == 0
    m = create("rigl", keep=0.1)
    m.init(make_state(mlp(), total_steps=1000))
    assert m.t_end == 750 and [t for t in range(1, 1001) if m.is_update_step(t)] == list(range(100, 750, 100))


def test_rigl_drop_grow_exact():
    model = mlp()
    data = batches(12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    m = create("rigl", keep=0.1, delta_t=2, alpha=0.3)
    st = make_state(model, opt, data=data, total_steps=12)  # T_end = 9: updates at t = 2, 4, 6, 8
    m.init(st)
    assert m.t_end == 9
    names = ["features.0.weight", "features.2.weight", "classifier.weight"]
    counts = {n: int(m.weight_masks()[n].sum()) for n in names}
    updates = 0
    for t, (x, y) in enumerate(data, start=1):
        # independent dense gradient of the effective weights (before this step's update)
        plain = mlp(3)
        plain.load_state_dict(dense_state_dict(model))
        plain.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        grads = {n: get_tensor(plain, n).grad for n in names}
        before = {n: m.weight_masks()[n].clone() for n in names}
        sgd_step(model, opt, x, y)
        weights = {n: get_tensor(model, n).detach().clone() for n in names}
        m.after_step(st)
        for n in names:
            mask = m.weight_masks()[n]
            assert int(mask.sum()) == counts[n]
        if t % 2 or t >= 9:
            assert all(torch.equal(m.weight_masks()[n], before[n]) for n in names)
            continue
        updates += 1
        frac = 0.3 / 2 * (1 + math.cos(math.pi * t / 9))
        assert m.last_update["fraction"] == pytest.approx(frac)
        for n in names:
            old = before[n].view(-1).numpy()
            w = weights[n].abs().view(-1).numpy()
            act = np.flatnonzero(old)
            nd = int(math.floor(frac * len(act)))
            drop = act[np.lexsort((act, w[act]))][:nd]
            assert set(m.last_update[n]["dropped"].tolist()) == set(drop.tolist())
            after = old.copy()
            after[drop] = False
            inact = np.flatnonzero(~after)
            g = grads[n].abs().view(-1).numpy()
            grow = inact[np.lexsort((inact, -g[inact]))][:nd]
            assert set(m.last_update[n]["grown"].tolist()) == set(grow.tolist())
            after[grow] = True
            assert np.array_equal(m.weight_masks()[n].view(-1).numpy(), after)
            new = [i for i in grow if not old[i]]
            assert len(new) > 0
            assert not get_tensor(model, n).detach().view(-1)[new].any()  # grown weights start at 0
            assert not opt.state[m._orig[n]]["momentum_buffer"].view(-1)[new].any()
            kept_regrown = [i for i in grow if old[i]]  # dropped and regrown: unchanged
            assert torch.equal(get_tensor(model, n).detach().view(-1)[kept_regrown], weights[n].view(-1)[kept_regrown])
    assert updates == 4 and m.updates == 4


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("order", ["trainer", "init_first"])
@pytest.mark.parametrize("name,opts", [("rigl", {"delta_t": 2}), ("rigl", {"delta_t": 7}), ("set", {}),
                                       ("dropback", {"freeze_after_steps": 8}), ("dropback_channel", {})])
def test_resume_bit_identical(name, opts, order):
    """Checkpoint after 6 of 12 steps, resume in a fresh process-like setup, same losses and weights.
    order="trainer": load_state_dict without init, then apply_weight_masks(weight_masks()) and
    model/optimizer/generator state (what fxsparse.training.trainer does); "init_first": init, then load.
    rigl with delta_t=7: the first step after the resume is a mask update (its dense gradient
    must be captured although no hook ran before that forward)."""
    data = batches(12)
    total, spe = 12, 2

    def run(model, m, opt, st, part):
        losses = []
        for i, (x, y) in enumerate(part):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            m.after_backward(st)
            opt.step()
            m.after_step(st)
            losses.append(loss.detach())
            if (i + 1) % spe == 0:
                m.end_epoch(st)
        return losses

    model = mlp(0)
    m = create(name, keep=0.2, **opts)
    st = make_state(model, None, data=data, total_steps=total, steps_per_epoch=spe, seed=1)
    m.init(st)
    apply_weight_masks(model, m.weight_masks())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    st.optimizer = opt
    run(model, m, opt, st, data[:6])
    ckpt = copy.deepcopy({"m": m.state_dict(), "model": model.state_dict(), "opt": opt.state_dict(),
                          "gen": st.generator.get_state()})
    ref = run(model, m, opt, st, data[6:])
    if name == "rigl":
        assert m.updates >= 1

    model2 = mlp(5)
    m2 = create(name, keep=0.2, **opts)
    st2 = make_state(model2, None, data=data, total_steps=total, steps_per_epoch=spe, seed=99)
    if order == "init_first":
        m2.init(st2)
        m2.load_state_dict(ckpt["m"])
    else:
        m2.load_state_dict(ckpt["m"])
    apply_weight_masks(model2, m2.weight_masks())
    model2.load_state_dict(ckpt["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt["opt"])
    st2.optimizer = opt2
    st2.generator.set_state(ckpt["gen"])
    got = run(model2, m2, opt2, st2, data[6:])
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    assert m.state_dict().keys() == m2.state_dict().keys()


# ----------------------------------------------------------------------------- ERK and masks

def test_erk_densities_hand_computed():
    model = mlp()
    names = ["features.0.weight", "features.2.weight", "classifier.weight"]
    sizes = {"features.0.weight": 78400, "features.2.weight": 10000, "classifier.weight": 1000}
    raw = {"features.0.weight": 884 / 78400, "features.2.weight": 200 / 10000, "classifier.weight": 110 / 1000}
    # keep 0.1: nothing capped, eps = 0.1 * 89400 / (884 + 200 + 110)
    d = erk_densities(model, names, 0.1)
    eps = 8940 / 1194
    for n in names:
        assert d[n] == pytest.approx(eps * raw[n], rel=1e-12)
    # keep 0.3: the classifier would get 2.47 > 1, so it is dense and eps is re-solved over the rest
    d = erk_densities(model, names, 0.3)
    eps = (0.3 * 88400 - 0.7 * 1000) / (884 + 200)
    assert d["classifier.weight"] == 1.0
    assert d["features.0.weight"] == pytest.approx(eps * raw["features.0.weight"], rel=1e-12)
    assert d["features.2.weight"] == pytest.approx(eps * raw["features.2.weight"], rel=1e-12)
    for keep in (0.01, 0.1, 0.3, 0.5, 0.9, 1.0):
        d = erk_densities(model, names, keep)
        assert sum(d[n] * sizes[n] for n in names) == pytest.approx(keep * 89400, rel=1e-12)
        assert all(0 < v <= 1 for v in d.values())
        c = density_counts(sizes, d, keep)
        assert sum(c.values()) == round(keep * 89400) and all(0 <= c[n] <= sizes[n] for n in names)
    # ERK on a conv: raw = sum(shape) / prod(shape), power scale applies
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3))
    d = erk_densities(conv, ["0.weight", "1.weight"], 0.2, erk_power_scale=0.5)
    r0, r1 = (17 / 216) ** 0.5, (30 / 1152) ** 0.5
    e = 0.2 * (216 + 1152) / (r0 * 216 + r1 * 1152)
    assert d["0.weight"] == pytest.approx(e * r0) and d["1.weight"] == pytest.approx(e * r1)


def _masked_model(seed=0):
    model = mlp(seed)
    g = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in model.named_parameters() if p.dim() == 2}
    return model, masks


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_weight_masks_stay_zero_and_state_dict_round_trip(opt_name):
    model, masks = _masked_model()
    apply_weight_masks(model, masks)
    apply_weight_masks(model, masks)  # idempotent: no stacked parametrizations
    assert all(len(model.get_submodule(n.rsplit(".", 1)[0]).parametrizations["weight"]) == 1 for n in masks)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) if opt_name == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2))
    for x, y in batches(5):
        sgd_step(model, opt, x, y)
        for n, mk in masks.items():
            assert not get_tensor(model, n).detach()[~mk].any()
            assert get_tensor(model, n).detach()[mk].ne(0).all()
            orig = model.get_submodule(n.rsplit(".", 1)[0]).parametrizations["weight"].original
            assert not orig.detach()[~mk].any()
    x = batches(1, seed=7)[0][0]
    out = model(x)
    sd = copy.deepcopy(model.state_dict())
    model2, masks2 = _masked_model(3)
    apply_weight_masks(model2, masks2)
    model2.load_state_dict(sd)
    assert torch.equal(model2(x), out)
    assert all(torch.equal(get_tensor(model2, n), get_tensor(model, n)) for n in masks)
    plain = mlp(4)
    plain.load_state_dict(dense_state_dict(model))
    assert torch.equal(plain(x), out)
    remove_weight_masks(model)
    assert sorted(n for n, _ in model.named_parameters()) == sorted(n for n, _ in plain.named_parameters())
    assert torch.equal(model(x), out)
    for n, mk in masks.items():
        assert isinstance(get_tensor(model, n), nn.Parameter) and not get_tensor(model, n)[~mk].any()


# ----------------------------------------------------------------------------- bad input

class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.gain = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.fc(x) * self.gain


@pytest.mark.parametrize("name", ["dropback", "dropback_channel", "set", "rigl"])
@pytest.mark.parametrize("keep", [0, 1.5, -0.1, float("nan"), "0.5", None])
def test_bad_keep(name, keep):
    with pytest.raises(ValueError, match="keep"):
        create(name, keep=keep)


@pytest.mark.parametrize("name,opts,match", [
    ("dropback", {"bogus": 1}, "unknown option.*bogus.*known options"),
    ("dropback", {"scope": "everywhere"}, "scope"),
    ("dropback", {"init": "xavier"}, "init"),
    ("dropback", {"freeze_after_steps": 0}, "freeze_after_steps"),
    ("dropback_channel", {"freeze_after_epochs": 1.5}, "freeze_after_epochs"),
    ("set", {"zeta": 1.5}, "zeta"),
    ("set", {"distribution": "er"}, "distribution"),
    ("set", {"grow_init": "ones"}, "grow_init"),
    ("rigl", {"delta_t": 0}, "delta_t"),
    ("rigl", {"alpha": -0.1}, "alpha"),
    ("rigl", {"end_fraction": 0}, "end_fraction"),
    ("rigl", {"t_end": 2.5}, "t_end"),
])
def test_bad_options(name, opts, match):
    with pytest.raises(ValueError, match=match):
        create(name, keep=0.5, **opts)


def test_bad_input_at_init_and_masks():
    with pytest.raises(ValueError, match="exclude"):
        create("dropback", keep=0.5).init(make_state(_Scaled(), data=[(torch.randn(2, 4), torch.zeros(2))]))
    m = create("dropback", keep=0.5, exclude=["gain"])  # the suggested fix works
    model = _Scaled()
    m.init(make_state(model, data=[(torch.randn(2, 4), torch.zeros(2))]))
    assert torch.equal(model.gain.detach(), torch.ones(2))
    with pytest.raises(ValueError, match="exclude names unknown"):
        create("rigl", keep=0.5, exclude=["nope.weight"]).init(make_state(mlp()))
    with pytest.raises(ValueError, match="tracks 0"):
        create("dropback", keep=1e-9).init(make_state(mlp()))
    model = mlp()
    with pytest.raises(ValueError, match="no parameter 'features.9.weight'"):
        apply_weight_masks(model, {"features.9.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        apply_weight_masks(model, {"features.0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="density"):
        erk_densities(model, ["features.0.weight"], 0)
