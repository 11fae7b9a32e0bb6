"""Every pass pipeline fxsparse runs, composed in one place, in the order a model meets them.

====================  =========================================================  =========================
stage (caller)        passes                                                     the graph has after it
====================  =========================================================  =========================
torch.export capture  AtenToTorch -> SplitPackedQKV -> FollowTrainingMode        :data:`CAPTURED`
(analysis.capture)    (torch.fx's symbolic trace gives ``CAPTURED`` directly)
shapes (analysis)     ShapeProp                                                  :data:`SHAPED`
channels (analysis)   FuseChannelShuffle -> ChannelPropagation                   :data:`ANALYSED`
export (rewrite)      SliceChannels, on a copy of the analysed graph
capacity model        MaskMixingOps, then OpaqueConvolutions (step), on the export
====================  =========================================================  =========================

Each function builds a :class:`~fxsparse.passes.manager.PassManager` given the facts its
stage starts from (the row above it), so a pass moved before what it needs is rejected,
runs it on ``gm`` in place, and returns what its caller reads off the passes.
"""
from __future__ import annotations

from collections.abc import Collection

import torch.fx as fx
from torch.fx.passes.infra.pass_base import PassResult

from fxsparse.rules.analysis_context import AnalysisContext

from .aten_to_torch import AtenToTorch
from .channel_propagation import ChannelPropagation
from .fuse_channel_shuffle import FuseChannelShuffle
from .manager import TORCH_LEVEL, PassManager
from .masked_mixing import MaskMixingOps
from .opaque_conv import OpaqueConvolutions
from .packed_qkv import SplitPackedQKV
from .shape_prop import ShapeProp
from .slice_channels import SliceChannels
from .training_mode import FollowTrainingMode

CAPTURED = frozenset({TORCH_LEVEL})  # a symbolic trace, or a torch.export graph after to_torch_level
SHAPED = CAPTURED | ShapeProp.gives
ANALYSED = SHAPED | FuseChannelShuffle.gives | ChannelPropagation.gives


def to_torch_level(gm: fx.GraphModule) -> PassResult:
    """A ``torch.export`` graph (aten ops, flags recorded in eval mode) as the torch-level
    calls the rules are keyed on, with q/k/v of packed attention apart and dropout / batch
    norm following ``gm.training``."""
    return PassManager([AtenToTorch(), SplitPackedQKV(), FollowTrainingMode(captured_training=False)])(gm)


def record_shapes(gm: fx.GraphModule, example_inputs, count_flops: bool) -> PassResult:
    """Shapes, size values (and FLOPs) of every node, from one run on ``example_inputs``."""
    return PassManager([ShapeProp(example_inputs, count_flops=count_flops)], given=CAPTURED)(gm)


def propagate_channels(gm: fx.GraphModule, rules=None) -> AnalysisContext:
    """Channel shuffles fused, then every op's rule run: the analysis (elements, members,
    mixing nodes). ``rules``: the per-call rules of ``fxsparse.analyze``."""
    propagation = ChannelPropagation(rules)
    PassManager([FuseChannelShuffle(), propagation], given=SHAPED)(gm)
    return propagation.context


def slice_channels(gm: fx.GraphModule, elements, class_kept: dict, kept: dict, rules=None) -> PassResult:
    """Members sliced to ``kept`` and every export hook run (see :class:`SliceChannels`)."""
    return PassManager([SliceChannels(elements, class_kept, kept, rules)], given=ANALYSED)(gm)


def mask_mixing_ops(cap: fx.GraphModule, graph, layout_of) -> dict[str, tuple[str, int]]:
    """The capacity model's mixing ops in their masked forms; returns their validity buffers
    ({buffer: (node name, channel dim)}, see :class:`MaskMixingOps`)."""
    masking = MaskMixingOps(graph, layout_of)
    PassManager([masking], given=ANALYSED)(cap)
    return masking.valid_buffers


def opaque_convolutions(cap: fx.GraphModule, groups_from_shapes: Collection[str] = (),
                        only_onednn_hazards: bool = False) -> PassResult:
    """The capacity model's convolutions as custom ops (see :class:`OpaqueConvolutions`)."""
    return PassManager([OpaqueConvolutions(groups_from_shapes, only_onednn_hazards)], given=ANALYSED)(cap)


__all__ = ["CAPTURED", "SHAPED", "ANALYSED", "to_torch_level", "record_shapes", "propagate_channels",
           "slice_channels", "mask_mixing_ops", "opaque_convolutions"]
