"""timm-style layers shared by ``timm_cnn`` and ``timm_transformer``.

Mirrors (re-implemented, not copied) from huggingface/pytorch-image-models:
  timm/layers/helpers.py (to_2tuple, make_divisible), drop.py (drop_path, DropPath), mlp.py (Mlp),
  layer_scale.py / vision_transformer.py (LayerScale), patch_embed.py (PatchEmbed), format.py (nchw_to),
  norm.py (LayerNorm, LayerNorm2d, GroupNorm1), activations.py (GELU), norm_act.py (BatchNormAct2d),
  conv_bn_act.py (ConvNormAct), adaptive_avgmax_pool.py (SelectAdaptivePool2d), classifier.py
  (ClassifierHead, NormMlpClassifierHead), squeeze_excite.py (SEModule), eca.py (EcaModule), cbam.py
  (ChannelAttn, SpatialAttn, CbamModule), models/_efficientnet_blocks.py (SqueezeExcite),
  pos_embed.py (resample_abs_pos_embed).

timm registers some helpers with ``register_notrace_function`` / ``register_notrace_module``; those only
affect timm's *own* fx feature-extraction tracer (they are NOT ``torch.fx.wrap``), so they are plain
functions/modules here as well.
"""
import collections.abc
import math
from functools import partial
from itertools import repeat
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

_assert = torch._assert  # timm.layers._assert


def _ntuple(n):
    def parse(x):
        if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
            return tuple(x)
        return tuple(repeat(x, n))
    return parse


to_2tuple = _ntuple(2)
to_ntuple = _ntuple


def make_divisible(v, divisor=8, min_value=None, round_limit=.9):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    # Make sure that round down does not go down by more than 10%.
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


# --- drop.py ----------------------------------------------------------------------------------


def drop_path(x, drop_prob: float = 0., training: bool = False, scale_by_keep: bool = True):
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # work with diff dim tensors, not just 2D ConvNets
    random_tensor = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor.div_(keep_prob)
    return x * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0., scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training, self.scale_by_keep)


# --- activations / norms ----------------------------------------------------------------------


class GELU(nn.Module):
    # timm.layers.activations.GELU (a non-torch.nn module -> fx traces into it: call_function F.gelu)
    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.gelu(input)


class LayerNorm(nn.LayerNorm):
    # timm.layers.norm.LayerNorm (channels-last LN; F.layer_norm in forward)
    def __init__(self, num_channels, eps=1e-6, affine=True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x


class LayerNorm2d(nn.LayerNorm):
    # timm.layers.norm.LayerNorm2d: permute NCHW->NHWC, F.layer_norm, permute back
    def __init__(self, num_channels, eps=1e-6, affine=True):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class GroupNorm1(nn.GroupNorm):
    # timm.layers.norm.GroupNorm1: GroupNorm with a single group, F.group_norm in forward
    def __init__(self, num_channels, **kwargs):
        super().__init__(1, num_channels, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class BatchNormAct2d(nn.BatchNorm2d):
    # timm.layers.norm_act.BatchNormAct2d: BN subclass re-implementing forward with F.batch_norm, then drop + act
    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 apply_act=True, act_layer=nn.ReLU, inplace=True, drop_layer=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()
        if act_layer is not None and apply_act:
            self.act = act_layer(inplace=inplace) if act_layer in (nn.ReLU, nn.SiLU, nn.Hardswish, nn.ReLU6) \
                else act_layer()
        else:
            self.act = nn.Identity()

    def forward(self, x):
        _assert(x.ndim == 4, f'expected 4D input (got {x.ndim}D input)')
        if self.momentum is None:
            exponential_average_factor = 0.0
        else:
            exponential_average_factor = self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:  # type: ignore[has-type]
                self.num_batches_tracked.add_(1)  # type: ignore[has-type]
                if self.momentum is None:  # use cumulative moving average
                    exponential_average_factor = 1.0 / float(self.num_batches_tracked)
                else:  # use exponential moving average
                    exponential_average_factor = self.momentum
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
        )
        x = self.drop(x)
        x = self.act(x)
        return x


class ConvNormAct(nn.Module):
    # timm.layers.conv_bn_act.ConvNormAct: conv -> BatchNormAct2d -> aa
    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=None, dilation=1, groups=1,
                 bias=False, apply_act=True, norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU, drop_layer=None):
        super().__init__()
        if padding is None:
            padding = ((stride - 1) + dilation * (kernel_size - 1)) // 2  # timm get_padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, groups=groups, bias=bias)
        self.bn = BatchNormAct2d(out_channels, apply_act=apply_act, act_layer=act_layer, drop_layer=drop_layer)
        self.aa = nn.Identity()

    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        x = self.aa(x)
        return x


