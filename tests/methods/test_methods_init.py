"""Prune-at-initialisation and magnitude-style methods (SNIP, GraSP, SynFlow, magnitude,
L1-filter, network slimming, random) and their shared selection helpers, each checked
against an independent computation."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse import zoo
from fxsparse.methods import TrainState, create, get_method
from fxsparse.methods.grasp import class_balanced_sample, grasp_hg
from fxsparse.methods.select import group_scores, keep_top, prunable_weights, weight_top
from fxsparse.methods.synflow import synflow_scores
from rule_models import Layers

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- models

class TinyBN(Layers):
    """2 conv + BN + linear: every channel method (slimming included) applies."""

    def __init__(self):
        super().__init__(c1=nn.Conv2d(3, 8, 3, padding=1), b1=nn.BatchNorm2d(8), c2=nn.Conv2d(8, 12, 3, padding=1),
                         b2=nn.BatchNorm2d(12), fc=nn.Linear(12, 10))

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class TinyRes(Layers):
    """A residual stream coupling two BN layers (b0, b2) in one channel group."""

    def __init__(self):
        super().__init__(c0=nn.Conv2d(3, 8, 3, padding=1), b0=nn.BatchNorm2d(8), c1=nn.Conv2d(8, 6, 3, padding=1),
                         b1=nn.BatchNorm2d(6), c2=nn.Conv2d(6, 8, 3, padding=1), b2=nn.BatchNorm2d(8),
                         fc=nn.Linear(8, 10))

    def forward(self, x):
        x = F.relu(self.b0(self.c0(x)))
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + x)
        return self.fc(x.mean((2, 3)))


def _init_bn(model, seed=0):
    """Non-trivial BN affine parameters (init makes them all 1 / 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def make_state(model, shape, *, n_batches=3, batch=20, seed=0, dtype=torch.float32, classes=10):
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(batch, *shape, generator=g, dtype=dtype), torch.randperm(batch, generator=g) % classes)
            for _ in range(n_batches)]
    x = data[0][0][:2]
    graph = fxsparse.analyze(model, (x,))
    return TrainState(model=model, graph=graph, loss_fn=F.cross_entropy, batches=lambda: iter(data),
                      num_classes=classes, example_inputs=(x,), generator=torch.Generator().manual_seed(seed),
                      total_steps=10)


def tiny_state(**kw):
    torch.manual_seed(0)
    return make_state(_init_bn(TinyBN()), (3, 8, 8), **kw)


def lenet_state(**kw):
    torch.manual_seed(1)
    return make_state(zoo.create("lenet5", num_classes=10, in_chans=1), (1, 28, 28), **kw)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()])


def assert_unchanged(model, snap):
    sd, modes, flags = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), f"{k} changed"
    assert [m.training for m in model.modules()] == modes
    for p, (rg, grad) in zip(model.parameters(), flags):
        assert p.requires_grad == rg
        assert (p.grad is None) == (grad is None) and (grad is None or torch.equal(p.grad, grad))


def gate_gradients(model, graph, x, y):
    """d loss / d alpha_j for a gate alpha scaling every parameter entry of channel j:
    an independent route to the channel-level SNIP score sum_group g * theta."""
    params = dict(model.named_parameters())
    buffers = {n for n, _ in model.named_buffers()}
    out = {}
    for g in graph.prunable_groups:
        alpha = torch.ones(g.size, dtype=torch.float64, requires_grad=True)
        new = {}
        for m in g.members:
            if m.param in buffers:
                continue
            p = new.get(m.param, params[m.param].double())
            pieces = torch.ones(p.shape[m.dim], dtype=torch.float64)
            pos = torch.cat([torch.as_tensor(ix) for ix in m.index])
            chan = torch.cat([torch.full((len(ix),), j) for j, ix in enumerate(m.index)])
            scale = pieces.index_put((pos,), alpha[chan])
            new[m.param] = p * scale.view([-1 if d == m.dim else 1 for d in range(p.dim())])
        tensors = {n: new.get(n, t.double()) for n, t in params.items()}
        loss = F.cross_entropy(torch.func.functional_call(model.double(), tensors, (x.double(),)), y)
        model.float()
        out[g.id] = torch.autograd.grad(loss, alpha)[0]
    return out


