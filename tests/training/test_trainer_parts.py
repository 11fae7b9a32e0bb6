"""The trainer's parts on their own: the model hooks a method reaches the loop through
(``graph_for_run``, ``attach``, ``weight_density``, ``detach``), the phase plan and its
schedules, the plain step of the trainer's phases, history rows, the checkpoint's contents
(RunState) and the resume's settings check. The whole loop: tests/training/test_trainer.py."""
import dataclasses
import json
import math
import os
import sys

import pytest
import torch
import torch.nn as nn

from fxsparse.analysis.flops import TRAIN_FACTOR
from fxsparse.training import checkpoint
from fxsparse.training.config import TrainConfig
from fxsparse.training.device import Precision
from fxsparse.training.distributed import Group
from fxsparse.training.history import COLUMNS, RowTally, keep_fields, table_header, table_line
from fxsparse.training.phases import PhasePlan, set_lr
from fxsparse.training.plain_step import make_plain_step
from fxsparse.training.resume_settings import check_resume_settings, differences
from fxsparse.training.run_state import FORMAT, RunRecord, RunState
from fxsparse.training.trainer import Trainer



def _config(data_dir, out, **kw):
    base = dict(model="zoo:lenet5", data="mnist", data_root=data_dir, batch_size=32, epochs=1, finetune_epochs=0,
                compile=False, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


# ----- the method's model hooks, called by the loop ---------------------------------------

def _recording_method(calls):
    """A method whose model hooks record their calls: it masks no weight for real, says it
    keeps a quarter of them, and trains the dense model (the trainer's ``dense`` phase)."""
    from fxsparse.methods import Method

    class Recording(Method):
        level = "weight"

        def graph_for_run(self, graph, model_name):
            calls.append(("graph_for_run", model_name))
            return graph

        def init(self, state):
            calls.append("init")

        def attach(self, model):
            calls.append(("attach", type(model).__name__))

        def after_backward(self, state):
            if "after_backward" not in calls:  # once is enough to place it
                calls.append("after_backward")

        def weight_density(self):
            calls.append("weight_density")
            return 0.25

        def detach(self, model):
            calls.append("detach")

    return Recording


def test_the_loop_reaches_the_method_through_its_model_hooks(data_dir, tmp_path):
    """The trainer asks the method which graph it trains with, lets it attach its masks after
    ``init`` and detach them for the final model, and writes the density it reports into the
    rows of the trainer's phases: no branch on the method's level."""
    from fxsparse.methods import register_method, unregister_method

    calls = []
    register_method("recording_hooks_for_test")(_recording_method(calls))
    try:
        out = tmp_path / "hooks"
        Trainer(_config(data_dir, out, method="recording_hooks_for_test", limit_batches=2), log=None,
                progress=False).run()
    finally:
        unregister_method("recording_hooks_for_test")
    model_hooks = [c for c in calls if c != "after_backward"]
    assert model_hooks == [("graph_for_run", "zoo:lenet5"), "init", ("attach", "LeNet5"), "weight_density", "detach"]
    assert calls.index("after_backward") < calls.index("weight_density")  # it trained between attach and the row
    row = json.load(open(out / "history.json"))[-1]
    assert row["phase"] == "dense" and row["expected_keep"] == row["realised_keep"] == 0.25
    assert row["realised_flops_frac"] == 1.0  # masked weights cost dense FLOPs


def test_weight_level_defaults_apply_and_bake_in_parametrized_masks():
    from fxsparse.methods import Method

    class Half(Method):
        level = "weight"

        def weight_masks(self):
            return {"0.weight": torch.arange(8).reshape(2, 4) % 2 == 0}

    model = nn.Sequential(nn.Linear(4, 2))
    method = Half(keep=0.5)
    method.attach(model)
    assert torch.equal(model[0].weight[:, 1], torch.zeros(2))  # masked through the parametrization
    assert method.weight_density() == 0.5
    method.detach(model)
    assert not hasattr(model[0], "parametrizations") and torch.equal(model[0].weight[:, 1], torch.zeros(2))

    channel = Method(keep=0.5)  # a channel method changes nothing in the model
    channel.attach(model)
    assert channel.weight_density() is None and not hasattr(model[0], "parametrizations")


def test_graph_for_run_refuses_a_channel_method_without_prunable_groups():
    import fxsparse
    from fxsparse.methods import get_method

    graph = fxsparse.analyze(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), torch.randn(2, 4))
    assert not graph.prunable_groups
    with pytest.raises(fxsparse.NoPrunableGroupError, match="m.py has no prunable channel group, so channel method 'random'"):
        get_method("random")(keep=0.5).graph_for_run(graph, "m.py")
    assert get_method("dense")().graph_for_run(graph, "m.py") is None  # analysed for its FLOPs only


