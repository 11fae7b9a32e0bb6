"""timm-style classification CNNs, scaled down for 32x32 inputs / 10 classes.

Mirrors (forward logic and module structure re-implemented from huggingface/pytorch-image-models):
  timm/models/resnet.py (BasicBlock, Bottleneck, ResNet incl. 'deep' stem + avg_down shortcut, attn_layer
  = SEModule / EcaModule / CbamModule), timm/models/convnext.py (ConvNeXtBlock conv_mlp=False, ConvNeXtStage,
  ConvNeXt), timm/models/ghostnet.py (GhostModule v1, GhostBottleneck, GhostNet),
  timm/models/efficientnet.py + _efficientnet_blocks.py (DepthwiseSeparableConv, InvertedResidual,
  SqueezeExcite, BatchNormAct2d), timm/models/regnet.py (Bottleneck, RegStage, RegNet),
  plus timm/layers/* via ``_timm_layers``.

General simplifications: no builder/registry/pretrained cfg machinery, no grad-checkpointing,
no features_only / forward_intermediates, fewer blocks and narrower widths.
"""
import math
from functools import partial
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ._common import NUM_CLASSES, build
from ._timm_layers import (GELU, BatchNormAct2d, CbamModule, ClassifierHead, ConvNormAct, DropPath, EcaModule,
                           LayerNorm, LayerNorm2d, Mlp, NormMlpClassifierHead, SelectAdaptivePool2d, SEModule,
                           SqueezeExcite, make_divisible)

# ----------------------------------------------------------------------------------------------
# timm/models/resnet.py
# ----------------------------------------------------------------------------------------------


def get_padding(kernel_size: int, stride: int, dilation: int = 1) -> int:
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


