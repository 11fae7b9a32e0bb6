"""``fxsparse train`` end to end on generated IDX files: resume after a kill mid-epoch is
bit-identical, an interrupted checkpoint write never corrupts the previous one, bad input
gets clear errors, a NaN loss skips the step, FLOPs accounting matches FlopCounterMode on
the exported model, and ``fxsparse report`` writes its plots."""
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import fxsparse

from fxsparse.training import checkpoint
from fxsparse.cli import main as cli_main
from fxsparse.training.trainer import TrainConfig, Trainer

from idx_files import make_idx_dir  # noqa: E402


def _args(data_dir, out, *extra):
    # VR-PGE (its search phase) unless ``extra`` names another --method: the default is l1_filter
    return ["train", "--model", "zoo:lenet5", "--data", "mnist", "--data-root", data_dir, "--batch-size", "32",
            "--epochs", "2", "--finetune-epochs", "1", "--method", "vrpge", "--no-compile", "--threads", "1",
            "--no-progress", "--out", str(out), *extra]


def _run_cli(args, kill_at_step=None):
    """Run `fxsparse train` in a fresh process; optionally SIGKILL itself after a given step."""
    code = ("import os, signal, sys, fxsparse.training.trainer as T\n"
            "kill = int(sys.argv[1])\n"
            "orig = T.Trainer.__init__\n"
            "def init(self, *a, **k):\n"
            "    orig(self, *a, **k)\n"
            "    if kill >= 0:\n"
            "        self.callbacks.append(lambda tr, ev, **i: ev == 'step' and tr.state.step == kill and os.kill(os.getpid(), signal.SIGKILL))\n"
            "T.Trainer.__init__ = init\n"
            "from fxsparse.cli import main\n"
            "sys.exit(main(sys.argv[2:]))\n")
    return subprocess.run([sys.executable, "-c", code, str(-1 if kill_at_step is None else kill_at_step), *args],
                          capture_output=True, text=True, timeout=300)


def _run_here(args):
    """Run `fxsparse train` in this process (``cli_main``): the exit code. For the runs whose
    process boundary is not the point (the uninterrupted reference runs, the resumes of the
    phase-switch test); the killed runs stay subprocesses (a real SIGKILL)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli_main(args)


def _final_state(out):
    model = fxsparse.load(out)  # model.safetensors + model.json, no pickle
    history = json.load(open(os.path.join(out, "history.json")))
    return model.state_dict(), [(r["loss"], r["test_acc_pct"], r["train_tflop"], r.get("score_hist")) for r in history]


@pytest.mark.slow  # two `fxsparse train` subprocesses and one run in this process: ~15 s
def test_resume_after_kill_mid_epoch_is_bit_identical(data_dir, tmp_path):
    """The uninterrupted reference run goes in this process (cut from a subprocess for #32: it
    saves an interpreter start and imports, ~3.5 CPU s); the killed run and its resume stay fresh
    processes, so a resume that leans on anything but the checkpoint still fails here."""
    assert _run_here(_args(data_dir, tmp_path / "full")) == 0
    killed = _run_cli(_args(data_dir, tmp_path / "cut"), kill_at_step=9)  # 6 steps per epoch: mid epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert json.load(open(tmp_path / "cut" / "history.json"))[-1]["epoch"] == 1
    resumed = _run_cli(_args(data_dir, tmp_path / "cut", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    a_state, a_hist = _final_state(tmp_path / "full")
    b_state, b_hist = _final_state(tmp_path / "cut")
    assert a_hist == b_hist
    assert a_state.keys() == b_state.keys()
    for k in a_state:
        assert torch.equal(a_state[k], b_state[k]), k


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    checkpoint.save_atomic({"epoch": 1, "w": torch.arange(5)}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process dies while writing

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    state = checkpoint.load(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(5))
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


class _RunsCode:
    """A pickle that would create a file when loaded: what a tampered checkpoint could hold."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_loads_with_weights_only_and_restores_every_rng(tmp_path):
    import random

    import numpy as np

    path = str(tmp_path / "last.pt")
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    np.random.standard_normal()  # numpy's state then holds a cached gaussian too
    checkpoint.save_atomic({"rng": checkpoint.rng_state(), "epoch": 4}, path)
    drawn = (torch.rand(3), random.random(), np.random.standard_normal(5), np.random.randint(1 << 30))
    torch.load(path, weights_only=True)  # tensors and plain values only
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])
    again = (torch.rand(3), random.random(), np.random.standard_normal(5), np.random.randint(1 << 30))
    assert torch.equal(drawn[0], again[0]) and drawn[1] == again[1]
    assert np.array_equal(drawn[2], again[2]) and drawn[3] == again[3]


