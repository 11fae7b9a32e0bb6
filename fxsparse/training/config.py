"""``fxsparse train``'s settings (:class:`TrainConfig`): plain data, importable without torch,
so that ``fxsparse train --help`` shows the defaults at once."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from fxsparse.methods.defaults import default_method


@dataclasses.dataclass
class TrainConfig:
    model: str = "zoo:lenet5"
    # trained weights to start from (a state_dict or safetensors file, or an earlier run's --out;
    # fxsparse.training.init_weights): compress a trained model instead of training from scratch
    init: Optional[str] = None
    data: str = "fashion-mnist"
    data_root: Optional[str] = None
    method: Optional[str] = None         # None: the default for the setting (from scratch, or --init)
    keep: float = 0.5
    budget: str = "channels"             # "channels" or "flops"
    # search epochs (all epochs of single-phase methods but fine-tune); fractions are steps:
    # 0.25 searches for a quarter of an epoch and fine-tunes from there, mid-epoch
    epochs: float = 2
    finetune_epochs: float = 1
    batch_size: int = 128
    lr: float = 0.01                     # safe without BN too (LeNet-5 diverges at 0.05 with momentum 0.9)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # None: the fine-tune continues the run's one cosine schedule (the schedule a fixed-mask
    # method gets over the same epochs). A number restarts a cosine at that rate: the authors
    # fine-tune at 1e-3 with BN in eval mode after a 300-epoch search. After a few-epoch search
    # the weights are still far from converged; a restart at 1e-2 cost 1.4 points on
    # Fashion-MNIST VGG-11 (91.02% vs 92.4% continuing, README).
    finetune_lr: Optional[float] = None
    finetune_bn_eval: bool = False
    compile: bool = True
    seed: int = 0
    limit_batches: Optional[int] = None  # per epoch, for quick runs
    augment: Optional[bool] = None
    out: str = "runs/fxsparse"
    device: str = "auto"                 # auto (CUDA when present), cpu, cuda, cuda:N
    precision: str = "fp32"              # fp32, bf16 or fp16 (autocast; fp16 adds a gradient scaler, CUDA only)
    channels_last: bool = False          # the model's and the inputs' memory format
    log_dir: Optional[str] = None        # TensorBoard scalars there (needs tensorboard); the CSV files are always written
    # training batches the BatchNorm statistics of the pruned model are re-estimated on before
    # its first step and its one-shot evaluation (0: keep the statistics it inherits)
    bn_batches: int = 50
    # the method's own options (VR-PGE's and their defaults per setting: fxsparse/methods/
    # defaults.py; the ``fxsparse train`` flags of the chosen method land here)
    method_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.method is None:
            self.method = default_method(trained=self.init is not None)

    def validate(self):
        # imported here: these checks need torch, reading the defaults (--help) must not
        from fxsparse.analysis.masks import check_fraction
        from fxsparse.training.device import check_precision, resolve_device
        from fxsparse.training.logs import check_tensorboard

        check_fraction(self.keep, "--keep", ValueError)
        if self.budget not in ("channels", "flops"):
            raise ValueError(f"--budget must be 'channels' or 'flops', got {self.budget!r}")
        for name in ("epochs", "finetune_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ValueError(f"--{name.replace('_', '-')} must be a number >= 0, got {v!r}")
        if self.epochs + self.finetune_epochs <= 0:
            raise ValueError("nothing to train: --epochs and --finetune-epochs are both 0")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        for name in ("lr", "finetune_lr"):
            v = getattr(self, name)
            if name == "finetune_lr" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {v!r}")
        if isinstance(self.bn_batches, bool) or not isinstance(self.bn_batches, int) or self.bn_batches < 0:
            raise ValueError(f"--bn-batches must be an integer >= 0, got {self.bn_batches!r}")
        if self.init is not None:
            from fxsparse.training.init_weights import weights_path

            weights_path(self.init)  # a missing file is said before any data is read
        if self.limit_batches is not None and self.limit_batches < 1:
            raise ValueError(f"--limit-batches must be >= 1, got {self.limit_batches}")
        check_precision(self.precision, resolve_device(self.device))
        if self.log_dir is not None:
            check_tensorboard()