# ------------------------------------------------------------------------------- SNIP

def test_snip_weight_scores_match_autograd_and_density_is_exact():
    st = tiny_state()
    model = st.model
    snap = snapshot(model)
    m = create("snip", 0.3, level="weight")
    m.init(st)
    assert_unchanged(model, snap)
    x, y = next(st.batches())
    ref = copy.deepcopy(model).train()
    names = prunable_weights(model)
    params = dict(ref.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(ref(x), y), [params[n] for n in names])
    hand = {n: (g * params[n]).abs().detach() for n, g in zip(names, grads)}
    total = sum(float(v.sum()) for v in hand.values())
    for n in names:
        torch.testing.assert_close(m.scores[n].float(), hand[n] / total, rtol=1e-4, atol=1e-9)
    masks = m.weight_masks()
    n_all = sum(v.numel() for v in masks.values())
    assert sum(int(v.sum()) for v in masks.values()) == round(0.3 * n_all)
    kept = torch.cat([m.scores[n][masks[n]] for n in names])
    dropped = torch.cat([m.scores[n][~masks[n]] for n in names])
    assert kept.min() >= dropped.max()
    assert m.channel_keep() is None


def test_snip_channel_score_is_the_gate_gradient():
    st = lenet_state()
    m = create("snip", 0.4)  # channel level by default
    m.init(st)
    x, y = next(st.batches())
    gates = gate_gradients(st.model, st.graph, x, y)
    total = sum(float(v.abs().sum()) for v in gates.values())
    top = max(float(v.abs().max()) for v in gates.values()) / total
    for gid, v in gates.items():  # float32 scoring vs a float64 reference: cancellation in the sums
        torch.testing.assert_close(m.scores[gid], v.abs() / total, rtol=1e-4, atol=1e-5 * top)
    keep = m.channel_keep()
    assert sum(int(k.sum()) for k in keep.values()) == round(0.4 * st.graph.num_prunable_channels)
    assert m.weight_masks() is None


# ------------------------------------------------------------------------------ GraSP

def test_grasp_hessian_gradient_product_matches_finite_difference():
    torch.manual_seed(2)
    model = _init_bn(TinyBN()).double()
    x = torch.randn(12, 3, 6, 6, dtype=torch.float64)
    y = torch.arange(12) % 10
    names = prunable_weights(model)
    T = 200.0
    g, hg = grasp_hg(model, x, y, F.cross_entropy, names, temperature=T, train_mode=True)
    base = {n: t.detach().clone() for n, t in model.named_parameters()}

    def grad_at(shift):
        tensors = {n: (t + shift[n]).requires_grad_(n in names) if n in shift else t for n, t in base.items()}
        loss = F.cross_entropy(torch.func.functional_call(model, tensors, (x,)) / T, y)
        return torch.autograd.grad(loss, [tensors[n] for n in names])

    g0 = grad_at({n: torch.zeros_like(base[n]) for n in names})
    for n, gi in zip(names, g0):
        torch.testing.assert_close(g[n], gi, rtol=1e-10, atol=1e-14)
    v = {n: g[n] for n in names}
    vnorm = math.sqrt(sum(float((t ** 2).sum()) for t in v.values()))
    eps = 1e-5 / vnorm  # a step of norm 1e-5: ReLU kinks are not crossed
    gp = grad_at({n: eps * v[n] for n in names})
    gm = grad_at({n: -eps * v[n] for n in names})
    fd = torch.cat([((a - b) / (2 * eps)).flatten() for a, b in zip(gp, gm)])
    got = torch.cat([hg[n].flatten() for n in names])
    assert got.abs().max() > 0
    assert float((got - fd).norm() / fd.norm()) < 1e-5