@pytest.mark.parametrize("content", ["numpy", "code"])
def test_checkpoint_with_pickled_objects_is_refused_and_runs_nothing(tmp_path, content):
    """An older fxsparse pickled numpy's RNG state (a numpy array): refused with what to do, as is
    a file whose pickle would run code (it never runs)."""
    import numpy as np

    out, marker = tmp_path / "run", tmp_path / "ran"
    out.mkdir()
    obj = {"rng": {"numpy": np.random.get_state()}} if content == "numpy" else {"epoch": _RunsCode(str(marker))}
    torch.save(obj, str(out / "last.pt"))
    with pytest.raises(ValueError, match="start the run again without --resume, after removing") as exc:
        checkpoint.load(str(out / "last.pt"))
    assert str(out) in str(exc.value)
    assert not marker.exists()


def test_resume_from_an_older_checkpoint_says_to_restart(data_dir, tmp_path, capsys):
    import numpy as np

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"epoch": 1, "rng": {"numpy": np.random.get_state()}}, str(out / "last.pt"))
    assert cli_main(_args(data_dir, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith("fxsparse train: error: cannot resume from") and "older fxsparse" in err, err


def test_an_older_vrpge_checkpoint_resumes_under_the_cli(data_dir, tmp_path, capsys):
    """An older CLI recorded every VR-PGE flag in the checkpoint's config (the defaults, and
    flags since removed); the CLI now passes only the flags given. --resume compares the
    effective options, so the run resumes; a flag that truly differs is refused by name."""
    from fxsparse.methods.defaults import vrpge_defaults

    out = tmp_path / "old"

    class Stop(Exception):
        pass

    def stop(tr, event, **info):
        if event == "epoch":  # after the first epoch's checkpoint
            raise Stop

    with pytest.raises(Stop):
        Trainer(_config(data_dir, out), log=None, progress=False, callbacks=[stop]).run()
    path = checkpoint.run_file(str(out))
    state = checkpoint.load(path)
    state["config"]["method_options"] = {**vrpge_defaults(trained=False), "form": "exact", "reuse_loss": True}
    del state["format"]  # as an older fxsparse wrote it
    torch.save(state, path)
    args = _args(data_dir, out, "--epochs", "1", "--finetune-epochs", "1")
    assert cli_main(args + ["--granularity", "channel", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--granularity: 'width' in the checkpoint, 'channel' given" in err and "another --out" in err, err
    assert cli_main(args + ["--resume"]) == 0
    assert f"resumed {out} at epoch 2" in capsys.readouterr().out
    assert [r["epoch"] for r in json.load(open(out / "history.json"))] == [1, 2]


def _config(data_dir, out, **kw):
    # VR-PGE (its search phase) unless ``kw`` names another method: the default is l1_filter
    base = dict(model="zoo:lenet5", data="mnist", data_root=data_dir, batch_size=32, epochs=1, finetune_epochs=1,
                method="vrpge", compile=False, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, float("nan"), True])
def test_bad_keep(data_dir, tmp_path, keep, capsys):
    with pytest.raises(ValueError, match="keep must be a number in"):
        Trainer(_config(data_dir, tmp_path, keep=keep), log=None)
    if not isinstance(keep, bool):
        assert cli_main(_args(data_dir, tmp_path / "cli", "--keep", str(keep))) == 2
        assert "keep must be a number" in capsys.readouterr().err
        assert not os.path.exists(tmp_path / "cli")


def test_bad_data_and_model(data_dir, tmp_path, capsys):
    assert cli_main(_args(str(tmp_path / "nowhere"), tmp_path / "o1")) == 2
    assert "nowhere" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad / name).write_bytes(b"this is not an IDX file")
    assert cli_main(_args(str(bad), tmp_path / "o2")) == 2
    assert "magic" in capsys.readouterr().err.lower()
    assert cli_main(_args(data_dir, tmp_path / "o3", "--model", "zoo:no_such_model")) == 2
    assert "no zoo model" in capsys.readouterr().err
    no_groups = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))  # every channel is an input or a class
    with pytest.raises(fxsparse.NoPrunableGroupError, match="no prunable channel group"):
        Trainer(_config(data_dir, tmp_path / "o4"), model=no_groups, log=None)
    with pytest.raises(fxsparse.NoPrunableGroupError, match="no prunable channel group"):
        fxsparse.compile(no_groups, torch.zeros(2, 1, 28, 28), compile=False)
    assert issubclass(fxsparse.NoPrunableGroupError, fxsparse.FxsparseError)


