"""`fxsparse bench cold-start` and `fxsparse bench phases` (issue #32: the benchmark scripts as
subcommands): their arguments, today's `fxsparse bench ...` still the step-time bench, and a
tiny run of each (LeNet-5, one thread)."""
import subprocess
import sys

import pytest
import torch

from fxsparse import bench_cold_start, bench_phases
from fxsparse.bench_args import SUBCOMMANDS, parse_command, parse_cold_start_args, parse_phases_args


pytestmark = pytest.mark.usefixtures("single_thread")


def test_without_a_subcommand_it_is_the_step_time_bench():
    command, args = parse_command(["--models", "resnet20", "--steps", "3"])
    assert command == "step-time" and args.models == ["resnet20"] and args.steps == 3
    assert parse_command(["step-time", "--steps", "3"])[1].steps == 3
    assert parse_command([])[0] == "step-time"


def test_subcommands_parse_their_own_flags():
    command, args = parse_command(["cold-start", "--model", "lenet5", "--variants", "dense", "sparse-dynamic"])
    assert command == "cold-start" and args.model == "lenet5" and args.variants == ["dense", "sparse-dynamic"]
    command, args = parse_command(["phases", "--capacity", "dynamic", "--steps", "4"])
    assert command == "phases" and args.capacity == "dynamic" and args.steps == 4 and args.model == "vgg11_bn"
    assert set(SUBCOMMANDS) == {"step-time", "cold-start", "phases"}


@pytest.mark.parametrize("parse, argv, word", [
    (parse_cold_start_args, ["--batch", "0"], "--batch"), (parse_cold_start_args, ["--variants", "sparse"], "--variants"),
    (parse_phases_args, ["--keep", "1.5"], "--keep"), (parse_phases_args, ["--steps", "0"], "--steps"),
    (parse_phases_args, ["--capacity", "auto"], "--capacity")])
def test_bad_arguments_exit_2_naming_the_flag(parse, argv, word, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    assert word in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--models", "resnet20", "nosuch"], ["phases", "--model", "nosuch"],
                                  ["cold-start", "--model", "nosuch"], ["cold-start", "--model", "llama_gqa"]])
def test_an_unknown_model_exits_2_naming_it_and_the_choices(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse_command(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown model" in err and "resnet20" in err, err
    choices = err.split("choose from:")[1]  # decoders: the step-time and phases benches only
    assert ("llama_gqa" in choices) == (argv[0] != "cold-start")


def test_subcommand_help_imports_no_torch():
    code = ("import sys\nfrom fxsparse.bench_args import parse_command\n"
            "for c in ('cold-start', 'phases'):\n"
            "    try:\n        parse_command([c, '--help'])\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "fxsparse bench cold-start" in out.stdout and "fxsparse bench phases" in out.stdout


@pytest.fixture
def every_compile_aot_eager(aot_eager, monkeypatch):
    """The sparse step (``aot_eager``) and the bench's own ``torch.compile`` of the exported
    step through the ``aot_eager`` backend."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **{**kw, "backend": "aot_eager"}))


@pytest.mark.slow  # compiles the sparse and the exported step (aot_eager): ~8 s idle
def test_phases_on_a_tiny_model(every_compile_aot_eager, capsys):
    """The subcommand's own work (phases, rounds, table); both steps through ``aot_eager``:
    inductor's code for these steps is checked in tests/step and tests/zoo (26 CPU s saved)."""
    args = parse_phases_args(["--model", "lenet5", "--batch", "2", "--steps", "2", "--warmup", "1", "--threads", "1"])
    medians = bench_phases.run_phases(args)
    assert set(medians["sparse"]) == set(bench_phases.SPARSE_PHASES)
    assert all(v >= 0 for v in medians["sparse"].values()) and len(medians["ratios"]) == 2
    assert "whole steps, sparse / exported" in capsys.readouterr().out


@pytest.mark.slow  # compiles a tiny Mixtral-style decoder's sparse and exported steps (aot_eager)
def test_phases_on_a_tiny_decoder(every_compile_aot_eager, capsys):
    """Issue #31: the phases of a transformers decoder's step (token ids, the causal-LM loss),
    so that the sparse / exported gap of the decoder bench can be attributed phase by phase."""
    pytest.importorskip("transformers")
    args = parse_phases_args(["--model", "mixtral_moe_tiny", "--batch", "2", "--seq", "8", "--steps", "2",
                              "--warmup", "1", "--threads", "1"])
    medians = bench_phases.run_phases(args)
    assert set(medians["sparse"]) == set(bench_phases.SPARSE_PHASES)
    assert medians["sparse"]["gather"] > 0 and medians["exported"]["update"] > 0
    out = capsys.readouterr().out
    assert "mixtral_moe_tiny, batch 2, sequence 8" in out and "whole steps, sparse / exported" in out


def test_phases_batch_defaults_to_the_models_kind():
    assert parse_phases_args([]).batch is None and parse_phases_args(["--seq", "16"]).seq == 16
    with pytest.raises(SystemExit):
        parse_phases_args(["--seq", "1"])


@pytest.mark.slow  # a fresh interpreter compiles LeNet-5: ~20 s idle
@pytest.mark.long
def test_cold_start_child_process_on_a_tiny_model(tmp_path, capsys):
    out = tmp_path / "cold.json"
    args = parse_cold_start_args(["--model", "lenet5", "--batch", "2", "--threads", "1", "--variants", "dense",
                                  "--json", str(out)])
    results = bench_cold_start.run_cold_start(args)
    record = results["dense"]
    assert record["first_step_s"] > 0 and record["first_step_cpu_s"] > 0
    assert "GraphLowering.run" in record["phases"]  # the child compiled, with a fresh cache
    assert out.exists() and "dense" in capsys.readouterr().out
