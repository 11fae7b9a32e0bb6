"""Test accuracy of what a run trains, and the BatchNorm statistics a freshly pruned model
needs before it is evaluated or trained."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from fxsparse.rewrite.batchnorm import recalibrate_batchnorm
from fxsparse.rewrite.export import export
from fxsparse.training.config import TrainConfig
from fxsparse.training.device import Precision


class Evaluator:
    """Evaluation on the run's device and precision; ``train_loader``'s data set gives the
    fixed batches of :meth:`first_batches`; ``to_device`` places a batch."""

    def __init__(self, config: TrainConfig, precision: Precision, device: torch.device, train_loader,
                 to_device: Callable):
        self.config, self.precision, self.device = config, precision, device
        self.train_loader, self.to_device = train_loader, to_device

    @torch.no_grad()
    def accuracy(self, model: nn.Module, batches) -> float:
        was = model.training
        model.eval()
        correct, total = torch.zeros((), dtype=torch.long, device=self.device), 0
        for x, y in batches:
            x, y = self.to_device((x, y))
            with self.precision.autocast():
                correct += (model(x).argmax(1) == y).sum()  # summed on the device: one sync per evaluation
            total += len(y)
        correct = int(correct)
        model.train(was)
        return correct / max(total, 1)

    def exported_accuracy(self, model: nn.Module, graph, masks: dict, batches) -> float:
        """Accuracy of ``model`` exported for ``masks`` (its BatchNorm statistics re-estimated
        first: the dense model's are stale for it): eager and physically small, so evaluation
        adds no compiled graph and no capacity growth to a search step."""
        small = export(model, graph, masks)
        self.recalibrate(small)
        return self.accuracy(small, batches)

    def recalibrate(self, model: nn.Module) -> None:
        """Re-estimate the BatchNorm statistics of a freshly pruned model on the first
        ``bn_batches`` training batches (stale statistics would mislead every one-shot figure)."""
        if self.config.bn_batches:
            recalibrate_batchnorm(model, self.first_batches(self.config.bn_batches), forward=self._autocast_forward)

    def _autocast_forward(self, model, x):
        with self.precision.autocast():
            return model(x)

    def first_batches(self, batches: int) -> list:
        """A fixed set of training batches (the first ones of the dataset, no augmentation
        randomness beyond the seed), e.g. to rank final-mask candidates."""
        ds = self.train_loader.dataset
        n = min(len(ds), batches * self.config.batch_size)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(n)), batch_size=self.config.batch_size)
        return [self.to_device(b) for b in loader]
