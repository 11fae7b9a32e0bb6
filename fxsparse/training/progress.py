"""What the user sees while a run trains: the epoch's progress bar, and the lines logged
around it without tearing it."""
from __future__ import annotations

import time
from typing import Callable


class Progress:
    """The epoch's tqdm bar (or nothing when disabled). ``restart`` forgets the timing so far
    (a compile stalled it), so the rate and the ETA count training steps only. ``tick`` keeps
    a long first step visibly alive: the bar's postfix counts its seconds (``compiling, 12 s``),
    refreshed by a background thread about once a second, until ``stop_ticking`` (the step
    returned) or until the watched frame (the training loop's) is no longer on its thread's
    stack: an exception or Ctrl-C went through it, and nobody will call ``stop_ticking``."""

    TICKER = "fxsparse-progress-ticker"  # the background thread's name

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.n, self.bar = total, desc, 0, None
        self._ticker = self._stop = None
        if enabled:
            self.bar = self._new()

    def _new(self):
        from tqdm import tqdm

        return tqdm(total=self.total, initial=self.n, desc=self.desc, leave=False, dynamic_ncols=True)

    def tick(self, label: str, frame) -> None:
        """Count seconds in the bar's postfix while ``frame`` (on the calling thread) runs;
        nothing without a bar."""
        if self.bar is None:
            return
        import threading

        self.stop_ticking()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name=self.TICKER, daemon=True,
                                        args=(self.bar, label, frame, threading.get_ident(), self._stop))
        self._ticker.start()

    @staticmethod
    def _tick(bar, label, frame, ident, stop) -> None:
        import sys

        def running() -> bool:  # is ``frame`` still on the watched thread's stack?
            f = sys._current_frames().get(ident)
            while f is not None and f is not frame:
                f = f.f_back
            return f is not None

        start, shown = time.monotonic(), 0
        while not stop.wait(0.1):
            if not running():
                return
            seconds = int(time.monotonic() - start)
            if seconds > shown:  # the elapsed time in the bar's [..] moves with each refresh too
                shown = seconds
                bar.set_postfix_str(f"{label}, {seconds} s")  # tqdm's lock: safe beside the loop's writes

    def stop_ticking(self) -> None:
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = self._stop = None
            if self.bar is not None:
                self.bar.set_postfix_str("", refresh=False)

    def update(self):
        self.stop_ticking()
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def restart(self):
        self.stop_ticking()
        if self.bar is not None:
            self.bar.close()
            self.bar = self._new()

    def write(self, text: str, log):
        if self.bar is None:
            return log(text)
        from tqdm import tqdm

        with tqdm.external_write_mode():
            log(text)

    def close(self):
        self.stop_ticking()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Console:
    """Where the run's lines go: ``log``, written around the current epoch's bar (a bar only
    when ``enabled``)."""

    def __init__(self, log: Callable[[str], None], enabled: bool):
        self.log, self.enabled = log, enabled
        self.bar: Progress | None = None  # the epoch's bar (closed once the epoch ends)

    def epoch_bar(self, total: int, desc: str) -> "Progress":
        self.bar = Progress(total, desc, self.enabled)
        return self.bar

    def say(self, text: str) -> None:
        """Log a line without tearing the progress bar."""
        if self.bar is not None:
            self.bar.write(text, self.log)
        else:
            self.log(text)
