"""Ops prune the same under both captures (#31): a model captured by torch.fx's symbolic
trace and the same model captured by torch.export (aten ops, rewritten to torch-level calls
by the aten_to_torch pass through ``fxsparse.rules.aten_ops``) give the same channel groups
and FLOPs, and the model exported from the torch.export capture equals the masked
reference of both captures at two keep-0.5 masks. Ops that mix channels are either pruned
with their masked form or blocked with a named reason, the same under both captures.

Each model: conv -> the op -> a consumer layer (a conv, or a linear for a 2-D output);
a two-operand op meets a second conv's output."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxsparse
import fxsparse.analysis.analyze as analyze_module
from fxsparse.analysis.flops import SubnetFlops
from fxsparse.core.errors import TraceError

pytestmark = pytest.mark.usefixtures("single_thread")

IMG, SEQ, VOL = (2, 3, 6, 6), (2, 3, 8), (2, 3, 4, 4, 4)


def _pos(h):  # a positive input for log / sqrt / reciprocal
    return h * h + 1


class _ChannelsLast(nn.Module):
    """``inner`` applied with the channels on the last dim (a transformer's norm)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, h):
        return self.inner(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# name -> (op(h, g, x) or a factory of a module applied to h, input shape, expected reason of
# the first conv's channels when they are blocked under both captures, else None)
OPS = {
    # element-wise, one operand
    "abs": (lambda h, g, x: torch.abs(h), IMG, None),
    "log": (lambda h, g, x: torch.log(_pos(h)), IMG, None),
    "sign": (lambda h, g, x: torch.sign(h) * h, IMG, None),
    "square": (lambda h, g, x: torch.square(h), IMG, None),
    "times_itself": (lambda h, g, x: h * h, IMG, None),  # one node as both operands
    "sqrt": (lambda h, g, x: torch.sqrt(_pos(h)), IMG, None),
    "leaky_relu": (lambda h, g, x: F.leaky_relu(h, 0.1), IMG, None),
    "leaky_relu_inplace": (lambda: nn.LeakyReLU(0.2, inplace=True), IMG, None),
    "elu": (lambda h, g, x: F.elu(h, 0.5), IMG, None),
    "elu_inplace": (lambda: nn.ELU(inplace=True), IMG, None),
    "selu": (lambda: nn.SELU(), IMG, None),
    "celu": (lambda: nn.CELU(0.7), IMG, None),
    "softplus": (lambda: nn.Softplus(2.0, 10.0), IMG, None),
    "mish": (lambda: nn.Mish(), IMG, None),
    "mish_inplace": (lambda: nn.Mish(inplace=True), IMG, None),
    "relu6": (lambda: nn.ReLU6(), IMG, None),
    "relu6_inplace": (lambda: nn.ReLU6(inplace=True), IMG, None),
    "hardtanh": (lambda: nn.Hardtanh(-0.5, 0.5), IMG, None),
    "softsign": (lambda: nn.Softsign(), IMG, None),
    "logsigmoid": (lambda: nn.LogSigmoid(), IMG, None),
    "threshold": (lambda: nn.Threshold(0.1, 2.0), IMG, None),
    "hardshrink": (lambda: nn.Hardshrink(0.3), IMG, None),
    "softshrink": (lambda: nn.Softshrink(0.3), IMG, None),
    "gelu_tanh": (lambda: nn.GELU("tanh"), IMG, None),
    "prelu_per_channel": (lambda: nn.PReLU(8), IMG, None),
    "prelu_shared": (lambda: nn.PReLU(), IMG, None),
    "clamp": (lambda h, g, x: h.clamp(-0.5, 0.5), IMG, None),
    "clamp_min": (lambda h, g, x: torch.clamp_min(h, 0.1), IMG, None),
    "clip": (lambda h, g, x: h.clip(-1, 1), IMG, None),
    "nan_to_num": (lambda h, g, x: h.nan_to_num(), IMG, None),
    "pow": (lambda h, g, x: h ** 2, IMG, None),
    "exp_inplace": (lambda h, g, x: (h * 0.5).exp_(), IMG, None),
    "detach_add": (lambda h, g, x: h + h.detach(), IMG, None),
    "feature_dropout": (lambda: nn.Dropout2d(0.2), IMG, None),
    # element-wise, one operand: the ops sharing torch.<name> / x.<name>() / aten.<name>
    # (rules.pointwise.SAME_NAME_UNARY), torch.special's, in-place forms
    **{f"unary_{name}": ((lambda fn: lambda h, g, x: fn(torch.sigmoid(h) * 0.8 + 0.1).float())(getattr(torch, name)), IMG, None)
       for name in ("sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "atanh", "reciprocal",
                    "log1p", "expm1", "log2", "log10", "exp2", "erfc", "erfinv", "logit", "digamma", "lgamma", "i0",
                    "floor", "ceil", "round", "trunc", "frac", "sgn", "deg2rad", "positive", "isfinite", "signbit")},
    "unary_acosh": (lambda h, g, x: torch.acosh(_pos(h)), IMG, None),
    "sin_method": (lambda h, g, x: h.sin() + h.cos(), IMG, None),
    "sin_inplace": (lambda h, g, x: (h * 0.5).sin_(), IMG, None),
    "reciprocal_inplace": (lambda h, g, x: _pos(h).reciprocal_(), IMG, None),
    "special_expit": (lambda h, g, x: torch.special.expit(h), IMG, None),
    "special_ndtr": (lambda h, g, x: torch.special.ndtr(h), IMG, None),
    "special_i0e": (lambda h, g, x: torch.special.i0e(h), IMG, None),
    "rrelu": (lambda: nn.RReLU(), IMG, None),
    # comparisons: boolean masks with the channels of their operands
    "where_self_condition": (lambda h, g, x: torch.where(h > 0, h, 0.1 * h), IMG, None),
    "masked_fill_self": (lambda h, g, x: h.masked_fill(h > 0, 1.0), IMG, None),
    "masked_fill_inplace": (lambda h, g, x: (h * 1).masked_fill_(h < 0, 0.0), IMG, None),
    "compare_float": (lambda h, g, x: (h >= 0.1).float() * h, IMG, None),
    "compare_ops": (lambda h, g, x: ((h < 0) | (h >= 1)).float() + ((h == 0) & (h != 1)).float() + (~(h <= 0)).float(), IMG, None),
    "compare_methods": (lambda h, g, x: h.gt(0).float() + torch.le(h, g).float() + torch.logical_and(h.ne(0), h.eq(h)).float(), IMG, None),
    "compare_two": (lambda h, g, x: torch.where(h > g, h, g), IMG, None),
    "remainder": (lambda h, g, x: torch.remainder(h, 0.5) + h // 0.5 + torch.atan2(h, g), IMG, None),
    # boolean indexing is not element-wise: a mask that carries channels blocks them
    "boolean_index": (lambda h, g, x: h * h[h > 0].sum(), IMG, "a boolean mask"),
    "where_indices": (lambda h, g, x: h * torch.where(h > 0)[1].float().mean(), IMG, "indices of entries"),
    "boolean_index_other": (lambda h, g, x: h * x.mean(1, keepdim=True).expand(2, 8, 6, 6)[h > 0].sum(), IMG, "a boolean mask"),
    # element-wise, two operands (the two convs' channels are coupled)
    "maximum": (lambda h, g, x: torch.maximum(h, g), IMG, None),
    "minimum": (lambda h, g, x: torch.minimum(h, g), IMG, None),
    "max_of_two": (lambda h, g, x: torch.max(h, g), IMG, None),
    "where": (lambda h, g, x: torch.where(x.mean(1, keepdim=True) > 0, h, g), IMG, None),
    "where_scalar": (lambda h, g, x: torch.where(x.mean(1, keepdim=True) > 0, h, 0.0), IMG, None),
    "lerp": (lambda h, g, x: torch.lerp(h, g, 0.3), IMG, None),
    "addcmul": (lambda h, g, x: torch.addcmul(h, h, g, value=0.5), IMG, None),
    "mul_inplace": (lambda h, g, x: h.mul_(g), IMG, None),
    "add_inplace": (lambda h, g, x: h.add_(g), IMG, None),
    "masked_fill": (lambda h, g, x: h.masked_fill(x.mean(1, keepdim=True) > 0, 0.0), IMG, None),
    # scans and reductions: over a spatial dim the channels pass; over the channel dim a
    # reduction is pruned with its masked form, a running sum blocks with a reason
    "cumsum_spatial": (lambda h, g, x: torch.cumsum(h, -1), IMG, None),
    "cumsum_channels": (lambda h, g, x: torch.cumsum(h, 1), IMG, "adds channels together"),
    "cumprod_spatial": (lambda h, g, x: torch.cumprod(torch.sigmoid(h), 2), IMG, None),
    "logsumexp_spatial": (lambda h, g, x: torch.logsumexp(h, (2, 3), keepdim=True), IMG, None),
    "logsumexp_channels": (lambda h, g, x: torch.logsumexp(h, 1, keepdim=True), IMG, None),
    "std_spatial": (lambda h, g, x: h.std((2, 3), keepdim=True), IMG, None),
    "std_spatial_flat": (lambda h, g, x: h.std((2, 3), unbiased=False), IMG, None),
    "std_channels": (lambda h, g, x: h.std(1, keepdim=True), IMG, None),
    "std_channels_correction0": (lambda h, g, x: torch.std(h, dim=1, keepdim=True, correction=0), IMG, None),
    "var_channels_positional": (lambda h, g, x: h.var(1, False, True), IMG, None),
    "var_spatial": (lambda h, g, x: torch.var(h, (2, 3), keepdim=True), IMG, None),
    "amin_channels": (lambda h, g, x: h.amin(1, keepdim=True), IMG, None),
    "max_channels": (lambda h, g, x: h.max(1, keepdim=True)[0], IMG, None),
    "min_spatial": (lambda h, g, x: h.min(-1)[0], IMG, None),
    "prod_channels": (lambda h, g, x: torch.sigmoid(h).prod(1, keepdim=True), IMG, None),
    "mean_all": (lambda h, g, x: h * h.mean(), IMG, None),
    "sum_all": (lambda h, g, x: h * h.sum(), IMG, None),
    "log_softmax_channels": (lambda h, g, x: F.log_softmax(h, 1), IMG, None),
    "log_softmax_spatial": (lambda h, g, x: F.log_softmax(h, -1), IMG, None),
    # spatial
    "pixel_shuffle": (lambda: nn.PixelShuffle(2), IMG, None),
    "pixel_shuffle_function": (lambda h, g, x: F.pixel_shuffle(h, 2), IMG, None),
    "pixel_unshuffle": (lambda: nn.PixelUnshuffle(2), IMG, None),
    "pixel_unshuffle_function": (lambda h, g, x: F.pixel_unshuffle(h, downscale_factor=3), IMG, None),
    "pixel_unshuffle_shuffle": (lambda h, g, x: F.pixel_shuffle(F.pixel_unshuffle(h, 2), 2), IMG, None),
    "channel_shuffle": (lambda: nn.ChannelShuffle(2), IMG, None),
    "channel_shuffle_function": (lambda h, g, x: F.channel_shuffle(h, 4), IMG, None),
    "var_mean_channels": (lambda h, g, x: h - torch.var_mean(h, 1, keepdim=True)[1], IMG, None),
    "var_mean_channels_var": (lambda h, g, x: h * torch.var_mean(h, dim=1, keepdim=True, correction=0)[0], IMG, None),
    "var_mean_spatial": (lambda h, g, x: torch.var_mean(h, (2, 3), keepdim=True)[0] + h, IMG, None),
    "var_mean_spatial_flat": (lambda h, g, x: torch.var_mean(h, (2, 3))[1], IMG, None),
    "var_mean_positional": (lambda h, g, x: torch.var_mean(h, -1, False, True)[0], IMG, None),
    "std_mean_channels": (lambda h, g, x: (h - torch.std_mean(h, 1)[1][:, None]) * torch.std_mean(h, 1, keepdim=True)[0], IMG, None),
    "max_pool1d": (lambda: nn.MaxPool1d(2), SEQ, None),
    "max_pool3d": (lambda: nn.MaxPool3d(2), VOL, None),
    "max_pool2d_indices": (lambda h, g, x: F.max_pool2d(h, 2, return_indices=True)[0], IMG, None),
    "max_pool2d_dilated": (lambda: nn.MaxPool2d(3, 2, 1, dilation=2), IMG, None),
    "avg_pool1d": (lambda: nn.AvgPool1d(2), SEQ, None),
    "avg_pool3d": (lambda: nn.AvgPool3d(2), VOL, None),
    "avg_pool2d_ceil": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), IMG, None),
    "adaptive_avg_pool1d": (lambda: nn.AdaptiveAvgPool1d(3), SEQ, None),
    "adaptive_avg_pool3d": (lambda: nn.AdaptiveAvgPool3d(2), VOL, None),
    "adaptive_max_pool1d": (lambda: nn.AdaptiveMaxPool1d(3), SEQ, None),
    "adaptive_max_pool2d": (lambda: nn.AdaptiveMaxPool2d(2), IMG, None),
    "adaptive_max_pool3d": (lambda: nn.AdaptiveMaxPool3d(2), VOL, None),
    "lp_pool1d": (lambda: nn.LPPool1d(2, 2), SEQ, None),
    "upsample_nearest3d": (lambda: nn.Upsample(scale_factor=2, mode="nearest"), VOL, None),
    "upsample_trilinear": (lambda: nn.Upsample(scale_factor=2, mode="trilinear"), VOL, None),
    "upsample_nearest_exact": (lambda: nn.Upsample(scale_factor=2, mode="nearest-exact"), IMG, None),
    "upsample_bilinear_align": (lambda: nn.UpsamplingBilinear2d(scale_factor=2), IMG, None),
    "upsample_area": (lambda h, g, x: F.interpolate(h, scale_factor=2, mode="area"), IMG, None),
    "reflection_pad": (lambda: nn.ReflectionPad2d(1), IMG, None),
    # layers
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(8, 6, 3, stride=2), SEQ, None),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1), IMG, None),
    "conv_transpose2d_dilated": (lambda: nn.ConvTranspose2d(8, 6, 3, dilation=2), IMG, None),
    "conv_transpose3d": (lambda: nn.ConvTranspose3d(8, 6, 3), VOL, None),
    "conv_transpose2d_grouped": (lambda: nn.ConvTranspose2d(8, 6, 3, groups=2), IMG, "grouped transposed conv"),
    "instance_norm": (lambda: nn.InstanceNorm2d(8, affine=True), IMG, None),
    "instance_norm_plain": (lambda: nn.InstanceNorm2d(8), IMG, None),
    # RMSNorm over the channels (mixing: pruned with its masked form) or over a spatial dim
    "rms_norm_channels": (lambda h, g, x: F.rms_norm(h.transpose(1, 3), (8,)).transpose(1, 3), IMG, None),
    "rms_norm_channels_weight": (lambda: _ChannelsLast(nn.RMSNorm(8)), IMG, None),
    "rms_norm_channels_eps": (lambda: _ChannelsLast(nn.RMSNorm(8, eps=1e-3)), IMG, None),
    "rms_norm_two_dims": (lambda: _ChannelsLast(nn.RMSNorm((6, 8))), IMG, None),
    "rms_norm_spatial": (lambda: nn.RMSNorm(6), IMG, None),
    "rms_norm_plain": (lambda: _ChannelsLast(nn.RMSNorm(8, elementwise_affine=False)), IMG, None),
}
TWO_OPERANDS = {"maximum", "minimum", "max_of_two", "where", "lerp", "addcmul", "mul_inplace", "add_inplace",
                "compare_methods", "compare_two", "remainder"}


