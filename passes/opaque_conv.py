"""Convolutions that torch.compile keeps as calls, so that their channel counts stay symbolic.

Inductor lowers ``aten.convolution`` and its backward by reading the weight's sizes as
concrete integers (it picks a kernel template per shape), so a graph whose kept channel
counts are symbolic would be recompiled for every count a convolution sees. Wrapped in
custom ops (``fxsparse::convolution`` and its backward), the convolutions run the same ATen
kernels eagerly from inside the compiled graph, and every other op (BatchNorm, activations,
pooling, the loss, the optimizer update) is still fused by inductor around them, with the
counts symbolic. :class:`OpaqueConvolutions` rewrites a GraphModule's convolutions (plain and
transposed) to them.

``groups=0`` means "as many groups as the input has channels per weight input channel"
(``x.shape[1] // weight.shape[1]``): a depthwise convolution whose channel count changes
from step to step keeps one graph.

``channels_last=True`` (what the pass sets for 2-D convolutions) runs them channels-last
(NHWC), as inductor lays out the convolutions it lowers itself: oneDNN then reads and writes
the activations as they are, where NCHW tensors cost a reorder in and out of its blocked
layout at every call (about 40 ms of a 290 ms ResNet-18 step). Each op's outputs have
exactly the strides its fake (meta) version promises, which inductor trusts when it compiles
the code around the call. Inductor's compile cache keys on the graph, not on the fakes: a
change to what an op returns must change its schema (as ``channels_last`` did).

oneDNN's channels-last weight gradient of a strided 1x1 convolution over fewer input
channels than its channel block is broken (uxlfoundation/oneDNN#6035; a crash, a hang or
wrong gradients on an AVX2 CPU): the op runs that backward NCHW, and with static shapes
(``only_onednn_hazards``) the pass makes only such convolutions opaque, so that inductor's
own channels-last lowering never meets them.
"""
from __future__ import annotations

from collections.abc import Collection

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from fxsparse.rules.meta_keys import SHAPE


def _groups(x, weight, transposed, groups):
    return groups if groups or transposed else x.shape[1] // weight.shape[1]


def _dense_strides(shape, channels_last: bool):
    """The strides of a dense tensor of ``shape`` (NCHW or NHWC order); symbolic sizes welcome."""
    order = [1, 3, 2, 0] if channels_last else list(range(len(shape)))[::-1]  # innermost first
    strides, step = [0] * len(shape), 1
    for d in order:
        strides[d] = step
        step = step * shape[d]
    return strides


def _restrided(t, strides):
    """``t`` with exactly ``strides`` (what the fake version promised inductor); a copy when
    they differ (also in the strides of size-1 dims only: a custom op's output must not be
    a view, which an in-place activation after it would modify)."""
    if list(t.stride()) == list(strides):
        return t
    return t.new_empty_strided(t.shape, strides).copy_(t)


def _strided_1x1_on_few_channels(weight_shape, stride, transposed) -> bool:
    """A strided 1x1 convolution over fewer input channels than oneDNN's channel block (16
    at most) on a CPU: oneDNN's channels-last weight gradient of it writes past its
    workspace (uxlfoundation/oneDNN#6035: a crash with one thread, a hang or wrong gradients
    with more; seen with torch 2.13 on an AVX2 CPU), so its backward runs NCHW."""
    return not transposed and all(k == 1 for k in weight_shape[2:]) and any(s > 1 for s in stride) \
        and weight_shape[1] < 16


def _layout(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def _aten_convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups,
                      channels_last):
    return torch.ops.aten.convolution(x.contiguous(memory_format=_layout(channels_last)), weight, bias, stride,
                                      padding, dilation, transposed, output_padding,
                                      _groups(x, weight, transposed, groups))


@torch.library.custom_op("fxsparse::convolution", mutates_args=())
def convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
                padding: list[int], dilation: list[int], transposed: bool, output_padding: list[int],
                groups: int, channels_last: bool) -> torch.Tensor:
    out = _aten_convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups,
                            channels_last)
    return _restrided(out, _dense_strides(out.shape, channels_last))


