"""Every zoo model through the sparse step (eager), equal to its exported model; the
compiled step for a representative subset (compilation on CPU costs tens of seconds)."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from fxsparse import zoo
from fxsparse.zoo.resnet_cifar import CifarResNet
from lanes import zoo_fast_subset
from sparse_checks import check_steps

SMALL = {"vit_base": {"depth": 1}, "vit_small": {"depth": 1}, "vit_tiny": {"depth": 2}, "unet": {"base_width": 8},
         "convnext_tiny": {"depths": (1, 1, 1, 1)}, "densenet_bc_100": {"depth": 40}}


def _build(name, in_chans):
    return zoo.create(name, in_chans=in_chans, **SMALL.get(name, {}))


def _data(name):
    shape = (2,) + zoo.info(name).default_input
    x = torch.randn(*shape)
    y = torch.randint(0, 10, (2,) + shape[2:]) if name == "unet" else torch.randint(0, 10, (2,))
    return x, y


# one model per family in the fast lane, every model in the full suite
@pytest.mark.parametrize("name", zoo_fast_subset(zoo.names()))
def test_zoo_sparse_step_eager(name):
    """Eval mode (dropout and stochastic depth off), float64: output, loss and kept
    gradients equal the exported model's; pruned weights and state do not move."""
    torch.manual_seed(0)
    x, y = _data(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_steps(_build(name, x.shape[1]), (x,), y, F.cross_entropy, steps=1, train=False,
                    dtype=torch.float64, tol=1e-9)


# The MLP compiles in seconds (the fast lane). The CNN is the zoo's CIFAR ResNet at depth 8:
# every op of ResNet-20 (stem, the three stages with their strided shortcut convolutions, the
# pooled head) once per stage instead of three times, which costs inductor's cold compile
# ~34 s of wall time instead of ~54 s for no other code path.
COMPILED = {"resnet20": {"depth": 8}}


@pytest.mark.parametrize("name", [pytest.param("resnet20", id="resnet20_depth8", marks=[pytest.mark.slow, pytest.mark.long]),
                                  "lenet_300_100"])
def test_zoo_compiled_step(name):
    torch.manual_seed(0)
    x, y = _data(name)
    model = (CifarResNet(in_chans=x.shape[1], **COMPILED[name]) if name in COMPILED else _build(name, x.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = check_steps(model, (x,), y, F.cross_entropy, steps=2, compile=True, tol=1e-4)
    assert 1 <= sp.compilations <= 3