def test_data_path_is_checked_before_the_out_collision(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"a previous run")
    assert cli_main(_args(str(tmp_path / "nowhere"), out)) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "already holds a run" not in err
    assert cli_main(_args(data_dir, out)) == 2  # with the data path fixed: the collision
    assert "already holds a run" in capsys.readouterr().err


def test_version_and_method_list(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        cli_main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"fxsparse {version('fxsparse')}" == f"fxsparse {fxsparse.__version__}"
    assert cli_main(["train", "--list-methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["method", "level", "paper"]
    rows = lines[2:]
    assert [r.split()[0] for r in rows] == sorted(r.split()[0] for r in rows)
    assert [r for r in rows if "(default)" in r] == [r for r in rows if r.startswith("l1_filter (default)")]
    assert len([r for r in rows if "(default)" in r]) == 1
    level_col = lines[0].index("level")  # every row's level starts in the header's column
    assert all(r[level_col:].split()[0] in ("channel", "weight", "none") for r in rows), rows


def test_existing_run_is_never_overwritten(data_dir, tmp_path):
    out = tmp_path / "run"
    Trainer(_config(data_dir, out, epochs=1, finetune_epochs=0, limit_batches=2), log=None, progress=False).run()
    before = (out / "last.pt").read_bytes()
    assert cli_main(_args(data_dir, out)) == 2
    assert (out / "last.pt").read_bytes() == before


class _NanAt:
    """A loader wrapper that poisons one batch with NaN."""

    def __init__(self, loader, bad_index):
        self.loader, self.bad_index = loader, bad_index
        self.sampler, self.dataset = loader.sampler, loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, (x, y) in enumerate(self.loader):
            if i == self.bad_index:
                x = x.clone()
                x[0, 0, 0, 0] = float("nan")
            yield x, y


@pytest.mark.parametrize("method", ["vrpge", "dense"])
def test_nan_loss_skips_the_step_with_a_warning(data_dir, tmp_path, method):
    from fxsparse.training.data import make_loaders

    train, test, info = make_loaders("mnist", data_dir, batch_size=32, drop_last=True)
    cfg = _config(data_dir, tmp_path / method, method=method, epochs=1, finetune_epochs=0)
    tr = Trainer(cfg, loaders=(_NanAt(train, 2), test, info), log=None, progress=False)
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        tr.run()
    assert tr.history[-1]["skipped"] == 1
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert all(torch.isfinite(b).all() for b in tr.model.buffers() if b.is_floating_point())


def test_fixed_mask_method_flops_match_the_exported_model(data_dir, tmp_path):
    from fxsparse.analysis.graph import count_flops

    out = tmp_path / "random"
    tr = Trainer(_config(data_dir, out, method="random", epochs=1, finetune_epochs=0), log=None, progress=False)
    summary = tr.run()
    small = fxsparse.load(out)
    x = torch.zeros(1, 1, 28, 28)
    per_sample, _ = count_flops(small, (x,))
    steps = tr.state.steps_per_epoch
    assert summary["train_tflop"] * 1e12 == pytest.approx(3 * per_sample * 32 * steps, rel=1e-9)
    assert summary["params"] < summary["dense_params"]


def test_vrpge_history_report_and_exported_model(data_dir, tmp_path):
    out = tmp_path / "vr"
    tr = Trainer(_config(data_dir, out, budget="flops", keep=0.4), log=None, progress=False)
    summary = tr.run()
    hist = json.load(open(out / "history.json"))
    assert [r["phase"] for r in hist] == ["search", "finetune"]
    assert hist[0]["expected_flops_frac"] <= 0.4 + 1e-6
    assert hist[1]["realised_flops_frac"] <= 0.4 + 1e-6  # the final mask meets the budget exactly
    assert hist[-1]["group_names"] == [f"{g.layers[0]} ({g.size} ch)" for g in tr.graph.prunable_groups]  # LeNet: no coupling
    assert len(hist[-1]["group_keep"]) == len(hist[-1]["group_names"])
    model = fxsparse.load(out)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert summary["params"] < summary["dense_params"]
    assert cli_main(["report", str(out)]) == 0
    import matplotlib.image as mpimg

    for name in ("curves.png", "keep_per_layer.png", "scores.png"):
        img = mpimg.imread(out / name)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0


@pytest.mark.slow  # two `fxsparse train` subprocesses (the killed runs) and four runs in this process: ~20 s
def test_search_ending_mid_epoch_resumes_bit_identically(data_dir, tmp_path):
    """--epochs 0.5: the search ends after half an epoch (its own history row, no checkpoint),
    the fine-tune takes over in the same epoch; a kill after the switch resumes bit-identically.

    Cut for #32 (six subprocesses -> two): the reference runs and the resumes run in this process
    (``_run_here``); the point here is where the phases switch and what the checkpoint replays,
    the fresh-process resume is test_resume_after_kill_mid_epoch_is_bit_identical's. The killed
    runs stay subprocesses (a real SIGKILL)."""
    frac = ("--epochs", "0.5", "--finetune-epochs", "1")
    assert _run_here(_args(data_dir, tmp_path / "full", *frac)) == 0
    hist = json.load(open(tmp_path / "full" / "history.json"))
    assert [(r["epoch"], r["step"], r["phase"]) for r in hist] == [(0.5, 3, "search"), (1, 6, "finetune"),
                                                                    (1.5, 9, "finetune")]
    assert hist[0]["score_hist"] and not hist[1].get("score_hist")
    killed = _run_cli(_args(data_dir, tmp_path / "cut", *frac), kill_at_step=8)  # in the last (half) epoch
    assert killed.returncode == -signal.SIGKILL
    assert _run_here(_args(data_dir, tmp_path / "cut", *frac, "--resume")) == 0
    a_state, a_hist = _final_state(tmp_path / "full")
    b_state, b_hist = _final_state(tmp_path / "cut")
    assert a_hist == b_hist
    for k in a_state:
        assert torch.equal(a_state[k], b_state[k]), k
    # the switch replayed from a checkpoint taken during the search (epoch 1 of a 1.5-epoch search)
    frac = ("--epochs", "1.5", "--finetune-epochs", "0.5")
    assert _run_here(_args(data_dir, tmp_path / "full2", *frac)) == 0
    killed = _run_cli(_args(data_dir, tmp_path / "cut2", *frac), kill_at_step=11)
    assert killed.returncode == -signal.SIGKILL
    assert _run_here(_args(data_dir, tmp_path / "cut2", *frac, "--resume")) == 0
    a_state, a_hist = _final_state(tmp_path / "full2")
    c_state, c_hist = _final_state(tmp_path / "cut2")
    assert len(a_hist) == 3 and a_hist == c_hist
    for k in a_state:
        assert torch.equal(a_state[k], c_state[k]), k


@pytest.mark.parametrize("finetune_lr", [None, 0.003])
def test_learning_rate_schedules(data_dir, tmp_path, finetune_lr):
    """Weights: one cosine over search + fine-tune (what a fixed-mask method gets over the
    same epochs), or a restart at ``finetune_lr``. Scores: a cosine that ends with the search."""
    seen = []

    def record(tr, event, **info):
        if event == "step":
            seen.append((tr.state.step - 1, tr.phase.name, [g["lr"] for g in tr.phase.optimizer.param_groups][0],
                         tr.method.learner.optimizer.param_groups[0]["lr"] if tr.phase.name == "search" else None))

    cfg = _config(data_dir, tmp_path / "run", epochs=2, finetune_epochs=1, lr=0.04, method_options={"score_lr": 0.2},
                  finetune_lr=finetune_lr)
    Trainer(cfg, log=None, progress=False, callbacks=[record]).run()
    total = len(seen)
    search = [s for s in seen if s[1] == "search"]
    cos = lambda t, n: 0.5 * (1 + math.cos(math.pi * t / n))
    for step, phase, lr, score_lr in seen:
        if phase == "search":
            assert score_lr == pytest.approx(0.2 * cos(step, len(search)))
            want = 0.04 * cos(step, total if finetune_lr is None else len(search))
        else:
            want = 0.04 * cos(step, total) if finetune_lr is None else finetune_lr * cos(step - len(search), total - len(search))
        assert lr == pytest.approx(want), (step, phase)
    with pytest.raises(ValueError, match="finetune-lr"):
        Trainer(_config(data_dir, tmp_path / "bad", finetune_lr=-1.0), log=None)


def test_fractional_epochs_below_one_step(data_dir, tmp_path):
    with pytest.raises(ValueError, match="less than one step"):
        Trainer(_config(data_dir, tmp_path / "tiny", epochs=0.01, finetune_epochs=0), log=None)
    assert not (tmp_path / "tiny").exists()


def _snapshot(out):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode) for p in sorted(out.iterdir())}


def test_resuming_a_finished_run_changes_nothing(data_dir, tmp_path, capsys):
    out = tmp_path / "B"
    args = _args(data_dir, out, "--epochs", "0.5", "--finetune-epochs", "0.5", "--seed", "3")
    assert cli_main(args) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert set(before) == {"last.pt", "history.json", "summary.json", "model.safetensors", "model.json",
                           "history.csv", "steps.csv"}
    summary = json.loads(before["summary.json"][0])
    small = fxsparse.load(out)
    assert summary["params"] == sum(p.numel() for p in small.parameters()) < summary["dense_params"]
    assert cli_main(args + ["--resume"]) == 0
    said = capsys.readouterr().out
    assert "is finished" in said and "nothing to do" in said and "resumed" not in said
    assert _snapshot(out) == before  # bytes, modification times and modes

    # killed after the last checkpoint but before the export: the resume writes the exported model
    (out / "model.json").unlink()
    (out / "model.safetensors").unlink()
    (out / "summary.json").unlink()
    assert cli_main(args + ["--resume"]) == 0
    again = fxsparse.load(out)
    assert again.state_dict().keys() == small.state_dict().keys()
    for k, v in small.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert json.loads((out / "summary.json").read_text())["params"] == summary["params"]


def test_a_run_that_ends_with_the_search_exports_its_mask(data_dir, tmp_path):
    out = tmp_path / "search_only"
    tr = Trainer(_config(data_dir, out, epochs=1, finetune_epochs=0), log=None, progress=False)
    summary = tr.run()
    small = fxsparse.load(out)
    assert summary["params"] == sum(p.numel() for p in small.parameters()) < summary["dense_params"]
    # the exported model is the one the last history row evaluated
    assert 100 * tr.evaluator.accuracy(small.net, tr.test_loader) == tr.history[-1]["test_acc_pct"]


def test_files_follow_the_umask(data_dir, tmp_path):
    old = os.umask(0o027)
    try:
        out = tmp_path / "umask"
        Trainer(_config(data_dir, out, epochs=0.5, finetune_epochs=0.5), log=None, progress=False).run()
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"last.pt": 0o640, "history.json": 0o640, "summary.json": 0o640,
                     "model.safetensors": 0o640, "model.json": 0o640, "history.csv": 0o640, "steps.csv": 0o640}, modes


