"""A trained network together with its preprocessing: what ``fxsparse.load`` gives for a run.

    model = fxsparse.load("runs/fxsparse")     # a Classifier, from model.json + model.safetensors
    x = images_uint8.float().div(255)          # raw images scaled to [0, 1], [B, C, H, W]
    names = model.predict(x)                   # class names; model(x) gives the logits
    model.net                                  # the bare exported network (takes normalised inputs)

The training data were normalised per channel with the mean/std of the training images;
:class:`Classifier` holds them as buffers and applies the same normalisation in its
forward, so callers feed raw images in [0, 1] and never need the training statistics.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn


class Classifier(nn.Module):
    """``net`` with its input normalisation, class names and input shape.

    ``forward(x)``: ``x`` is a float tensor ``[B, C, H, W]`` of raw images scaled to [0, 1]
    (uint8 pixels divided by 255); returns ``net((x - mean) / std)``, the logits.
    ``net`` is the bare network (it expects normalised inputs); ``mean``/``std`` are per
    channel (buffers), ``class_names[i]`` names logit ``i``, ``input_shape`` is ``(C, H, W)``.
    """

    def __init__(self, net: nn.Module, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 class_names: Optional[Sequence[str]] = None, input_shape: Optional[Sequence[int]] = None):
        super().__init__()
        self.net = net
        channels = input_shape[0] if input_shape else len(mean) if mean is not None else 1
        mean = torch.zeros(channels) if mean is None else torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.ones(channels) if std is None else torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.shape != std.shape or (std <= 0).any():
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean.tolist()} and {std.tolist()}")
        self.register_buffer("mean", mean.view(-1, 1, 1).clone())
        self.register_buffer("std", std.view(-1, 1, 1).clone())
        self.class_names = list(class_names) if class_names is not None else None
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The training normalisation: ``(x - mean) / std`` per channel."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list:
        """The class name (or index, without names) of each image in ``x`` (raw, in [0, 1]); eval mode."""
        was = self.training
        self.eval()
        try:
            idx = self(x).argmax(1).tolist()
        finally:
            self.train(was)
        return [self.class_names[i] for i in idx] if self.class_names else idx

    def preprocessing(self) -> dict:
        """The preprocessing as plain data (what ``summary.json`` records)."""
        return {"input": "float images scaled to [0, 1] (uint8 pixels / 255), shape [batch, C, H, W]",
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "normalisation": "(x - mean) / std per channel, applied inside the Classifier's forward; "
                                 "model.net is the network without it",
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                "class_names": self.class_names,
                "num_classes": len(self.class_names) if self.class_names else None}

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, classes={len(self.class_names) if self.class_names else None}"
