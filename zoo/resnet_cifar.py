"""CIFAR ResNets (ResNet-20/32/44/56/110 and the 2x-wide ResNet-32).

Follows K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016, arXiv:1512.03385, Section 4.2 ("CIFAR-10 and Analysis"): a 3x3 conv with 16
filters, then three stages of ``n`` basic blocks (two 3x3 convs each) with 16/32/64 filters
on 32x32/16x16/8x8 maps, global average pooling and a fully connected layer; depth 6n+2.

Shortcut when the shape changes:

* ``shortcut="B"`` (default here): projection shortcut, 1x1 conv (stride 2) + BN
  (the paper's "option B"). It is the default because it is made of plain conv/BN modules
  that a channel analyzer can prune like any other layer.
* ``shortcut="A"``: the paper's CIFAR choice, a parameter-free identity shortcut that
  subsamples by 2 and zero-pads the new channels. With it the parameter counts are exactly
  the paper's (Table 6: 0.27M / 0.46M / 0.66M / 0.85M / 1.7M).

``resnet32_2x`` doubles every width (32/64/128 filters), the wide ResNet-32 used by
GraSP (C. Wang, G. Zhang, R. Grosse, "Picking Winning Tickets Before Training by
Preserving Gradient Flow", ICLR 2020, arXiv:2002.07376) and by the VR-PGE sparse-training
paper (X. Zhou, W. Zhang, Z. Chen, S. Diao, T. Zhang, "Efficient Neural Network Training via
Forward and Backward Propagation Sparsification", NeurIPS 2021, arXiv:2111.05685).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from . import register
from ._init import init_cnn
from .resnet import basic_block_layers

_PAPER = "He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016, arXiv:1512.03385"


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad ``pad`` channels on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B"):
        super().__init__()
        basic_block_layers(self, in_planes, planes, stride)
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                if stride != 2 or planes != 2 * in_planes:
                    raise ValueError("option-A shortcut needs stride 2 and doubled width")
                self.shortcut = PadShortcut(planes // 4)
            elif shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            else:
                raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.relu2(out)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs, depth 6n+2; ``width`` is the first stage's filter count."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, width: int = 16,
                 shortcut: str = "B"):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [width, 2 * width, 4 * width]
        self.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = width
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_cnn(self)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def _make(depth: int, width: int = 16):
    def factory(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
        kw.setdefault("width", width)
        return CifarResNet(depth=depth, num_classes=num_classes, in_chans=in_chans, **kw)

    factory.__name__ = f"resnet{depth}" + ("" if width == 16 else f"_{width // 16}x")
    return factory


resnet20 = register("resnet20", family="resnet_cifar", paper=_PAPER)(_make(20))
resnet32 = register("resnet32", family="resnet_cifar", paper=_PAPER)(_make(32))
resnet44 = register("resnet44", family="resnet_cifar", paper=_PAPER)(_make(44))
resnet56 = register("resnet56", family="resnet_cifar", paper=_PAPER)(_make(56))
resnet110 = register("resnet110", family="resnet_cifar", paper=_PAPER)(_make(110))
resnet32_2x = register(
    "resnet32_2x", family="resnet_cifar",
    paper=_PAPER + "; 2x width as in Wang et al. GraSP, ICLR 2020, arXiv:2002.07376",
)(_make(32, width=32))
