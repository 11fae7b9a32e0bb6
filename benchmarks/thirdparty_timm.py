"""Real `timm` models through fxsparse, as a user would run them: built by name from their
configs (``timm.create_model(name, pretrained=False, num_classes=10)``, random weights,
nothing downloaded), input 2x3x32x32, then the same pipeline as
``benchmarks/thirdparty_transformers.py``: analyze -> export at two keep-0.5 masks ->
forward/backward -> equality with the masked reference -> a sparse step; FLOPs at keep 0.5.

timm is not an extra of fxsparse: its metadata requires torchvision (GBs with CUDA, and no
CPU build here). Install it without: ``pip install --no-deps timm huggingface_hub pyyaml
safetensors``. timm's models never call torchvision; it imports it at module level for its
data pipeline and ``FrozenBatchNorm2d`` isinstance checks, so where torchvision is absent
:func:`import_timm` serves those imports with placeholder modules (calling one raises).

    OMP_NUM_THREADS=1 python benchmarks/thirdparty_timm.py [name ...]
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import torch

from thirdparty_transformers import report


class _PlaceholderMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


def _placeholder(name):
    def fail(*args, **kwargs):
        raise RuntimeError(f"torchvision is not installed: {name} is a placeholder (benchmarks/thirdparty_timm.py)")

    return _PlaceholderMeta(name.rpartition(".")[2], (), {"__init__": fail, "__qualname__": name})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _placeholder(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def import_timm():
    """The timm module, or None where it is not installed."""
    if importlib.util.find_spec("timm") is None:
        return None
    if "timm" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import timm

        return timm
    # the placeholders exist only while timm imports: other libraries (transformers) must
    # keep seeing that torchvision is absent
    finder = _Finder()
    sys.meta_path.append(finder)
    try:
        import timm
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    return timm


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
}


def build(name):
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **MODELS[name]).eval()
    return model, (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)


def main(argv):
    names = [a for a in argv if not a.startswith("-")] or list(MODELS)
    report({name: (lambda name=name: build(name)) for name in names}, verbose="-v" in argv)


if __name__ == "__main__":
    main(sys.argv[1:])