class TimmBasicBlock(nn.Module):
    # timm.models.resnet.BasicBlock (se = attn_layer(planes); drop_path before the residual add)
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, cardinality=1, base_width=64, reduce_first=1,
                 dilation=1, first_dilation=None, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d, attn_layer=None,
                 aa_layer=None, drop_block=None, drop_path=None):
        super().__init__()
        assert cardinality == 1, 'BasicBlock only supports cardinality of 1'
        assert base_width == 64, 'BasicBlock does not support changing base width'
        first_planes = planes // reduce_first
        outplanes = planes * self.expansion
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(inplanes, first_planes, kernel_size=3, stride=stride, padding=first_dilation,
                               dilation=first_dilation, bias=False)
        self.bn1 = norm_layer(first_planes)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act1 = act_layer(inplace=True)
        self.aa = nn.Identity()
        self.conv2 = nn.Conv2d(first_planes, outplanes, kernel_size=3, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = norm_layer(outplanes)
        self.se = attn_layer(outplanes) if attn_layer is not None else None
        self.act2 = act_layer(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation
        self.drop_path = drop_path

    def forward(self, x):
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        x = self.conv2(x)
        x = self.bn2(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        x = self.act2(x)
        return x


class TimmBottleneck(nn.Module):
    # timm.models.resnet.Bottleneck
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, cardinality=1, base_width=64, reduce_first=1,
                 dilation=1, first_dilation=None, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d, attn_layer=None,
                 aa_layer=None, drop_block=None, drop_path=None):
        super().__init__()
        width = int(math.floor(planes * (base_width / 64)) * cardinality)
        first_planes = width // reduce_first
        outplanes = planes * self.expansion
        first_dilation = first_dilation or dilation
        self.conv1 = nn.Conv2d(inplanes, first_planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(first_planes)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(first_planes, width, kernel_size=3, stride=stride, padding=first_dilation,
                               dilation=first_dilation, groups=cardinality, bias=False)
        self.bn2 = norm_layer(width)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act2 = act_layer(inplace=True)
        self.aa = nn.Identity()
        self.conv3 = nn.Conv2d(width, outplanes, kernel_size=1, bias=False)
        self.bn3 = norm_layer(outplanes)
        self.se = attn_layer(outplanes) if attn_layer is not None else None
        self.act3 = act_layer(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation
        self.drop_path = drop_path

    def forward(self, x):
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        x = self.aa(x)
        x = self.conv3(x)
        x = self.bn3(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        x = self.act3(x)
        return x


def downsample_conv(in_channels, out_channels, kernel_size, stride=1, dilation=1, first_dilation=None,
                    norm_layer=None):
    norm_layer = norm_layer or nn.BatchNorm2d
    kernel_size = 1 if stride == 1 and dilation == 1 else kernel_size
    first_dilation = (first_dilation or dilation) if kernel_size > 1 else 1
    p = get_padding(kernel_size, stride, first_dilation)
    return nn.Sequential(*[
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=p, dilation=first_dilation,
                  bias=False),
        norm_layer(out_channels),
    ])


def downsample_avg(in_channels, out_channels, kernel_size, stride=1, dilation=1, first_dilation=None,
                   norm_layer=None):
    norm_layer = norm_layer or nn.BatchNorm2d
    avg_stride = stride if dilation == 1 else 1
    if stride == 1 and dilation == 1:
        pool = nn.Identity()
    else:
        pool = nn.AvgPool2d(2, avg_stride, ceil_mode=True, count_include_pad=False)
    return nn.Sequential(*[
        pool,
        nn.Conv2d(in_channels, out_channels, 1, stride=1, padding=0, bias=False),
        norm_layer(out_channels),
    ])


def make_blocks(block_fn, channels, block_repeats, inplanes, reduce_first=1, output_stride=32, down_kernel_size=1,
                avg_down=False, drop_path_rate=0., **kwargs):
    # timm.models.resnet.make_blocks (drop_block omitted)
    stages = []
    net_num_blocks = sum(block_repeats)
    net_block_idx = 0
    net_stride = 4
    dilation = prev_dilation = 1
    for stage_idx, (planes, num_blocks) in enumerate(zip(channels, block_repeats)):
        stage_name = f'layer{stage_idx + 1}'  # never liked this name, but weight compat requires it
        stride = 1 if stage_idx == 0 else 2
        if net_stride >= output_stride:
            dilation *= stride
            stride = 1
        else:
            net_stride *= stride
        downsample = None
        if stride != 1 or inplanes != planes * block_fn.expansion:
            down_kwargs = dict(in_channels=inplanes, out_channels=planes * block_fn.expansion,
                               kernel_size=down_kernel_size, stride=stride, dilation=dilation,
                               first_dilation=prev_dilation, norm_layer=kwargs.get('norm_layer'))
            downsample = downsample_avg(**down_kwargs) if avg_down else downsample_conv(**down_kwargs)
        block_kwargs = dict(reduce_first=reduce_first, dilation=dilation, **kwargs)
        blocks = []
        for block_idx in range(num_blocks):
            downsample = downsample if block_idx == 0 else None
            stride = stride if block_idx == 0 else 1
            block_dpr = drop_path_rate * net_block_idx / (net_num_blocks - 1)  # stochastic depth linear decay rule
            blocks.append(block_fn(inplanes, planes, stride, downsample, first_dilation=prev_dilation,
                                   drop_path=DropPath(block_dpr) if block_dpr > 0. else None, **block_kwargs))
            prev_dilation = dilation
            inplanes = planes * block_fn.expansion
            net_block_idx += 1
        stages.append((stage_name, nn.Sequential(*blocks)))
    return stages


class TimmResNet(nn.Module):
    # timm.models.resnet.ResNet (stem_type '' or 'deep', avg_down, block_args attn_layer)
    def __init__(self, block, layers: List[int], num_classes=1000, in_chans=3, cardinality=1, base_width=64,
                 stem_width=64, stem_type='', avg_down=False, channels=(64, 128, 256, 512), act_layer=nn.ReLU,
                 norm_layer=nn.BatchNorm2d, drop_rate=0.0, drop_path_rate=0., block_args=None):
        super().__init__()
        block_args = block_args or dict()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        # Stem
        deep_stem = 'deep' in stem_type
        inplanes = stem_width * 2 if deep_stem else stem_width  # upstream: `... else 64` (fixed 64-wide stem)
        if deep_stem:
            stem_chs = (stem_width, stem_width)
            self.conv1 = nn.Sequential(*[
                nn.Conv2d(in_chans, stem_chs[0], 3, stride=2, padding=1, bias=False),
                norm_layer(stem_chs[0]),
                act_layer(inplace=True),
                nn.Conv2d(stem_chs[0], stem_chs[1], 3, stride=1, padding=1, bias=False),
                norm_layer(stem_chs[1]),
                act_layer(inplace=True),
                nn.Conv2d(stem_chs[1], inplanes, 3, stride=1, padding=1, bias=False)])
        else:
            self.conv1 = nn.Conv2d(in_chans, inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(inplanes)
        self.act1 = act_layer(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # Feature Blocks
        stage_modules = make_blocks(block, channels, layers, inplanes, cardinality=cardinality,
                                    base_width=base_width, avg_down=avg_down, act_layer=act_layer,
                                    norm_layer=norm_layer, drop_path_rate=drop_path_rate, **block_args)
        for stage in stage_modules:
            self.add_module(*stage)  # layer1, layer2, etc
        # Head (Pooling and Classifier)
        self.num_features = channels[-1] * block.expansion
        self.global_pool = SelectAdaptivePool2d(pool_type='avg', flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes)
        for n, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward_features(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


# ----------------------------------------------------------------------------------------------
# timm/models/convnext.py
# ----------------------------------------------------------------------------------------------


class ConvNeXtBlock(nn.Module):
    # timm.models.convnext.ConvNeXtBlock (conv_mlp=False: permute NHWC -> timm LayerNorm -> Mlp(Linear) -> permute;
    # gamma is a (C,) Parameter applied via x.mul(self.gamma.reshape(1, -1, 1, 1)))
    def __init__(self, in_chs, out_chs=None, kernel_size=7, stride=1, dilation=(1, 1), mlp_ratio=4, conv_mlp=False,
                 conv_bias=True, ls_init_value=1e-6, act_layer=GELU, norm_layer=None, drop_path=0.):
        super().__init__()
        out_chs = out_chs or in_chs
        mlp_layer = partial(Mlp, use_conv=conv_mlp)
        self.use_conv_mlp = conv_mlp
        self.conv_dw = nn.Conv2d(in_chs, out_chs, kernel_size=kernel_size, stride=stride,
                                 padding=get_padding(kernel_size, stride, dilation[0]), dilation=dilation[0],
                                 groups=in_chs, bias=conv_bias)
        self.norm = norm_layer(out_chs)
        self.mlp = mlp_layer(out_chs, int(mlp_ratio * out_chs), act_layer=act_layer)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(out_chs)) if ls_init_value is not None else None
        assert in_chs == out_chs and stride == 1
        self.shortcut = nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.norm(x)
            x = self.mlp(x)
        else:
            x = x.permute(0, 2, 3, 1)
            x = self.norm(x)
            x = self.mlp(x)
            x = x.permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        x = self.drop_path(x) + self.shortcut(shortcut)
        return x


class ConvNeXtStage(nn.Module):
    def __init__(self, in_chs, out_chs, kernel_size=7, stride=2, depth=2, drop_path_rates=None, ls_init_value=1.0,
                 conv_mlp=False, conv_bias=True, act_layer=GELU, norm_layer=None, norm_layer_cl=None):
        super().__init__()
        self.grad_checkpointing = False
        if in_chs != out_chs or stride > 1:
            ds_ks = 2
            self.downsample = nn.Sequential(
                norm_layer(in_chs),
                nn.Conv2d(in_chs, out_chs, kernel_size=ds_ks, stride=stride, padding=0, bias=conv_bias),
            )
            in_chs = out_chs
        else:
            self.downsample = nn.Identity()
        drop_path_rates = drop_path_rates or [0.] * depth
        stage_blocks = []
        for i in range(depth):
            stage_blocks.append(ConvNeXtBlock(in_chs=in_chs, out_chs=out_chs, kernel_size=kernel_size,
                                              drop_path=drop_path_rates[i], ls_init_value=ls_init_value,
                                              conv_mlp=conv_mlp, conv_bias=conv_bias, act_layer=act_layer,
                                              norm_layer=norm_layer if conv_mlp else norm_layer_cl))
            in_chs = out_chs
        self.blocks = nn.Sequential(*stage_blocks)

    def forward(self, x):
        x = self.downsample(x)
        x = self.blocks(x)
        return x


class TimmConvNeXt(nn.Module):
    # timm.models.convnext.ConvNeXt (patch stem, NormMlpClassifierHead with LayerNorm2d)
    def __init__(self, in_chans=3, num_classes=1000, global_pool='avg', depths=(3, 3, 9, 3),
                 dims=(96, 192, 384, 768), kernel_sizes=7, ls_init_value=1e-6, patch_size=4, head_hidden_size=None,
                 conv_mlp=False, conv_bias=True, act_layer=GELU, drop_rate=0., drop_path_rate=0.):
        super().__init__()
        norm_layer = LayerNorm2d
        norm_layer_cl = norm_layer if conv_mlp else LayerNorm
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size, bias=conv_bias),
            norm_layer(dims[0]),
        )
        stem_stride = patch_size
        self.stages = nn.Sequential()
        dp_rates = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths)).split(depths)]
        stages = []
        prev_chs = dims[0]
        curr_stride = stem_stride
        for i in range(4):
            stride = 2 if curr_stride == 2 or i > 0 else 1
            curr_stride *= stride
            out_chs = dims[i]
            stages.append(ConvNeXtStage(prev_chs, out_chs, kernel_size=kernel_sizes, stride=stride, depth=depths[i],
                                        drop_path_rates=dp_rates[i], ls_init_value=ls_init_value, conv_mlp=conv_mlp,
                                        conv_bias=conv_bias, act_layer=act_layer, norm_layer=norm_layer,
                                        norm_layer_cl=norm_layer_cl))
            prev_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.num_features = prev_chs
        self.norm_pre = nn.Identity()
        self.head = NormMlpClassifierHead(self.num_features, num_classes, hidden_size=head_hidden_size,
                                          pool_type=global_pool, drop_rate=self.drop_rate, norm_layer=norm_layer,
                                          act_layer=GELU)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.stem(x)
        x = self.stages(x)
        x = self.norm_pre(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x):
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


# ----------------------------------------------------------------------------------------------
# timm/models/ghostnet.py (v1)
# ----------------------------------------------------------------------------------------------

_SE_LAYER = partial(SqueezeExcite, gate_layer=nn.Hardsigmoid, rd_round_fn=partial(make_divisible, divisor=4))


class GhostModule(nn.Module):
    # timm.models.ghostnet.GhostModule (v1): cat([primary, cheap(primary)]) then slice [:, :self.out_chs]
    def __init__(self, in_chs, out_chs, kernel_size=1, ratio=2, dw_size=3, stride=1, use_act=True,
                 act_layer=nn.ReLU):
        super().__init__()
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / ratio)
        new_chs = init_chs * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, init_chs, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_chs),
            act_layer(inplace=True) if use_act else nn.Identity(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_chs, new_chs, dw_size, 1, dw_size // 2, groups=init_chs, bias=False),
            nn.BatchNorm2d(new_chs),
            act_layer(inplace=True) if use_act else nn.Identity(),
        )

    def forward(self, x):
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, :self.out_chs, :, :]


