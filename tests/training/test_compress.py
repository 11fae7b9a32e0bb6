"""Compressing a trained model: ``--init`` weights (good files, wrong shapes and keys, files that
pickle code), BatchNorm re-estimation against statistics computed by hand, every channel method
meeting ``--budget flops`` (command line and TrainConfig), the trained-weight criteria against
independent references (finite differences, a plain backward loop), the random allocation search
against brute-force enumeration, the L0 gates against the exported model, and VR-PGE's
forward-only search with a gradual budget."""
import json
import math
import os
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
from fxsparse import zoo
from fxsparse.analysis.flops import SubnetFlops
from fxsparse.cli import main as cli_main
from fxsparse.methods import TrainState, get_method
from fxsparse.methods.allocation_search import best_allocation, sample_allocation
from fxsparse.methods.l0_gates import ChannelGates
from fxsparse.methods.scores import filter_l1
from fxsparse.rewrite.batchnorm import recalibrate_batchnorm
from fxsparse.training.init_weights import InitWeightsError, load_init_weights
from fxsparse.training.trainer import TrainConfig, Trainer

CHANNEL_METHODS = ["snip", "grasp", "synflow", "l1_filter", "l1_global", "slimming", "random", "taylor", "obd",
                   "random_search", "l0", "vrpge"]
SMALL_OPTIONS = {"taylor": {"batches": 2}, "obd": {"batches": 2},
                 "random_search": {"samples": 3, "bn_batches": 1, "eval_batches": 1}}


def _cli(data_dir, out, *extra):
    return cli_main(["train", "--model", "zoo:lenet5", "--data", "mnist", "--data-root", data_dir, "--batch-size", "32",
                     "--no-compile", "--threads", "1", "--no-progress", "--out", str(out), "--bn-batches", "2", *extra])


def _config(data_dir, out, **kw):
    base = dict(model="zoo:lenet5", data="mnist", data_root=data_dir, batch_size=32, compile=False, out=str(out),
                bn_batches=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def dense_run(data_dir, tmp_path_factory):
    """A dense LeNet-5 trained one epoch by the CLI (its --out folder): the trained weights that
    the tests of --init read (they only read it)."""
    out = tmp_path_factory.mktemp("dense") / "dense"
    assert _cli(data_dir, out, "--method", "dense", "--epochs", "1", "--finetune-epochs", "0") == 0
    return out


def ConvNet():
    """conv-BN-ReLU twice, global pooling, a linear classifier (1 input channel, 4 classes)."""
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1),
                         nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))


# ----------------------------------------------------------------------------- --init

def test_init_reads_state_dicts_safetensors_and_run_directories(tmp_path, data_dir, dense_run):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    trained = zoo.create("lenet5", in_chans=1)
    state = trained.state_dict()
    torch.save(state, tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "ddp.pt")  # a DDP state_dict
    for name in ("w.pt", "w.safetensors", "ddp.pt"):
        fresh = zoo.create("lenet5", in_chans=1)
        load_init_weights(fresh, str(tmp_path / name))
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)
    # an earlier run's --out: a dense run's weights seed the next run's model
    from safetensors.torch import load_file

    written = load_file(str(dense_run / "model.safetensors"))
    tr = Trainer(_config(data_dir, tmp_path / "next", method="l1_filter", init=str(dense_run)), log=None,
                 progress=False)
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, written[k]), k
    summary = json.load(open(dense_run / "summary.json"))
    for name in ("model.safetensors", "history.csv", "steps.csv"):
        assert os.path.isfile(summary["files"][name]), name


