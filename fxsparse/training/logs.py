"""Scalars of a run that other tools can plot: ``history.csv`` (a row per history row, the
scalar columns of ``history.json``) and ``steps.csv`` (a row per optimizer step: loss,
realised keep and FLOPs fraction of the step's mask, the step's training FLOPs and time),
always, next to ``history.json``; TensorBoard scalars too with ``--log-dir`` (needs the
``tensorboard`` package).

The files follow the checkpoint: ``steps.csv`` gets the steps since the last checkpoint
when the checkpoint is written, and a resumed run first drops the rows of steps past its
checkpoint (a kill can land between the two), so a resumed run's files equal an
uninterrupted run's. TensorBoard events of those steps are purged the same way
(``SummaryWriter(purge_step=...)``).
"""
from __future__ import annotations

import csv
import os

from fxsparse.training import checkpoint

STEP_COLUMNS = ["step", "epoch", "phase", "loss", "realised_keep", "realised_flops_frac", "train_tflop", "step_time_s"]


def check_tensorboard() -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--log-dir needs the tensorboard package, which cannot be imported ({exc}); install it "
                         "with: pip install 'fxsparse[tensorboard]' (history.csv and steps.csv are written "
                         "without it)") from None


def history_columns(history: list[dict]) -> list[str]:
    """The scalar columns of the history rows, in order of first appearance (per-group lists
    and histograms stay in history.json)."""
    cols = []
    for row in history:
        cols += [k for k, v in row.items() if k not in cols and (v is None or isinstance(v, (int, float, str)))]
    return cols


class RunLogs:
    def __init__(self, out: str, log_dir: str | None, resume: bool, step: int = 0):
        self.out, self.log_dir, self.pending = out, log_dir, []
        self.steps_path = os.path.join(out, "steps.csv")
        self.writer = None
        if os.path.isfile(self.steps_path):  # a fresh run drops what a run killed before its first checkpoint wrote
            self._truncate(step if resume else 0)
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir, purge_step=step if resume else None)

    def _truncate(self, step: int) -> None:
        with open(self.steps_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if all(int(r["step"]) <= step for r in rows):
            return  # nothing past the checkpoint (a finished run stays untouched)
        rows = [r for r in rows if int(r["step"]) <= step]
        checkpoint.write_text_atomic(self.steps_path, lambda f: self._write_rows(f, rows, header=True))

    @staticmethod
    def _write_rows(f, rows, header: bool):
        w = csv.DictWriter(f, STEP_COLUMNS, lineterminator="\n")
        if header:
            w.writeheader()
        w.writerows(rows)

    def step(self, row: dict) -> None:
        """A step's scalars (``STEP_COLUMNS``), written at the next checkpoint."""
        self.pending.append(row)
        if self.writer is not None:
            for k in STEP_COLUMNS[3:]:
                self.writer.add_scalar(f"step/{k}", row[k], row["step"])

    def epoch(self, row: dict) -> None:
        if self.writer is not None:
            for k in history_columns([row]):
                if k not in ("epoch", "step", "phase") and isinstance(row[k], (int, float)):
                    self.writer.add_scalar(f"epoch/{k}", row[k], row["step"])

    def flush(self, history: list[dict]) -> None:
        """At a checkpoint: the pending steps to steps.csv, history.csv rewritten whole."""
        os.makedirs(self.out, exist_ok=True)
        new = not os.path.isfile(self.steps_path)
        with open(self.steps_path, "a", newline="") as f:
            self._write_rows(f, self.pending, header=new)
        self.pending = []
        cols = history_columns(history)
        checkpoint.write_text_atomic(os.path.join(self.out, "history.csv"), lambda f: _write_history(f, history, cols))
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write_history(f, history, cols):
    w = csv.DictWriter(f, cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)


class NullLogs:
    """The logs of a process that writes none (every process but the first of a multi-process run)."""

    def step(self, row: dict) -> None:
        pass

    def epoch(self, row: dict) -> None:
        pass

    def flush(self, history: list[dict]) -> None:
        pass

    def close(self) -> None:
        pass