def test_grasp_class_balanced_sample():
    g = torch.Generator().manual_seed(0)
    # imbalanced stream: class 3 is rare, class 9 frequent
    batches = []
    for _ in range(20):
        y = torch.randint(0, 10, (16,), generator=g)
        y[:4] = 9
        batches.append((torch.randn(16, 2, generator=g), y))
    x, y = class_balanced_sample(iter(batches), 10, 5)
    assert len(x) == len(y) == 50
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 5))
    assert torch.equal(y, torch.arange(10).repeat_interleave(5))  # ordered by class, like the authors' code
    # each sample kept with its own label: the first class-3 input of the stream comes first
    first3 = next(b[0][b[1] == 3][0] for b in batches if (b[1] == 3).any())
    assert torch.equal(x[15], first3)
    with pytest.raises(ValueError, match="samples of every class"):
        class_balanced_sample(iter(batches[:1]), 10, 5)


@pytest.mark.parametrize("level", ["weight", "channel"])
def test_grasp_keeps_the_lowest_scores(level):
    st = tiny_state(n_batches=6)
    snap = snapshot(st.model)
    m = create("grasp", 0.4, level=level, samples_per_class=4)
    m.init(st)
    assert_unchanged(st.model, snap)
    if level == "weight":
        masks = m.weight_masks()
        kept = torch.cat([m.scores[n][masks[n]] for n in masks])
        dropped = torch.cat([m.scores[n][~masks[n]] for n in masks])
        assert len(kept) == round(0.4 * (len(kept) + len(dropped)))
        assert kept.max() <= dropped.min()
        # the scores are -theta * Hg for the weights (normalised by |sum|)
        x, y = class_balanced_sample(st.batches(), 10, 4)
        _, hg = grasp_hg(st.model, x, y, F.cross_entropy, list(masks), temperature=200.0)
        raw = {n: -st.model.get_parameter(n).detach() * hg[n] for n in masks}
        # summed in float64: the raw scores cancel, and a float32 sum of them was 1.7e-4 off on an AVX2 CPU
        norm = abs(sum(float(v.double().sum()) for v in raw.values())) + 1e-10
        for n in masks:
            torch.testing.assert_close(m.scores[n], raw[n] / norm, rtol=1e-4, atol=1e-8)
    else:
        keep = m.channel_keep()
        assert sum(int(k.sum()) for k in keep.values()) == round(0.4 * st.graph.num_prunable_channels)
        # ignoring each group's mandatory best (lowest) channel, kept scores are all <= dropped ones
        kept, dropped = [], []
        for gid, k in keep.items():
            s = m.scores[gid]
            best = int(torch.argmin(s))
            kept += [float(s[j]) for j in range(len(s)) if k[j] and j != best]
            dropped += [float(s[j]) for j in range(len(s)) if not k[j]]
        assert max(kept) <= min(dropped)


# ---------------------------------------------------------------------------- SynFlow

class BiasFreeMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(7, 6, bias=False)
        self.l2 = nn.Linear(6, 5, bias=False)
        self.l3 = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


class BiasFreeConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 5, 3, bias=False)
        self.c2 = nn.Conv2d(5, 4, 3, bias=False)
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(x.flatten(2).sum(2))


def test_synflow_scores_match_hand_computation_and_conserve_flow():
    torch.manual_seed(3)
    model = BiasFreeMLP()
    x = torch.randn(4, 7)
    s = synflow_scores(model, (x,))
    W1, W2, W3 = (model.get_parameter(f"l{i}.weight").detach().double().abs() for i in (1, 2, 3))
    a0 = torch.ones(7, dtype=torch.float64)
    a1 = W1 @ a0
    a2 = W2 @ a1
    b2 = W3.sum(0)          # dR/da2
    b1 = W2.t() @ b2        # dR/da1
    torch.testing.assert_close(s["l1.weight"], W1 * torch.outer(b1, a0), rtol=1e-12, atol=0)
    torch.testing.assert_close(s["l2.weight"], W2 * torch.outer(b2, a1), rtol=1e-12, atol=0)
    torch.testing.assert_close(s["l3.weight"], W3 * a2[None, :], rtol=1e-12, atol=0)
    # conservation per hidden unit: flow in == flow out
    for a, b in (("l1.weight", "l2.weight"), ("l2.weight", "l3.weight")):
        torch.testing.assert_close(s[a].sum(1), s[b].sum(0), rtol=1e-6, atol=0)

    model = BiasFreeConv()
    s = synflow_scores(model, (torch.randn(2, 2, 8, 8),))
    torch.testing.assert_close(s["c1.weight"].sum((1, 2, 3)), s["c2.weight"].sum((0, 2, 3)), rtol=1e-6, atol=0)
    torch.testing.assert_close(s["c2.weight"].sum((1, 2, 3)), s["fc.weight"].sum(0), rtol=1e-6, atol=0)


