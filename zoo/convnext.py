"""ConvNeXt-T.

Follows Z. Liu, H. Mao, C.-Y. Wu, C. Feichtenhofer, T. Darrell, S. Xie, "A ConvNet for the
2020s", CVPR 2022, arXiv:2201.03545 (Fig. 4, Section 3 and the authors' code): a 4x4/4
"patchify" conv stem + LayerNorm, four stages of [3, 3, 9, 3] blocks with [96, 192, 384, 768]
channels, separate downsampling layers (LayerNorm + 2x2/2 conv) between stages, global
average pooling, LayerNorm and a linear head. A block is a 7x7 depthwise conv, a permute to
channels-last, ``nn.LayerNorm(C)`` over the last dim, ``Linear(C, 4C)``, GELU,
``Linear(4C, C)``, layer scale ``gamma`` (initialised to 1e-6), a permute back and a
residual with stochastic depth (0.1 for ConvNeXt-T, the paper's ImageNet-1K setting; a
per-sample [B, 1, 1, 1] Bernoulli mask in training mode, identity in eval mode).
Channels-first LayerNorms (stem, downsampling) are written as permute + LayerNorm + permute.
28,589,128 parameters at 224 / 1000 classes (paper: 28M).

Deviation for small inputs: every downsampling conv is preceded by ``nn.ZeroPad2d((0, 1, 0,
1))`` so that it behaves like a ceil-mode pool on odd maps (28x28 input: 7 -> 4 -> 2 -> 1
instead of 7 -> 3 -> 1 -> 0). On even maps (32x32, 224x224) the padded row/column is never
read by the 2x2/2 kernel, so the output is identical to the paper's network.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register
from .efficientnet import StochasticDepth

_PAPER = ("Liu, Mao, Wu, Feichtenhofer, Darrell, Xie. A ConvNet for the 2020s. CVPR 2022, "
          "arXiv:2201.03545")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of an NCHW tensor: permute + LayerNorm + permute."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        return x.permute(0, 3, 1, 2)


class Block(nn.Module):
    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim))
        self.drop_path = StochasticDepth(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # NCHW -> NHWC
        x = self.norm(x)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return shortcut + self.drop_path(x)


class ConvNeXt(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, depths=(3, 3, 9, 3),
                 dims=(96, 192, 384, 768), drop_path_rate: float = 0.1, layer_scale_init: float = 1e-6):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0])))
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(dims[i]),
                nn.ZeroPad2d((0, 1, 0, 1)),
                nn.Conv2d(dims[i], dims[i + 1], 2, stride=2),
            ))
        rates = [drop_path_rate * j / max(1, sum(depths) - 1) for j in range(sum(depths))]
        self.stages = nn.ModuleList()
        cur = 0
        for i, d in enumerate(depths):
            self.stages.append(nn.Sequential(*[Block(dims[i], rates[cur + j], layer_scale_init) for j in range(d)]))
            cur += d
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean((-2, -1)))
        return self.head(x)


@register("convnext_tiny", family="convnext", paper=_PAPER)
def convnext_tiny(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return ConvNeXt(num_classes=num_classes, in_chans=in_chans, **kw)
