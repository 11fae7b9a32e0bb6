"""Where and in which precision ``fxsparse train`` runs: ``--device``, ``--precision``,
``--channels-last``.

* ``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")``: ``auto`` is CUDA when present.
  The model, the batches and the dense optimizer state live there. The structure search's
  scores and the channel masks stay on the host by design: the capacity layout
  (``fxsparse.rewrite.layout.Plan``) decides on the host, and the step's gather indices are
  copied to the device with ``non_blocking=True`` (``fxsparse.step``).
* :class:`Precision`: ``torch.autocast`` around the forward passes of every training step
  (the sparse step, the structure search's score forwards, the fixed-mask and dense
  phases) and of the evaluation; ``fp16`` adds a ``torch.amp.GradScaler`` (CUDA only): the
  fixed-mask and dense phases step through it, and the sparse step of VR-PGE's search
  scales its loss and unscales its compact gradients with it
  (``fxsparse.step.train_step.LossScaling``).
"""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str) -> torch.device:
    """The torch device of ``--device``; a ValueError naming the flag and the fix when it
    cannot be used here."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA device is available here (torch.cuda.is_available() is "
                             "False); use --device cpu, or --device auto to take CUDA only when present")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                             "pick one of them")
    return device


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA device (a CPU has no fast fp16 and no loss scaling); "
                         "use --precision bf16 on a CPU, or --device cuda")


class Precision:
    """The autocast context and, for fp16, the gradient scaler of a run."""

    def __init__(self, precision: str, device: torch.device):
        check_precision(precision, device)
        self.name, self.dtype, self.device_type = precision, PRECISIONS[precision], device.type
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def to_device(batch, device: torch.device, channels_last: bool = False):
    """A batch's tensors on ``device`` (copies issued ``non_blocking``: the loader's tensors
    are read by nothing else), 4-d inputs in channels-last memory format when asked."""
    if isinstance(batch, torch.Tensor):
        t = batch.to(device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    return batch
