"""Tiny hand-made models, one per channel rule, with hand-derived expectations.

Every :class:`RuleCase` names a model builder, its example inputs and what
``fxsparse.analyze`` must find, derived by hand from the rule semantics (not by running
the library):

* ``prunable``: the sorted sizes of the prunable groups;
* ``unprunable``: how many groups are unprunable;
* ``same``: tuples of ``"param:dim"`` members that must lie in one group together;
* ``apart``: pairs of ``"param:dim"`` members that must never share a group;
* ``index``: ``(anchor, member, expected)``: in the group that has ``anchor`` as a
  member, ``member.index`` must equal ``expected`` (a list of index lists);
* ``blocked``: ``(member, fragment)``: every group holding ``member`` is unprunable and
  its reason contains ``fragment``;
* ``zero_preserving``: the expected ``ChannelGraph.zero_preserving``.

Models use 4-16 channels and inputs like [2, 3, 8, 8]. Weights are seeded and norm
statistics randomised (``build``) so that removing a channel changes eval outputs.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F


class Layers(nn.Module):
    """A module whose layers, parameters and settings are given as keywords, set in that order
    (the names are the ones the expectations below refer to)."""

    def __init__(self, **parts):
        super().__init__()
        for name, part in parts.items():
            setattr(self, name, part)


# ----------------------------------------------------------------------------------------
# a custom function for the user-registered-rule case (must be wrapped at module level)
# ----------------------------------------------------------------------------------------
def channel_scale(x):
    """A user op torch.fx must not trace into (it is a leaf function)."""
    return x * 1.5


torch.fx.wrap("channel_scale")


def signed_channel_scale(x):
    """A wrapped user op that torch.export cannot see through either (an ``if`` on a value)."""
    if x.sum() > 0:
        return x * 1.5
    return x * 0.5


torch.fx.wrap("signed_channel_scale")


# ----------------------------------------------------------------------------------------
# conv / linear chains
# ----------------------------------------------------------------------------------------
class ConvNormChain(Layers):
    """conv1 -> norm -> act -> conv2 -> norm -> act -> conv3: the five parts in that order."""

    act = staticmethod(F.relu)

    def forward(self, x):
        conv1, norm1, conv2, norm2, conv3 = self.children()
        x = self.act(norm1(conv1(x)))
        return conv3(self.act(norm2(conv2(x))))


class Conv1dChain(Layers):
    def __init__(self):
        super().__init__(conv1=nn.Conv1d(3, 8, 3, padding=1), bn1=nn.BatchNorm1d(8), conv2=nn.Conv1d(8, 6, 3),
                         pool=nn.AdaptiveAvgPool1d(1), fc=nn.Linear(6, 4))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.tanh(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class Conv2dChain(ConvNormChain):
    act = staticmethod(torch.relu)

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), bn1=nn.BatchNorm2d(8),
                         conv2=nn.Conv2d(8, 16, 3, padding=1, bias=False), bn2=nn.BatchNorm2d(16),
                         conv3=nn.Conv2d(16, 4, 1))


class Conv3dChain(Layers):
    def __init__(self):
        super().__init__(conv1=nn.Conv3d(3, 6, 3, padding=1), bn1=nn.BatchNorm3d(6), conv2=nn.Conv3d(6, 5, 1))

    def forward(self, x):
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


class ConvTransposeChain(Layers):
    """ConvTranspose2d weight is [in, out, k, k]: its output channels are dim 1."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), up=nn.ConvTranspose2d(8, 6, 2, stride=2),
                         bn=nn.BatchNorm2d(6), conv2=nn.Conv2d(6, 4, 3, padding=1))

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.bn(self.up(x)))
        return self.conv2(x)


class LinearChain(Layers):
    """On tokens [B, N, F]: the feature (last) dim carries the channels."""

    def __init__(self):
        super().__init__(fc1=nn.Linear(10, 12), drop=nn.Dropout(0.1), fc2=nn.Linear(12, 8, bias=False),
                         fc3=nn.Linear(8, 3))

    def forward(self, x):
        x = self.drop(F.gelu(self.fc1(x)))
        x = F.silu(self.fc2(x))
        return self.fc3(x)