# --- mlp / layer scale / patch embed ----------------------------------------------------------


class Mlp(nn.Module):
    # timm.layers.mlp.Mlp (use_conv -> 1x1 convs, as in MetaFormer NCHW blocks)
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, norm_layer=None,
                 bias=True, drop=0., use_conv=False):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        bias = to_2tuple(bias)
        drop_probs = to_2tuple(drop)
        linear_layer = partial(nn.Conv2d, kernel_size=1) if use_conv else nn.Linear
        self.fc1 = linear_layer(in_features, hidden_features, bias=bias[0])
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop_probs[0])
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = linear_layer(hidden_features, out_features, bias=bias[1])
        self.drop2 = nn.Dropout(drop_probs[1])

    def forward(self, x):
        x = self.fc1(x)
        x = self.act(x)
        x = self.drop1(x)
        x = self.norm(x)
        x = self.fc2(x)
        x = self.drop2(x)
        return x


class LayerScale(nn.Module):
    # timm.layers.layer_scale.LayerScale: per-channel gamma of shape (C,) on channels-last tokens
    def __init__(self, dim: int, init_values: float = 1e-5, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.gamma) if self.inplace else x * self.gamma


def nchw_to(x: torch.Tensor, fmt: str):
    # timm.layers.format.nchw_to
    if fmt == 'NHWC':
        x = x.permute(0, 2, 3, 1)
    elif fmt == 'NLC':
        x = x.flatten(2).transpose(1, 2)
    elif fmt == 'NCL':
        x = x.flatten(2)
    return x


