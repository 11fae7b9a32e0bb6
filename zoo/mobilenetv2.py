"""MobileNetV2.

Follows M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted
Residuals and Linear Bottlenecks", CVPR 2018, arXiv:1801.04381, Table 2: a 3x3/2 conv with 32
filters, 17 inverted-residual bottlenecks (1x1 expansion by t, 3x3 depthwise, linear 1x1
projection; residual when stride 1 and in == out), a 1x1 conv to 1280, global average
pooling and a linear classifier; ReLU6 non-linearities. ``width_mult`` scales all widths
(rounded to multiples of 8, as in the paper's code); the last conv stays at 1280 for
``width_mult <= 1``. At 1.0 / 224 / 1000 classes this has 3,504,872 parameters, the same as
the torchvision reference implementation. The paper prints a truncated 3.4M; the authors'
TF-slim release lists 3.47M, which is the conv/linear weight count without the BN
parameters (3,472,041 here for its 1001 classes).

The ImageNet strides are kept, so a 32x32 input ends on a 1x1 map and 28x28 on 1x1
(all strided convs are padded 3x3, i.e. ceil-mode, so odd sizes are fine).
"""

from __future__ import annotations

import torch.nn as nn

from . import register
from ._init import init_cnn

_PAPER = ("Sandler, Howard, Zhu, Zhmoginov, Chen. MobileNetV2: Inverted Residuals and Linear "
          "Bottlenecks. CVPR 2018, arXiv:1801.04381")

# t (expansion), c (output channels), n (repeats), s (first stride) -- paper Table 2.
SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # do not round down by more than 10%
        new_v += divisor
    return new_v


def conv_bn_relu6(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(c_in * expand_ratio))
        self.use_res_connect = stride == 1 and c_in == c_out
        layers = []
        if expand_ratio != 1:
            layers.append(conv_bn_relu6(c_in, hidden, k=1))
        layers += [
            conv_bn_relu6(hidden, hidden, k=3, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, c_out, 1, bias=False),  # linear bottleneck
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        c_in = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features = [conv_bn_relu6(in_chans, c_in, k=3, stride=2)]
        for t, c, n, s in SETTINGS:
            c_out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        features.append(conv_bn_relu6(c_in, self.last_channel, k=1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.last_channel, num_classes)
        init_cnn(self, linear_std=0.01)

    def forward(self, x):
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register("mobilenetv2", family="mobilenetv2", paper=_PAPER)
def mobilenetv2(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return MobileNetV2(num_classes=num_classes, in_chans=in_chans, **kw)
