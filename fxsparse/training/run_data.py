"""A run's data (:class:`RunData`): the loaders, the data set's facts, this process's share
of every training batch, and the example input the model is analysed on."""
from __future__ import annotations

import dataclasses
import os

from torch.utils.data import DataLoader

from fxsparse.training import checkpoint
from fxsparse.training.config import TrainConfig
from fxsparse.training.distributed import shard_loader
from fxsparse.training.place import RunPlace


@dataclasses.dataclass
class RunData:
    train: DataLoader
    test: DataLoader
    info: dict                 # num_classes, in_chans, classes, mean, std (make_loaders)
    shard: DataLoader          # the training loop reads this process's share of every global batch

    @classmethod
    def of(cls, config: TrainConfig, place: RunPlace, loaders, resume: bool) -> "RunData":
        """``loaders`` (train, test, info), else the config's data set."""
        if loaders is None:  # a bad data path is the first thing to fix: say it before the --out collision
            from fxsparse.training.data import make_loaders

            loaders = make_loaders(config.data, config.data_root, batch_size=config.batch_size, seed=config.seed,
                                   augment=config.augment, drop_last=True, test_batch_size=512)
        if not resume and os.path.exists(checkpoint.run_file(config.out)):
            raise FileExistsError(f"{config.out!r} already holds a run ({checkpoint.RUN_FILE}); pass --resume to "
                                  "continue it, or choose another --out")
        train, test, info = loaders
        group = place.group
        shard = shard_loader(train, group.rank, group.world) if group.active else train
        return cls(train, test, info, shard)

    def example(self, place: RunPlace) -> tuple:
        """(two test inputs on the device,): what the model is analysed on. A loader's iterator
        draws its seed from torch's global RNG: called after the model's initialisation."""
        x0, _ = next(iter(self.test))
        return (place.batch(x0[:2].clone()),)

    def epoch_batches(self, epoch: int, limit: int, place: RunPlace):
        """This process's share of the first ``limit`` batches of epoch ``epoch``, on the device."""
        (self.shard.batch_sampler if place.group.active else self.shard.sampler).set_epoch(epoch)
        for i, batch in enumerate(self.shard):
            if i >= limit:
                break
            yield place.batch(batch)
