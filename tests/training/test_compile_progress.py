"""The first step of a phase (the compile) shows that it is alive: the progress bar counts its
seconds, about once a second, while the step runs; nothing is printed without a bar, and the
counting thread ends with the step, also when the step raises or is interrupted. A method
registered here stands in for the compile: its first step sleeps (no torch.compile runs)."""
import re
import threading
import time

import pytest
import torch

from fxsparse.methods import Method, PhaseSetup, register_method, unregister_method
from fxsparse.training.progress import Progress
from fxsparse.training.trainer import TrainConfig, Trainer

TICKER = Progress.TICKER
SLEEP_S = 2.6


class _Stream:
    """A stand-in for stderr (tqdm's stream) that records every write with its time."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append((time.monotonic(), text))
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False


def _slow_first_step_method(seen, fail=None):
    """One phase of its own; its first step sleeps SLEEP_S (recording which threads run
    meanwhile), then raises ``fail`` if given."""

    def half(graph):
        return {g.id: torch.arange(g.size) < max(1, g.size // 2) for g in graph.prunable_groups}

    class SlowFirstStep(Method):
        level = "channel"

        def phases(self, first, total):
            return [("slow_phase", total)]

        def build_phase(self, phase, run, start, steps):
            self.model, self.loss_fn, self.graph = run.model, run.loss_fn, run.graph
            self.opt = run.sgd(run.model.parameters())
            self.steps = 0
            return PhaseSetup(optimizer=self.opt, schedules=[])

        def phase_step(self, phase, x, y):
            self.steps += 1
            if self.steps == 1:
                time.sleep(SLEEP_S / 2)
                seen["threads"] = sorted(t.name for t in threading.enumerate())
                time.sleep(SLEEP_S / 2)
                if fail is not None:
                    seen["raised_at"] = time.monotonic()
                    raise fail
            self.opt.zero_grad()
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self.opt.step()
            return loss.detach(), [torch.cat(list(half(self.graph).values()))], 0.0

        def phase_masks(self, phase):
            return half(self.graph)

        def report(self, phase, tally):
            return {}

    return SlowFirstStep


@pytest.fixture
def slow_method():
    names = []

    def register(seen, fail=None):
        name = f"slow_first_step_{len(names)}"
        register_method(name)(_slow_first_step_method(seen, fail))
        names.append(name)
        return name

    yield register
    for name in names:
        unregister_method(name)


def _trainer(data_dir, out, method, progress, said):
    # compile=True: the phase's first step is announced as a compile; the method compiles nothing
    cfg = TrainConfig(model="zoo:lenet5", method=method, data="mnist", data_root=data_dir, batch_size=32, epochs=1,
                      finetune_epochs=0, limit_batches=3, compile=True, out=str(out))
    return Trainer(cfg, log=said.append, progress=progress)


def _counts(stream, since=0.0):
    """(time, seconds) of every "compiling, N s" the bar showed, in order."""
    return [(t, int(m)) for t, text in stream.writes if t >= since
            for m in re.findall(r"compiling, (\d+) s", text)]


def _no_ticker_within(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(t.name == TICKER for t in threading.enumerate()):
            return True
        time.sleep(0.02)
    return False


def test_the_bar_counts_the_seconds_of_the_first_step(data_dir, tmp_path, slow_method, monkeypatch):
    stream = _Stream()
    monkeypatch.setattr("sys.stderr", stream)
    seen, said = {}, []
    t0 = time.monotonic()
    _trainer(data_dir, tmp_path / "run", slow_method(seen), True, said).run()
    assert TICKER in seen["threads"]  # counting while the step ran
    assert not any(t.name == TICKER for t in threading.enumerate())  # and stopped when it returned
    counts = _counts(stream, since=t0)
    assert [n for _, n in counts] == [1, 2], counts  # a 2.6 s step: 1 s, 2 s, each shown once
    gap = counts[1][0] - counts[0][0]
    assert 0.7 < gap < 1.5, counts  # about once a second
    # the announcement is honest about the wait and says where to watch it
    (line,) = [s for s in said if s.startswith("compiling ")]
    assert "10-90" not in line and "depending on the model and the CPU" in line and "bar counts" in line


def test_no_bar_no_counting(data_dir, tmp_path, slow_method, monkeypatch):
    stream = _Stream()
    monkeypatch.setattr("sys.stderr", stream)
    seen, said = {}, []
    _trainer(data_dir, tmp_path / "run", slow_method(seen), False, said).run()
    assert TICKER not in seen["threads"]
    assert stream.writes == []
    (line,) = [s for s in said if s.startswith("compiling ")]
    assert "bar" not in line


@pytest.mark.parametrize("fail", [RuntimeError("the step broke"), KeyboardInterrupt()])
def test_the_counting_stops_when_the_step_raises(data_dir, tmp_path, slow_method, monkeypatch, fail):
    """No stop_ticking is called then: the thread sees the training loop's frame leave the stack."""
    stream = _Stream()
    monkeypatch.setattr("sys.stderr", stream)
    seen, said = {}, []
    tr = _trainer(data_dir, tmp_path / "run", slow_method(seen, fail), True, said)
    with pytest.raises(type(fail)):
        tr.run()
    assert TICKER in seen["threads"]
    assert [n for _, n in _counts(stream)] == [1, 2]
    assert _no_ticker_within(0.5)
    quiet_from = time.monotonic()
    time.sleep(1.2)  # a thread still counting would have written "compiling, 3 s" by now
    assert not [w for w in stream.writes if w[0] >= quiet_from]
    assert not _counts(stream, since=seen["raised_at"])
