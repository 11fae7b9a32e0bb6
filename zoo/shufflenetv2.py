"""ShuffleNetV2.

Follows N. Ma, X. Zhang, H.-T. Zheng, J. Sun, "ShuffleNet V2: Practical Guidelines for
Efficient CNN Architecture Design", ECCV 2018, arXiv:1807.11164, Fig. 3(c)/(d) and Table 5:
a 3x3/2 conv (24) + 3x3/2 max pool, three stages of 4/8/4 units, a 1x1 conv (1024, 2048 for
2x), global average pooling and a linear classifier. A stride-1 unit splits the channels in
two with ``chunk``, transforms one half (1x1 conv, 3x3 depthwise conv, 1x1 conv) and
concatenates; a stride-2 unit runs both branches on the whole input. Every unit ends with the
channel shuffle of the authors' code. ``width_mult`` in {0.5, 1.0, 1.5, 2.0} selects the
paper's stage widths; 1x has 2,278,604 parameters at 224 / 1000 classes (paper: 2.3M).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register
from ._init import init_cnn

_PAPER = ("Ma, Zhang, Zheng, Sun. ShuffleNet V2: Practical Guidelines for Efficient CNN "
          "Architecture Design. ECCV 2018, arXiv:1807.11164")

# Output channels of conv1, stage2, stage3, stage4, conv5 (paper Table 5).
STAGE_OUT_CHANNELS = {
    0.5: [24, 48, 96, 192, 1024],
    1.0: [24, 116, 232, 464, 1024],
    1.5: [24, 176, 352, 704, 1024],
    2.0: [24, 244, 488, 976, 2048],
}
STAGE_REPEATS = [4, 8, 4]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class ShuffleUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("stride must be 1 or 2")
        self.stride = stride
        branch = c_out // 2
        if stride == 1 and c_in != 2 * branch:
            raise ValueError("a stride-1 unit needs c_in == c_out")
        if stride == 2:
            self.branch1 = nn.Sequential(
                *_conv_bn(c_in, c_in, 3, stride=2, groups=c_in, relu=False),
                *_conv_bn(c_in, branch, 1),
            )
        else:
            self.branch1 = None
        b_in = c_in if stride == 2 else branch
        self.branch2 = nn.Sequential(
            *_conv_bn(b_in, branch, 1),
            *_conv_bn(branch, branch, 3, stride=stride, groups=branch, relu=False),
            *_conv_bn(branch, branch, 1),
        )

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width_mult: float = 1.0):
        super().__init__()
        if width_mult not in STAGE_OUT_CHANNELS:
            raise ValueError(f"width_mult must be one of {sorted(STAGE_OUT_CHANNELS)}")
        chans = STAGE_OUT_CHANNELS[width_mult]
        self.conv1 = nn.Sequential(*_conv_bn(in_chans, chans[0], 3, stride=2))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = chans[0]
        stages = []
        for repeats, c_out in zip(STAGE_REPEATS, chans[1:4]):
            units = [ShuffleUnit(c_in, c_out, 2)] + [ShuffleUnit(c_out, c_out, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            c_in = c_out
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = nn.Sequential(*_conv_bn(c_in, chans[-1], 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[-1], num_classes)
        init_cnn(self, linear_std=0.01)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.avgpool(self.conv5(x)).flatten(1)
        return self.fc(x)


@register("shufflenetv2", family="shufflenetv2", paper=_PAPER)
def shufflenetv2(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return ShuffleNetV2(num_classes=num_classes, in_chans=in_chans, **kw)
