"""EfficientNet-B0.

Follows M. Tan, Q. V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks", ICML 2019, arXiv:1905.11946, Table 1: a 3x3/2 conv (32), 16 MBConv blocks in
seven stages (MBConv1 k3 16; MBConv6 k3 24 x2; k5 40 x2; k3 80 x3; k5 112 x3; k5 192 x4;
k3 320), a 1x1 conv to 1280, global average pooling, dropout 0.2 and a linear classifier.
MBConv (from MnasNet, Tan et al. CVPR 2019, arXiv:1807.11626) is a 1x1 expansion, a kxk
depthwise conv, a squeeze-and-excitation gate (Hu et al., CVPR 2018, arXiv:1709.01507)
``x * sigmoid(conv(silu(conv(mean(x)))))`` whose bottleneck is a quarter of the block's
*input* channels, and a linear 1x1 projection; swish/SiLU activations throughout.
Residual blocks use stochastic depth (Huang et al., ECCV 2016, arXiv:1603.09382) with the
drop rate growing linearly to 0.2 over the blocks, as in the authors' code: a per-sample
Bernoulli mask of shape [B, 1, 1, 1] in training mode, identity in eval mode.
5,288,548 parameters at 224 / 1000 classes (paper Table 2: 5.3M).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register

_PAPER = ("Tan, Le. EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks. "
          "ICML 2019, arXiv:1905.11946")

# expand ratio, kernel, stride, in channels, out channels, repeats (paper Table 1, B0).
B0_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]

_BN = dict(eps=1e-3, momentum=0.01)  # TF defaults used by the authors


class StochasticDepth(nn.Module):
    """Drop the whole residual branch per sample with probability ``p`` (training only)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.bernoulli(x.new_full((x.shape[0], 1, 1, 1), keep))
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.SiLU(inplace=True)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(self.act(self.reduce(s)))
        return x * torch.sigmoid(s)


def _conv_bn_act(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out, **_BN)]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return layers


class MBConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand_ratio: int,
                 drop_path: float, se_ratio: float = 0.25):
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_res = stride == 1 and c_in == c_out
        layers = []
        if expand_ratio != 1:
            layers += _conv_bn_act(c_in, hidden, 1)
        layers += _conv_bn_act(hidden, hidden, kernel, stride=stride, groups=hidden)
        layers.append(SqueezeExcitation(hidden, max(1, int(c_in * se_ratio))))
        layers += _conv_bn_act(hidden, c_out, 1, act=False)
        self.block = nn.Sequential(*layers)
        self.drop_path = StochasticDepth(drop_path) if self.use_res else nn.Identity()

    def forward(self, x):
        out = self.block(x)
        if self.use_res:
            out = self.drop_path(out) + x
        return out


class EfficientNet(nn.Module):
    def __init__(self, stages=B0_STAGES, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.2,
                 drop_path_rate: float = 0.2, stem_channels: int = 32, head_channels: int = 1280):
        super().__init__()
        layers = _conv_bn_act(in_chans, stem_channels, 3, stride=2)
        total = sum(s[-1] for s in stages)
        idx = 0
        for t, k, s, c_in, c_out, n in stages:
            for i in range(n):
                layers.append(MBConv(c_in if i == 0 else c_out, c_out, k, s if i == 0 else 1, t,
                                     drop_path_rate * idx / total))
                idx += 1
        layers += _conv_bn_act(stages[-1][4], head_channels, 1)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / m.out_features ** 0.5
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.avgpool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register("efficientnet_b0", family="efficientnet", paper=_PAPER)
def efficientnet_b0(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return EfficientNet(num_classes=num_classes, in_chans=in_chans, **kw)
