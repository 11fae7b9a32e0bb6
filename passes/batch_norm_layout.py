"""Training batch norms of the capacity model take their statistics from an NCHW copy of a
channels-last float32 CPU input.

ATen's CPU batch norm sums a channels-last input's statistics (and, in the backward, the
gradient's sums) row by row into one float32 accumulator per channel and thread
(``batch_norm_cpu_collect_stats_channels_last_impl``: its accumulator type is the float
``opmath_type``), where the NCHW kernel and ``torch.var_mean`` sum pairwise. The batch mean's
error grows with N*H*W: 1e-6 of the values over 2x32x32, 1.3e-5 over 32x56x56 (6e-8 NCHW).
The opaque convolutions (``opaque_conv.py``) lay the capacity model's activations out
channels-last, so on the CPU its eager step (``compile=False``) and every backend that runs
ATen's batch norm (``aot_eager``) computed ~10x less accurate statistics than the same
model in NCHW: ResNet-20's float32 step at batch 2 flipped a ReLU whose exact input was
2.8e-6 and every earlier gradient moved by 1 % (the plain exported model run channels-last
does the same). Inductor decomposes batch norm into its own reductions and never had this,
but the NCHW copy is in its graph too (a statistics op taken from ATen there gets it).

:class:`NCHWBatchNormStatistics` swaps each ``_BatchNorm`` module's class for a subclass
whose forward, in training (batch statistics) on such an input, runs the module on
``x.contiguous()`` and lays the result out channels-last again; ``F.batch_norm`` calls
become :func:`batch_norm`, the same for the function. Other inputs (CUDA, float64, NCHW,
eval mode) go straight through. The copies cost the eager CPU step (ResNet-20, batch 128, one
thread: 280 -> 415 ms); inductor fuses them (283 vs 261 ms, noise). Writes no ``node.meta`` key.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.infra.pass_base import PassBase, PassResult


def channels_last_sums(x: torch.Tensor):
    """The channels-last memory format of ``x`` when ATen's CPU batch norm would sum it in
    its channels-last kernel with float32 accumulators (a float32 CPU tensor with spatial
    dims, channels-last and not also NCHW-contiguous), else None."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() not in (4, 5) or x.is_contiguous():
        return None
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return fmt if x.is_contiguous(memory_format=fmt) else None


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    """``F.batch_norm``, its batch statistics summed NCHW (see the module docstring)."""
    fmt = channels_last_sums(input) if training else None
    if fmt is None:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    out = F.batch_norm(input.contiguous(), running_mean, running_var, weight, bias, training, momentum, eps)
    return out.contiguous(memory_format=fmt)


class NCHWStatistics:
    """Mixin before a ``_BatchNorm`` class: batch statistics of a channels-last float32 CPU
    input summed on an NCHW copy."""

    def forward(self, input):
        fmt = channels_last_sums(input) if self.training or self.running_mean is None else None
        if fmt is None:
            return super().forward(input)
        return super().forward(input.contiguous()).contiguous(memory_format=fmt)


_CLASSES: dict[type, type] = {}


def nchw_statistics_class(cls: type) -> type:
    """The :class:`NCHWStatistics` subclass of the batch-norm class ``cls`` (one per class)."""
    if issubclass(cls, NCHWStatistics):
        return cls
    if cls not in _CLASSES:  # a module-level name: a capacity model pickles
        name = f"NCHWStatistics{cls.__name__}_{len(_CLASSES)}"
        _CLASSES[cls] = globals()[name] = type(name, (NCHWStatistics, cls), {"__module__": __name__})
    return _CLASSES[cls]


class NCHWBatchNormStatistics(PassBase):
    """Every ``_BatchNorm`` module of the GraphModule (its class swapped, its tensors and
    names as they were) and every ``F.batch_norm`` call (:func:`batch_norm`) sums its batch
    statistics NCHW; see the module docstring."""

    needs = frozenset()
    gives = frozenset()

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for mod in gm.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not isinstance(mod, NCHWStatistics):
                mod.__class__ = nchw_statistics_class(type(mod))
                modified = True
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target is F.batch_norm:
                node.target = batch_norm
                modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)