# ----------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------
class GroupNormNet(ConvNormChain):
    """GroupNorm(4 groups, 8 channels): a group of 2 conv channels is one unit (4 units).
    GroupNorm(1 group) normalises over all channels: each channel can go (statistics over
    the kept ones, a mixing op like LayerNorm)."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), gn1=nn.GroupNorm(4, 8),
                         conv2=nn.Conv2d(8, 6, 3, padding=1), gn2=nn.GroupNorm(1, 6), conv3=nn.Conv2d(6, 4, 1))


class InstanceNormNet(ConvNormChain):
    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), in1=nn.InstanceNorm2d(8, affine=True),
                         conv2=nn.Conv2d(8, 6, 3, padding=1), in2=nn.InstanceNorm2d(6),  # no affine parameters
                         conv3=nn.Conv2d(6, 4, 1))


class ConvNeXtBlockNet(Layers):
    """stem -> [dwconv -> permute -> LayerNorm(C) -> Linear -> GELU -> Linear -> gamma ->
    permute] + residual -> head conv. LayerNorm over channels: mixing (not zero-preserving).
    Parameterised so the test can build the pruned model by hand."""

    def __init__(self, c=8, hidden=16, out=4):
        super().__init__(stem=nn.Conv2d(3, c, 3, padding=1), dw=nn.Conv2d(c, c, 3, padding=1, groups=c),
                         norm=nn.LayerNorm(c), pw1=nn.Linear(c, hidden), pw2=nn.Linear(hidden, c),
                         gamma=nn.Parameter(torch.rand(c) + 0.5), head=nn.Conv2d(c, out, 1))

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return self.head(x + y)


# ----------------------------------------------------------------------------------------
# element-wise ops, pooling
# ----------------------------------------------------------------------------------------
class PointwiseZoo(Layers):
    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), act1=nn.ReLU6(), drop=nn.Dropout2d(0.2),
                         pool1=nn.MaxPool2d(2), ident=nn.Identity(), conv2=nn.Conv2d(8, 6, 3, padding=1),
                         act2=nn.Hardswish(), pool2=nn.AdaptiveAvgPool2d(1), fc=nn.Linear(6, 3))

    def forward(self, x):
        x = self.ident(self.pool1(self.drop(self.act1(self.conv1(x)))))
        x = F.leaky_relu(x, 0.1).sigmoid() * 2.0 - 0.5
        x = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest")
        x = self.pool2(self.act2(self.conv2(F.dropout(x, 0.1, self.training))))
        return self.fc(x.flatten(1))


class ResidualOps(Layers):
    """x1 + y2 couples conv1/conv2; (a - b) couples conv3/conv4; a layer-scale [C,1,1]
    parameter joins the group it multiplies; division by a python number is fine."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), bn1=nn.BatchNorm2d(8),
                         conv2=nn.Conv2d(8, 8, 3, padding=1), bn2=nn.BatchNorm2d(8), conv3=nn.Conv2d(8, 6, 1),
                         conv4=nn.Conv2d(8, 6, 1), scale=nn.Parameter(torch.rand(6, 1, 1) + 0.5),
                         conv5=nn.Conv2d(6, 4, 1))

    def forward(self, x):
        x1 = F.relu(self.bn1(self.conv1(x)))
        x2 = self.bn2(self.conv2(x1))
        x = F.relu(x1 + x2)
        d = self.conv3(x) - self.conv4(x)
        d = d * self.scale / 2.0
        return self.conv5(d)


class SEGate(Layers):
    """Squeeze-excitation: the gate [B, C, 1, 1] couples with the channels it multiplies.
    ``divide``: x / gate instead of x * gate (same coupling)."""

    def __init__(self, c=8, r=4, divide=False):
        super().__init__(divide=divide, conv1=nn.Conv2d(3, c, 3, padding=1), fc1=nn.Conv2d(c, r, 1),
                         fc2=nn.Conv2d(r, c, 1), conv2=nn.Conv2d(c, 4, 1))

    def forward(self, x):
        x = F.relu(self.conv1(x))
        s = x.mean((2, 3), keepdim=True)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return self.conv2(x / s if self.divide else x * s)


class SpatialGate(Layers):
    """A [B, 1, H, W] gate multiplies all channels: it couples nothing and is unprunable;
    the channels it multiplies stay prunable. Also divides by (1 + gate)."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), att=nn.Conv2d(8, 1, 3, padding=1),
                         conv2=nn.Conv2d(8, 4, 1))

    def forward(self, x):
        x = F.relu(self.conv1(x))
        a = torch.sigmoid(self.att(x))
        y = x * a
        y = y / (1.0 + a)
        return self.conv2(y)


class PReLUNet(Layers):
    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), act1=nn.PReLU(8, init=0.1),
                         conv2=nn.Conv2d(8, 6, 3, padding=1), act2=nn.PReLU(init=0.2),  # one shared parameter: not a member
                         conv3=nn.Conv2d(6, 4, 1))

    def forward(self, x):
        return self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))


# ----------------------------------------------------------------------------------------
# concat, split, slicing
# ----------------------------------------------------------------------------------------
class ConcatNet(Layers):
    """cat([a(4), b(6)]) -> BN(10) -> conv: a and b stay separate groups (offsets 0 and 4)."""

    def __init__(self):
        super().__init__(conv_a=nn.Conv2d(3, 4, 3, padding=1), conv_b=nn.Conv2d(3, 6, 1), bn=nn.BatchNorm2d(10),
                         conv_c=nn.Conv2d(10, 5, 1))

    def forward(self, x):
        y = torch.cat([self.conv_a(x), self.conv_b(x)], dim=1)
        return self.conv_c(F.relu(self.bn(y)))


class NestedConcatNet(Layers):
    """cat(cat(a, b), d) then a residual add with e(13): e's first 4 channels join a, the
    next 6 join b, the last 3 join d."""

    def __init__(self):
        super().__init__(conv_a=nn.Conv2d(3, 4, 1), conv_b=nn.Conv2d(3, 6, 1), conv_d=nn.Conv2d(3, 3, 1),
                         conv_e=nn.Conv2d(3, 13, 3, padding=1), conv_out=nn.Conv2d(13, 4, 1))

    def forward(self, x):
        ab = torch.cat([self.conv_a(x), self.conv_b(x)], 1)
        abd = torch.cat((ab, self.conv_d(x)), dim=1)
        return self.conv_out(F.relu(abd + self.conv_e(x)))


class ConcatSelfNet(Layers):
    """cat([a, a]): channel j of a reaches conv_out's inputs j and j + 4."""

    def __init__(self):
        super().__init__(conv_a=nn.Conv2d(3, 4, 3, padding=1), conv_out=nn.Conv2d(8, 5, 1))

    def forward(self, x):
        a = F.relu(self.conv_a(x))
        return self.conv_out(torch.cat([a, a], 1))


class SplitNet(Layers):
    """split([3, 5]) slices conv1's channels into two groups; the two branches are summed."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), conv_a=nn.Conv2d(3, 6, 1),
                         conv_b=nn.Conv2d(5, 6, 3, padding=1), conv_out=nn.Conv2d(6, 4, 1))

    def forward(self, x):
        x = F.relu(self.conv1(x))
        a, b = torch.split(x, [3, 5], dim=1)
        return self.conv_out(self.conv_a(a) + self.conv_b(b))


class ChunkGLUNet(Layers):
    """a, b = x.chunk(2); a * sigmoid(b): conv channel j couples with j + 4 (GLU)."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), conv2=nn.Conv2d(4, 4, 1))

    def forward(self, x):
        a, b = self.conv1(x).chunk(2, dim=1)
        return self.conv2(a * torch.sigmoid(b))


