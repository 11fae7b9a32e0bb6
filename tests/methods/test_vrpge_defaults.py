"""VR-PGE's defaults live in one place (fxsparse/methods/defaults.py) and the Python API, the
CLI and its help read them there; the experiment switches are off the public surface but
every benchmark variant that uses them still builds. Nothing here trains."""
import inspect
import os
import runpy
import sys

import pytest

from fxsparse import cli
from fxsparse.methods import defaults
from fxsparse.methods.vrpge import VRPGE, StructureLearner, check_options, project_budget
from fxsparse.methods.vrpge.experimental import ExperimentSwitches

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")
EXPERIMENT_SWITCHES = ("form", "reuse_loss", "perturb", "compile_update")


def _benchmark(name: str) -> dict:
    """The module-level names of benchmarks/NAME.py (its main does not run); the benchmark's
    own sys.path additions are undone."""
    path = list(sys.path)
    try:
        return runpy.run_path(os.path.join(BENCHMARKS, f"{name}.py"), run_name=f"benchmark_{name}")
    finally:
        sys.path[:] = path


def _benchmark_variants():
    """(label, options, trained) of every VR-PGE run the benchmarks define."""
    out = []
    for label, (method, _, options) in _benchmark("structure_search")["VRPGE"].items():
        assert method == "vrpge"
        out.append((f"structure_search:{label}", options, False))
    for label, options in _benchmark("compress")["VRPGE_VARIANTS"].items():  # from trained weights (--init)
        out.append((f"compress:{label}", options, True))
    for suite in _benchmark("fashion_mnist")["SUITES"].values():
        out += [(f"fashion_mnist:{label}", options, False) for label, method, _, _, options in suite
                if method == "vrpge"]
    return out


@pytest.mark.parametrize("label,options,trained", _benchmark_variants(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_benchmark_variant_builds(label, options, trained):
    resolved = check_options(options, trained)
    for name, value in options.items():
        if name != "experimental":
            assert resolved[name] == value, (label, name)
    method = VRPGE.for_run(0.1, "flops", dict(options), trained=trained)
    assert method.experimental == ExperimentSwitches.of(options.get("experimental"))


def test_one_set_of_defaults_per_setting():
    scratch, trained = check_options({}), check_options({}, trained=True)
    assert scratch.pop("experimental") == trained.pop("experimental") == ExperimentSwitches()
    assert scratch == defaults.VRPGE_FROM_SCRATCH and trained == defaults.VRPGE_FROM_TRAINED
    # the search, built directly, starts from the same defaults as the method from scratch
    signature = inspect.signature(StructureLearner).parameters
    for name, value in defaults.VRPGE_FROM_SCRATCH.items():
        if name in signature or name == "score_lr":
            assert signature["lr" if name == "score_lr" else name].default == value, name


def test_a_default_changed_in_its_one_place_reaches_the_method_and_the_cli(monkeypatch):
    monkeypatch.setitem(defaults.VRPGE_FROM_TRAINED, "granularity", "channel")
    monkeypatch.setitem(defaults.VRPGE_FROM_TRAINED, "samples", 4)
    method = VRPGE.for_run(0.3, "flops", {}, trained=True)
    assert method.search_options["granularity"] == "channel" and method.search_options["samples"] == 4
    assert VRPGE.for_run(0.3, "flops", {}, trained=False).search_options["granularity"] == "width"
    # the CLI passes only the flags given, so the setting's defaults are not overridden
    args = cli.build_parser(["train"]).parse_args(["train", "--init", "w.pt"])
    assert cli.method_options_from(args, "vrpge") == {}
    args = cli.build_parser(["train"]).parse_args(["train", "--granularity", "width", "--samples", "3"])
    assert cli.method_options_from(args, "vrpge") == {"granularity": "width", "samples": 3}


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        cli.build_parser(["train"]).parse_args(["train", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_the_help_shows_both_settings_defaults(capsys):
    text = _train_help(capsys)
    assert f"(default: {defaults.VRPGE_LR_SCALE} / sqrt(search steps))" in text
    assert "(default: one unit per channel; with --init: 16)" in text
    assert f"(default: {defaults.VRPGE_FROM_SCRATCH['granularity']})" in text


def test_experiment_switches_are_off_the_public_surface(capsys):
    text = _train_help(capsys)
    assert "--score-lr" in text  # the check has teeth: VR-PGE's flags are there
    for flag in ("--form", "--no-reuse-loss", "--reuse-loss", "--compile-update", "--no-compile-update", "--perturb"):
        assert flag not in text, flag
    learner = inspect.signature(StructureLearner).parameters
    method = inspect.signature(VRPGE).parameters
    for switch in EXPERIMENT_SWITCHES:
        assert switch not in learner and switch not in method and switch not in defaults.VRPGE_FROM_SCRATCH
    assert "lr_scale" not in learner and "method" not in inspect.signature(project_budget).parameters
    assert not hasattr(StructureLearner, "score_step")


def test_experiment_switches_are_checked():
    assert VRPGE(experimental={"form": "preconditioned"}).experimental.form == "preconditioned"
    with pytest.raises(ValueError, match="unknown option"):
        VRPGE(experimental={"froms": "preconditioned"})
    with pytest.raises(ValueError, match="form must be one of"):
        ExperimentSwitches(form="exactly")
    with pytest.raises(ValueError, match="unknown option"):
        VRPGE(form="preconditioned")  # not an option: an experiment switch
