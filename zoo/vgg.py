"""CIFAR-style VGG-11/16/19 with batch normalisation.

The convolutional stacks follow K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks
for Large-Scale Image Recognition", ICLR 2015, arXiv:1409.1556, Table 1 (configurations A, D
and E: 3x3 convs with 64-128-256-512-512 filters, five 2x2 max pools), with a BN after every
conv (S. Ioffe, C. Szegedy, "Batch Normalization", ICML 2015, arXiv:1502.03167).

The classifier is the CIFAR variant used throughout the pruning literature (e.g. Network
Slimming, Z. Liu et al., ICCV 2017, arXiv:1708.06519, whose 19-layer VGG has 20.04M
parameters; SNIP / GraSP): the 512 feature maps are pooled to 1x1 and fed to a single
``nn.Linear(512, num_classes)`` instead of the ImageNet 4096-4096-1000 head. Hence "VGG-16"
here has 13 conv layers and one linear layer (14.7M parameters with 10 classes).

The max pools use ``ceil_mode=True`` and the last pool is followed by an adaptive average
pool to 1x1: for 32x32 (and 224x224) inputs this is identical to the plain network, and it
keeps a 28x28 input valid (28 -> 14 -> 7 -> 4 -> 2 -> 1 instead of collapsing to 0).
"""

from __future__ import annotations

import torch.nn as nn

from . import register
from ._init import init_cnn

_PAPER = ("Simonyan, Zisserman. Very Deep Convolutional Networks for Large-Scale Image Recognition. "
          "ICLR 2015, arXiv:1409.1556 (CIFAR variant with BN and a single linear classifier)")

CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, depth: int = 16, num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0):
        super().__init__()
        layers = []
        c_in = in_chans
        for v in CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
            else:
                c_out = max(1, int(round(v * width_mult)))
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        init_cnn(self, linear_std=0.01)

    def forward(self, x):
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(x)


def _make(depth: int):
    def factory(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
        return VGG(depth=depth, num_classes=num_classes, in_chans=in_chans, **kw)

    factory.__name__ = f"vgg{depth}_bn"
    return factory


vgg11_bn = register("vgg11_bn", family="vgg", paper=_PAPER)(_make(11))
vgg16_bn = register("vgg16_bn", family="vgg", paper=_PAPER)(_make(16))
vgg19_bn = register("vgg19_bn", family="vgg", paper=_PAPER)(_make(19))
