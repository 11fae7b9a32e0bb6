"""Importing timm where torchvision is not installed, and install hints that never replace torch.

timm's package metadata requires torchvision, and ``import timm`` imports a few torchvision
names at module level (timm 1.0.31: ``FrozenBatchNorm2d`` in ``timm.layers`` and
``timm.utils``, and its data pipeline's transforms and data sets in ``timm.data``, which
``timm.models`` imports for the ImageNet constants). timm's *models* never call
torchvision. torchvision cannot simply be added on a CPU-only install: each torchvision
release pins one torch release, and pip would fetch the CUDA build of that torch over the
installed one. So the set-up installs ``pip install --no-deps timm``, and :func:`import_timm`
imports it with a stand-in for exactly those names:

* ``torchvision.ops.misc.FrozenBatchNorm2d``: a faithful re-implementation (batch norm
  with fixed statistics and affine parameters, all buffers), so timm's
  ``freeze_batch_norm_2d`` and its isinstance checks work;
* ``torchvision.transforms.functional.InterpolationMode``: the same enum (names and values);
* ``torchvision.transforms.ToTensor`` and ``torchvision.datasets.{CIFAR10, CIFAR100, MNIST,
  KMNIST, FashionMNIST, ImageFolder}``: classes timm's data pipeline subclasses or names;
  creating one raises :class:`TorchvisionAbsentError` naming it and how to install
  torchvision.

Any other attribute of the stand-in modules raises an ``AttributeError`` that says the same
(so timm's own ``try: from torchvision... import X / except ImportError`` fallbacks take
their no-torchvision branch, e.g. ``timm.layers._fx.has_fx_feature_extraction = False``),
and modules not listed in ``_SERVED`` (``torchvision.models``, ``torchvision.utils``...) are
not found at all. The stand-in is used only when torchvision is not installed, and only while
``import timm`` runs: it is then removed from ``sys.modules``, so other libraries
(transformers, user code) still see that torchvision is absent.
"""
from __future__ import annotations

import enum
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import types

import torch
import torch.nn as nn

__all__ = ["import_timm", "timm_install_hint", "torchvision_install_hint", "TorchvisionAbsentError",
           "FrozenBatchNorm2d", "InterpolationMode"]


def timm_install_hint() -> str:
    """The command that installs timm without letting pip replace the installed torch."""
    return ("pip install --no-deps timm && pip install huggingface_hub pyyaml safetensors "
            "(--no-deps: timm's metadata asks for torchvision, whose PyPI build would replace the installed torch)")


def torchvision_install_hint() -> str:
    """How to install the torchvision built for the installed torch, without pip touching torch."""
    version = torch.__version__
    release, _, local = version.partition("+")
    m = re.match(r"2\.(\d+)\.(\d+)", release)
    # torchvision 0.(M+15) pairs with torch 2.M (0.15 with 2.0 ... 0.24 with 2.9)
    pin = f"torchvision==0.{int(m.group(1)) + 15}.*" if m else "torchvision==<the release paired with it>"
    index = f" --index-url https://download.pytorch.org/whl/{local}" if re.fullmatch(r"cpu|cu\d+|rocm[\d.]+", local) else ""
    return (f"torchvision must be the release built for the installed torch {version} (see "
            f"https://github.com/pytorch/vision#installation); install it without dependencies, so that pip "
            f"keeps this torch: pip install --no-deps '{pin}'{index} && pip install pillow")


class TorchvisionAbsentError(RuntimeError):
    """A torchvision feature was used where fxsparse imported timm without torchvision."""


def _absent(name: str) -> str:
    return (f"{name} is not available: torchvision is not installed, and fxsparse imported timm with a stand-in "
            f"for the torchvision names timm imports (fxsparse.zoo._timm_import), which is enough to build timm's "
            f"models but not to run timm's data pipeline. {torchvision_install_hint()}")


class FrozenBatchNorm2d(nn.Module):
    """``torchvision.ops.misc.FrozenBatchNorm2d``: batch norm whose statistics and affine
    parameters are fixed buffers, ``y = (x - running_mean) / sqrt(running_var + eps) * weight
    + bias`` per channel of an NCHW input (a saved ``num_batches_tracked`` is ignored)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        return x * scale + (b - rm * scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.weight.shape[0]}, eps={self.eps})"


class InterpolationMode(enum.Enum):
    """``torchvision.transforms.functional.InterpolationMode`` (same names and values)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _unavailable_class(module: str, name: str) -> type:
    qualname = f"{module}.{name}"

    def __init__(self, *args, **kwargs):
        raise TorchvisionAbsentError(_absent(qualname))

    return type(name, (), {"__init__": __init__, "__module__": module, "__qualname__": name,
                           "__doc__": f"Stand-in for {qualname}: creating one raises TorchvisionAbsentError."})


_DATASETS = ("CIFAR10", "CIFAR100", "MNIST", "KMNIST", "FashionMNIST", "ImageFolder")

# module -> the names it serves (what timm 1.0.31 imports at import time without a fallback)
_SERVED = {
    "torchvision": {},
    "torchvision.ops": {},
    "torchvision.ops.misc": {"FrozenBatchNorm2d": FrozenBatchNorm2d},
    "torchvision.transforms": {"ToTensor": _unavailable_class("torchvision.transforms", "ToTensor")},
    "torchvision.transforms.functional": {"InterpolationMode": InterpolationMode},
    "torchvision.datasets": {n: _unavailable_class("torchvision.datasets", n) for n in _DATASETS},
}


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(_absent(f"{self.__name__}.{name}"))


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in _SERVED:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandInModule(spec.name, "fxsparse's stand-in for an absent torchvision (fxsparse.zoo._timm_import)")
        module.__path__ = []
        return module

    def exec_module(self, module):
        module.__dict__.update(_SERVED[module.__name__])


def _drop(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def import_timm():
    """``import timm``; where torchvision is not installed, with the stand-in described in the
    module docstring for the duration of the import. Raises ``ImportError`` when timm is not
    installed or cannot be imported, with a message that says how to install what is missing
    without replacing torch."""
    if sys.modules.get("timm") is not None:  # (None: imports of it are blocked, as if it were absent)
        return sys.modules["timm"]
    if importlib.util.find_spec("timm") is None:
        raise ImportError(f"timm is not installed; install it with: {timm_install_hint()}")
    if importlib.util.find_spec("torchvision") is not None:  # installed: timm imports the real one
        try:
            return importlib.import_module("timm")
        except Exception as exc:  # a torchvision built for another torch fails here (RuntimeError, ImportError)
            _drop("timm")
            raise ImportError(f"timm cannot be imported: {type(exc).__name__}: {exc}. If torchvision is the "
                              f"cause, either uninstall it (pip uninstall torchvision: fxsparse then imports timm "
                              f"without it) or {torchvision_install_hint()}") from exc
    finder = _StandInFinder()
    sys.meta_path.append(finder)
    try:
        return importlib.import_module("timm")
    except ImportError as exc:  # a timm release that imports a torchvision name the stand-in lacks
        _drop("timm")
        raise ImportError(f"timm {_dist_version('timm')} cannot be imported without torchvision ({exc}): it "
                          f"imports a torchvision name that fxsparse's stand-in (fxsparse.zoo._timm_import, "
                          f"written for timm 1.0.31) does not serve. Install timm 1.0.31 "
                          f"(pip install --no-deps timm==1.0.31) or torchvision: {torchvision_install_hint()}") from exc
    finally:
        sys.meta_path.remove(finder)
        _drop("torchvision")


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "(version unknown)"
