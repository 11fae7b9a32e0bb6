"""What the run says about torch.compile: the first step of a phase waits for its compile
(say so, how long it took the last time, and keep the progress bar counting its seconds),
a capacity change recompiles, and what the steps that compiled made and took
(``compilations`` and ``compile_s`` in the summary).

The graphs are counted by the phase's compiler (:class:`fxsparse.step.compiler.StepCompiler`,
``.compilations``): a SparseModel's for the method's own phase, the plain step's for the
trainer's phases (:mod:`fxsparse.training.plain_step`)."""
from __future__ import annotations

import sys
import time

from fxsparse.training.progress import Console


class CompileNotes:
    """Told when a phase is built and around every step; ``enabled``: the run compiles."""

    def __init__(self, console: Console, enabled: bool):
        self.console, self.enabled = console, enabled
        self.total_s = 0.0          # wall time of this process's training steps that compiled
        self.compilations: list = []  # per step that compiled: its phase, step, what, graphs and seconds
        self.took: dict = {}        # how long the first step's compile took, per step kind (its label)
        self.phase = self.label = None  # the current phase's name and what its first step compiles
        self.compiler = None        # what counts the current phase's graphs (``.compilations``), if known
        self.pending = self.recompiling = False  # the next step compiles / recompiles
        self._compilations_before = 0

    def phase_built(self, phase) -> None:
        """A :class:`~fxsparse.training.phases.Phase` was built: its first step compiles
        ``phase.compiling``; its SparseModel's capacity changes recompile."""
        self.phase, self.label, self.compiler = phase.name, phase.compiling, phase.compiler
        self.pending = bool(self.enabled)
        sparse = phase.sparse
        if sparse is not None and self.on_rebuild not in sparse.on_rebuild:
            sparse.on_rebuild.append(self.on_rebuild)

    def _graphs(self) -> int:
        return getattr(self.compiler, "compilations", 0)

    def before_step(self) -> float:
        """Before a step (the start time it returns is the step's); before the first step of a
        phase say that it compiles, and keep the bar counting the seconds of the wait (the
        compile shows no other sign of life) while the caller's frame runs."""
        if self.pending:
            took = self.took.get(self.label)
            guess = f"about {took:.0f} s, like the last time" if took else \
                "from seconds to minutes, depending on the model and the CPU, and longer on a busy CPU"
            bar = self.console.bar
            shown = "; the progress bar counts its seconds" if bar.bar is not None else ""
            self.console.say(f"compiling {self.label or 'the training step'} with torch.compile "
                             f"(the first step waits for it: {guess}{shown}; --no-compile runs eagerly)")
            # until after_step, or until an exception or Ctrl-C leaves the caller's frame
            bar.tick("compiling", sys._getframe(1))
        self._compilations_before = self._graphs()
        return time.perf_counter()

    def on_rebuild(self, sp) -> None:
        """A capacity change to capacities not seen lately: the next step recompiles."""
        if not self.enabled or not sp.compilations or sp.reused_build:
            return
        took = self.took.get(self.label)
        self.console.say("recompiling: channel capacities changed (the compiled step's channel slots follow the scores"
                         + (f"; about {took:.0f} s)" if took else ")"))
        self.recompiling = True

    def after_step(self, t_step: float, step: int) -> None:
        """After step ``step`` (the run's count, from 1): if it compiled, record what it
        compiled and how long it took, say so after a phase's first step, and restart the
        bar's clock so its rate and ETA count steps, not the compile."""
        bar = self.console.bar
        bar.stop_ticking()
        graphs = self._graphs() - self._compilations_before
        if not (self.pending or self.recompiling or graphs) or not self.enabled:
            return
        took = time.perf_counter() - t_step
        self.total_s += took
        self.compilations.append({"phase": self.phase, "step": step, "compiles": self.label,
                                  "graphs": graphs if self.compiler is not None else None, "compile_s": took})
        if self.pending:
            self.took[self.label] = took
            self.console.say(f"compiled in {took:.0f} s")
        self.pending = self.recompiling = False
        bar.restart()