class PatchEmbed(nn.Module):
    # timm.layers.patch_embed.PatchEmbed
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, norm_layer=None, flatten=True,
                 output_fmt: Optional[str] = None, bias=True, strict_img_size=True, dynamic_img_pad=False):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.img_size = to_2tuple(img_size)
        self.grid_size = tuple([s // p for s, p in zip(self.img_size, self.patch_size)])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        if output_fmt is not None:
            self.flatten = False
            self.output_fmt = output_fmt
        else:
            # flatten spatial dim and transpose to channels last, kept for bwd compat
            self.flatten = flatten
            self.output_fmt = 'NCHW'
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x):
        B, C, H, W = x.shape
        if self.img_size is not None:
            if self.strict_img_size:
                _assert(H == self.img_size[0], f"Input height ({H}) doesn't match model ({self.img_size[0]}).")
                _assert(W == self.img_size[1], f"Input width ({W}) doesn't match model ({self.img_size[1]}).")
            elif not self.dynamic_img_pad:
                _assert(H % self.patch_size[0] == 0,
                        f"Input height ({H}) should be divisible by patch size ({self.patch_size[0]}).")
                _assert(W % self.patch_size[1] == 0,
                        f"Input width ({W}) should be divisible by patch size ({self.patch_size[1]}).")
        if self.dynamic_img_pad:
            pad_h = (self.patch_size[0] - H % self.patch_size[0]) % self.patch_size[0]
            pad_w = (self.patch_size[1] - W % self.patch_size[1]) % self.patch_size[1]
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # NCHW -> NLC
        elif self.output_fmt != 'NCHW':
            x = nchw_to(x, self.output_fmt)
        x = self.norm(x)
        return x


def resample_abs_pos_embed(posemb: torch.Tensor, new_size: List[int], old_size: Optional[List[int]] = None,
                           num_prefix_tokens: int = 1, interpolation: str = 'bicubic', antialias: bool = True):
    # timm.layers.pos_embed.resample_abs_pos_embed -- data-dependent early return (not fx-traceable)
    num_pos_tokens = posemb.shape[1]
    num_new_tokens = new_size[0] * new_size[1] + num_prefix_tokens
    if num_new_tokens == num_pos_tokens and new_size[0] == new_size[1]:
        return posemb
    if old_size is None:
        hw = int(math.sqrt(num_pos_tokens - num_prefix_tokens))
        old_size = hw, hw
    if num_prefix_tokens:
        posemb_prefix, posemb = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    else:
        posemb_prefix, posemb = None, posemb
    embed_dim = posemb.shape[-1]
    orig_dtype = posemb.dtype
    posemb = posemb.float()  # interpolate needs float32
    posemb = posemb.reshape(1, old_size[0], old_size[1], -1).permute(0, 3, 1, 2)
    posemb = F.interpolate(posemb, size=new_size, mode=interpolation, antialias=antialias)
    posemb = posemb.permute(0, 2, 3, 1).reshape(1, -1, embed_dim)
    posemb = posemb.to(orig_dtype)
    if posemb_prefix is not None:
        posemb = torch.cat([posemb_prefix, posemb], dim=1)
    return posemb


# --- pooling / heads --------------------------------------------------------------------------


class SelectAdaptivePool2d(nn.Module):
    # timm.layers.adaptive_avgmax_pool.SelectAdaptivePool2d (avg only; NCHW via nn.AdaptiveAvgPool2d,
    # NHWC via x.mean((1, 2)))
    def __init__(self, output_size=1, pool_type='avg', flatten=False, input_fmt='NCHW'):
        super().__init__()
        assert pool_type in ('avg', '')
        self.input_fmt = input_fmt
        self.pool_type = pool_type
        if input_fmt == 'NHWC':
            self.pool = None
            self.flatten = nn.Identity()
            self.keepdim = not flatten
        else:
            self.pool = nn.AdaptiveAvgPool2d(output_size) if pool_type else nn.Identity()
            self.flatten = nn.Flatten(1) if flatten else nn.Identity()

    def forward(self, x):
        if self.pool is None:
            x = x.mean((1, 2), keepdim=self.keepdim)  # timm AdaptiveAvgPool(input_fmt='NHWC')
        else:
            x = self.pool(x)
        x = self.flatten(x)
        return x


class ClassifierHead(nn.Module):
    # timm.layers.classifier.ClassifierHead: global_pool(flatten) -> drop -> fc -> flatten(Identity)
    def __init__(self, in_features, num_classes, pool_type='avg', drop_rate=0., input_fmt='NCHW'):
        super().__init__()
        self.in_features = in_features
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type, flatten=True, input_fmt=input_fmt)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes)
        self.flatten = nn.Identity()

    def forward(self, x, pre_logits: bool = False):
        x = self.global_pool(x)
        x = self.drop(x)
        if pre_logits:
            return self.flatten(x)
        x = self.fc(x)
        return self.flatten(x)


class NormMlpClassifierHead(nn.Module):
    # timm.layers.classifier.NormMlpClassifierHead: pool (no flatten) -> LayerNorm2d -> flatten -> fc
    def __init__(self, in_features, num_classes, hidden_size=None, pool_type='avg', drop_rate=0.,
                 norm_layer=LayerNorm2d, act_layer=nn.Tanh):
        super().__init__()
        self.in_features = in_features
        self.hidden_size = hidden_size
        self.num_features = in_features
        self.global_pool = SelectAdaptivePool2d(pool_type=pool_type)
        self.norm = norm_layer(in_features)
        self.flatten = nn.Flatten(1) if pool_type else nn.Identity()
        if hidden_size:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module('fc', nn.Linear(in_features, hidden_size))
            self.pre_logits.add_module('act', act_layer())
            self.num_features = hidden_size
        else:
            self.pre_logits = nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x, pre_logits: bool = False):
        x = self.global_pool(x)
        x = self.norm(x)
        x = self.flatten(x)
        x = self.pre_logits(x)
        x = self.drop(x)
        if pre_logits:
            return x
        x = self.fc(x)
        return x


# --- channel / spatial attention --------------------------------------------------------------


class SEModule(nn.Module):
    # timm.layers.squeeze_excite.SEModule: mean((2,3)) -> fc1 -> bn -> act -> fc2 -> gate; x * gate
    def __init__(self, channels, rd_ratio=1. / 16, rd_channels=None, rd_divisor=8, add_maxpool=False, bias=True,
                 act_layer=nn.ReLU, norm_layer=None, gate_layer=nn.Sigmoid):
        super().__init__()
        self.add_maxpool = add_maxpool
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias)
        self.bn = norm_layer(rd_channels) if norm_layer else nn.Identity()
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias)
        self.gate = gate_layer()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        if self.add_maxpool:
            # experimental codepath, may remove or change
            x_se = 0.5 * x_se + 0.5 * x.amax((2, 3), keepdim=True)
        x_se = self.fc1(x_se)
        x_se = self.act(self.bn(x_se))
        x_se = self.fc2(x_se)
        return x * self.gate(x_se)