class GhostBottleneck(nn.Module):
    # timm.models.ghostnet.GhostBottleneck (``ratio`` forwarded to GhostModule is the only addition)
    def __init__(self, in_chs, mid_chs, out_chs, dw_kernel_size=3, stride=1, act_layer=nn.ReLU, se_ratio=0.,
                 ratio=2):
        super().__init__()
        has_se = se_ratio is not None and se_ratio > 0.
        self.stride = stride
        # Point-wise expansion
        self.ghost1 = GhostModule(in_chs, mid_chs, use_act=True, act_layer=act_layer, ratio=ratio)
        # Depth-wise convolution
        if self.stride > 1:
            self.conv_dw = nn.Conv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride,
                                     padding=(dw_kernel_size - 1) // 2, groups=mid_chs, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = None
            self.bn_dw = None
        # Squeeze-and-excitation
        self.se = _SE_LAYER(mid_chs, rd_ratio=se_ratio) if has_se else None
        # Point-wise linear projection
        self.ghost2 = GhostModule(mid_chs, out_chs, use_act=False, ratio=ratio)
        # shortcut
        if in_chs == out_chs and self.stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride=stride, padding=(dw_kernel_size - 1) // 2,
                          groups=in_chs, bias=False),
                nn.BatchNorm2d(in_chs),
                nn.Conv2d(in_chs, out_chs, 1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(out_chs),
            )

    def forward(self, x):
        shortcut = x
        # 1st ghost bottleneck
        x = self.ghost1(x)
        # Depth-wise convolution
        if self.conv_dw is not None:
            x = self.conv_dw(x)
            x = self.bn_dw(x)
        # Squeeze-and-excitation
        if self.se is not None:
            x = self.se(x)
        # 2nd ghost bottleneck
        x = self.ghost2(x)
        x += self.shortcut(shortcut)
        return x