def test_init_mismatches_name_the_first_differing_key_or_shape(tmp_path):
    model = zoo.create("lenet5", in_chans=1)
    state = model.state_dict()
    first = next(iter(state))
    wrong_shape = dict(state)
    wrong_shape[first] = torch.zeros(3, *state[first].shape[1:])
    torch.save(wrong_shape, tmp_path / "shape.pt")
    with pytest.raises(InitWeightsError, match=rf"'{first}' has shape \(3, 1, 5, 5\) in the file and "
                       r"\(20, 1, 5, 5\) in the model; the file's model is smaller: if it is a pruned copy"):
        load_init_weights(zoo.create("lenet5", in_chans=1), str(tmp_path / "shape.pt"))
    missing = dict(state)
    del missing[first]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(InitWeightsError, match=f"has no '{first}'"):
        load_init_weights(zoo.create("lenet5", in_chans=1), str(tmp_path / "missing.pt"))
    extra = dict(state, **{"head.weight": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(InitWeightsError, match="'head.weight'.*which the model has not"):
        load_init_weights(zoo.create("lenet5", in_chans=1), str(tmp_path / "extra.pt"))
    torch.save(zoo.create("resnet20", in_chans=1).state_dict(), tmp_path / "other.pt")
    with pytest.raises(InitWeightsError, match="another model"):
        load_init_weights(zoo.create("lenet5", in_chans=1), str(tmp_path / "other.pt"))
    torch.save(zoo.create("lenet5", in_chans=1, num_classes=7).state_dict(), tmp_path / "classes.pt")
    with pytest.raises(InitWeightsError, match=r"'fc2.weight' has shape \(7, 500\).*number of classes"):
        load_init_weights(zoo.create("lenet5", in_chans=1), str(tmp_path / "classes.pt"))


class _Payload:
    """A pickle that would create a file when unpickled."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_init_never_runs_pickled_code(tmp_path, data_dir, capsys):
    marker = tmp_path / "pwned"
    torch.save({"weights": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(InitWeightsError, match="loads without running code"):
        load_init_weights(zoo.create("lenet5", in_chans=1), str(tmp_path / "evil.pt"))
    assert not marker.exists()
    assert _cli(data_dir, tmp_path / "r", "--init", str(tmp_path / "nowhere.pt")) == 2
    assert "no such file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- BatchNorm

def test_batchnorm_recalibration_equals_statistics_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 1),
                          nn.BatchNorm2d(4)).double().eval()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
            bn.running_mean.fill_(7.0)
    batches = [torch.randn(5, 2, 6, 6, dtype=torch.double) for _ in range(4)]
    assert recalibrate_batchnorm(model, [(x, None) for x in batches]) == 4
    assert not model.training and model[1].momentum == 0.1 and model[4].momentum == 0.1
    # by hand: each BN's running statistics are the averages over the batches of the batch mean and
    # of the unbiased batch variance of its input, the input computed with batch statistics upstream
    with torch.no_grad():
        a = [model[0](x) for x in batches]
        b = [model[3](F.relu(F.batch_norm(t, None, None, model[1].weight, model[1].bias, training=True))) for t in a]
    for bn, inputs in ((model[1], a), (model[4], b)):
        torch.testing.assert_close(bn.running_mean, torch.stack([t.mean((0, 2, 3)) for t in inputs]).mean(0))
        torch.testing.assert_close(bn.running_var, torch.stack([t.var((0, 2, 3), unbiased=True) for t in inputs]).mean(0))
        assert int(bn.num_batches_tracked) == 4


def test_batchnorm_recalibration_leaves_the_rng_and_needs_batches():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5))
    batches = [torch.randn(3, 2, 5, 5) for _ in range(2)]
    rng = torch.get_rng_state()
    recalibrate_batchnorm(model, batches)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from a forked stream
    assert recalibrate_batchnorm(nn.Linear(2, 2), []) == 0  # nothing to estimate
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_batchnorm(model, [])


# ----------------------------------------------------------------------------- budgets

def _flops_fraction(tr):
    flops = SubnetFlops(tr.graph)
    return flops.fraction(flops.flat(tr.masks)), flops


def _maximal(tr, flops, keep) -> bool:
    """No dropped channel of the final mask fits into the budget."""
    flat = flops.flat(tr.masks)
    limit = keep * flops.dense * (1 + 1e-12)
    for i in torch.nonzero(flat == 0).flatten().tolist():
        more = flat.clone()
        more[i] = 1
        if float(flops(more)) <= limit:
            return False
    return True


@pytest.mark.parametrize("method", CHANNEL_METHODS)
def test_every_channel_method_meets_a_flops_budget_from_the_config(data_dir, tmp_path, method):
    keep = 0.15
    epochs = {"slimming": 0.5, "l0": 0.5, "vrpge": 0.5}.get(method, 0.0)
    model = "zoo:resnet20" if method == "slimming" else "zoo:lenet5"  # slimming ranks BatchNorm scales
    tr = Trainer(_config(data_dir, tmp_path / method, model=model, method=method, keep=keep, budget="flops",
                         epochs=epochs, finetune_epochs=0.5, method_options=SMALL_OPTIONS.get(method, {})),
                 log=None, progress=False)
    summary = tr.run()
    frac, flops = _flops_fraction(tr)
    assert frac <= keep * (1 + 1e-9)
    assert summary["final_flops_frac"] == pytest.approx(frac)
    uniform = getattr(tr.method, "scope", None) == "per_group"
    # one ratio for every group (uniform), or channels pruned in earlier rounds never return (SynFlow's
    # iterations): close to the budget; else no dropped channel would still fit
    if uniform or method == "synflow":
        assert frac >= 0.8 * keep, frac
    else:
        assert _maximal(tr, flops, keep), method
    assert summary["oneshot_test_acc_pct"] is not None


@pytest.mark.parametrize("method", ["random", "l1_filter", "taylor", "random_search"])
def test_channel_methods_meet_a_flops_budget_from_the_command_line(data_dir, tmp_path, method):
    assert _cli(data_dir, tmp_path / method, "--method", method, "--keep", "0.08", "--budget", "flops",
                "--epochs", "0", "--finetune-epochs", "0.5") == 0
    summary = json.load(open(tmp_path / method / "summary.json"))
    # read as a channel fraction, 0.08 of LeNet-5's channels would keep ~0.02 of its FLOPs
    assert 0.06 <= summary["final_flops_frac"] <= 0.08 + 1e-9


def test_methods_that_cannot_meet_a_flops_budget_say_so(data_dir, tmp_path, capsys):
    for method in ("magnitude", "dropback_channel", "set"):
        assert _cli(data_dir, tmp_path / method, "--method", method, "--budget", "flops", "--keep", "0.3") == 2
        err = capsys.readouterr().err
        assert "cannot meet a FLOPs budget" in err and "--budget channels" in err, err
    with pytest.raises(ValueError, match="contradicts the run's --budget"):
        get_method("l1_filter").for_run(0.3, "flops", {"budget": "channels"})


# ----------------------------------------------------------------------------- criteria

def _state(model, batches, graph=None):
    x = batches[0][0]
    graph = graph or fxsparse.analyze(model, (x,))
    return TrainState(model=model, graph=graph, loss_fn=F.cross_entropy, batches=lambda: iter(batches),
                      num_classes=4, example_inputs=(x,), generator=torch.Generator().manual_seed(0))


def _batches(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g, dtype=torch.double), torch.randint(0, 4, (size,), generator=g))
            for _ in range(n)]


def _scaled_loss(model, graph, gid, j, eps, x, y):
    """The loss with every parameter entry of channel j of group gid scaled by (1 + eps)."""
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    for m in graph.groups[gid].members:
        if m.param in params:
            idx = torch.as_tensor(m.index[j], dtype=torch.long)
            params[m.param].index_copy_(m.dim, idx, params[m.param].index_select(m.dim, idx) * (1 + eps))
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    model.train()
    return float(F.cross_entropy(torch.func.functional_call(model, {**params, **buffers}, (x,)), y))


def _criterion(name, batches):
    """(model, state, method) with ``name`` scored on ``batches`` of ConvNet in float64."""
    torch.manual_seed(0)
    model = ConvNet().double()
    state = _state(model, batches)
    method = get_method(name).for_run(0.5, "channels", {"batches": len(batches)})
    method.init(state)
    return model, state, method


def test_taylor_importance_equals_the_finite_difference_of_a_channel_gate():
    batches = _batches(1)
    model, state, method = _criterion("taylor", batches)
    (x, y), eps = batches[0], 1e-6
    for g in state.graph.prunable_groups:
        for j in range(g.size):
            fd = (_scaled_loss(model, state.graph, g.id, j, eps, x, y)
                  - _scaled_loss(model, state.graph, g.id, j, -eps, x, y)) / (2 * eps)
            assert float(method.scores[g.id][j]) == pytest.approx(fd * fd, rel=1e-5, abs=1e-12)


def test_obd_saliency_equals_a_plain_backward_loop():
    batches = _batches(3)
    model, state, method = _criterion("obd", batches)
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    copy = ConvNet().double()
    copy.load_state_dict(model.state_dict())
    for mod in copy.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = 0.0
    copy.train()
    for x, y in batches:
        copy.zero_grad()
        F.cross_entropy(copy(x), y).backward()
        for n, p in copy.named_parameters():
            ref[n] += p.grad.square() / len(batches)
    params = dict(model.named_parameters())
    for g in state.graph.prunable_groups:
        for j in range(g.size):
            total = 0.0
            for m in g.members:
                if m.param in params:
                    idx = torch.as_tensor(m.index[j], dtype=torch.long)
                    w = params[m.param].detach().index_select(m.dim, idx)
                    total += float((0.5 * ref[m.param].index_select(m.dim, idx) * w * w).sum())
            assert float(method.scores[g.id][j]) == pytest.approx(total, rel=1e-9)


# ----------------------------------------------------------------------------- allocation search

def test_allocation_search_against_brute_force_enumeration():
    torch.manual_seed(0)
    model = ConvNet().double()
    batches = _batches(3)
    state = _state(model, batches)
    graph = state.graph
    groups = graph.prunable_groups
    sizes = [g.size for g in groups]
    flops = SubnetFlops(graph)
    keep = 0.35
    limit = keep * flops.dense * (1 + 1e-12)

    def cost(counts):  # FLOPs depend on the kept counts only here (every channel one index)
        return float(flops(torch.cat([torch.arange(n) < k for n, k in zip(sizes, counts)]).double()))

    import itertools

    feasible = [list(c) for c in itertools.product(*[range(1, n + 1) for n in sizes]) if cost(c) <= limit]
    maximal = {tuple(c) for c in feasible
               if all(c[i] == sizes[i] or cost(c[:i] + [c[i] + 1] + c[i + 1:]) > limit for i in range(len(c)))}
    gen = torch.Generator().manual_seed(0)
    drawn = [sample_allocation(sizes, cost, limit, gen) for _ in range(400)]
    distinct = {tuple(d) for d in drawn}
    assert distinct <= maximal  # every draw is feasible, and no channel could be added to it
    assert len(distinct) >= len(maximal) // 2, (len(distinct), len(maximal))  # a real spread of allocations
    score = lambda c: math.sin(3 * c[0]) + 0.1 * sum(c)  # noqa: E731  (any function of the counts)
    best, value, scored = best_allocation(drawn, score)
    assert value == max(score(list(c)) for c in distinct) and score(best) == value
    assert len(scored) == len(distinct)  # duplicates scored once
    _, top, _ = best_allocation(sorted(maximal), score)  # over the whole enumeration
    assert top == max(score(list(c)) for c in maximal)
    # the method: its choice is the lowest loss of its candidates, each re-scored independently here
    method = get_method("random_search").for_run(keep, "flops", {"samples": 6, "bn_batches": 2, "eval_batches": 1})
    method.init(state)
    accuracies = []
    for counts, accuracy in method.candidates:
        masks = {g.id: torch.zeros(g.size, dtype=torch.bool) for g in groups}
        l1 = filter_l1(graph, model)
        for g, k in zip(groups, counts):
            masks[g.id][torch.sort(l1[g.id], descending=True, stable=True).indices[:k]] = True
        small = fxsparse.export(model, graph, masks)
        recalibrate_batchnorm(small, [x for x, _ in batches[:2]])
        small.eval()
        with torch.no_grad():
            ref = float((small(batches[2][0]).argmax(1) == batches[2][1]).double().mean())
        assert accuracy == pytest.approx(ref, rel=1e-12)
        assert tuple(counts) in maximal
        accuracies.append(ref)
    assert method.allocation == method.candidates[min(range(len(accuracies)), key=lambda i: (-accuracies[i], i))][0]
    assert cost(method.allocation) <= limit


# ----------------------------------------------------------------------------- L0 gates

def test_l0_gates_at_zero_or_one_compute_the_exported_model():
    torch.manual_seed(0)
    model = ConvNet().double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 1, 8, 8, dtype=torch.double)
    graph = fxsparse.analyze(model, (x,))
    gates = ChannelGates(model, graph)
    keep = fxsparse.random_keep(graph, 0.5, torch.Generator().manual_seed(1))
    z = torch.cat([keep[g.id].double() for g in graph.prunable_groups])
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    out = torch.func.functional_call(model, gates.gated(tensors, z), (x,))
    small = fxsparse.export(model, graph, keep).eval()
    torch.testing.assert_close(out, small(x))
    # the probability that a gate is open, against draws
    with torch.no_grad():
        gates.log_alpha.copy_(torch.linspace(-3, 3, len(gates.log_alpha)))
    draws = torch.stack([gates.sample(torch.Generator().manual_seed(s)) for s in range(4000)])
    torch.testing.assert_close((draws > 0).double().mean(0), gates.open_probability().detach().double(), atol=0.03, rtol=0)


# ----------------------------------------------------------------------------- VR-PGE on trained weights

def test_forward_only_search_leaves_the_weights_and_follows_the_budget_ramp(data_dir, tmp_path, dense_run):
    from safetensors.torch import load_file

    trained = load_file(str(dense_run / "model.safetensors"))
    keeps = []
    cfg = _config(data_dir, tmp_path / "v", method="vrpge", keep=0.3, budget="flops", epochs=1, finetune_epochs=0,
                  init=str(dense_run), method_options={"weight_every": 0, "budget_ramp": 0.5})
    tr = Trainer(cfg, log=None, progress=False,
                 callbacks=[lambda t, ev, **i: ev == "step" and keeps.append((t.method.learner.keep,
                                                                             t.method.learner.expected_keep()))])
    tr.run()
    for name, p in tr.model.named_parameters():
        assert torch.equal(p.detach(), trained[name]), name  # forward-only: no weight moved
    steps = len(keeps)
    ramp = [0.3 + 0.7 * (1 - min(1.0, s / (0.5 * steps))) ** 3 for s in range(1, steps + 1)]
    assert [k for k, _ in keeps] == pytest.approx(ramp)
    assert all(used <= k + 1e-6 for k, used in keeps)
    assert keeps[-1][0] == pytest.approx(0.3)
    assert tr.history[-1]["realised_flops_frac"] <= 0.3 + 1e-9


def test_scale_projection_keeps_the_allocation_without_a_signal():
    """With no loss signal (every sample's loss equal) the scale projection leaves the widths
    uniform while the ramp tightens the budget, and spends the budget exactly; the gradient
    projection moves the allocation by the channels' costs alone."""
    from fxsparse.methods.vrpge import StructureLearner

    torch.manual_seed(0)
    model = zoo.create("resnet20", in_chans=1)
    x = torch.randn(4, 1, 28, 28)
    sp = fxsparse.compile(model, x, keep=0.5, compile=False)
    constant = lambda out, y: out.sum() * 0.0  # noqa: E731  (no signal: every sample's loss is 0)
    widths = {}
    for projection in ("scale", "gradient"):
        learner = StructureLearner(sp, keep=0.2, budget="flops", granularity="width", lr=None, steps=8,
                                   budget_ramp=0.5, projection=projection)
        for _ in range(8):
            learner.forward_only_step(constant, x, torch.zeros(4, dtype=torch.long))
            if projection == "scale":
                assert learner.expected_keep() == pytest.approx(learner.keep, rel=1e-9)
        widths[projection] = learner.scores.detach()
    assert torch.allclose(widths["scale"], widths["scale"][0].expand_as(widths["scale"]))
    assert float(widths["gradient"].max() - widths["gradient"].min()) > 0.1


def test_the_default_method_follows_the_setting(data_dir, tmp_path, monkeypatch, capsys, dense_run):
    """Without --method a run from scratch runs DEFAULT_METHOD and a run with --init runs
    DEFAULT_METHOD_TRAINED, whose own options for trained weights apply unless the user sets them."""
    import fxsparse.methods as methods
    from fxsparse.methods.vrpge import VRPGE

    assert TrainConfig().method == methods.DEFAULT_METHOD
    assert TrainConfig(init="w.pt").method == methods.DEFAULT_METHOD_TRAINED
    assert TrainConfig(init="w.pt", method="random").method == "random"
    monkeypatch.setitem(methods.defaults.VRPGE_FROM_TRAINED, "weight_every", 0)
    monkeypatch.setitem(methods.defaults.VRPGE_FROM_TRAINED, "granularity", "channel")
    trained = VRPGE.for_run(0.3, "flops", {"granularity": "width"}, trained=True)
    assert (trained.weight_every, trained.search_options["granularity"]) == (0, "width")  # the user's option wins
    assert VRPGE.for_run(0.3, "flops", {}, trained=False).weight_every == 1
    # the README's tables: fixed L1-filter masks in both settings, so one mark and one default in the help
    assert (methods.DEFAULT_METHOD, methods.DEFAULT_METHOD_TRAINED) == ("l1_filter", "l1_filter")
    assert cli_main(["train", "--list-methods"]) == 0
    out = capsys.readouterr().out
    assert "l1_filter (default)" in out and "(default with --init)" not in out
    assert "(default: l1_filter, from scratch and with --init)" in _train_help(capsys)
    assert _cli(data_dir, tmp_path / "c", "--init", str(dense_run), "--keep", "0.3", "--budget", "flops",
                "--epochs", "0", "--finetune-epochs", "0.5") == 0
    assert json.load(open(tmp_path / "c" / "summary.json"))["method"] == "l1_filter"
    assert _cli(data_dir, tmp_path / "s", "--keep", "0.3", "--budget", "flops", "--epochs", "0",
                "--finetune-epochs", "0.5") == 0
    assert json.load(open(tmp_path / "s" / "summary.json"))["method"] == methods.DEFAULT_METHOD
    # VR-PGE's flags without --method vrpge: an error that names it, not a run that drops them
    capsys.readouterr()
    assert _cli(data_dir, tmp_path / "f", "--granularity", "channel", "--samples", "3") == 2
    err = capsys.readouterr().err
    assert "--granularity, --samples: flags of vrpge" in err and "--method l1_filter (the default)" in err, err
    assert "add --method vrpge" in err and not (tmp_path / "f").exists()
    assert _cli(data_dir, tmp_path / "f", "--method", "random", "--score-lr", "0.1") == 2
    assert "--score-lr: a flag of vrpge, which --method random does not take" in capsys.readouterr().err
    # a default per setting: each marked, and the help names both
    monkeypatch.setattr(methods.defaults, "DEFAULT_METHOD", "vrpge")
    assert TrainConfig().method == "vrpge" and TrainConfig(init="w.pt").method == "l1_filter"
    capsys.readouterr()
    assert cli_main(["train", "--list-methods"]) == 0
    out = capsys.readouterr().out
    assert "vrpge (default)" in out and "l1_filter (default with --init)" in out
    assert "(default: vrpge; with --init, l1_filter)" in _train_help(capsys)


def _train_help(capsys) -> str:
    from fxsparse import cli

    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.build_parser(["train"]).parse_args(["train", "--help"])
    return " ".join(capsys.readouterr().out.split())