class EcaModule(nn.Module):
    # timm.layers.eca.EcaModule: Conv1d(1,1,k) over the *channel* axis after a view -> mixes neighbouring channels
    def __init__(self, channels=None, kernel_size=3, gamma=2, beta=1, act_layer=None, gate_layer=nn.Sigmoid):
        super().__init__()
        if channels is not None:
            t = int(abs(math.log(channels, 2) + beta) / gamma)
            kernel_size = max(t if t % 2 else t + 1, 3)
        assert kernel_size % 2 == 1
        padding = (kernel_size - 1) // 2
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=padding, bias=False)
        self.act = None
        self.conv2 = None
        self.gate = gate_layer()

    def forward(self, x):
        y = x.mean((2, 3)).view(x.shape[0], 1, -1)  # view for 1d conv
        y = self.conv(y)
        if self.conv2 is not None:
            y = self.act(y)
            y = self.conv2(y)
        y = self.gate(y).view(x.shape[0], -1, 1, 1)
        return x * y.expand_as(x)


class ChannelAttn(nn.Module):
    # timm.layers.cbam.ChannelAttn: shared fc1/fc2 applied to avg- and max-pooled descriptors
    def __init__(self, channels, rd_ratio=1. / 16, rd_channels=None, rd_divisor=1, act_layer=nn.ReLU,
                 gate_layer=nn.Sigmoid, mlp_bias=False):
        super().__init__()
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=mlp_bias)
        self.act = act_layer(inplace=True)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=mlp_bias)
        self.gate = gate_layer()

    def forward(self, x):
        x_avg = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        x_max = self.fc2(self.act(self.fc1(x.amax((2, 3), keepdim=True))))
        return x * self.gate(x_avg + x_max)


class SpatialAttn(nn.Module):
    # timm.layers.cbam.SpatialAttn: [B,1,H,W] gate from cat(mean over C, amax over C)
    def __init__(self, kernel_size=7, gate_layer=nn.Sigmoid):
        super().__init__()
        self.conv = ConvNormAct(2, 1, kernel_size, apply_act=False)
        self.gate = gate_layer()

    def forward(self, x):
        x_attn = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        x_attn = self.conv(x_attn)
        return x * self.gate(x_attn)


class CbamModule(nn.Module):
    def __init__(self, channels, rd_ratio=1. / 16, rd_channels=None, rd_divisor=1, spatial_kernel_size=7,
                 act_layer=nn.ReLU, gate_layer=nn.Sigmoid, mlp_bias=False):
        super().__init__()
        self.channel = ChannelAttn(channels, rd_ratio=rd_ratio, rd_channels=rd_channels, rd_divisor=rd_divisor,
                                   act_layer=act_layer, gate_layer=gate_layer, mlp_bias=mlp_bias)
        self.spatial = SpatialAttn(spatial_kernel_size, gate_layer=gate_layer)

    def forward(self, x):
        x = self.channel(x)
        x = self.spatial(x)
        return x


class SqueezeExcite(nn.Module):
    # timm.models._efficientnet_blocks.SqueezeExcite: conv_reduce -> act1 -> conv_expand -> gate
    def __init__(self, in_chs, rd_ratio=0.25, rd_channels=None, act_layer=nn.ReLU, gate_layer=nn.Sigmoid,
                 force_act_layer=None, rd_round_fn=None):
        super().__init__()
        if rd_channels is None:
            rd_round_fn = rd_round_fn or round
            rd_channels = rd_round_fn(in_chs * rd_ratio)
        act_layer = force_act_layer or act_layer
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True)
        self.act1 = act_layer(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True)
        self.gate = gate_layer()

    def forward(self, x):
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_reduce(x_se)
        x_se = self.act1(x_se)
        x_se = self.conv_expand(x_se)
        return x * self.gate(x_se)


def init_weights_vit_timm(module: nn.Module, name: str = '') -> None:
    # timm.models.vision_transformer.init_weights_vit_timm
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
