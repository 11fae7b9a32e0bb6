"""Vision Transformers (ViT-Ti / ViT-S / ViT-B).

Follows A. Dosovitskiy, L. Beyer, A. Kolesnikov, D. Weissenborn, X. Zhai, T. Unterthiner,
M. Dehghani, M. Minderer, G. Heigold, S. Gelly, J. Uszkoreit, N. Houlsby, "An Image is Worth
16x16 Words: Transformers for Image Recognition at Scale", ICLR 2021, arXiv:2010.11929,
Section 3.1 / Eq. 1-4: a conv patch embedding (kernel = stride = patch size), a learnable
class token ``[1, 1, D]`` prepended, learnable position embeddings ``[1, N+1, D]``, pre-norm
transformer blocks (LayerNorm -> multi-head self-attention -> residual, LayerNorm -> MLP with
GELU -> residual), a final LayerNorm and a linear head on the class token.
Configurations: ViT-B (D=768, 12 layers, 12 heads) from Table 1 of that paper (86M at
224/16); ViT-S (384, 12, 6) and ViT-Ti (192, 12, 3) from H. Touvron et al., "Training
data-efficient image transformers & distillation through attention" (DeiT), ICML 2021,
arXiv:2012.12877, Table 1. MLP ratio 4, qkv bias on.

The multi-head attention is written out by hand (``qkv = Linear(D, 3D)``, reshape/permute,
scaled dot product, softmax, ``@ v``, merge heads, projection) so the analyzer sees plain
ops. Defaults for small images: ``patch_size=4`` and ``img_size=32`` (28 when ``in_chans=1``),
i.e. 64 (49) patches; pass ``img_size=224, patch_size=16`` for the paper's setting.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register
from ._init import init_trunc_normal

_PAPER = ("Dosovitskiy et al. An Image is Worth 16x16 Words: Transformers for Image Recognition at "
          "Scale. ICLR 2021, arXiv:2010.11929")
_PAPER_DEIT = _PAPER + "; Ti/S configs from Touvron et al. (DeiT), ICML 2021, arXiv:2012.12877"


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError("dim must be divisible by num_heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, D // heads]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, D)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, img_size: int | None = None,
                 patch_size: int = 4, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        if img_size is None:
            img_size = 28 if in_chans == 1 else 32
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} must be divisible by patch_size {patch_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_trunc_normal(self, 0.02, layers=nn.Linear, norms=nn.LayerNorm)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


_CONFIGS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
}


def _make(name: str):
    def factory(num_classes: int = 10, in_chans: int = 3, **kw) -> nn.Module:
        cfg = dict(_CONFIGS[name])
        cfg.update(kw)
        return VisionTransformer(num_classes=num_classes, in_chans=in_chans, **cfg)

    factory.__name__ = name
    return factory


vit_tiny = register("vit_tiny", family="vit", paper=_PAPER_DEIT)(_make("vit_tiny"))
vit_small = register("vit_small", family="vit", paper=_PAPER_DEIT)(_make("vit_small"))
vit_base = register("vit_base", family="vit", paper=_PAPER)(_make("vit_base"))