def test_synflow_weight_level_100_rounds_exact_density_model_untouched():
    torch.manual_seed(4)
    model = zoo.create("mlp_784_100_100_10", num_classes=10, in_chans=1)
    st = make_state(model, (1, 28, 28), n_batches=1)
    model.eval()
    snap = snapshot(model)
    rng = torch.get_rng_state()
    m = create("synflow", 0.02, level="weight")
    assert m.rounds == 100
    m.init(st)
    assert_unchanged(model, snap)
    assert torch.equal(torch.get_rng_state(), rng)
    masks = m.weight_masks()
    n_all = sum(v.numel() for v in masks.values())
    assert sum(int(v.sum()) for v in masks.values()) == round(0.02 * n_all)
    # one shot (1 round) at this density differs from 100 rounds: the iteration matters
    one = create("synflow", 0.02, level="weight", rounds=1)
    one.init(st)
    assert any(not torch.equal(masks[n], one.weight_masks()[n]) for n in masks)
    # no layer collapses (SynFlow's point), even the 784->100 layer at 2% overall density
    assert all(int(v.sum()) > 0 for v in masks.values())


def test_synflow_channel_level_exact_and_model_untouched():
    st = lenet_state(n_batches=1)
    snap = snapshot(st.model)
    m = create("synflow", 0.3, rounds=20)
    m.init(st)
    assert_unchanged(st.model, snap)
    keep = m.channel_keep()
    assert sum(int(k.sum()) for k in keep.values()) == round(0.3 * st.graph.num_prunable_channels)
    assert all(k.any() for k in keep.values())


def test_synflow_channel_score_is_twice_the_unit_flow():
    torch.manual_seed(7)
    model = BiasFreeMLP()
    st = make_state(model, (7,), n_batches=1)
    m = create("synflow", 0.5, rounds=1)
    m.init(st)
    W1, W2, W3 = (model.get_parameter(f"l{i}.weight").detach().double().abs() for i in (1, 2, 3))
    a1 = W1.sum(1)
    a2 = W2 @ a1
    b2 = W3.sum(0)
    b1 = W2.t() @ b2
    expect = {6: 2 * a1 * b1, 5: 2 * a2 * b2}  # flow in + flow out of each hidden unit
    assert len(m.scores) == 2
    for s in m.scores.values():
        torch.testing.assert_close(s, expect[len(s)], rtol=1e-9, atol=0)
    flat = torch.cat(list(m.scores.values()))
    top = torch.zeros(len(flat), dtype=torch.bool)
    top[torch.topk(flat, round(0.5 * len(flat))).indices] = True
    got = torch.cat([m.channel_keep()[gid] for gid in m.scores])
    assert top[:6].any() and top[6:].any()  # so the one-per-group rule does not intervene here
    assert torch.equal(got, top)


# ----------------------------------------------------------------- magnitude / L1-filter

def test_magnitude_global_and_per_layer_match_hand():
    st = lenet_state(n_batches=1)
    params = dict(st.model.named_parameters())
    names = ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert prunable_weights(st.model) == names
    g = create("magnitude", 0.1)
    g.init(st)
    flat = torch.cat([params[n].detach().abs().flatten() for n in names])
    k = round(0.1 * len(flat))
    top = torch.zeros(len(flat), dtype=torch.bool)
    top[torch.topk(flat, k).indices] = True
    assert torch.equal(torch.cat([g.weight_masks()[n].flatten() for n in names]), top)
    p = create("magnitude", 0.1, scope="per_layer")
    p.init(st)
    for n in names:
        w = params[n].detach().abs().flatten()
        mask = torch.zeros(len(w), dtype=torch.bool)
        mask[torch.topk(w, max(1, round(0.1 * len(w)))).indices] = True
        assert torch.equal(p.weight_masks()[n].flatten(), mask)
    # global keeps a larger share of the small-fan-in conv1 (larger init magnitudes)
    share = {n: g.weight_masks()[n].float().mean().item() for n in names}
    assert share["conv1.weight"] > 0.1 > share["fc1.weight"]


