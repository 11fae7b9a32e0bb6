"""The weight initialisations the zoo's families share: He et al. 2015 (fan-out) for most CNNs,
truncated normal for GoogLeNet and the ViTs."""
import torch.nn as nn


def init_cnn(model: nn.Module, *, linear_std: float | None = None, convs=(nn.Conv2d,)) -> None:
    """He-normal (fan-out) convs with zero bias, BN scale 1 / shift 0, and, if
    ``linear_std`` is given, N(0, linear_std) linear weights with zero bias."""
    for m in model.modules():
        if isinstance(m, convs):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif linear_std is not None and isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


def init_trunc_normal(model: nn.Module, std: float, *, layers, norms) -> None:
    """Truncated-normal N(0, std) in [-2, 2] weights with zero bias for ``layers``, and
    scale 1 / shift 0 for ``norms``."""
    for m in model.modules():
        if isinstance(m, layers):
            nn.init.trunc_normal_(m.weight, std=std, a=-2, b=2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, norms):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
