"""Real `timm` models, built by name from their configs (``timm.create_model(name,
pretrained=False, num_classes=10)``, random weights, nothing downloaded), input 2x3x32x32;
run through the chain of ``chain.py`` by ``tests/thirdparty/test_thirdparty_timm.py`` and
``survey.py --sets timm``.

timm is installed without its dependencies (``pip install --no-deps timm && pip install
huggingface_hub pyyaml safetensors``): its metadata asks for torchvision, whose PyPI build would
replace a CPU torch. timm is imported as ``fxsparse train --model timm:NAME`` imports it,
through :func:`fxsparse.zoo.import_timm` (where torchvision is absent: with a stand-in for the
few torchvision names timm imports at module level), so these models run exactly the import a
user's run does.
"""
from __future__ import annotations

import importlib.util

import torch

from fxsparse.zoo import import_timm as _import_timm


def import_timm():
    """The timm module (:func:`fxsparse.zoo.import_timm`), or None where timm is not installed."""
    if importlib.util.find_spec("timm") is None:
        return None
    return _import_timm()


# name -> create_model keywords (small inputs: 32x32 images, patch / window sizes to match)
MODELS = {
    "resnet18": {},
    "resnet26d": {},
    "seresnext26d_32x4d": {},
    "resnetv2_50x1_bit": {},  # weight-standardised convs (StdConv2d), GroupNorm
    "nf_resnet26": {},  # ScaledStdConv2d (weight standardisation with a gain)
    "dla34": {},
    "regnetx_002": {},
    "repvgg_a0": {},
    "efficientnet_b0": {},
    "mobilenetv3_small_100": {},
    "lcnet_050": {},
    "rexnet_100": {},
    "ghostnet_100": {},
    "convnext_atto": {},
    "edgenext_xx_small": {},
    "poolformer_s12": {},
    "vit_tiny_patch16_224": {"img_size": 32, "patch_size": 4},
    "deit_tiny_patch16_224": {"img_size": 32, "patch_size": 4},
    "swin_tiny_patch4_window7_224": {"img_size": 32, "window_size": 4},
    "pvt_v2_b0": {},
    "levit_128s": {"img_size": 32},
    "mobilevitv2_050": {},
    "efficientvit_b0": {},
    "mixer_s16_224": {"img_size": 32},
    "tiny_vit_5m_224": {},
    "efficientvim_m1": {},  # HSM-SSD: a state-space mixer over the stream (issue #31)
}


def build(name):
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **MODELS[name]).eval()
    return model, (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)