def test_l1_filter_matches_filter_norms():
    st = lenet_state(n_batches=1)
    model = st.model
    producers = {0: "conv1.weight", 1: "conv2.weight", 2: "fc1.weight"}  # the filters of each lenet group
    m = create("l1_filter", 0.3)
    m.init(st)
    keep = m.channel_keep()
    for gid, name in producers.items():
        w = model.get_parameter(name).detach().double()
        norms = w.abs().flatten(1).sum(1)
        torch.testing.assert_close(m.scores[gid], norms)
        expect = torch.zeros(len(norms), dtype=torch.bool)
        expect[torch.topk(norms, max(1, round(0.3 * len(norms)))).indices] = True
        assert torch.equal(keep[gid], expect)
    # global scope ranks all channels together: the per-group fractions then differ
    gl = create("l1_filter", 0.3, scope="global")
    gl.init(st)
    fr = [float(k.float().mean()) for k in gl.channel_keep().values()]
    assert sum(int(k.sum()) for k in gl.channel_keep().values()) == round(0.3 * st.graph.num_prunable_channels)
    assert max(fr) - min(fr) > 0.2
    # side="all" adds the consumers' input slices
    al = create("l1_filter", 0.3, side="all")
    al.init(st)
    w1 = model.get_parameter("conv1.weight").detach().double().abs()
    w2 = model.get_parameter("conv2.weight").detach().double().abs()
    torch.testing.assert_close(al.scores[0], w1.flatten(1).sum(1) + w2.sum((0, 2, 3)))


# --------------------------------------------------------------------------- slimming

def test_slimming_adds_exact_l1_subgradient_to_bn_scales():
    st = tiny_state()
    model = st.model
    m = create("slimming", 0.5, s=1e-3)
    m.init(st)
    assert m.channel_keep() is None  # nothing decided before training ends
    x, y = next(st.batches())
    F.cross_entropy(model(x), y).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    m.after_backward(st)
    for n, p in model.named_parameters():
        if n in ("b1.weight", "b2.weight"):
            torch.testing.assert_close(p.grad - before[n], 1e-3 * torch.sign(p.detach()), rtol=0, atol=1e-9)
            assert not torch.equal(p.grad, before[n])
        else:
            assert torch.equal(p.grad, before[n]), n
    assert sorted(m.bn_weights) == ["b1.weight", "b2.weight"]