class OpNet(nn.Module):
    def __init__(self, name):
        super().__init__()
        make, shape, _ = OPS[name]
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(shape) - 3]
        self.c1 = conv(3, 8, 1)
        self.c2 = conv(3, 8, 1) if name in TWO_OPERANDS else None
        is_factory = make.__code__.co_argcount == 0
        self.op = make() if is_factory else None
        self._fn = None if is_factory else make
        with torch.no_grad():
            out = self._op(torch.randn(2, 8, *shape[2:]), torch.randn(2, 8, *shape[2:]), torch.randn(shape))
        c = out.shape[1]
        self.head = nn.Linear(c, 4) if out.ndim == 2 else (nn.Conv1d, nn.Conv2d, nn.Conv3d)[out.ndim - 3](c, 4, 1)

    def _op(self, h, g, x):
        return self.op(h) if self.op is not None else self._fn(h, g, x)

    def forward(self, x):
        g = self.c2(x) if self.c2 is not None else None
        return self.head(self._op(self.c1(x), g, x))


def build(name):
    torch.manual_seed(0)
    return OpNet(name).eval(), (torch.randn(OPS[name][1], generator=torch.Generator().manual_seed(1)),)


def _analyze(model, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export keeps the image size (PinnedSizeWarning)
        return fxsparse.analyze(model, inputs)


def both(model, inputs):
    """(the symbolic trace's graph, torch.export's graph) of the same model."""
    traced = _analyze(model, inputs)
    real = analyze_module.trace

    def no_trace(*args, **kwargs):
        raise TraceError("forced: capture with torch.export")

    analyze_module.trace = no_trace
    try:
        exported = _analyze(model, inputs)
    finally:
        analyze_module.trace = real
    assert any(n.op == "call_module" for n in traced.gm.graph.nodes)
    assert not any(n.op == "call_module" for n in exported.gm.graph.nodes)  # torch.export inlines modules
    return traced, exported


def members(graph, prunable=True):
    return {frozenset((m.param, m.dim) for m in g.members) for g in graph.groups if g.prunable == prunable}


def _c1_group(graph):
    (group,) = [g for g in graph.groups if any(m.param == "c1.weight" and m.dim == 0 for m in g.members)]
    return group


@pytest.mark.parametrize("name", list(OPS))
def test_op_prunes_the_same_under_torch_export_as_under_the_symbolic_trace(name):
    model, inputs = build(name)
    traced, exported = both(model, inputs)
    # (1) the same groups, prunable or blocked, under both captures
    assert members(exported) == members(traced)
    assert members(exported, prunable=False) == members(traced, prunable=False)
    blocked = OPS[name][2]
    for graph in (traced, exported):
        group = _c1_group(graph)
        if blocked is None:
            assert group.prunable, group.reason
        else:
            assert not group.prunable and blocked in group.reason
    # the same FLOPs, and the same FLOPs of the keep-0.5 sub-networks
    assert exported.flops["total"] == pytest.approx(traced.flops["total"], rel=1e-9)
    if not traced.prunable_groups:
        assert blocked is not None  # nothing to prune: the op blocks its channels, with the reason above
        return
    counters = SubnetFlops(traced), SubnetFlops(exported)
    gen = torch.Generator().manual_seed(0)
    keeps = [fxsparse.random_keep(traced, 0.5, gen) for _ in range(2)]
    assert any(not torch.equal(keeps[0][i], keeps[1][i]) for i in keeps[0])
    by_members = [{frozenset((m.param, m.dim) for m in g.members): keep[g.id] for g in traced.prunable_groups}
                  for keep in keeps]
    for keep, named in zip(keeps, by_members):
        keep_exported = {g.id: named[frozenset((m.param, m.dim) for m in g.members)] for g in exported.prunable_groups}
        fractions = [c.fraction(c.flat(k)) for c, k in zip(counters, (keep, keep_exported))]
        assert fractions[1] == pytest.approx(fractions[0], rel=1e-9) and fractions[0] < 1
        # (2) the model exported from the torch.export capture equals the masked reference
        # of that capture and of the symbolic trace's
        small = fxsparse.export(model, exported, keep_exported).eval()
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        for graph, k in ((exported, keep_exported), (traced, keep)):
            check = fxsparse.check_against_reference(small, graph, k, inputs, atol=1e-5)
            assert check.ok, check.message
        fx_small = fxsparse.export(model, traced, keep).eval()
        torch.testing.assert_close(small(*inputs), fx_small(*inputs), atol=1e-5, rtol=1e-5)
