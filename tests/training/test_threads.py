"""The thread choice of ``fxsparse train`` on a busy machine (fxsparse/training/threads.py):
a fresh ``fxsparse train`` process, with the busy-CPU measurement replaced by a fixed value,
trains with the threads the policy gives, records them in summary.json and prints them once;
OMP_WAIT_POLICY=PASSIVE reaches libgomp (its own OMP_DISPLAY_ENV report says so) exactly when
CPUs are busy and the user set no policy. The measurement itself is checked on /proc/stat's
arithmetic and against a process that keeps one CPU busy."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from fxsparse.cli import main as cli_main
from fxsparse.training import threads

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# the child: 2 CPUs, busy CPUs fixed (None: the measurement must not run), then `fxsparse train`;
# a callback records torch's thread count at every training step
_CHILD = r"""
import json, os, sys
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
busy, argv = json.loads(sys.argv[1]), sys.argv[2:]
import fxsparse.training.threads as T
assert "torch" not in sys.modules, "fxsparse imported torch before the CLI's plan"
calls = []
def fake_busy(which, seconds=T.SAMPLE_S):
    calls.append(sorted(which))
    assert busy is not None, "the busy CPUs were measured where nothing needs them"
    return busy
T._busy_cpus = fake_busy
seen = set()
apply = T.apply
def apply_then_watch(plan):  # torch is imported by now: the trainer may be
    import torch
    import fxsparse.training.trainer as TR
    orig = TR.Trainer.__init__
    def init(self, *a, **k):
        orig(self, *a, **k)
        self.callbacks.append(lambda tr, ev, **i: ev == "step" and seen.add(torch.get_num_threads()))
    TR.Trainer.__init__ = init
    return apply(plan)
T.apply = apply_then_watch
from fxsparse.cli import main
code = main(argv)
print("CHILD " + json.dumps({"code": code, "step_threads": sorted(seen), "measured": calls,
                             "env_policy": os.environ.get("OMP_WAIT_POLICY")}))
"""


def _spincount(stderr):
    """libgomp's GOMP_SPINCOUNT as its OMP_DISPLAY_ENV=VERBOSE report gives it (0: PASSIVE)."""
    line = next(ln for ln in stderr.splitlines() if "GOMP_SPINCOUNT" in ln)
    return int(line.split("=")[1].strip().strip("'"))


def _child(data_dir, out, busy, *extra, env_extra=()):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "PYTHONPATH")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **dict(env_extra))
    argv = ["train", "--model", "zoo:lenet5", "--data", "mnist", "--data-root", data_dir, "--batch-size", "32",
            "--epochs", "1", "--finetune-epochs", "0", "--limit-batches", "2", "--method", "vrpge", "--no-compile",
            "--no-progress", "--out", str(out), *extra]
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(busy), *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    child = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("CHILD "))[6:])
    assert child["code"] == 0
    record = json.load(open(out / "summary.json"))["threads"]
    printed = [ln for ln in r.stdout.splitlines() if ln.startswith("threads: ")]
    return child, record, printed, _spincount(r.stderr), r.stdout


needs_two_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to choose from")


@needs_two_cpus
@pytest.mark.slow  # an `fxsparse train` subprocess: ~10 s
def test_a_busy_cpu_gives_one_thread_that_sleeps_while_it_waits(data_dir, tmp_path):
    child, record, printed, spin, stdout = _child(data_dir, tmp_path / "run", 1.0)
    assert child["measured"] == [sorted(os.sched_getaffinity(0))[:2]]  # measured once, over its 2 CPUs
    assert child["step_threads"] == [1]  # every training step ran on one thread
    assert record["threads"] == 1 and record["chosen_by"] == "free CPUs"
    assert record["cpus"] == 2 and record["busy_cpus"] == 1.0
    assert record["omp_wait_policy"] == "PASSIVE" and record["omp_wait_policy_set_by"] == "fxsparse"
    assert child["env_policy"] == "PASSIVE" and spin == 0  # libgomp read it: its threads never spin
    assert len(printed) == 1 and stdout.splitlines()[0] == printed[0]  # once, first
    assert printed[0].startswith("threads: 1 (2 CPUs, 1.0 of them busy") and "OMP_WAIT_POLICY=PASSIVE" in printed[0]