def test_zoo_names_the_input_and_reports_progress(capsys):
    assert cli_main(["zoo", "lenet5", "resnet20"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert "input (CxHxW)" in lines[0] and "MFLOPs per sample at that input" in lines[0]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:]}
    assert set(rows) == {"lenet5", "resnet20"}
    assert rows["lenet5"][3] == "1x28x28" and rows["resnet20"][3] == "3x32x32"
    assert "[1/2] lenet5 at input 1x28x28 ..." in captured.err and "[2/2] resnet20" in captured.err
    assert cli_main(["zoo", "no_such_model"]) == 2
    assert "no zoo model 'no_such_model'" in capsys.readouterr().err


def test_compiles_are_announced_before_the_wait(data_dir, tmp_path):
    """The first compiled step says it compiles (before the wait) and how long it took; a
    capacity change that drops compiled graphs says it recompiles."""
    said = []
    cfg = _config(data_dir, tmp_path / "c", method="random", epochs=0.5, finetune_epochs=0, compile=True)
    tr = Trainer(cfg, log=said.append, progress=False)
    summary = tr.run()
    assert 0 < summary["compile_s"] <= summary["wall_s"]  # the summary reports the compile time
    # a fixed-mask run lists its compiled graphs too (issue #29: only a SparseModel's were counted)
    (compiled,) = summary["compilations"]
    assert compiled["phase"] == "fixed" and compiled["step"] == 1 and compiled["graphs"] >= 1
    assert compiled["compiles"] == "the training step of the exported model"
    assert compiled["compile_s"] == summary["compile_s"]
    first = next(i for i, s in enumerate(said) if s.startswith("compiling the training step of the exported model"))
    done = next(i for i, s in enumerate(said) if s.startswith("compiled in "))
    row = next(i for i, s in enumerate(said) if s.split()[:2] == ["0.5", "fixed"])
    assert first < done < row

    sp = fxsparse.compile(tr.model, tr.example, keep=0.5, compile=False, capacity="auto")  # static: it can grow
    seen = []
    sp.on_rebuild.append(seen.append)
    assert sp.fit_capacity({g.id: torch.ones(g.size) for g in tr.graph.prunable_groups})  # every channel kept: grow
    assert seen == [sp]
    sp.compilations = 3
    tr.compile_notes.on_rebuild(sp)
    assert said[-1].startswith("recompiling: channel capacities changed")