class ChunkSwapNet(Layers):
    """a, b = x.chunk(2); cat([b, a]): a permutation of conv1's channels. All 4 channels
    touch the same members (conv1 rows, conv2 columns), so they are one group of 4, and
    any keep of it (e.g. only channels 0 and 1: all of piece a) must export."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 4, 3, padding=1), conv2=nn.Conv2d(4, 4, 1))

    def forward(self, x):
        a, b = F.relu(self.conv1(x)).chunk(2, dim=1)
        return self.conv2(torch.cat([b, a], dim=1))


class UnbindNet(Layers):
    """Unbind along H (no channel) passes channels; unbind along channels pins them."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), conv2=nn.Conv2d(8, 4, 1), conv3=nn.Conv2d(3, 4, 1))

    def forward(self, x):
        rows = self.conv1(x).unbind(2)
        y = torch.stack([rows[7 - i] for i in range(8)], dim=2)
        parts = self.conv3(x).unbind(1)
        w = parts[0] + parts[1] * parts[3]
        return self.conv2(F.relu(y)) + w.unsqueeze(1)


class UnbindSliceNet(Layers):
    """Unbind along H, then slice the *tuple* of rows (``rows[::-1]``) and stack: the
    channels of conv1 pass through unchanged, so conv2's input columns are conv1's group."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), conv2=nn.Conv2d(8, 4, 1))

    def forward(self, x):
        rows = self.conv1(x).unbind(2)
        return self.conv2(torch.stack(rows[::-1], dim=2))


class NarrowNet(Layers):
    """x.narrow(1, 2, 4) == x[:, 2:6]: channels 2..5 feed conv2, the other 4 feed nothing."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), conv2=nn.Conv2d(4, 4, 1))

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)).narrow(1, 2, 4))


class UnsqueezeNet(Layers):
    """Pooled features [B, C] -> unsqueeze(1) -> token MLP on [B, 1, C] -> squeeze(1)."""

    def __init__(self):
        super().__init__(conv=nn.Conv2d(3, 8, 3, padding=1), fc1=nn.Linear(8, 6), fc2=nn.Linear(6, 3))

    def forward(self, x):
        t = self.conv(x).mean((2, 3)).unsqueeze(1)
        return self.fc2(F.relu(self.fc1(t)).squeeze(1))


class SliceNet(Layers):
    """x[:, :4] reads conv1's first 4 channels; the other 4 feed nothing (their own group).
    x[:, 1:7:2] reads conv2's odd channels 1, 3, 5; the rest feed nothing."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), conv2=nn.Conv2d(3, 8, 1), conv3=nn.Conv2d(4, 5, 1),
                         conv4=nn.Conv2d(3, 5, 1))

    def forward(self, x):
        a = F.relu(self.conv1(x))[:, :4]
        b = self.conv2(x)[:, 1:7:2]
        return self.conv3(a) + self.conv4(b)


class FlattenLinearNet(Layers):
    """[B, 4, 4, 4] -> flatten -> Linear(64, 10): conv channel c is block 16c..16c+15."""

    def __init__(self):
        super().__init__(conv=nn.Conv2d(3, 4, 3, padding=1), bn=nn.BatchNorm2d(4), fc1=nn.Linear(64, 10),
                         fc2=nn.Linear(10, 3))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


class PermuteNet(Layers):
    """Channels-last linear between two convs via permute and transpose."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), fc=nn.Linear(8, 6), conv2=nn.Conv2d(6, 4, 1))

    def forward(self, x):
        x = self.conv1(x).permute(0, 2, 3, 1)  # B H W C
        x = F.relu(self.fc(x))  # B H W 6
        x = x.transpose(1, 3).contiguous()  # B 6 W H
        return self.conv2(x)


# ----------------------------------------------------------------------------------------
# depthwise / grouped / shuffle
# ----------------------------------------------------------------------------------------
class DepthwiseNet(Layers):
    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 1), dw=nn.Conv2d(8, 8, 3, padding=1, groups=8), bn=nn.BatchNorm2d(8),
                         pw=nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return self.pw(F.relu(self.bn(self.dw(self.conv1(x)))))


class DepthwiseMultiplierNet(Layers):
    """Depthwise with multiplier 2: output channels 2c, 2c+1 live and die with input c."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 6, 1), dw=nn.Conv2d(6, 12, 3, padding=1, groups=6),
                         bn=nn.BatchNorm2d(12), pw=nn.Conv2d(12, 4, 1))

    def forward(self, x):
        return self.pw(F.relu(self.bn(self.dw(self.conv1(x)))))


class GroupedConvNet(Layers):
    """Conv2d(8, 12, groups=2): input channel j of each group is pruned together (j, j+4),
    output channel j of each group together (j, j+6)."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 1), gconv=nn.Conv2d(8, 12, 3, padding=1, groups=2),
                         bn=nn.BatchNorm2d(12), conv2=nn.Conv2d(12, 4, 1))

    def forward(self, x):
        return self.conv2(F.relu(self.bn(self.gconv(F.relu(self.conv1(x))))))


