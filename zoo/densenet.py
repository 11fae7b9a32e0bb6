"""DenseNet-BC (CIFAR, L=100, k=12) and DenseNet-121 (ImageNet).

Follows G. Huang, Z. Liu, L. van der Maaten, K. Q. Weinberger, "Densely Connected
Convolutional Networks", CVPR 2017, arXiv:1608.06993.

* ``densenet_bc_100`` (Section 3 "Implementation Details" and Table 2): a 3x3 conv with 2k
  filters, three dense blocks of (L-4)/6 = 16 bottleneck layers (BN-ReLU-Conv1x1(4k)-
  BN-ReLU-Conv3x3(k), each layer's input is the concatenation of all earlier feature maps),
  transition layers BN-ReLU-Conv1x1(theta*c)-AvgPool2x2 with compression theta = 0.5,
  and BN-ReLU-global average pooling-linear. 769,162 parameters with 10 classes (paper
  Table 2: 0.8M). ``depth`` and ``growth_rate`` are kwargs (e.g. depth=40 for a tiny one).
* ``densenet121`` (Table 1): 7x7/2 conv with 2k = 64 filters, 3x3/2 max pool, dense blocks of
  6/12/24/16 layers with k = 32 and theta = 0.5; 7,978,856 parameters at 1000 classes.

The transition pools use ``ceil_mode=True`` so 28x28 inputs stay valid through every
transition; for even feature-map sizes this is identical to the plain 2x2 average pool.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register

_PAPER = ("Huang, Liu, van der Maaten, Weinberger. Densely Connected Convolutional Networks. "
          "CVPR 2017, arXiv:1608.06993")


class DenseLayer(nn.Module):
    """Bottleneck layer: BN-ReLU-Conv1x1(bn_size*k)-BN-ReLU-Conv3x3(k)."""

    def __init__(self, c_in: int, growth_rate: int, bn_size: int = 4):
        super().__init__()
        inter = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, inter, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(inter)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(inter, growth_rate, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(out)))


class DenseBlock(nn.Module):
    def __init__(self, num_layers: int, c_in: int, growth_rate: int, bn_size: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(c_in + i * growth_rate, growth_rate, bn_size) for i in range(num_layers)
        )
        self.out_channels = c_in + num_layers * growth_rate

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.AvgPool2d(2, stride=2, ceil_mode=True),
        )


class DenseNet(nn.Module):
    def __init__(self, block_config, growth_rate: int, num_init_features: int, num_classes: int = 10,
                 in_chans: int = 3, compression: float = 0.5, bn_size: int = 4, imagenet_stem: bool = False):
        super().__init__()
        if imagenet_stem:
            stem = [nn.Conv2d(in_chans, num_init_features, 7, stride=2, padding=3, bias=False),
                    nn.BatchNorm2d(num_init_features), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, stride=2, padding=1)]
        else:
            stem = [nn.Conv2d(in_chans, num_init_features, 3, padding=1, bias=False)]
        blocks = list(stem)
        c = num_init_features
        for i, n in enumerate(block_config):
            block = DenseBlock(n, c, growth_rate, bn_size)
            blocks.append(block)
            c = block.out_channels
            if i != len(block_config) - 1:
                c_out = int(c * compression)
                blocks.append(Transition(c, c_out))
                c = c_out
        blocks += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(x)


@register("densenet_bc_100", family="densenet", paper=_PAPER)
def densenet_bc_100(num_classes: int = 10, in_chans: int = 3, depth: int = 100, growth_rate: int = 12,
                    **kw) -> nn.Module:
    if (depth - 4) % 6 != 0:
        raise ValueError(f"DenseNet-BC depth must be 6n+4, got {depth}")
    n = (depth - 4) // 6
    return DenseNet([n, n, n], growth_rate, 2 * growth_rate, num_classes=num_classes, in_chans=in_chans, **kw)


@register("densenet121", family="densenet", paper=_PAPER)
def densenet121(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return DenseNet([6, 12, 24, 16], 32, 64, num_classes=num_classes, in_chans=in_chans,
                    imagenet_stem=True, **kw)
