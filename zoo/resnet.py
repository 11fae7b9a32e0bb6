"""ImageNet-style ResNets: ResNet-18/34 (basic blocks) and ResNet-50 (bottleneck blocks).

Follows K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016, arXiv:1512.03385, Table 1: a 7x7/2 conv stem with 64 filters, 3x3/2 max pool,
four stages (64/128/256/512 base widths; [2,2,2,2], [3,4,6,3], [3,4,6,3] blocks), global
average pooling and a 1000-way fully connected layer. Shortcuts are identities except where
the shape changes, where a projection 1x1 conv + BN is used (option B). The bottleneck's
stride sits on the 3x3 conv (the common "ResNet v1.5" placement, as in the torchvision
reference implementation, whose parameter counts these match exactly: 11,689,512 /
21,797,672 / 25,557,032). Adaptive average pooling makes 28x28 and 32x32 inputs work.

``resnet18_cifar`` is the same ResNet-18 with the CIFAR stem used throughout the pruning
literature (a 3x3/1 conv, no max pool, so the stages run at 32/16/8/4 pixels; e.g. the
widely used kuangliu/pytorch-cifar reference, 11,173,962 parameters at 10 classes): at
32x32 it does 0.56 G multiply-adds per image, against 0.04 G for the ImageNet stem.
"""

from __future__ import annotations

import torch.nn as nn

from . import register
from ._init import init_cnn

_PAPER = "He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016, arXiv:1512.03385"


def basic_block_layers(block: nn.Module, in_planes: int, planes: int, stride: int) -> None:
    """The layers of a basic block (two 3x3 convs, the first with ``stride``), set on ``block``
    as conv1/bn1/relu1 and conv2/bn2/relu2; the block adds its shortcut and forward."""
    block.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
    block.bn1 = nn.BatchNorm2d(planes)
    block.relu1 = nn.ReLU(inplace=True)
    block.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    block.bn2 = nn.BatchNorm2d(planes)
    block.relu2 = nn.ReLU(inplace=True)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        basic_block_layers(self, in_planes, planes, stride)
        self.downsample = _downsample(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.downsample(x))


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes: int = 1000, in_chans: int = 3, width: int = 64,
                 stem: str = "imagenet"):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' (7x7/2 conv + max pool) or 'cifar' (3x3/1 conv), got {stem!r}")
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        in_planes = width
        stages = []
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        init_cnn(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


@register("resnet18", family="resnet", paper=_PAPER)
def resnet18(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_chans=in_chans, **kw)


@register("resnet18_cifar", family="resnet", paper=_PAPER + "; CIFAR stem (3x3/1 conv, no max pool)")
def resnet18_cifar(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_chans=in_chans, stem="cifar", **kw)


@register("resnet34", family="resnet", paper=_PAPER)
def resnet34(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, in_chans=in_chans, **kw)


@register("resnet50", family="resnet", paper=_PAPER)
def resnet50(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, in_chans=in_chans, **kw)
