"""U-Net.

Follows O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical
Image Segmentation", MICCAI 2015, arXiv:1505.04597, Fig. 1: a contracting path of four
[3x3 conv, ReLU, 3x3 conv, ReLU, 2x2 max pool] steps doubling the channels 64 -> 128 -> 256
-> 512 with a 1024-channel bottom, an expansive path of [2x2 transposed "up-convolution"
halving the channels, concatenation with the matching contracting feature map, two 3x3
convs] steps, and a final 1x1 conv to ``num_classes`` maps (2 in the paper). Output is
``[B, num_classes, H, W]``.

Deviations: the 3x3 convs use padding 1 (the paper's are unpadded, which needs the crop and
a 572x572 input), so the output has the input's size; the decoder resizes the upsampled map
to the skip connection's size with ``F.interpolate(..., size=skip.shape[-2:])`` (nearest;
an identity when the sizes already match, e.g. for inputs divisible by 16), which keeps odd
sizes such as 28x28 valid. ``batch_norm=True`` (default) puts a BatchNorm after every 3x3
conv, as most modern U-Nets do (bias-free convs); ``batch_norm=False`` is the paper's
conv-with-bias + ReLU. Both have ~31.0M parameters with 1 input channel and 2 classes
(31,036,546 with BN, 31,030,658 without). ``base_width`` (default 64) scales all widths.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register
from ._init import init_cnn

_PAPER = ("Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image "
          "Segmentation. MICCAI 2015, arXiv:1505.04597")


class DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, batch_norm: bool = True):
        layers = []
        for ci in (c_in, c_out):
            layers.append(nn.Conv2d(ci, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    def __init__(self, c_in: int, c_out: int, batch_norm: bool = True):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        self.conv = DoubleConv(2 * c_out, c_out, batch_norm)

    def forward(self, x, skip):
        x = self.up(x)
        x = F.interpolate(x, size=skip.shape[-2:])
        return self.conv(torch.cat([skip, x], 1))


class UNet(nn.Module):
    def __init__(self, num_classes: int = 2, in_chans: int = 1, base_width: int = 64, batch_norm: bool = True):
        super().__init__()
        w = [base_width * 2 ** i for i in range(5)]
        self.inc = DoubleConv(in_chans, w[0], batch_norm)
        self.pool = nn.MaxPool2d(2)
        self.down1 = DoubleConv(w[0], w[1], batch_norm)
        self.down2 = DoubleConv(w[1], w[2], batch_norm)
        self.down3 = DoubleConv(w[2], w[3], batch_norm)
        self.down4 = DoubleConv(w[3], w[4], batch_norm)
        self.up1 = Up(w[4], w[3], batch_norm)
        self.up2 = Up(w[3], w[2], batch_norm)
        self.up3 = Up(w[2], w[1], batch_norm)
        self.up4 = Up(w[1], w[0], batch_norm)
        self.outc = nn.Conv2d(w[0], num_classes, 1)
        init_cnn(self, convs=(nn.Conv2d, nn.ConvTranspose2d))

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(self.pool(x1))
        x3 = self.down2(self.pool(x2))
        x4 = self.down3(self.pool(x3))
        x5 = self.down4(self.pool(x4))
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


@register("unet", family="unet", paper=_PAPER)
def unet(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return UNet(num_classes=num_classes, in_chans=in_chans, **kw)
