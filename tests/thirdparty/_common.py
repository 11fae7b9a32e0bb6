"""Helpers shared by every third-party-style model builder (not mirrored from upstream).

``build(fn, seed)`` seeds torch, builds the model, then makes its *eval* behaviour non-trivial:
  * BatchNorm running stats and all norm affine params are randomised (upstream inits them to
    mean 0 / var 1 / weight 1 / bias 0, and some set BN weight to 0 on purpose, e.g. LeViT
    ``bn_weight_init=0``), so that dropping a channel actually changes eval outputs;
  * weights that upstream zero-initialises (torchvision ViT head, ...) are re-drawn, so that the
    logits are not identically zero.
This only changes parameter *values*, never module structure or forward code.
"""
from typing import Callable, Tuple

import torch
from torch import nn

NUM_CLASSES = 10
BATCH = 2
IMG = 32


def example_input(seed: int = 0) -> Tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, 3, IMG, IMG, generator=g),)


@torch.no_grad()
def _randomize(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 12345)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.normal_(0.0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            if getattr(m, "weight", None) is not None:
                m.weight.uniform_(0.5, 1.5, generator=g)
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0.0, 0.1, generator=g)
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and not bool(m.weight.any()):
            m.weight.normal_(0.0, 0.02, generator=g)


def build(fn: Callable[[], nn.Module], seed: int = 0):
    torch.manual_seed(seed)
    model = fn()
    _randomize(model, seed)
    model.eval()
    return model, example_input(seed)