@convolution.register_fake
def _(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups, channels_last):
    out = _aten_convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups,
                            channels_last)
    return out.new_empty_strided(out.shape, _dense_strides(out.shape, channels_last))


def _bias_size(weight, transposed, groups):
    return weight.shape[1] * groups if transposed else weight.shape[0]


@torch.library.custom_op("fxsparse::convolution_backward", mutates_args=())
def convolution_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: list[int],
                         padding: list[int], dilation: list[int], transposed: bool, output_padding: list[int],
                         groups: int, channels_last: bool,
                         mask: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups = _groups(x, weight, transposed, groups)
    on_cpu = x.device.type == "cpu"
    layout = _layout(channels_last and not (on_cpu and _strided_1x1_on_few_channels(weight.shape, stride, transposed)))
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad.contiguous(memory_format=layout), x.contiguous(memory_format=layout), weight,
        [_bias_size(weight, transposed, groups)], stride, padding, dilation, transposed, output_padding, groups, mask)
    # a custom op returns tensors: an unneeded gradient is an empty one (never read)
    return (_restrided(gx, x.stride()) if mask[0] else grad.new_empty(0),
            _restrided(gw, weight.stride()) if mask[1] else grad.new_empty(0),
            gb if mask[2] else grad.new_empty(0))


@convolution_backward.register_fake
def _(grad, x, weight, stride, padding, dilation, transposed, output_padding, groups, channels_last, mask):
    groups = _groups(x, weight, transposed, groups)
    return (x.new_empty_strided(x.shape, x.stride()) if mask[0] else grad.new_empty(0),
            weight.new_empty_strided(weight.shape, weight.stride()) if mask[1] else grad.new_empty(0),
            grad.new_empty(_bias_size(weight, transposed, groups)) if mask[2] else grad.new_empty(0))


def _setup(ctx, inputs, output):
    x, weight, bias, *conv = inputs
    ctx.save_for_backward(x, weight)
    ctx.conv = conv
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    mask = [bool(needs[0]), bool(needs[1]), bool(ctx.has_bias and needs[2])]
    gx, gw, gb = convolution_backward(grad, x, weight, *ctx.conv, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None) + (None,) * len(ctx.conv)


convolution.register_autograd(_backward, setup_context=_setup)