def test_slimming_global_threshold_on_mean_abs_gamma():
    torch.manual_seed(5)
    model = TinyRes()
    st = make_state(model, (3, 8, 8), n_batches=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b in (model.b0, model.b1, model.b2):
            b.weight.copy_(torch.randn(b.weight.shape, generator=g))
    m = create("slimming", 0.5)
    m.init(st)
    assert m.channel_keep() is None  # before training: the trainer trains dense first
    st.step = 1
    keep = m.channel_keep()
    # expected by hand: stream channels score mean(|gamma_b0|, |gamma_b2|), the inner ones |gamma_b1|
    stream = (model.b0.weight.abs() + model.b2.weight.abs()).detach() / 2
    inner = model.b1.weight.detach().abs()
    by_group = {}
    for grp in st.graph.prunable_groups:
        layers = set(grp.layers)
        by_group[grp.id] = stream if "b0" in layers else inner
        assert ("b0" in layers) == ("b2" in layers)
    assert len(by_group) == 2
    flat = torch.cat([by_group[gid] for gid in sorted(by_group)])
    k = round(0.5 * len(flat))
    expect = torch.zeros(len(flat), dtype=torch.bool)
    expect[torch.topk(flat, k).indices] = True
    got = torch.cat([keep[gid] for gid in sorted(by_group)])
    assert torch.equal(got, expect)


# ------------------------------------------------------------------- selection helpers

def _lenet_graph():
    torch.manual_seed(6)
    model = zoo.create("lenet5", num_classes=10, in_chans=1)
    return fxsparse.analyze(model, (torch.randn(2, 1, 28, 28),))


def test_keep_top_channels_exact_and_at_least_one_per_group():
    graph = _lenet_graph()
    g = torch.Generator().manual_seed(0)
    scores = {grp.id: torch.randn(grp.size, generator=g) for grp in graph.prunable_groups}
    scores[0] = scores[0] - 100  # group 0 would lose every channel in a plain global top-k
    N = graph.num_prunable_channels
    out = keep_top(graph, scores, 0.2, scope="global")
    assert sum(int(v.sum()) for v in out.values()) == round(0.2 * N)
    assert int(out[0].sum()) == 1 and bool(out[0][int(torch.argmax(scores[0]))])
    per = keep_top(graph, scores, 0.2, scope="per_group")
    for grp in graph.prunable_groups:
        k = max(1, round(0.2 * grp.size))
        assert int(per[grp.id].sum()) == k
        assert torch.equal(per[grp.id], torch.zeros(grp.size, dtype=torch.bool).index_fill(0, torch.topk(scores[grp.id], k).indices, True))
    tiny = keep_top(graph, scores, 1e-4, scope="global")
    assert [int(v.sum()) for v in tiny.values()] == [1] * len(graph.prunable_groups)
    # ties: deterministic, earliest channel (group order, then channel order) wins
    flat = {grp.id: torch.zeros(grp.size) for grp in graph.prunable_groups}
    a, b = keep_top(graph, flat, 0.3), keep_top(graph, flat, 0.3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    order = torch.cat([a[gid] for gid in sorted(a)])
    k = int(order.sum())
    assert k == round(0.3 * N)
    firsts = [sum(gr.size for gr in graph.prunable_groups[:i]) for i in range(len(graph.prunable_groups))]
    expect = torch.zeros(N, dtype=torch.bool)
    expect[firsts] = True
    rest = [i for i in range(N) if not expect[i]][:k - len(firsts)]
    expect[rest] = True
    assert torch.equal(order, expect)


@pytest.mark.parametrize("scope", ["global", "per_group"])
def test_keep_top_flops_budget(scope):
    """The FLOPs budget is real FLOPs: FlopCounterMode on the exported model is within it,
    and (global) no dropped channel would still fit; (per group) a slightly larger uniform
    ratio would not fit."""
    from fxsparse.analysis.graph import count_flops

    model = zoo.create("lenet5", num_classes=10, in_chans=1).eval()
    x = torch.zeros(1, 1, 28, 28)
    graph = fxsparse.analyze(model, (x,))
    dense, _ = count_flops(model, (x,))
    g = torch.Generator().manual_seed(1)
    scores = {grp.id: torch.rand(grp.size, generator=g) for grp in graph.prunable_groups}
    out = keep_top(graph, scores, 0.3, scope=scope, budget="flops")
    assert all(v.any() for v in out.values())
    again = keep_top(graph, scores, 0.3, scope=scope, budget="flops")
    assert all(torch.equal(out[k], again[k]) for k in out)
    used, _ = count_flops(fxsparse.export(model, graph, out), (x,))
    assert used <= 0.3 * dense * (1 + 1e-9)
    if scope == "global":  # the cheapest dropped channel of every group no longer fits
        for grp in graph.prunable_groups:
            dropped = (~out[grp.id]).nonzero().flatten()
            if len(dropped):
                more = {k: v.clone() for k, v in out.items()}
                more[grp.id][int(dropped[0])] = True
                bigger, _ = count_flops(fxsparse.export(model, graph, more), (x,))
                assert bigger > 0.3 * dense
    else:
        assert used > 0.2 * dense  # the bisection stops near the budget


def test_weight_top_exact_with_ties_and_scopes():
    scores = {"a": torch.zeros(10), "b": torch.ones(6), "c": torch.zeros(4, 5)}
    out = weight_top(scores, 0.25, scope="global")  # 9 of 36: all 6 ones, then the first 3 zeros
    assert sum(int(v.sum()) for v in out.values()) == 9
    assert out["b"].all() and out["a"][:3].all() and not out["a"][3:].any() and not out["c"].any()
    per = weight_top(scores, 0.25, scope="per_layer")
    assert [int(v.sum()) for v in per.values()] == [round(2.5), round(1.5), 5]
    assert per["c"].shape == (4, 5)
    with pytest.raises(ValueError, match="NaN"):
        weight_top({"a": torch.tensor([1.0, float("nan")])}, 0.5)


def test_group_scores_sum_and_mean_over_parameter_members():
    st = tiny_state(n_batches=1)
    ones = {n: torch.ones_like(p, dtype=torch.float32) for n, p in st.model.state_dict().items()}  # buffers too
    s = group_scores(st.graph, ones)
    m = group_scores(st.graph, ones, reduce="mean")
    by_layers = {tuple(sorted(set(g.layers))): g.id for g in st.graph.prunable_groups}
    g1 = by_layers[("b1", "c1", "c2")]
    # channel of group c1/b1/c2: c1.weight[c] (27) + c1.bias (1) + b1 weight,bias (2) + c2.weight[:, c] (12*9); no buffers
    assert torch.equal(s[g1], torch.full((8,), 27 + 1 + 2 + 108, dtype=torch.float64))
    assert torch.equal(m[g1], torch.ones(8, dtype=torch.float64))


# ----------------------------------------------------------------------------- export

CHANNEL_METHODS = [("snip", {}), ("grasp", {"samples_per_class": 4}), ("synflow", {"rounds": 10}),
                   ("l1_filter", {}), ("slimming", {}), ("random", {}),
                   ("synflow", {"rounds": 5, "budget": "flops"}), ("l1_filter", {"scope": "global"})]


@pytest.mark.parametrize("name,opts", CHANNEL_METHODS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in CHANNEL_METHODS])
def test_channel_masks_export_to_a_smaller_model(name, opts):
    st = tiny_state(n_batches=6)
    model = st.model.eval()
    snap = snapshot(model)
    m = create(name, 0.4, **opts)
    m.init(st)
    assert_unchanged(model, snap)
    if name == "slimming":
        m.after_step(st)
    keep = m.channel_keep()
    assert set(keep) == {g.id for g in st.graph.prunable_groups}
    assert all(k.dtype == torch.bool and k.any() for k in keep.values())
    small = fxsparse.export(model, st.graph, keep)
    x = st.example_inputs[0]
    assert small(x).shape == model(x).shape == (2, 10)
    dense_flops, _ = fxsparse.count_flops(model, (x,))
    small_flops, _ = fxsparse.count_flops(small, (x,))
    assert small_flops < dense_flops
    g1 = next(g for g in st.graph.prunable_groups if "c1" in g.layers)
    assert small.get_submodule("c1").weight.shape[0] == int(keep[g1.id].sum())


def test_lenet_channel_methods_export():
    st = lenet_state(n_batches=6)
    for name, opts in [("snip", {}), ("grasp", {"samples_per_class": 4}), ("l1_filter", {}), ("random", {})]:
        m = create(name, 0.5, **opts)
        m.init(st)
        small = fxsparse.export(st.model, st.graph, m.channel_keep())
        x = st.example_inputs[0]
        assert small(x).shape == (2, 10)
        assert fxsparse.count_flops(small, (x,))[0] < fxsparse.count_flops(st.model, (x,))[0]


# ------------------------------------------------------------------- random / registry

def test_random_is_seeded_by_state_generator_only():
    st = lenet_state(n_batches=1)
    rng = torch.get_rng_state()
    a = create("random", 0.5)
    a.init(st)
    st.generator = torch.Generator().manual_seed(0)
    b = create("random", 0.5)
    b.init(st)
    st.generator = torch.Generator().manual_seed(1)
    c = create("random", 0.5)
    c.init(st)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a.channel_keep()[k], b.channel_keep()[k]) for k in a.channel_keep())
    assert any(not torch.equal(a.channel_keep()[k], c.channel_keep()[k]) for k in a.channel_keep())
    for grp in st.graph.prunable_groups:
        assert int(a.channel_keep()[grp.id].sum()) == max(1, round(0.5 * grp.size))
    w = create("random", 0.5, level="weight")
    w.init(st)
    for mask in w.weight_masks().values():
        assert int(mask.sum()) == round(0.5 * mask.numel())


