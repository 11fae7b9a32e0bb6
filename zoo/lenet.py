"""LeNet-300-100, LeNet-5 (Caffe variant) and the 784-100-100-10 MLP.

* ``lenet_300_100``: the fully connected 784-300-100-10 network of Y. LeCun, L. Bottou,
  Y. Bengio, P. Haffner, "Gradient-Based Learning Applied to Document Recognition",
  Proc. IEEE 86(11), 1998 (Section on the MNIST baselines), with ReLU as in the pruning
  literature (S. Han, J. Pool, J. Tran, W. Dally, "Learning both Weights and Connections for
  Efficient Neural Networks", NeurIPS 2015, arXiv:1506.02626, Table 1: 267K parameters).
  266,610 parameters on 28x28 MNIST.
* ``lenet5``: the *Caffe* LeNet-5 used by Han et al. 2015 (Table 1: 431K), SNIP and most
  pruning papers, chosen over the classic 61.7K-parameter LeCun-1998 LeNet-5:
  conv 5x5 (20) -> max pool 2x2 -> conv 5x5 (50) -> max pool 2x2 -> fc 500 -> ReLU -> fc.
  As in Caffe's ``lenet_train_test.prototxt`` there is no non-linearity after the convs.
  431,080 parameters on 28x28 MNIST.
* ``mlp_784_100_100_10``: the 784-100-100-10 ReLU MLP used on MNIST by DropBack
  (M. Golub, G. Lemieux, M. Lis, "Full Deep Neural Network Training on a Pruned Weight
  Budget", SysML 2019, arXiv:1806.06949). 89,610 parameters.

All three flatten inside, so they take ``[B, C, H, W]`` images or ``[B, C*H*W]`` vectors.
The input size comes from ``img_size`` (default 28 when ``in_chans == 1``, else 32), so
``in_chans=3`` on 32x32 works too (3072 inputs for the MLPs, 1250 features before fc 500).
"""

from __future__ import annotations

import torch.nn as nn

from . import register

_LECUN = ("LeCun, Bottou, Bengio, Haffner. Gradient-Based Learning Applied to Document Recognition. "
          "Proc. IEEE 1998; pruning-literature form from Han et al. NeurIPS 2015, arXiv:1506.02626")
_DROPBACK = ("Golub, Lemieux, Lis. Full Deep Neural Network Training on a Pruned Weight Budget. "
             "SysML 2019, arXiv:1806.06949")


def _default_img_size(in_chans: int, img_size: int | None) -> int:
    return img_size if img_size is not None else (28 if in_chans == 1 else 32)


class MLP(nn.Module):
    """Fully connected ReLU network ``in -> hidden[0] -> ... -> num_classes`` on flattened input."""

    def __init__(self, hidden, num_classes: int = 10, in_chans: int = 1, img_size: int | None = None):
        super().__init__()
        img_size = _default_img_size(in_chans, img_size)
        self.in_features = in_chans * img_size * img_size
        layers = []
        d = self.in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
            d = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x.flatten(1)))


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv20 -> pool -> conv50 -> pool -> fc500 -> ReLU -> fc."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int | None = None):
        super().__init__()
        img_size = _default_img_size(in_chans, img_size)
        self.in_chans, self.img_size = in_chans, img_size
        s = ((img_size - 4) // 2 - 4) // 2
        if s < 1:
            raise ValueError(f"img_size {img_size} is too small for LeNet-5")
        self.conv1 = nn.Conv2d(in_chans, 20, 5)
        self.pool1 = nn.MaxPool2d(2, stride=2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2, stride=2)
        self.fc1 = nn.Linear(50 * s * s, 500)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = x.reshape(x.shape[0], self.in_chans, self.img_size, self.img_size)  # accepts flat input too
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        x = self.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


@register("lenet_300_100", family="lenet", paper=_LECUN, default_input=(1, 28, 28))
def lenet_300_100(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return MLP([300, 100], num_classes=num_classes, in_chans=in_chans, **kw)


@register("lenet5", family="lenet", paper=_LECUN + " (Caffe LeNet-5 variant, 431K)", default_input=(1, 28, 28))
def lenet5(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return LeNet5(num_classes=num_classes, in_chans=in_chans, **kw)


@register("mlp_784_100_100_10", family="lenet", paper=_DROPBACK, default_input=(1, 28, 28))
def mlp_784_100_100_10(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
    return MLP([100, 100], num_classes=num_classes, in_chans=in_chans, **kw)