class ShuffleUnitNet(Layers):
    """A ShuffleNetV2 unit: chunk -> branch -> cat -> channel shuffle (view-transpose-view)."""

    def __init__(self):
        super().__init__(stem=nn.Conv2d(3, 8, 3, padding=1, bias=False), bn0=nn.BatchNorm2d(8),
                         b_conv1=nn.Conv2d(4, 4, 1, bias=False), b_bn1=nn.BatchNorm2d(4),
                         b_dw=nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), b_bn2=nn.BatchNorm2d(4),
                         b_conv2=nn.Conv2d(4, 4, 1, bias=False), b_bn3=nn.BatchNorm2d(4), head=nn.Conv2d(8, 4, 1))

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x1, x2 = x.chunk(2, dim=1)
        b = F.relu(self.b_bn1(self.b_conv1(x2)))
        b = self.b_bn2(self.b_dw(b))
        b = F.relu(self.b_bn3(self.b_conv2(b)))
        y = torch.cat((x1, b), dim=1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        return self.head(y)


# ----------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------
class MHANet(Layers):
    """nn.MultiheadAttention: analyze captures the model with torch.export, which decomposes
    it (packed in-projection, views, SDPA): its heads, the embedding into it and the width
    out of its out-projection prune."""

    def __init__(self, embed=8, heads=2, hidden=12, out=3):
        super().__init__(inp=nn.Linear(6, embed), attn=nn.MultiheadAttention(embed, heads, batch_first=True),
                         fc1=nn.Linear(embed, hidden), fc2=nn.Linear(hidden, out))

    def forward(self, x):
        x = F.relu(self.inp(x))
        x, _ = self.attn(x, x, x, need_weights=False)
        return self.fc2(F.relu(self.fc1(x)))


class QKVAttentionNet(nn.Module):
    """Hand-written attention on tokens [B, N, in]: embed -> (separate q/k/v linears,
    ``reshape(B, N, heads, hd)``) -> attention -> out proj -> residual -> head.

    ``sdpa``: use F.scaled_dot_product_attention instead of the explicit softmax.
    ``size_from_input``: read C off ``x.shape`` and use ``C // heads`` as head_dim (timm
    style); otherwise explicit ``self.heads, self.hd`` (what a hand-built pruned copy uses).
    """

    def __init__(self, inp=6, embed=8, heads=2, hd=4, out=3, sdpa=False, size_from_input=False, causal=False,
                 einsum=False):
        super().__init__()
        self.heads, self.hd, self.sdpa, self.size_from_input, self.causal = heads, hd, sdpa, size_from_input, causal
        self.einsum = einsum
        self.register_buffer("allowed", torch.tril(torch.ones(5, 5, dtype=torch.bool)), persistent=False)
        self.embed = nn.Linear(inp, embed)
        self.q = nn.Linear(embed, heads * hd)
        self.k = nn.Linear(embed, heads * hd)
        self.v = nn.Linear(embed, heads * hd)
        self.proj = nn.Linear(heads * hd, embed)
        self.head = nn.Linear(embed, out)

    def forward(self, x):
        x = self.embed(x)
        B, N, C = x.shape
        if self.size_from_input:
            shape = (B, N, self.heads, C // self.heads)
        else:
            shape = (B, N, self.heads, self.hd)
        q = self.q(x).reshape(*shape).transpose(1, 2)
        k = self.k(x).reshape(*shape).transpose(1, 2)
        v = self.v(x).reshape(*shape).transpose(1, 2)
        if self.sdpa:
            o = F.scaled_dot_product_attention(q, k, v)
        elif self.einsum:  # torchvision MaxViT style
            attn = torch.einsum("b h i d, b h j d -> b h i j", q, k) * (self.hd ** -0.5)
            o = torch.einsum("bhij,bhjd->bhid", attn.softmax(dim=-1), v)
        else:
            attn = (q @ k.transpose(-2, -1)) * (self.hd ** -0.5)
            if self.causal:  # GPT-style: masked_fill the future with -inf
                attn = attn.masked_fill(~self.allowed, float("-inf"))
            o = attn.softmax(dim=-1) @ v
        o = o.transpose(1, 2).reshape(B, N, self.heads * self.hd)
        x = x + self.proj(o)
        return self.head(x.mean(1))


class FusedQKVAttentionNet(Layers):
    """timm-style fused qkv: Linear(E, 3E).reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4),
    then unbind(0): q, k and v of one head are one unit."""

    def __init__(self, embed=8, heads=2, out=3):
        super().__init__(heads=heads, qkv=nn.Linear(embed, 3 * embed), proj=nn.Linear(embed, embed),
                         head=nn.Linear(embed, out))

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5
        o = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.head(self.proj(o))


# ----------------------------------------------------------------------------------------
# parameters used directly
# ----------------------------------------------------------------------------------------
class TokenNet(Layers):
    """Patch embed (conv) -> tokens; cls token [1,1,C] concatenated; pos embed [1,N+1,C]
    added; an MLP with residual and layer scale gamma [C]; head on the cls token."""

    def __init__(self):
        super().__init__(patch=nn.Conv2d(3, 8, 4, stride=4), cls_token=nn.Parameter(torch.randn(1, 1, 8)),
                         pos_embed=nn.Parameter(torch.randn(1, 5, 8)), fc1=nn.Linear(8, 12), fc2=nn.Linear(12, 8),
                         gamma=nn.Parameter(torch.rand(8) + 0.5), head=nn.Linear(8, 3))

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # B 4 8
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = x + self.gamma * self.fc2(F.gelu(self.fc1(x)))
        return self.head(x[:, 0])


# ----------------------------------------------------------------------------------------
# what cannot be pruned, tracing problems, user rules
# ----------------------------------------------------------------------------------------
class DataDependentGate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return x * 2.0
        return x


class UntraceableChildNet(nn.Module):
    """body.gate cannot be traced: analyze warns once and keeps it whole (opaque leaf)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential()
        self.body.add_module("gate", DataDependentGate())
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        x = self.body(F.relu(self.conv1(x)))
        return self.conv3(F.relu(self.conv2(x)))


class UntraceableTopNet(Layers):
    def __init__(self):
        super().__init__(conv=nn.Conv2d(3, 4, 1))

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:  # UNTRACEABLE-TOP-LINE
            x = x * 2
        return x


class CustomOpNet(Layers):
    """channel_scale is an fx leaf function with no rule unless the user registers one."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), conv2=nn.Conv2d(8, 6, 1), conv3=nn.Conv2d(6, 4, 1))

    def forward(self, x):
        x = channel_scale(F.relu(self.conv1(x)))
        return self.conv3(F.relu(self.conv2(x)))


class OpaqueOpNet(CustomOpNet):
    """signed_channel_scale: a wrapped function that neither torch.fx nor torch.export sees through."""

    def forward(self, x):
        x = signed_channel_scale(F.relu(self.conv1(x)))
        return self.conv3(F.relu(self.conv2(x)))


class NoRuleNet(Layers):
    """torch.logcumsumexp has no channel rule: conv1's channels entering it stay."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), conv2=nn.Conv2d(8, 6, 1), conv3=nn.Conv2d(6, 4, 1))

    def forward(self, x):
        x = torch.logcumsumexp(self.conv1(x), dim=2)
        return self.conv3(F.relu(self.conv2(x)))


class SizeArithmeticNet(Layers):
    """x * x.size(1): removing a channel of conv1 would change the value: unprunable.
    conv2's channel count is only used as a view size: fine."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 3, padding=1), conv2=nn.Conv2d(8, 6, 1), fc=nn.Linear(6 * 64, 3))

    def forward(self, x):
        x = self.conv1(x)
        x = x * (1.0 / x.size(1))
        y = F.relu(self.conv2(x))
        y = y.reshape(y.shape[0], y.shape[1] * y.shape[2] * y.shape[3])
        return self.fc(y)


class DepthwiseConvTransposeNet(Layers):
    """Depthwise transposed conv (weight [8, 1, 2, 2]): output c lives and dies with input c."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 1), up=nn.ConvTranspose2d(8, 8, 2, stride=2, groups=8),
                         conv2=nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return self.conv2(F.relu(self.up(F.relu(self.conv1(x)))))


class GroupedConvTransposeNet(Layers):
    """ConvTranspose2d(8, 6, groups=2), weight [8, 3, 2, 2]: input j of each group (j, j+4)
    together, output j of each group (j, j+3) together."""

    def __init__(self):
        super().__init__(conv1=nn.Conv2d(3, 8, 1), up=nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2),
                         conv2=nn.Conv2d(6, 4, 1))

    def forward(self, x):
        return self.conv2(F.relu(self.up(F.relu(self.conv1(x)))))


# ----------------------------------------------------------------------------------------
# the cases
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class RuleCase:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple
    prunable: list
    unprunable: int
    same: list = dataclasses.field(default_factory=list)
    apart: list = dataclasses.field(default_factory=list)
    index: list = dataclasses.field(default_factory=list)
    blocked: list = dataclasses.field(default_factory=list)
    zero_preserving: bool = True
    warns: str | None = None  # fragment of the one warning analyze must give
    xfail_groups: str | None = None  # known library bug (reported): test_rule_groups is a strict xfail
    xfail_export: str | None = None  # known library bug (reported): the export check is a strict xfail

    def inputs(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(*self.input_shape, generator=g),)


def blocks(n, width, offset=0, stride=None):
    """[[offset + stride*j + 0 .. + width-1] for j in range(n)] (stride defaults to width)."""
    stride = width if stride is None else stride
    return [list(range(offset + stride * j, offset + stride * j + width)) for j in range(n)]


def spread(n, copies, step, offset=0):
    """[[offset + j + step*r for r in range(copies)] for j in range(n)] (a grouped layout)."""
    return [[offset + j + step * r for r in range(copies)] for j in range(n)]


IMG = (2, 3, 8, 8)
TOK = (2, 5, 6)

# Known library bugs (see the report); each case that hits one is a strict xfail.
UNBIND_SLICE_BUG = (
    "BUG: operator.getitem with a slice on a tuple-valued node (rows[::-1] after unbind) returns no channel ids "
    "and does not mark conv1's channels unprunable: conv2's input columns are not members, so export prunes "
    "conv1 but leaves conv2 at 8 input channels (RuntimeError in the exported model)")
SPLIT_PIECE_BUG = (
    "BUG: split/chunk pieces whose channels fall in one group (cat([b, a]) of x.chunk(2), or a chunk piece "
    "nothing reads) are not kept apart by the analysis; a valid keep that drops a whole piece makes export "
    "raise ExportError 'a split piece would lose every channel'")
NARROW_BUG = (
    "BUG (conservative): narrow_rule builds a fake fx.Node without _kwargs and always raises "
    "(\"'Node' object has no attribute '_kwargs'\"), so x.narrow(1, 2, 4) makes conv1 unprunable")
UNSQUEEZE_BUG = (
    "BUG (conservative): squeeze_like/_dim_map loses a channel dim that sits after the inserted/removed size-1 dim "
    "(unsqueeze(1) of [B, C]); the rule raises 'cannot reshape array' and the channels become unprunable")
CONV_TRANSPOSE_GROUPS_BUG = (
    "BUG (conservative): conv_channels uses the non-transposed weight layout for groups > 1; a grouped or "
    "depthwise ConvTranspose2d raises 'rule bug: member up.weight[...]' and nothing around it is pruned")
REFERENCE_NAN_BUG = (
    "BUG (reference): masked_reference multiplies every channel tensor by its 0/1 mask, so a pruned channel "
    "holding inf/-inf (x / gate with the gate zeroed, masked_fill(-inf) attention scores) becomes NaN and "
    "poisons the output; torch.where(mask, out, 0) would give the removed-channel value 0")

CASES = [
    RuleCase("conv1d", Conv1dChain, (2, 3, 16), prunable=[6, 8], unprunable=1,
             same=[("conv1.weight:0", "conv1.bias:0", "bn1.weight:0", "bn1.running_var:0", "conv2.weight:1"),
                   ("conv2.weight:0", "conv2.bias:0", "fc.weight:1")],
             blocked=[("fc.weight:0", "output")]),
    RuleCase("conv2d", Conv2dChain, IMG, prunable=[8, 16], unprunable=1,
             same=[("conv1.weight:0", "bn1.bias:0", "conv2.weight:1"), ("conv2.weight:0", "bn2.weight:0", "conv3.weight:1")],
             apart=[("conv1.weight:0", "conv2.weight:0")],
             blocked=[("conv3.weight:0", "output"), ("conv3.bias:0", "output")]),
    RuleCase("conv3d", Conv3dChain, (2, 3, 4, 6, 6), prunable=[6], unprunable=1,
             same=[("conv1.weight:0", "bn1.running_mean:0", "conv2.weight:1")]),
    RuleCase("conv_transpose2d", ConvTransposeChain, IMG, prunable=[6, 8], unprunable=1,
             same=[("conv1.weight:0", "up.weight:0"), ("up.weight:1", "up.bias:0", "bn.weight:0", "conv2.weight:1")]),
    RuleCase("linear_chain", LinearChain, (2, 5, 10), prunable=[8, 12], unprunable=1,
             same=[("fc1.weight:0", "fc1.bias:0", "fc2.weight:1"), ("fc2.weight:0", "fc3.weight:1")]),
    RuleCase("group_norm", GroupNormNet, IMG, prunable=[4, 6], unprunable=1, zero_preserving=False,
             same=[("conv1.weight:0", "gn1.weight:0", "gn1.bias:0", "conv2.weight:1"),
                   ("conv2.weight:0", "gn2.weight:0", "gn2.bias:0", "conv3.weight:1")],
             index=[("gn1.weight:0", "conv1.weight:0", blocks(4, 2)), ("gn1.weight:0", "conv2.weight:1", blocks(4, 2))]),
    RuleCase("instance_norm", InstanceNormNet, IMG, prunable=[6, 8], unprunable=1,
             same=[("conv1.weight:0", "in1.weight:0", "in1.bias:0", "conv2.weight:1"), ("conv2.weight:0", "conv3.weight:1")]),
    RuleCase("layer_norm_channels_last", ConvNeXtBlockNet, IMG, prunable=[8, 16], unprunable=1, zero_preserving=False,
             same=[("stem.weight:0", "dw.weight:0", "dw.bias:0", "norm.weight:0", "norm.bias:0", "pw1.weight:1",
                    "pw2.weight:0", "pw2.bias:0", "gamma:0", "head.weight:1"),
                   ("pw1.weight:0", "pw1.bias:0", "pw2.weight:1")]),
    RuleCase("pointwise_pool", PointwiseZoo, IMG, prunable=[6, 8], unprunable=1,
             same=[("conv1.weight:0", "conv2.weight:1"), ("conv2.weight:0", "fc.weight:1")],
             index=[("conv2.weight:0", "fc.weight:1", blocks(6, 1))]),
    RuleCase("residual_sub_mul_div", ResidualOps, IMG, prunable=[6, 8], unprunable=1,
             same=[("conv1.weight:0", "bn1.weight:0", "conv2.weight:0", "conv2.weight:1", "bn2.weight:0",
                    "conv3.weight:1", "conv4.weight:1"),
                   ("conv3.weight:0", "conv4.weight:0", "conv4.bias:0", "scale:0", "conv5.weight:1")]),
    RuleCase("se_gate", SEGate, IMG, prunable=[4, 8], unprunable=1,
             same=[("conv1.weight:0", "fc1.weight:1", "fc2.weight:0", "fc2.bias:0", "conv2.weight:1"),
                   ("fc1.weight:0", "fc2.weight:1")]),
    RuleCase("se_gate_divide", lambda: SEGate(divide=True), IMG, prunable=[4, 8], unprunable=1,
             same=[("conv1.weight:0", "fc1.weight:1", "fc2.weight:0", "conv2.weight:1"), ("fc1.weight:0", "fc2.weight:1")]),
    RuleCase("spatial_gate", SpatialGate, IMG, prunable=[8], unprunable=2,
             same=[("conv1.weight:0", "att.weight:1", "conv2.weight:1")],
             apart=[("att.weight:0", "conv1.weight:0")],
             blocked=[("att.weight:0", "gate")]),
    RuleCase("prelu", PReLUNet, IMG, prunable=[6, 8], unprunable=1,
             same=[("conv1.weight:0", "act1.weight:0", "conv2.weight:1"), ("conv2.weight:0", "conv3.weight:1")]),
    RuleCase("concat", ConcatNet, IMG, prunable=[4, 6], unprunable=1,
             same=[("conv_a.weight:0", "bn.weight:0", "conv_c.weight:1"), ("conv_b.weight:0", "bn.weight:0", "conv_c.weight:1")],
             apart=[("conv_a.weight:0", "conv_b.weight:0")],
             index=[("conv_a.weight:0", "bn.weight:0", blocks(4, 1)), ("conv_b.weight:0", "bn.weight:0", blocks(6, 1, 4)),
                    ("conv_b.weight:0", "conv_c.weight:1", blocks(6, 1, 4))]),
    RuleCase("nested_concat", NestedConcatNet, IMG, prunable=[3, 4, 6], unprunable=1,
             same=[("conv_a.weight:0", "conv_e.weight:0"), ("conv_b.weight:0", "conv_e.weight:0"),
                   ("conv_d.weight:0", "conv_e.weight:0")],
             apart=[("conv_a.weight:0", "conv_b.weight:0"), ("conv_b.weight:0", "conv_d.weight:0")],
             index=[("conv_a.weight:0", "conv_e.weight:0", blocks(4, 1)), ("conv_b.weight:0", "conv_e.weight:0", blocks(6, 1, 4)),
                    ("conv_d.weight:0", "conv_e.weight:0", blocks(3, 1, 10)), ("conv_d.weight:0", "conv_out.weight:1", blocks(3, 1, 10))]),
    RuleCase("concat_self", ConcatSelfNet, IMG, prunable=[4], unprunable=1,
             index=[("conv_a.weight:0", "conv_out.weight:1", spread(4, 2, 4))]),
    RuleCase("split_sizes", SplitNet, IMG, prunable=[3, 5, 6], unprunable=1,
             same=[("conv1.weight:0", "conv_a.weight:1"), ("conv1.weight:0", "conv_b.weight:1"),
                   ("conv_a.weight:0", "conv_b.weight:0", "conv_out.weight:1")],
             apart=[("conv_a.weight:1", "conv_b.weight:1")],
             index=[("conv_a.weight:1", "conv1.weight:0", blocks(3, 1)), ("conv_b.weight:1", "conv1.weight:0", blocks(5, 1, 3))]),
    RuleCase("chunk_glu", ChunkGLUNet, IMG, prunable=[4], unprunable=1,
             index=[("conv2.weight:1", "conv1.weight:0", spread(4, 2, 4)), ("conv2.weight:1", "conv2.weight:1", blocks(4, 1))]),
    RuleCase("chunk_swap_halves", ChunkSwapNet, IMG, prunable=[4], unprunable=1,
             index=[("conv1.weight:0", "conv1.weight:0", blocks(4, 1)),
                    ("conv1.weight:0", "conv2.weight:1", [[2], [3], [0], [1]])]),
    RuleCase("unbind", UnbindNet, IMG, prunable=[8], unprunable=2,
             same=[("conv1.weight:0", "conv2.weight:1")],
             blocked=[("conv3.weight:0", "unbind")]),
    RuleCase("unbind_slice_tuple", UnbindSliceNet, IMG, prunable=[8], unprunable=1,
             same=[("conv1.weight:0", "conv1.bias:0", "conv2.weight:1")]),
    RuleCase("narrow", NarrowNet, IMG, prunable=[4, 4], unprunable=1,
             same=[("conv1.weight:0", "conv2.weight:1")],
             index=[("conv2.weight:1", "conv1.weight:0", blocks(4, 1, 2))]),
    RuleCase("unsqueeze_squeeze", UnsqueezeNet, IMG, prunable=[6, 8], unprunable=1,
             same=[("conv.weight:0", "fc1.weight:1"), ("fc1.weight:0", "fc1.bias:0", "fc2.weight:1")]),
    RuleCase("slice", SliceNet, IMG, prunable=[3, 4, 4, 5], unprunable=1,
             same=[("conv1.weight:0", "conv3.weight:1"), ("conv2.weight:0", "conv4.weight:1"),
                   ("conv3.weight:0", "conv4.weight:0")],
             index=[("conv3.weight:1", "conv1.weight:0", blocks(4, 1)), ("conv4.weight:1", "conv2.weight:0", [[1], [3], [5]])]),
    RuleCase("flatten_linear", FlattenLinearNet, IMG, prunable=[4, 10], unprunable=1,
             same=[("conv.weight:0", "bn.weight:0", "fc1.weight:1"), ("fc1.weight:0", "fc2.weight:1")],
             index=[("conv.weight:0", "fc1.weight:1", blocks(4, 16))]),
    RuleCase("permute_transpose", PermuteNet, IMG, prunable=[6, 8], unprunable=1,
             same=[("conv1.weight:0", "fc.weight:1"), ("fc.weight:0", "fc.bias:0", "conv2.weight:1")]),
    RuleCase("depthwise", DepthwiseNet, IMG, prunable=[8], unprunable=1,
             same=[("conv1.weight:0", "dw.weight:0", "dw.bias:0", "bn.weight:0", "pw.weight:1")]),
    RuleCase("depthwise_multiplier", DepthwiseMultiplierNet, IMG, prunable=[6], unprunable=1,
             same=[("conv1.weight:0", "dw.weight:0", "bn.weight:0", "pw.weight:1")],
             index=[("conv1.weight:0", "conv1.weight:0", blocks(6, 1)), ("conv1.weight:0", "dw.weight:0", blocks(6, 2)),
                    ("conv1.weight:0", "pw.weight:1", blocks(6, 2))]),
    RuleCase("grouped_conv", GroupedConvNet, IMG, prunable=[4, 6], unprunable=1,
             same=[("conv1.weight:0", "gconv.weight:1"), ("gconv.weight:0", "gconv.bias:0", "bn.weight:0", "conv2.weight:1")],
             index=[("gconv.weight:1", "conv1.weight:0", spread(4, 2, 4)), ("gconv.weight:1", "gconv.weight:1", blocks(4, 1)),
                    ("bn.weight:0", "gconv.weight:0", spread(6, 2, 6))]),
    RuleCase("grouped_conv_transpose", GroupedConvTransposeNet, IMG, prunable=[3, 4], unprunable=1,
             same=[("conv1.weight:0", "up.weight:0"), ("up.weight:1", "up.bias:0", "conv2.weight:1")],
             index=[("conv1.weight:0", "up.weight:0", spread(4, 2, 4)), ("up.bias:0", "up.weight:1", blocks(3, 1)),
                    ("up.bias:0", "conv2.weight:1", spread(3, 2, 3))],
             xfail_groups=CONV_TRANSPOSE_GROUPS_BUG),
    RuleCase("depthwise_conv_transpose", DepthwiseConvTransposeNet, IMG, prunable=[8], unprunable=1,
             same=[("conv1.weight:0", "up.weight:0", "up.bias:0", "conv2.weight:1")],
             xfail_groups=CONV_TRANSPOSE_GROUPS_BUG),
    RuleCase("channel_shuffle", ShuffleUnitNet, IMG, prunable=[4, 4, 4, 4], unprunable=1,
             same=[("stem.weight:0", "bn0.weight:0", "head.weight:1"), ("stem.weight:0", "b_conv1.weight:1"),
                   ("b_conv1.weight:0", "b_bn1.weight:0", "b_dw.weight:0", "b_bn2.weight:0", "b_conv2.weight:1"),
                   ("b_conv2.weight:0", "b_bn3.weight:0", "head.weight:1")],
             apart=[("b_conv1.weight:1", "head.weight:1")],
             index=[("b_conv1.weight:1", "stem.weight:0", blocks(4, 1, 4)),
                    ("b_bn3.weight:0", "head.weight:1", [[1], [3], [5], [7]])]),
    RuleCase("multihead_attention", MHANet, TOK, prunable=[2, 8, 8, 12], unprunable=1,
             same=[("fc1.weight:0", "fc1.bias:0", "fc2.weight:1"), ("inp.weight:0", "attn.in_proj_weight:1"),
                   ("attn.out_proj.weight:0", "attn.out_proj.bias:0", "fc1.weight:1"),
                   ("attn.in_proj_weight:0", "attn.in_proj_bias:0", "attn.out_proj.weight:1")],
             index=[("attn.out_proj.weight:1", "attn.in_proj_weight:0",
                     [[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19], [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]])]),
    RuleCase("qkv_attention", QKVAttentionNet, TOK, prunable=[2, 8], unprunable=1,
             same=[("q.weight:0", "q.bias:0", "k.weight:0", "v.weight:0", "proj.weight:1"),
                   ("embed.weight:0", "q.weight:1", "k.weight:1", "v.weight:1", "proj.weight:0", "head.weight:1")],
             index=[("q.weight:0", "q.weight:0", blocks(2, 4)), ("q.weight:0", "proj.weight:1", blocks(2, 4))]),
    RuleCase("qkv_attention_sdpa", lambda: QKVAttentionNet(sdpa=True, size_from_input=True), TOK, prunable=[2, 8],
             unprunable=1,
             same=[("q.weight:0", "k.weight:0", "v.bias:0", "proj.weight:1"),
                   ("embed.weight:0", "q.weight:1", "proj.weight:0", "head.weight:1")],
             index=[("v.weight:0", "k.weight:0", blocks(2, 4))]),
    RuleCase("qkv_attention_einsum", lambda: QKVAttentionNet(einsum=True), TOK, prunable=[2, 8], unprunable=1,
             same=[("q.weight:0", "q.bias:0", "k.weight:0", "v.weight:0", "proj.weight:1"),
                   ("embed.weight:0", "q.weight:1", "k.weight:1", "v.weight:1", "proj.weight:0", "head.weight:1")],
             index=[("q.weight:0", "q.weight:0", blocks(2, 4)), ("q.weight:0", "proj.weight:1", blocks(2, 4))]),
    RuleCase("qkv_attention_causal", lambda: QKVAttentionNet(causal=True), TOK, prunable=[2, 8], unprunable=1,
             same=[("q.weight:0", "k.weight:0", "v.weight:0", "proj.weight:1")]),
    RuleCase("fused_qkv_attention", FusedQKVAttentionNet, (2, 5, 8), prunable=[2, 8], unprunable=1,
             same=[("qkv.weight:0", "qkv.bias:0", "proj.weight:1"), ("proj.weight:0", "head.weight:1")],
             index=[("qkv.weight:0", "qkv.weight:0", [[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19],
                                                        [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]])],
             ),
    RuleCase("token_params", TokenNet, IMG, prunable=[8, 12], unprunable=1,
             same=[("patch.weight:0", "patch.bias:0", "cls_token:2", "pos_embed:2", "fc1.weight:1", "fc2.weight:0",
                    "gamma:0", "head.weight:1"), ("fc1.weight:0", "fc2.weight:1")]),
    RuleCase("untraceable_child", UntraceableChildNet, IMG, prunable=[6], unprunable=2,
             same=[("conv2.weight:0", "conv3.weight:1")],
             blocked=[("conv1.weight:0", "body.gate")], warns="body.gate"),
    RuleCase("no_rule_op", NoRuleNet, IMG, prunable=[6], unprunable=2,
             same=[("conv2.weight:0", "conv3.weight:1")],
             blocked=[("conv1.weight:0", "logcumsumexp")]),
    RuleCase("size_arithmetic", SizeArithmeticNet, IMG, prunable=[6], unprunable=2,
             same=[("conv2.weight:0", "fc.weight:1")],
             index=[("conv2.weight:0", "fc.weight:1", blocks(6, 64))],
             blocked=[("conv1.weight:0", "channel count"), ("conv2.weight:1", "channel count")]),
]

CASES_BY_NAME = {c.name: c for c in CASES}


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norm statistics / affine parameters so that eval outputs depend on them."""
    g = torch.Generator().manual_seed(seed + 777)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.normal_(0.0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
            if getattr(m, "weight", None) is not None:
                m.weight.uniform_(0.5, 1.5, generator=g)
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0.0, 0.2, generator=g)
    return model


def draw_ratios(graph, n, seed, low=0.2, high=0.9):
    """``n`` keep ratios drawn uniformly from [low, high]; a ratio that would keep every
    channel of every prunable group is redrawn (harness.check_export asserts that a ratio
    below 1 makes the model smaller, which fails when e.g. round(0.9 * 4) == 4)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [g.size for g in graph.prunable_groups if g.size > 1]
    out = []
    while len(out) < n:
        r = float(torch.empty(1).uniform_(low, high, generator=gen))
        if not sizes or any(max(1, round(r * s)) < s for s in sizes):
            out.append(r)
    return tuple(out)


def build(case: RuleCase, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(case.build(), seed).eval()