def test_registry_and_state_dict_roundtrip():
    st = tiny_state(n_batches=1)
    for name in ("snip", "grasp", "synflow", "magnitude", "l1_filter", "slimming", "random"):
        cls = get_method(name)
        assert cls.name == name and cls.paper
    m = create("l1_filter", 0.5)
    m.init(st)
    r = create("l1_filter", 0.5)
    r.load_state_dict(m.state_dict())
    assert all(torch.equal(m.channel_keep()[k], r.channel_keep()[k]) for k in m.channel_keep())


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("keep", [0, -0.1, 1.5, float("nan"), "half"])
def test_bad_keep(keep):
    for name in ("snip", "magnitude", "slimming"):
        with pytest.raises(ValueError, match="keep"):
            create(name, keep)


def test_bad_options_and_levels():
    with pytest.raises(ValueError, match="level"):
        create("magnitude", 0.5, level="channel")
    with pytest.raises(ValueError, match="level"):
        create("slimming", 0.5, level="weight")
    with pytest.raises(ValueError, match="level"):
        create("l1_filter", 0.5, level="weight")
    with pytest.raises(ValueError, match="level"):
        create("snip", 0.5, level="neuron")
    with pytest.raises(ValueError, match="scope"):
        create("snip", 0.5, level="weight", scope="per_group")
    with pytest.raises(ValueError, match="budget"):
        create("snip", 0.5, level="weight", budget="flops")
    with pytest.raises(ValueError, match="unknown option"):
        create("grasp", 0.5, temprature=100)
    for name, opts, what in [("grasp", {"temperature": 0}, "temperature"), ("grasp", {"samples_per_class": 0}, "samples_per_class"),
                             ("synflow", {"rounds": 0}, "rounds"), ("synflow", {"dtype": "int8"}, "dtype"),
                             ("snip", {"batches": 0}, "batches"), ("l1_filter", {"side": "in"}, "side"),
                             ("slimming", {"s": -1}, "s must")]:
        with pytest.raises(ValueError, match=what):
            create(name, 0.5, **opts)
    with pytest.raises(ValueError, match="scope"):
        keep_top(_lenet_graph(), {}, 0.5, scope="local")