# ----- the phase plan and the schedules -----------------------------------------------------

def test_phase_plan_steps_and_schedules():
    from fxsparse.methods import Method

    config = TrainConfig(epochs=1.5, finetune_epochs=1, finetune_lr=0.002, lr=0.1, limit_batches=4)
    plan = PhasePlan(config, batches_per_epoch=10)
    assert (plan.steps_per_epoch, plan.total_steps) == (4, 10)  # --limit-batches caps an epoch

    class SearchThenFinetune(Method):
        def phases(self, first, total):
            return [("search", first), ("finetune", total - first)]

    plan.plan(SearchThenFinetune())
    assert plan.phases == [("search", 6), ("finetune", 4)]
    assert [plan.at(s) for s in (0, 5, 6, 9)] == [("search", 0, 6)] * 2 + [("finetune", 6, 4)] * 2
    with pytest.raises(IndexError):
        plan.at(10)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert plan.weight_schedule(opt, "finetune", 6, 4) == (opt, 0.002, 6, 4)  # its own cosine
    assert plan.weight_schedule(opt, "search", 0, 6) == (opt, 0.1, 0, 6)  # ends where the fine-tune restarts
    replaced = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    set_lr([(opt, 0.1, 0, 6), (lambda: replaced, 1.0, 0, 6)], 3)  # a callable: an optimizer a method may replace
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05) and replaced.param_groups[0]["lr"] == pytest.approx(0.5)


def test_a_run_shorter_than_one_step_is_refused():
    with pytest.raises(ValueError, match="less than one step of 10 per epoch"):
        PhasePlan(TrainConfig(epochs=0.01, finetune_epochs=0), batches_per_epoch=10)


# ----- the plain step ----------------------------------------------------------------------

def _plain(model, optimizer, **options):
    device = torch.device("cpu")
    return make_plain_step(model, optimizer, nn.functional.cross_entropy, precision=Precision("fp32", device),
                           group=Group(device), device=device, compile=False, **options)