@needs_two_cpus
@pytest.mark.slow  # an `fxsparse train` subprocess: ~10 s
def test_an_idle_machine_keeps_torchs_default_and_libgomps_wait(data_dir, tmp_path):
    child, record, printed, spin, _ = _child(data_dir, tmp_path / "run", 0.0)
    assert record["torch_default"] >= 1
    expected = min(2, record["torch_default"])
    assert child["step_threads"] == [expected] and record["threads"] == expected
    assert record["chosen_by"] == "free CPUs" and record["busy_cpus"] == 0.0
    assert record["omp_wait_policy"] == "DEFAULT" and record["omp_wait_policy_set_by"] is None
    assert child["env_policy"] is None and spin > 0  # as before: nothing set
    assert printed == [f"threads: {expected} (2 CPUs, 0.0 of them busy with other work; torch's default "
                       f"{record['torch_default']}; --threads N sets another number)"]


@needs_two_cpus
@pytest.mark.slow  # an `fxsparse train` subprocess: ~10 s
def test_threads_flag_wins_and_busy_cpus_still_make_threads_sleep(data_dir, tmp_path):
    child, record, printed, spin, _ = _child(data_dir, tmp_path / "run", 1.0, "--threads", "2")
    assert child["step_threads"] == [2] and record["threads"] == 2 and record["chosen_by"] == "--threads"
    assert record["omp_wait_policy_set_by"] == "fxsparse" and spin == 0
    assert printed[0].startswith("threads: 2 (--threads 2)")


@needs_two_cpus
@pytest.mark.slow  # an `fxsparse train` subprocess: ~10 s
def test_the_users_environment_wins_and_nothing_is_measured(data_dir, tmp_path):
    child, record, printed, spin, _ = _child(data_dir, tmp_path / "run", None,
                                             env_extra={"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"})
    assert child["measured"] == []  # one thread, the user's policy: nothing to decide
    assert child["step_threads"] == [1] and record["chosen_by"] == "OMP_NUM_THREADS" and record["busy_cpus"] is None
    assert record["omp_wait_policy"] == "ACTIVE" and record["omp_wait_policy_set_by"] == "user"
    assert spin > 300000  # libgomp's ACTIVE: it spins far longer than its default
    assert printed == ["threads: 1 (OMP_NUM_THREADS=1); OMP_WAIT_POLICY=ACTIVE"]


def test_busy_cpus_arithmetic_leaves_out_this_process(monkeypatch):
    """Per CPU: busy ticks / all ticks over the sample, summed; minus this process's CPU time
    over the wall time. cpu0: 20 of 25 ticks busy, cpu1: 5 of 25; this process 0.05 s of CPU
    in 0.25 s: 0.8 + 0.2 - 0.2 = 0.8."""
    samples = iter([{0: (100, 1000), 1: (40, 1000)}, {0: (120, 1025), 1: (45, 1025)}])
    times = iter([os.times_result((1.0, 0.5, 0, 0, 0)), os.times_result((1.04, 0.51, 0, 0, 0))])
    clock = iter([10.0, 10.25])
    monkeypatch.setattr(threads, "_cpu_ticks", lambda which: next(samples))
    monkeypatch.setattr(threads.os, "times", lambda: next(times))
    monkeypatch.setattr(threads.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads._busy_cpus({0, 1}) == pytest.approx(0.8)


@needs_two_cpus
def test_busy_cpus_sees_a_process_that_holds_a_cpu():
    cpu = sorted(os.sched_getaffinity(0))[0]
    spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        time.sleep(0.3)  # started and spinning
        busy = threads._busy_cpus({cpu}, seconds=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.8  # at least the spinner (other work may add to it)


def test_bad_threads_and_the_callers_thread_count(data_dir, tmp_path, capsys):
    assert cli_main(["train", "--threads", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert cli_main(["train", "--model", "zoo:lenet5", "--data", "mnist", "--data-root", data_dir,
                         "--batch-size", "32", "--epochs", "1", "--finetune-epochs", "0", "--limit-batches", "2",
                         "--method", "vrpge", "--no-compile", "--no-progress", "--threads", "1",
                         "--out", str(tmp_path / "run")]) == 0
        assert torch.get_num_threads() == 2  # a caller from Python gets its own count back
        assert json.load(open(tmp_path / "run" / "summary.json"))["threads"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