def test_no_prunable_group_and_no_bn():
    model = nn.Linear(6, 3)
    st = make_state(model, (6,), n_batches=1, classes=3)
    for name in ("snip", "synflow", "l1_filter", "random", "grasp"):
        with pytest.raises(ValueError, match="no prunable|none"):
            create(name, 0.5).init(st)
    w = create("snip", 0.5, level="weight")
    w.init(st)  # weight level still works on it
    assert int(w.weight_masks()["weight"].sum()) == 9
    with pytest.raises(ValueError, match="BatchNorm"):
        create("slimming", 0.5).init(lenet_state(n_batches=1))
    with pytest.raises(ValueError, match="samples of every class"):
        create("grasp", 0.5).init(tiny_state(n_batches=1))
    with pytest.raises(ValueError, match="FLOPs"):
        graph = _lenet_graph()
        graph.flops = {}
        keep_top(graph, {g.id: torch.zeros(g.size) for g in graph.prunable_groups}, 0.5, budget="flops")


def test_fast_exact_top_k_equals_the_stable_sort_order():
    from fxsparse.analysis.masks import top_mask as _top_mask
    from fxsparse.methods.select import _order
    g = torch.Generator().manual_seed(0)
    for t in range(200):
        n = int(torch.randint(1, 60, (1,), generator=g))
        s = torch.randint(0, 5, (n,), generator=g).double()  # many ties
        if t % 3 == 0:
            s[s == 0] = float("-inf")
        k = int(torch.randint(0, n + 1, (1,), generator=g))
        ref = torch.zeros(n, dtype=torch.bool)
        ref[_order(s, "x")[:k]] = True
        assert torch.equal(_top_mask(s, k, "x"), ref)


def test_dropout_randomness_comes_from_state_generator():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
    st = make_state(model, (3, 4, 4), n_batches=1)
    rng = torch.get_rng_state()
    runs = []
    for seed in (0, 0, 1):
        st.generator = torch.Generator().manual_seed(seed)
        m = create("snip", 0.5, level="weight")
        m.init(st)
        runs.append(m.scores)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert any(not torch.equal(runs[0][n], runs[2][n]) for n in runs[0])
