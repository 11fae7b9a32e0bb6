"""The sparse step (fxsparse.compile) equals the physically pruned model for the same masks,
over several steps with changing masks; pruned weights, BN statistics and optimizer state
do not move; the number of compilations is bounded."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse import zoo
from lanes import fast_subset
from sparse_checks import check_steps

# drop rates off: dropout draws different random masks for tensors of different shapes
CASES = {
    "resnet20": {}, "mobilenetv2": {"dropout": 0.0}, "shufflenetv2": {},
    "efficientnet_b0": {"dropout": 0.0, "drop_path_rate": 0.0},
    "convnext_tiny": {"depths": (1, 1, 1, 1), "drop_path_rate": 0.0}, "googlenet": {"dropout": 0.0},
    "vit_tiny": {"depth": 2}, "densenet_bc_100": {"depth": 40}, "unet": {"base_width": 8},
    "vgg11_bn": {}, "lenet5": {}, "resnet50": {"width": 16},  # all 16 bottlenecks, 1/4 of the width
}
# float32 checked at 1e-5 against a float64 export; not DenseNet-BC at batch 4, whose own fp32
# gradients are 1.5e-3 (relative) off float64 by its third step (an ill-conditioned BatchNorm):
# any summation order passes or fails there by luck (float64 checks it at 1e-9)
FP32_WELL_CONDITIONED = {"resnet20", "vit_tiny", "convnext_tiny", "unet", "vgg11_bn"}
# the fast lane: residual adds, attention, the U-Net's skip concatenations and a plain CNN; the
# other models (5-20 s each) in the full suite (every zoo family's eager step is checked in the
# fast lane by test_zoo_sparse_step.py)
FAST = {"resnet20", "vit_tiny", "unet", "lenet5"}


def _data(name, batch=4):
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch, 32, 32)) if name == "unet" else torch.randint(0, 10, (batch,))
    return x, y


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("name", fast_subset(sorted(CASES), FAST))
def test_sparse_step_equals_export_float64(name):
    torch.manual_seed(0)
    x, y = _data(name)
    for bernoulli, optimizer in ((True, "sgd"), (False, "adamw")):
        model = zoo.create(name, **CASES[name])
        sp = check_steps(model, (x,), y, F.cross_entropy, steps=2, bernoulli=bernoulli, optimizer=optimizer,
                         dtype=torch.float64, tol=1e-9)
        assert sp.capacity_mode == "dynamic", sp.static_reason  # every zoo model's counts follow its shapes


@pytest.mark.parametrize("name", fast_subset(sorted(FP32_WELL_CONDITIONED), FAST & FP32_WELL_CONDITIONED))
def test_sparse_step_equals_export_float32(name):
    torch.manual_seed(0)
    x, y = _data(name)
    check_steps(zoo.create(name, **CASES[name]), (x,), y, F.cross_entropy, steps=3, tol=1e-5)


def test_eval_mode_and_rule_models():
    torch.manual_seed(0)
    model = zoo.create("resnet20")
    x, y = _data("resnet20")
    check_steps(model, (x,), y, F.cross_entropy, steps=2, train=False, dtype=torch.float64, tol=1e-9)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(x + self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.slow  # 200 compiled steps; inductor's step: test_compiled_compact_update_trains_like_the_exported_model
def test_compiled_step_bounded_compilations_and_equal(aot_eager):
    """200 steps with per-step Bernoulli masks at a fixed keep ratio: few compilations,
    and the compiled step still equals the exported model. The graphs by aot_eager: dynamo's
    graph count over changing masks is the point (inductor's dynamic step, with its own
    guards: tests/step/test_dynamic_capacity.py)."""
    torch.manual_seed(0)
    model = Tiny()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    sp = fxsparse.compile(model, x, keep=0.5, compile=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = sp.make_train_step(F.cross_entropy, opt)
    sp.train()
    for _ in range(200):
        sp.sample_masks(0.5)
        loss = step(x, y)
        assert torch.isfinite(loss)
    # the gather, forward + backward and the update: 3 graphs, the kept counts symbolic
    # (dynamic capacities)
    assert sp.capacity_mode == "dynamic"
    assert sp.compilations == 3 and sp.rebuilds == 0, (sp.compilations, sp.rebuilds)
    sp.eval()
    small = sp.export().eval()
    out = sp(x)
    assert float((out - small(x)).abs().max() / small(x).abs().max()) <= 1e-4


def test_bad_input():
    model = Tiny()
    x = torch.randn(2, 3, 8, 8)
    for bad in (0.0, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match="keep must be a number"):
            fxsparse.compile(model, x, keep=bad, compile=False)

    class NoPrunable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(ValueError, match="no prunable channel group"):
        fxsparse.compile(NoPrunable(), torch.randn(2, 4), compile=False)
    sp = fxsparse.compile(model, x, compile=False)
    with pytest.raises(fxsparse.KeepMaskError):
        sp.masks = {0: torch.zeros(16, dtype=torch.bool)}


def test_state_dict_roundtrip_and_masks_growth():
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(2, 3, 8, 8)
    sp = fxsparse.compile(model, x, keep=0.25, compile=False, capacity="exact")
    caps = list(sp.plan.caps)
    sp.masks = {g.id: torch.ones(g.size, dtype=torch.bool) for g in sp.channel_graph.prunable_groups}
    assert sum(sp.plan.caps) > sum(caps)  # capacities grew to fit the denser mask
    sd = sp.state_dict()
    sp2 = fxsparse.compile(Tiny(), x, keep=0.25, compile=False)
    sp2.model.load_state_dict({k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")})
    sp2.masks = sp.masks
    sp.eval(), sp2.eval()
    assert torch.allclose(sp(x), sp2(x))


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "adamw"])
def test_masked_optimizer_updates_match_torch_on_kept_entries(kind):
    """The masked SGD/Adam(W) step equals torch's own step on kept entries and leaves pruned
    entries (weights and state) bit-identical, over several steps with changing masks."""
    torch.manual_seed(0)
    model = Tiny()
    ref_model = Tiny()
    ref_model.load_state_dict(model.state_dict())
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    sp = fxsparse.compile(model, x, keep=1.0, compile=False)
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
            "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
            "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
            "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2)}[kind]
    opt, ref_opt = make(model.parameters()), make(ref_model.parameters())
    step = sp.make_train_step(F.cross_entropy, opt)
    sp.eval(), ref_model.eval()
    for _ in range(3):  # keep=1.0: everything kept, so the masked update must equal torch's
        step(x, y)
        ref_opt.zero_grad()
        F.cross_entropy(ref_model(x), y).backward()
        ref_opt.step()
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), n
    # now with pruning: pruned entries must not move
    sp2 = fxsparse.compile(Tiny(), x, keep=0.5, compile=False)
    opt2 = make(sp2.model.parameters())
    step2 = sp2.make_train_step(F.cross_entropy, opt2)
    for _ in range(3):
        sp2.sample_masks(0.5)
        lines = _keep_lines(sp2)
        before = {p: (p.detach().clone(), {k: v.clone() for k, v in opt2.state.get(p, {}).items()
                                           if torch.is_tensor(v) and v.shape == p.shape}) for p in sp2.model.parameters()}
        step2(x, y)
        for p, per_dim in lines.items():
            keep = torch.ones(p.shape, dtype=torch.bool)
            for dim, line, nd in per_dim:
                shape = [1] * nd
                shape[dim] = -1
                keep = keep & line.view(shape)
            old_p, old_state = before[p]
            assert torch.equal(p.detach()[~keep], old_p[~keep])
            for k, v in opt2.state[p].items():
                if torch.is_tensor(v) and v.shape == p.shape:
                    assert torch.equal(v[~keep], old_state.get(k, torch.zeros_like(v))[~keep]), k


def _keep_lines(sp) -> dict:
    """{parameter: [(dim, bool line of the entries the current masks keep, ndim)]}, from the step's index."""
    params = dict(sp.model.named_parameters())
    lines = {}
    for name, slots in sp.step_index().slots.items():
        if name in params:
            p = params[name]
            lines[p] = []
            for s in slots:
                line = torch.zeros(p.shape[s.dim], dtype=torch.bool)
                line[s.index[s.real]] = True
                lines[p].append((s.dim, line, p.dim()))
    return lines


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_compact_train_step_trains_like_the_exported_model(kind):
    """Several make_train_step steps with a fixed mask give the same kept weights and BN
    statistics as training the exported model with plain torch SGD/AdamW."""
    torch.manual_seed(0)
    model = zoo.create("resnet20").double()
    x, y = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    sp = fxsparse.compile(model, x, keep=0.5, compile=False, capacity="auto")
    sp.sample_masks(0.5)  # Bernoulli: empty slots are exercised too
    small = sp.export().train()
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
            "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2)}[kind]
    step = sp.make_train_step(F.cross_entropy, make(model.parameters()))
    opt_small = make(small.parameters())
    sp.train()
    for _ in range(3):
        step(x, y)
        opt_small.zero_grad()
        F.cross_entropy(small(x), y).backward()
        opt_small.step()
    trained = sp.export()
    ref = dict(small.named_parameters())
    ref.update(dict(small.named_buffers()))
    for name, t in list(trained.named_parameters()) + list(trained.named_buffers()):
        assert torch.allclose(t, ref[name], rtol=1e-9, atol=1e-12), name