class _ToyPhases:
    """A method with a search phase of its own (``toy_search``: plain SGD steps on the dense
    model, reporting a fixed half mask), then the trainer's fine-tune of the half mask it
    chooses; every hook records its call."""

    @staticmethod
    def make(calls):
        from fxsparse.methods import Method, PhaseSetup

        def half(graph):
            return {g.id: torch.arange(g.size) < max(1, g.size // 2) for g in graph.prunable_groups}

        class Toy(Method):
            level = "channel"

            def init(self, state):
                calls.append("init")

            def phases(self, first, total):
                calls.append(("phases", first, total))
                return [("toy_search", first), ("finetune", total - first)]

            def build_phase(self, phase, run, start, steps):
                calls.append(("build", phase, start, steps))
                self.model, self.loss_fn, self.graph = run.model, run.loss_fn, run.graph
                self.opt = run.sgd(run.model.parameters())
                return PhaseSetup(optimizer=self.opt, schedules=[run.weight_schedule(self.opt, phase, start, steps)])

            def phase_step(self, phase, x, y):
                calls.append(("step", phase))
                self.opt.zero_grad()
                loss = self.loss_fn(self.model(x), y)
                loss.backward()
                self.opt.step()
                flat = torch.cat([m for m in half(self.graph).values()])
                return loss.detach(), [flat], 0.0

            def phase_masks(self, phase):
                calls.append(("masks", phase))
                return half(self.graph)

            def report(self, phase, tally):
                calls.append(("report", phase))
                return {"toy": tally.count} if phase == "toy_search" else {}

            def final_masks(self, run):
                calls.append("final")
                return half(run.graph)

        return Toy


def test_a_method_with_its_own_phases_runs_through_the_hooks(data_dir, tmp_path):
    """The trainer has no method-specific path: a method defined here, with a search phase
    of its own, is built, stepped, evaluated, reported and fine-tuned through the hooks."""
    from fxsparse.methods import register_method, unregister_method

    calls = []
    register_method("toy_phases_for_test")(_ToyPhases.make(calls))
    try:
        out = tmp_path / "toy"
        tr = Trainer(_config(data_dir, out, method="toy_phases_for_test", epochs=1, finetune_epochs=1, limit_batches=2),
                     log=None, progress=False)
        summary = tr.run()
    finally:
        unregister_method("toy_phases_for_test")
    assert calls == ["init", ("phases", 2, 4), ("build", "toy_search", 0, 2), ("step", "toy_search"),
                     ("step", "toy_search"), ("masks", "toy_search"), ("report", "toy_search"), "final",
                     ("report", "finetune")]
    hist = json.load(open(out / "history.json"))
    assert [r["phase"] for r in hist] == ["toy_search", "finetune"]
    assert hist[0]["toy"] == 2 and "toy" not in hist[1]
    assert hist[1]["realised_keep"] < 1
    assert summary["params"] < summary["dense_params"]


def test_the_trainer_names_no_method():
    import fxsparse.training.trainer as T

    source = open(T.__file__).read().lower()
    assert "vrpge" not in source and "vr-pge" not in source
