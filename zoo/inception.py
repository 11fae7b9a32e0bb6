"""GoogLeNet (Inception v1).

Follows C. Szegedy, W. Liu, Y. Jia, P. Sermanet, S. Reed, D. Anguelov, D. Erhan,
V. Vanhoucke, A. Rabinovich, "Going Deeper with Convolutions", CVPR 2015, arXiv:1409.4842,
Table 1 and Fig. 2(b): 7x7/2 conv (64), 3x3/2 max pool, 1x1 conv (64), 3x3 conv (192),
3x3/2 max pool, inception 3a-3b, max pool, 4a-4e, max pool, 5a-5b, global average pooling,
dropout 0.4 and a linear classifier. Each inception module concatenates four parallel
branches: 1x1 conv; 1x1 reduce -> 3x3 conv; 1x1 reduce -> 5x5 conv (a true 5x5, as in the
paper); 3x3/1 max pool -> 1x1 projection. At 224 / 1000 classes this has 7,005,832
parameters, 6,991,272 without the BN affine parameters, which is exactly what the layer
shapes of the paper's Table 1 give. The paper's per-layer parameter column sums to 6.8M but
is not consistent with its own shapes (it lists 2.7K for the 7x7x3x64 conv, i.e. 9.4K), so
that total is only matched to ~3%. (torchvision's GoogLeNet, 6.62M, uses a 3x3 conv in the
"5x5" branch; this one does not.)

Deviations: every conv is followed by BatchNorm (as in the BN-Inception follow-up, Ioffe &
Szegedy, ICML 2015, arXiv:1502.03167, and the common reference implementations) instead
of the original biases and local response normalisation; the two auxiliary classifiers (used
only as a training-time regulariser and discarded at inference) are omitted. The stride-2
max pools use padding 1 (224 -> 112 -> 56 -> 28 -> 14 -> 7 as in Table 1) so that 32x32 and
28x28 inputs reduce to 1x1 without collapsing.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register
from ._init import init_trunc_normal

_PAPER = ("Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke, Rabinovich. Going Deeper "
          "with Convolutions. CVPR 2015, arXiv:1409.4842")

# in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj (paper Table 1).
INCEPTION_CFG = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


class BasicConv2d(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0):
        super().__init__(
            nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-3),
            nn.ReLU(inplace=True),
        )


class Inception(nn.Module):
    def __init__(self, c_in: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int):
        super().__init__()
        self.branch1 = BasicConv2d(c_in, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(c_in, ch3x3red, 1), BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(c_in, ch5x5red, 1), BasicConv2d(ch5x5red, ch5x5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), BasicConv2d(c_in, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.4):
        super().__init__()
        self.conv1 = BasicConv2d(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.inception3a = Inception(*INCEPTION_CFG["3a"])
        self.inception3b = Inception(*INCEPTION_CFG["3b"])
        self.maxpool3 = nn.MaxPool2d(3, stride=2, padding=1)
        self.inception4a = Inception(*INCEPTION_CFG["4a"])
        self.inception4b = Inception(*INCEPTION_CFG["4b"])
        self.inception4c = Inception(*INCEPTION_CFG["4c"])
        self.inception4d = Inception(*INCEPTION_CFG["4d"])
        self.inception4e = Inception(*INCEPTION_CFG["4e"])
        self.maxpool4 = nn.MaxPool2d(3, stride=2, padding=1)
        self.inception5a = Inception(*INCEPTION_CFG["5a"])
        self.inception5b = Inception(*INCEPTION_CFG["5b"])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)
        init_trunc_normal(self, 0.01, layers=(nn.Conv2d, nn.Linear), norms=nn.BatchNorm2d)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4c(self.inception4b(self.inception4a(x)))
        x = self.maxpool4(self.inception4e(self.inception4d(x)))
        x = self.inception5b(self.inception5a(x))
        x = self.avgpool(x).flatten(1)
        return self.fc(self.dropout(x))


@register("googlenet", family="inception", paper=_PAPER)
def googlenet(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, **kw)