def autocast_convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups,
                         channels_last):
    """:func:`convolution` under the caller's autocast as ``F.conv2d`` would be: a custom op
    is not on autocast's lists, so the inputs are cast here to the autocast dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    return torch.ops.fxsparse.convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding,
                                          groups, channels_last)


_FUNCTIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3, torch.conv1d: 1, torch.conv2d: 2, torch.conv3d: 3}
_TRANSPOSED_FUNCTIONS = {F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}
_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_MODULES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_SIGNATURE = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
_TRANSPOSED_SIGNATURE = ["input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"]


def _expand(value, n):
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * n


def _numeric_padding(padding, kernel, dilation, n):
    """``padding`` as one int per dim: 'valid' is 0, 'same' half the dilated kernel where that
    is symmetric (an odd kernel, as ConvMixer's depthwise convs); None where it is not."""
    if not isinstance(padding, str):
        return _expand(padding, n)
    if padding == "valid":
        return [0] * n
    total = [d * (k - 1) for k, d in zip(_expand(kernel, n), _expand(dilation, n))]
    return [t // 2 for t in total] if padding == "same" and all(t % 2 == 0 for t in total) else None


def can_be_opaque(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether :class:`OpaqueConvolutions` rewrites this node (a convolution with zero padding
    mode and a constant padding per dim), so that its groups can follow its input."""
    return OpaqueConvolutions._conv_args(gm, node) is not None


class OpaqueConvolutions(PassBase):
    """Every convolution of the graph (``nn.ConvNd`` / ``nn.ConvTransposeNd`` with zero
    padding mode, ``F.convNd`` / ``F.conv_transposeNd`` with numeric padding) as a call to
    :func:`convolution`; the others stay as they are. ``groups_from_shapes``: names of the
    (non-transposed) convolution nodes whose groups follow the input's channel count."""

    needs = frozenset({SHAPE})  # the weight shape of a functional convolution (string padding, hazards)
    gives = frozenset()

    def __init__(self, groups_from_shapes: Collection[str] = (), only_onednn_hazards: bool = False):
        self.groups_from_shapes = set(groups_from_shapes)
        # static shapes: inductor's own convolutions are fine, except where oneDNN's weight
        # gradient is broken (see _strided_1x1_on_few_channels), which the op runs NCHW
        self.only_onednn_hazards = only_onednn_hazards

    def ensures(self, graph_module):
        graph_module.graph.lint()

    def call(self, gm: fx.GraphModule) -> PassResult:
        modified = False
        for node in list(gm.graph.nodes):
            replacement = self._conv_args(gm, node)
            if replacement is None or (self.only_onednn_hazards and not self._hazard(gm, replacement)):
                continue
            if node.name in self.groups_from_shapes:
                if replacement[6]:
                    raise ValueError(f"{node.name}: a transposed convolution's groups cannot follow its input")
                replacement = (*replacement[:-1], 0)
            stride, transposed = replacement[3], replacement[6]
            channels_last = len(stride) == 2 and not transposed  # 2-D: see the module docstring
            with gm.graph.inserting_before(node):
                args = [gm.graph.get_attr(a) if isinstance(a, str) else a for a in replacement[:3]]
                new = gm.graph.call_function(autocast_convolution, (*args, *replacement[3:], channels_last))
            new.meta.update(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            modified = True
        if modified:
            gm.recompile()
        return PassResult(gm, modified)

    @staticmethod
    def _hazard(gm, replacement) -> bool:
        weight, stride, transposed = replacement[1], replacement[3], replacement[6]
        shape = gm.get_parameter(weight).shape if isinstance(weight, str) else weight.meta.get(SHAPE)
        return shape is not None and _strided_1x1_on_few_channels(shape, stride, transposed)

    @staticmethod
    def _conv_args(gm, node):
        """(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
        of a convolution node (weight/bias as attribute names for a module), None for anything
        else."""
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if type(mod) not in _MODULES + _TRANSPOSED_MODULES or mod.padding_mode != "zeros" \
                    or len(node.args) != 1 or node.kwargs:
                return None
            n = len(mod.kernel_size)
            padding = _numeric_padding(mod.padding, mod.kernel_size, mod.dilation, n)
            if padding is None:
                return None
            bias = f"{node.target}.bias" if mod.bias is not None else None
            return (node.args[0], f"{node.target}.weight", bias, _expand(mod.stride, n), padding,
                    _expand(mod.dilation, n), mod.transposed, _expand(mod.output_padding, n), mod.groups)
        if node.op != "call_function" or node.target not in {**_FUNCTIONS, **_TRANSPOSED_FUNCTIONS}:
            return None
        transposed = node.target in _TRANSPOSED_FUNCTIONS
        n = (_TRANSPOSED_FUNCTIONS if transposed else _FUNCTIONS)[node.target]
        names = _TRANSPOSED_SIGNATURE if transposed else _SIGNATURE
        values = {"bias": None, "stride": 1, "padding": 0, "output_padding": 0, "dilation": 1, "groups": 1}
        values.update(zip(names, node.args))
        values.update(node.kwargs)
        if any(isinstance(values[k], fx.Node) for k in ("stride", "padding", "output_padding", "dilation", "groups")):
            return None
        weight_shape = values["weight"].meta.get(SHAPE) if isinstance(values["weight"], fx.Node) else None
        padding = values["padding"]
        if isinstance(padding, str):
            padding = None if weight_shape is None else _numeric_padding(padding, weight_shape[2:], values["dilation"], n)
            if padding is None:
                return None
        return (values["input"], values["weight"], values["bias"], _expand(values["stride"], n),
                _expand(padding, n), _expand(values["dilation"], n), transposed,
                _expand(values["output_padding"], n), int(values["groups"]))