def test_plain_step_skips_a_non_finite_loss_and_restores_the_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = _plain(model, optimizer)
    before = [t.clone() for t in [*model.parameters(), *model.buffers()]]
    loss = step(torch.full((5, 4), float("nan")), torch.zeros(5, dtype=torch.long))
    assert not math.isfinite(float(loss)) and step.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, [*model.parameters(), *model.buffers()]))
    loss = step(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    assert math.isfinite(float(loss)) and step.skipped == 1
    assert not torch.equal(before[0], model[0].weight)


def test_plain_step_calls_the_hooks_around_the_update_and_freezes_batchnorm_on_request():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    weight = model[0].weight
    step = _plain(model, optimizer, bn_eval=True,
                  after_backward=lambda: seen.append(("backward", weight.grad is not None, weight.clone())),
                  after_step=lambda: seen.append(("step", weight.clone())))
    stats = model[1].running_mean.clone()
    step(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    assert [s[0] for s in seen] == ["backward", "step"] and seen[0][1]  # gradients exist before the update
    assert not torch.equal(seen[0][2], seen[1][1])  # the update ran between the hooks
    assert torch.equal(model[1].running_mean, stats)  # eval-mode BatchNorm: statistics unchanged


# ----- history rows ------------------------------------------------------------------------

class _Flops:
    """A SubnetFlops stand-in: forward FLOPs = 100 per kept channel of 4, 400 dense."""
    dense = 400.0

    def __call__(self, flat):
        return torch.as_tensor(100.0 * flat.double().sum())

    def flat(self, masks):
        return torch.cat([masks[g] for g in sorted(masks)]).float()

    def fraction(self, flat):
        return float(self(flat)) / self.dense


class _Group:
    def __init__(self, gid, size):
        self.id, self.size, self.layers = gid, size, [f"conv{gid}"]
        self.members = []


class _Method:
    def __init__(self, density=None, fields=None):
        self.density, self.fields = density, fields or {}

    def weight_density(self):
        return self.density

    def report(self, phase, tally):
        return dict(self.fields)


def test_row_tally_counts_masks_and_returns_their_training_flops():
    tally = RowTally(_Flops())
    keep, frac, cost = tally.add(torch.tensor([True, False, True, True]), batch_size=8)
    assert (keep, frac, cost) == (0.75, 0.75, TRAIN_FACTOR * 300.0 * 8)
    tally.add(torch.tensor([True, False, False, False]), batch_size=8)
    assert (tally.count, tally.channels, tally.flops) == (2, 1.0, 1.0)
    assert torch.equal(tally.kept, torch.tensor([2.0, 0.0, 1.0, 1.0], dtype=torch.double))
    assert tally.mean_loss() == 0.0  # no step counted a loss yet
    tally.losses += [1.0, 3.0]
    assert tally.mean_loss() == 2.0


def test_keep_fields_of_each_kind_of_phase():
    graph = type("G", (), {"prunable_groups": [_Group(0, 2), _Group(1, 2)]})()
    masks = {0: torch.tensor([True, False]), 1: torch.tensor([True, True])}
    tally, flops = RowTally(_Flops()), _Flops()
    fixed = keep_fields("fixed", False, masks, tally, _Method(), graph, flops)
    assert fixed["realised_keep"] == fixed["expected_keep"] == 0.75 and fixed["realised_flops_frac"] == 0.75
    assert fixed["group_keep"] == [0.5, 1.0] and fixed["group_names"] == ["conv0 (2 ch)", "conv1 (2 ch)"]
    weights = keep_fields("dense", False, None, tally, _Method(density=0.3), graph, flops)
    assert weights == {"expected_keep": 0.3, "expected_flops_frac": 1.0, "realised_keep": 0.3, "realised_flops_frac": 1.0}
    own = keep_fields("search", True, masks, tally, _Method(density=0.3, fields={"realised_keep": 0.6}), graph, flops)
    assert own["realised_keep"] == 0.6 and own["expected_keep"] == 1.0 and "group_keep" not in own  # reports itself


def test_table_line_lines_up_with_the_header():
    row = {"epoch": 1, "phase": "fixed", "loss": 0.5, "test_acc_pct": 91.234, "expected_keep": 0.5,
           "realised_keep": 0.5, "realised_flops_frac": 0.3, "train_tflop": 0.0123, "wall_s": 12.34, "skipped": 0}
    assert len(table_line(row)) == len(table_header()) == sum(w for _, w in COLUMNS) + 2 * (len(COLUMNS) - 1)
    assert table_line(row).split() == ["1", "fixed", "0.5000", "91.23", "0.500", "0.500", "0.300", "0.012", "12.3"]
    assert table_line({**row, "skipped": 2}).endswith("  (2 steps skipped: non-finite loss)")


# ----- checkpoints ---------------------------------------------------------------------------

def test_resume_settings_may_differ_only_in_where_the_run_lives():
    recorded = dataclasses.asdict(TrainConfig(lr=0.1, out="a", device="cpu"))
    check_resume_settings(recorded, {**recorded, "out": "b", "device": "cuda", "log_dir": "tb"}, "b")
    with pytest.raises(ValueError, match=r"--resume: the run in 'b' was trained with other settings \(--lr: 0.1 in "
                                         r"the checkpoint, 0.2 given\)\. To continue it, give the checkpoint's values"):
        check_resume_settings(recorded, {**recorded, "lr": 0.2}, "b")


def test_resume_compares_effective_options_so_an_older_vrpge_checkpoint_resumes():
    """An older CLI recorded every VR-PGE flag with its default (and flags since removed); the
    CLI now passes only the flags given: the effective options are the same, so it resumes.
    A true difference names the flag, both values and what to do."""
    from fxsparse.methods.defaults import vrpge_defaults

    given = dataclasses.asdict(TrainConfig(method="vrpge", out="o"))  # no VR-PGE flag given
    old_options = {**vrpge_defaults(trained=False), "form": "exact", "reuse_loss": True}
    older = {k: v for k, v in given.items() if k != "bn_batches"}  # a field added since: its default
    older["method_options"] = old_options
    check_resume_settings(older, given, "o")
    assert differences(older, given) == []
    # an older trained-weights run: the defaults of that setting
    trained = {**given, "init": "w.pt"}
    check_resume_settings({**trained, "method_options": vrpge_defaults(trained=True)}, trained, "o")
    with pytest.raises(ValueError) as exc:
        check_resume_settings(older, {**given, "method_options": {"granularity": "channel"}}, "o")
    text = str(exc.value)
    assert "--granularity: 'width' in the checkpoint, 'channel' given" in text, text
    assert "give the checkpoint's values" in text and "another --out" in text
    with pytest.raises(ValueError, match="--method: 'vrpge' in the checkpoint, 'l1_filter' given"):
        check_resume_settings(older, {**given, "method": "l1_filter", "method_options": {}}, "o")


def test_run_state_round_trips_and_reads_format_1():
    """The checkpoint's one owner: to_dict/from_dict keep every field; a format-1 dict (no
    "format", "small" absent) loads; a newer format is refused with what to do."""
    record = RunRecord(epoch=2, history=[{"epoch": 1}], train_flops=3.0, elapsed=4.0, masks={0: torch.ones(2)},
                       oneshot_acc=0.5)
    state = RunState(config={"lr": 0.1}, step=7, record=record, model={"w": torch.ones(1)}, method={"m": 1},
                     generator=torch.Generator().get_state(), rng=checkpoint.rng_state(), phase_built="fixed",
                     optimizer={"state": {}}, small=None, scaler=None)
    d = state.to_dict()
    assert d["format"] == FORMAT and "small" not in d and d["epoch"] == 2 and d["step"] == 7
    back = RunState.from_dict(d)
    assert back.record == record and back.step == 7 and back.phase_built == "fixed" and back.small is None
    old = {k: v for k, v in d.items() if k != "format"}
    assert RunState.from_dict(old).record == record
    with pytest.raises(ValueError, match="newer fxsparse"):
        RunState.from_dict({**d, "format": FORMAT + 1})


def test_plain_step_counts_its_compiled_graphs(monkeypatch):
    """The plain step's graphs are counted by the same counter as a SparseModel's (StepCompiler)."""
    from fxsparse.step.compiler import StepCompiler

    monkeypatch.setattr(StepCompiler, "backend", _eager_counted)  # count without inductor's minutes
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = make_plain_step(model, opt, nn.functional.cross_entropy, precision=Precision("fp32", torch.device("cpu")),
                           group=Group(torch.device("cpu")), device=torch.device("cpu"), compile=True)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    step(x, y)
    step(x, y)
    assert step.compiler.compilations == 1
    eager = make_plain_step(model, opt, nn.functional.cross_entropy, precision=Precision("fp32", torch.device("cpu")),
                            group=Group(torch.device("cpu")), device=torch.device("cpu"), compile=False)
    eager(x, y)
    assert eager.compiler.compilations == 0


def _eager_counted(compiler, gm, example_inputs):
    compiler.compilations += 1
    return gm.forward


def test_the_trainer_asks_no_method_its_level():
    """The loop reaches methods through their hooks: it neither reads a method's level nor
    imports a method's module."""
    import fxsparse.training.trainer as T

    source = open(T.__file__).read()
    assert ".level" not in source and "unstructured" not in source