# one optimizer compiled in the fast lane (an inductor compile: 10-25 s), both in the full suite
@pytest.mark.parametrize("kind", [pytest.param("sgd", marks=[pytest.mark.slow, pytest.mark.long]), "adamw"])
def test_compiled_compact_update_trains_like_the_exported_model(kind):
    """The compiled step (forward + backward graph, and the optimizer update as its own
    graph) trains the kept weights, optimizer state and BN statistics exactly like plain
    torch on the exported model, empty capacity slots included; pruned entries never move."""
    torch.manual_seed(0)
    model = Tiny().double()
    x, y = torch.randn(8, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))
    sp = fxsparse.compile(model, x, keep=0.5, compile=True, capacity="auto")
    sp.sample_masks(0.5)
    small = sp.export().train()
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
            "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2)}[kind]
    step = sp.make_train_step(F.cross_entropy, make(model.parameters()))
    opt_small = make(small.parameters())
    dense_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sp.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(3):
            for g in step.optimizer.param_groups + opt_small.param_groups:
                g["lr"] *= 0.8  # a schedule: the learning rate is a tensor input, no recompile
            step(x, y)
            opt_small.zero_grad()
            F.cross_entropy(small(x), y).backward()
            opt_small.step()
    assert sp.compilations == 3, sp.compilations  # gather, forward + backward, update
    trained = sp.export()
    ref = dict(small.named_parameters())
    ref.update(dict(small.named_buffers()))
    # float64; compiled kernels round differently, and Adam turns the exactly-zero gradient
    # of a bias before BN (noise ~1e-17) into updates of ~1e-11
    for name, t in list(trained.named_parameters()) + list(trained.named_buffers()):
        assert torch.allclose(t, ref[name], rtol=1e-7, atol=1e-9), name
    from fxsparse.analysis.masks import kept_indices

    kept = kept_indices(sp.channel_graph, sp.masks)
    for name, p in model.named_parameters():
        keep = torch.ones(p.shape, dtype=torch.bool)
        for dim, idx in kept.get(name, {}).items():
            line = torch.zeros(p.shape[dim], dtype=torch.bool)
            line[idx] = True
            keep &= line.view([-1 if d == dim else 1 for d in range(p.dim())])
        assert torch.equal(p.detach()[~keep], dense_before[name][~keep]), name