class GhostNet(nn.Module):
    # timm.models.ghostnet.GhostNet (v1)
    def __init__(self, cfgs, num_classes=1000, width=1.0, in_chans=3, global_pool='avg', drop_rate=0.2,
                 ratio=2):
        super().__init__()
        self.cfgs = cfgs
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        # building first layer
        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU(inplace=True)
        prev_chs = stem_chs
        # building inverted residual blocks
        stages = nn.ModuleList([])
        exp_size = 16
        for cfg in self.cfgs:
            layers = []
            for k, exp_size, c, se_ratio, s in cfg:
                out_chs = make_divisible(c * width, 4)
                mid_chs = make_divisible(exp_size * width, 4)
                layers.append(GhostBottleneck(prev_chs, mid_chs, out_chs, k, s, se_ratio=se_ratio, ratio=ratio))
                prev_chs = out_chs
            stages.append(nn.Sequential(*layers))
        out_chs = make_divisible(exp_size * width, 4)
        stages.append(nn.Sequential(ConvNormAct(prev_chs, out_chs, 1)))
        self.pool_dim = prev_chs = out_chs
        self.blocks = nn.Sequential(*stages)
        # building last several layers
        self.num_features = prev_chs
        self.head_hidden_size = out_chs = 1280
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
        self.conv_head = nn.Conv2d(prev_chs, out_chs, 1, 1, 0, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1) if global_pool else nn.Identity()  # don't flatten if pooling disabled
        self.classifier = nn.Linear(out_chs, num_classes)

    def forward_features(self, x):
        x = self.conv_stem(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.blocks(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.global_pool(x)
        x = self.conv_head(x)
        x = self.act2(x)
        x = self.flatten(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x):
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


# ----------------------------------------------------------------------------------------------
# timm/models/efficientnet.py + _efficientnet_blocks.py
# ----------------------------------------------------------------------------------------------


class DepthwiseSeparableConv(nn.Module):
    # timm.models._efficientnet_blocks.DepthwiseSeparableConv (norm+act fused in BatchNormAct2d)
    def __init__(self, in_chs, out_chs, dw_kernel_size=3, stride=1, dilation=1, noskip=False, pw_kernel_size=1,
                 pw_act=False, act_layer=nn.ReLU, se_layer=None, drop_path_rate=0.):
        super().__init__()
        self.has_skip = (stride == 1 and in_chs == out_chs) and not noskip
        self.has_pw_act = pw_act
        self.conv_dw = nn.Conv2d(in_chs, in_chs, dw_kernel_size, stride=stride,
                                 padding=get_padding(dw_kernel_size, stride, dilation), dilation=dilation,
                                 groups=in_chs, bias=False)
        self.bn1 = BatchNormAct2d(in_chs, act_layer=act_layer, inplace=True)
        self.aa = nn.Identity()
        self.se = se_layer(in_chs, act_layer=act_layer) if se_layer else nn.Identity()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, pw_kernel_size, bias=False)
        self.bn2 = BatchNormAct2d(out_chs, act_layer=act_layer, apply_act=self.has_pw_act, inplace=True)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x)
        x = self.bn1(x)
        x = self.aa(x)
        x = self.se(x)
        x = self.conv_pw(x)
        x = self.bn2(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class InvertedResidual(nn.Module):
    # timm.models._efficientnet_blocks.InvertedResidual
    def __init__(self, in_chs, out_chs, dw_kernel_size=3, stride=1, dilation=1, noskip=False, exp_ratio=1.0,
                 exp_kernel_size=1, pw_kernel_size=1, act_layer=nn.ReLU, se_layer=None, drop_path_rate=0.):
        super().__init__()
        mid_chs = make_divisible(in_chs * exp_ratio)
        self.has_skip = (in_chs == out_chs and stride == 1) and not noskip
        # Point-wise expansion
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, exp_kernel_size, padding=exp_kernel_size // 2, bias=False)
        self.bn1 = BatchNormAct2d(mid_chs, act_layer=act_layer, inplace=True)
        # Depth-wise convolution
        self.conv_dw = nn.Conv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride,
                                 padding=get_padding(dw_kernel_size, stride, dilation), dilation=dilation,
                                 groups=mid_chs, bias=False)
        self.bn2 = BatchNormAct2d(mid_chs, act_layer=act_layer, inplace=True)
        self.aa = nn.Identity()
        # Squeeze-and-excitation
        self.se = se_layer(mid_chs, act_layer=act_layer) if se_layer else nn.Identity()
        # Point-wise linear projection
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, pw_kernel_size, bias=False)
        self.bn3 = BatchNormAct2d(out_chs, act_layer=act_layer, apply_act=False)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate else nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.conv_pw(x)
        x = self.bn1(x)
        x = self.conv_dw(x)
        x = self.bn2(x)
        x = self.aa(x)
        x = self.se(x)
        x = self.conv_pwl(x)
        x = self.bn3(x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


def round_channels(channels, multiplier=1.0, divisor=8, channel_min=None, round_limit=0.9):
    if not multiplier:
        return channels
    return make_divisible(channels * multiplier, divisor, channel_min, round_limit=round_limit)


class TimmEfficientNet(nn.Module):
    # timm.models.efficientnet.EfficientNet (blocks built by hand from the b0 arch_def instead of the
    # string-decoding EfficientNetBuilder; same per-block args incl. SE rd_ratio = se_ratio / exp_ratio)
    def __init__(self, arch, num_classes=1000, channel_multiplier=1.0, depth_multiplier=1.0, stem_size=32,
                 num_features=1280, act_layer=nn.SiLU, drop_rate=0., drop_path_rate=0.):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        rc = partial(round_channels, multiplier=channel_multiplier)
        stem_size = rc(stem_size)
        self.conv_stem = nn.Conv2d(3, stem_size, 3, stride=2, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(stem_size, act_layer=act_layer, inplace=True)
        # expand depth (timm 'ceil' depth scaling)
        stage_args = []
        for (btype, r, k, s, e, c, se) in arch:
            stage_args.append((btype, int(math.ceil(r * depth_multiplier)), k, s, e, rc(c), se))
        total_blocks = sum(a[1] for a in stage_args)
        stages = []
        in_chs = stem_size
        block_idx = 0
        for (btype, r, k, s, e, c, se) in stage_args:
            blocks = []
            for i in range(r):
                dpr = drop_path_rate * block_idx / total_blocks
                stride = s if i == 0 else 1
                if btype == 'ds':
                    se_layer = partial(SqueezeExcite, rd_ratio=se) if se else None
                    blocks.append(DepthwiseSeparableConv(in_chs, c, k, stride, act_layer=act_layer,
                                                         se_layer=se_layer, drop_path_rate=dpr))
                else:
                    se_layer = partial(SqueezeExcite, rd_ratio=se / e) if se else None
                    blocks.append(InvertedResidual(in_chs, c, k, stride, exp_ratio=e, act_layer=act_layer,
                                                   se_layer=se_layer, drop_path_rate=dpr))
                in_chs = c
                block_idx += 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = rc(num_features)
        self.conv_head = nn.Conv2d(in_chs, self.num_features, 1, bias=False)
        self.bn2 = BatchNormAct2d(self.num_features, act_layer=act_layer, inplace=True)
        self.global_pool = SelectAdaptivePool2d(pool_type='avg', flatten=True)
        self.classifier = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                init_range = 1.0 / math.sqrt(m.weight.size(0))
                m.weight.data.uniform_(-init_range, init_range)
                m.bias.data.zero_()

    def forward_features(self, x):
        x = self.conv_stem(x)
        x = self.bn1(x)
        x = self.blocks(x)
        x = self.conv_head(x)
        x = self.bn2(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.global_pool(x)
        if self.drop_rate > 0.:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x):
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


# ----------------------------------------------------------------------------------------------
# timm/models/regnet.py
# ----------------------------------------------------------------------------------------------


class RegBottleneck(nn.Module):
    # timm.models.regnet.Bottleneck: ConvNormAct x3 (BatchNormAct2d), SEModule sized from *block input* chs,
    # `x = self.drop_path(x) + self.downsample(shortcut)` with downsample Identity when shapes match
    def __init__(self, in_chs, out_chs, stride=1, dilation=(1, 1), bottle_ratio=1, group_size=1, se_ratio=0.25,
                 downsample='conv1x1', linear_out=False, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d,
                 drop_block=None, drop_path_rate=0.):
        super().__init__()
        bottleneck_chs = int(round(out_chs * bottle_ratio))
        groups = bottleneck_chs // group_size
        cargs = dict(act_layer=act_layer, norm_layer=norm_layer)
        self.conv1 = ConvNormAct(in_chs, bottleneck_chs, kernel_size=1, **cargs)
        self.conv2 = ConvNormAct(bottleneck_chs, bottleneck_chs, kernel_size=3, stride=stride, dilation=dilation[0],
                                 groups=groups, drop_layer=drop_block, **cargs)
        if se_ratio:
            se_channels = int(round(in_chs * se_ratio))
            self.se = SEModule(bottleneck_chs, rd_channels=se_channels, act_layer=act_layer)
        else:
            self.se = nn.Identity()
        self.conv3 = ConvNormAct(bottleneck_chs, out_chs, kernel_size=1, apply_act=False, **cargs)
        self.act3 = nn.Identity() if linear_out else act_layer()
        if in_chs != out_chs or stride != 1:
            self.downsample = ConvNormAct(in_chs, out_chs, kernel_size=1, stride=stride, apply_act=False)
        else:
            self.downsample = nn.Identity()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.conv1(x)
        x = self.conv2(x)
        x = self.se(x)
        x = self.conv3(x)
        if self.downsample is not None:
            # NOTE stuck with downsample as the attr name due to weight compatibility
            # now represents the shortcut, no shortcut if None, and non-downsample shortcut == nn.Identity()
            x = self.drop_path(x) + self.downsample(shortcut)
        x = self.act3(x)
        return x


class RegStage(nn.Module):
    # timm.models.regnet.RegStage: blocks added as b1, b2, ...; forward iterates self.children()
    def __init__(self, depth, in_chs, out_chs, stride, dilation, drop_path_rates=None, block_fn=RegBottleneck,
                 **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        first_dilation = 1 if dilation in (1, 2) else 2
        for i in range(depth):
            block_stride = stride if i == 0 else 1
            block_in_chs = in_chs if i == 0 else out_chs
            block_dilation = (first_dilation, dilation)
            dpr = drop_path_rates[i] if drop_path_rates is not None else 0.
            name = "b{}".format(i + 1)
            self.add_module(name, block_fn(block_in_chs, out_chs, stride=block_stride, dilation=block_dilation,
                                           drop_path_rate=dpr, **block_kwargs))
            first_dilation = dilation

    def forward(self, x):
        for block in self.children():
            x = block(x)
        return x


class TimmRegNet(nn.Module):
    # timm.models.regnet.RegNet (explicit per-stage widths/depths instead of generate_regnet)
    def __init__(self, widths, depths, group_size=8, bottle_ratio=1.0, se_ratio=0.25, stem_width=32,
                 num_classes=1000, drop_rate=0., drop_path_rate=0.):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = ConvNormAct(3, stem_width, 3, stride=2)
        prev_width = stem_width
        dpr = [x.tolist() for x in torch.linspace(0, drop_path_rate, sum(depths)).split(depths)]
        for i, (w, d) in enumerate(zip(widths, depths)):
            stage_name = "s{}".format(i + 1)
            self.add_module(stage_name, RegStage(d, prev_width, w, stride=2, dilation=1, drop_path_rates=dpr[i],
                                                 bottle_ratio=bottle_ratio, group_size=group_size,
                                                 se_ratio=se_ratio))
            prev_width = w
        self.final_conv = nn.Identity()
        self.num_features = prev_width
        self.head = ClassifierHead(in_features=self.num_features, num_classes=num_classes, pool_type='avg',
                                   drop_rate=drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                fan_out //= m.groups
                m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.stem(x)
        x = self.s1(x)
        x = self.s2(x)
        x = self.s3(x)
        x = self.s4(x)
        x = self.final_conv(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x):
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


# ----------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------


def timm_seresnet():
    # timm seresnet50: Bottleneck + SEModule (attn_layer='se'); layers [1,1,1,1], channels (16,32,64,128)
    return build(lambda: TimmResNet(TimmBottleneck, [1, 1, 1, 1], num_classes=NUM_CLASSES, stem_width=16,
                                    channels=(16, 32, 64, 128), drop_path_rate=0.05,
                                    block_args=dict(attn_layer=SEModule)))


def timm_ecaresnet():
    # timm ecaresnet50d: deep stem, avg_down shortcut, Bottleneck + EcaModule; layers [1,1,1,1]
    return build(lambda: TimmResNet(TimmBottleneck, [1, 1, 1, 1], num_classes=NUM_CLASSES, stem_width=16,
                                    stem_type='deep', avg_down=True, channels=(16, 32, 64, 128),
                                    drop_path_rate=0.05, block_args=dict(attn_layer=EcaModule)))


def timm_cbam_resnet():
    # timm ResNet BasicBlock with attn_layer='cbam' (CbamModule: ChannelAttn + SpatialAttn [B,1,H,W] gate);
    # layers [2,2,2,2], channels (16,32,64,128)
    return build(lambda: TimmResNet(TimmBasicBlock, [2, 2, 2, 2], num_classes=NUM_CLASSES, stem_width=16,
                                    channels=(16, 32, 64, 128), drop_path_rate=0.05,
                                    block_args=dict(attn_layer=CbamModule)))


def timm_convnext():
    # timm convnext_atto-like: dims (24,48,96,192), depths (1,1,2,1), conv_mlp=False; ls_init_value 0.1
    # (upstream default 1e-6), drop_path 0.1
    return build(lambda: TimmConvNeXt(num_classes=NUM_CLASSES, depths=(1, 1, 2, 1), dims=(24, 48, 96, 192),
                                      ls_init_value=0.1, drop_path_rate=0.1))


_GHOST_CFGS = [
    # k, t, c, SE, s  -- subset of timm ghostnet_100 cfgs (one block per stage)
    [[3, 16, 16, 0, 1]],
    [[3, 48, 24, 0, 2]],
    [[5, 72, 40, 0.25, 2]],
    [[3, 240, 80, 0, 2]],
    [[3, 480, 112, 0.25, 1]],
    [[5, 672, 160, 0.25, 2]],
]


def timm_ghostnet():
    # timm ghostnet_050-like (width 0.5): GhostModule ratio 2 -> channels are multiples of 4, so the
    # `out[:, :self.out_chs]` slice is present in the graph but keeps every channel (as upstream)
    return build(lambda: GhostNet(_GHOST_CFGS, num_classes=NUM_CLASSES, width=0.5))


def timm_ghostnet_ratio3():
    # same as timm_ghostnet but GhostModule(ratio=3) (upstream GhostModule arg, not used by GhostNet itself):
    # cat has 3*ceil(C/3) channels, so `out[:, :self.out_chs]` really drops channels (e.g. 9 -> 8)
    return build(lambda: GhostNet(_GHOST_CFGS, num_classes=NUM_CLASSES, width=0.5, ratio=3))


_EFFNET_B0_ARCH = [
    # block type, repeats, kernel, stride, expansion, out chs, se ratio  (timm efficientnet_b0 arch_def)
    ('ds', 1, 3, 1, 1, 16, 0.25),
    ('ir', 2, 3, 2, 6, 24, 0.25),
    ('ir', 2, 5, 2, 6, 40, 0.25),
    ('ir', 3, 3, 2, 6, 80, 0.25),
    ('ir', 3, 5, 1, 6, 112, 0.25),
    ('ir', 4, 5, 2, 6, 192, 0.25),
    ('ir', 1, 3, 1, 6, 320, 0.25),
]


def timm_efficientnet():
    # timm efficientnet_b0 arch with channel_multiplier 0.5, depth_multiplier 0.5; drop_path 0.2, drop 0.2
    return build(lambda: TimmEfficientNet(_EFFNET_B0_ARCH, num_classes=NUM_CLASSES, channel_multiplier=0.5,
                                          depth_multiplier=0.5, drop_rate=0.2, drop_path_rate=0.2))


def timm_regnet():
    # timm regnety_004-like: widths (24,56,152,368)/(1,1,2,1) depths, group_size 8, SE 0.25; stem 16
    return build(lambda: TimmRegNet(widths=(24, 56, 152, 368), depths=(1, 1, 2, 1), group_size=8, se_ratio=0.25,
                                    stem_width=16, num_classes=NUM_CLASSES, drop_path_rate=0.05))
