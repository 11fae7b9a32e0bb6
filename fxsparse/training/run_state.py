"""What a resume needs, in one typed place: :class:`RunRecord` (what the run has done so far)
and :class:`RunState` (the content of ``last.pt``: the record, the step, the settings, every
state a bit-identical continuation loads). A field added here is saved, loaded and checked
for an older file in this module alone.

The file is ``RunState.to_dict()``: a flat dict of tensors and plain values (what
``torch.load(weights_only=True)`` reads back) with a ``format`` number. Format 1 is the
same dict without ``format`` (written before this module), and loads as it is."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

FORMAT = 2  # 2: the dict of format 1 with "format" (1: no "format" key)


@dataclasses.dataclass
class RunRecord:
    """What the run has done so far (the step count is the methods' ``TrainState.step``)."""
    epoch: int = 0                       # passes over the data finished (the last may be fractional)
    history: list = dataclasses.field(default_factory=list)   # history.json's rows
    train_flops: float = 0.0             # training FLOPs so far (the loop adds every step's)
    elapsed: float = 0.0                 # wall time of the rows so far
    masks: Optional[dict] = None         # the fixed channel mask, once chosen
    oneshot_acc: Optional[float] = None  # its exported model's test accuracy before any training


@dataclasses.dataclass
class RunState:
    """A checkpoint: ``config`` the run's settings (``dataclasses.asdict`` of its TrainConfig),
    ``step`` the steps taken, ``phase_built`` the phase last built (None: none yet) and
    ``optimizer`` its optimizer's state, ``model`` the dense model's weights, ``small`` the
    exported model's of a fixed-mask phase, the method's state, the run's generator and the
    global RNG states (:func:`fxsparse.training.checkpoint.rng_state`), the fp16 scaler's."""
    config: dict
    step: int
    record: RunRecord
    model: dict
    method: dict
    generator: torch.Tensor
    rng: dict
    phase_built: Optional[str] = None
    optimizer: Optional[dict] = None
    small: Optional[dict] = None
    scaler: Optional[dict] = None

    def to_dict(self) -> dict:
        out = {"format": FORMAT}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "record":  # its fields at the top level: the layout of format 1
                out.update((r.name, getattr(value, r.name)) for r in dataclasses.fields(RunRecord))
            elif not (f.name == "small" and value is None):
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict, path: str = "last.pt") -> "RunState":
        version = d.get("format", 1)
        if version > FORMAT:
            raise ValueError(f"cannot resume from {path!r}: written by a newer fxsparse (checkpoint format {version}, "
                             f"this one reads up to {FORMAT}); resume it with that version")
        record = RunRecord(**{f.name: d[f.name] for f in dataclasses.fields(RunRecord) if f.name in d})
        return cls(record=record, **{f.name: d.get(f.name) for f in dataclasses.fields(cls) if f.name != "record"})
