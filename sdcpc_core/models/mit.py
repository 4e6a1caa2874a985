"""Mix Vision Transformer (MiT-B0…B5), the SegFormer encoder.

Module and parameter names follow the published NVlabs SegFormer checkpoints
(``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ``norm1.weight`` …) so that ImageNet
``mit_b*.pth`` files and full SegFormer checkpoints load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MiTSpec:
    """The shape of a MiT encoder. The published B0–B5 differ only in the first three fields; the
    layer-norm epsilons differ between the published code bases (NVlabs: 1e-6 in blocks and stage
    norms, 1e-5 in patch embeddings and attention reductions; Hugging Face: 1e-5 everywhere;
    mmsegmentation: 1e-6 everywhere), so a converted model computes exactly what its source did."""

    embed_dims: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    patch_sizes: tuple[int, int, int, int] = (7, 3, 3, 3)
    strides: tuple[int, int, int, int] = (4, 2, 2, 2)
    norm_eps: float = 1e-6  # norm1 / norm2 of every block and the four stage norms
    embed_norm_eps: float = 1e-5  # patch-embedding norms and the attention's reduction norm

    def __post_init__(self):
        for name in ("embed_dims", "num_heads", "depths", "mlp_ratios", "sr_ratios", "patch_sizes",
                     "strides"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 4 or min(value) < 1:
                raise ValueError(f"MiT {name} must be 4 positive integers (one per stage), got {value}")
            object.__setattr__(self, name, value)
        bad = [f"{d} by {h}" for d, h in zip(self.embed_dims, self.num_heads) if d % h]
        if bad:
            raise ValueError(f"MiT hidden sizes must divide by their head counts: {', '.join(bad)}")
        if not (self.norm_eps > 0 and self.embed_norm_eps > 0):
            raise ValueError("MiT layer-norm epsilons must be > 0")

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in fields(self) for v in (getattr(self, f.name),)}


MIT_SPECS = {
    "b0": MiTSpec((32, 64, 160, 256), (1, 2, 5, 8), (2, 2, 2, 2)),
    "b1": MiTSpec((64, 128, 320, 512), (1, 2, 5, 8), (2, 2, 2, 2)),
    "b2": MiTSpec((64, 128, 320, 512), (1, 2, 5, 8), (3, 4, 6, 3)),
    "b3": MiTSpec((64, 128, 320, 512), (1, 2, 5, 8), (3, 4, 18, 3)),
    "b4": MiTSpec((64, 128, 320, 512), (1, 2, 5, 8), (3, 8, 27, 3)),
    "b5": MiTSpec((64, 128, 320, 512), (1, 2, 5, 8), (3, 6, 40, 3)),
}


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class OverlapPatchEmbed(nn.Module):
    """Strided overlapping conv + LayerNorm: (B, Cin, H, W) -> (B, N, C), H', W'."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x):
        x = self.proj(x)  # (B, C, H', W')
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention with keys/values spatially reduced by ``sr_ratio``."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x, h: int, w: int):
        b, n, c = x.shape  # (B, N, C)
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(x)  # (B, N / sr², C)
        kv = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, kv[0], kv[1], dropout_p=drop)  # (B, heads, N, C/heads)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class DWConv(nn.Module):
    """3×3 depth-wise conv on the token grid (the Mix-FFN's positional cue)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, h: int, w: int):
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x, h: int, w: int):
        x = self.drop(self.act(self.dwconv(self.fc1(x), h, w)))
        return self.drop(self.fc2(x))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int,
                 drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6,
                 reduction_norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio, proj_drop=drop,
                                           norm_eps=reduction_norm_eps)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, dim * mlp_ratio, drop)

    def forward(self, x, h: int, w: int):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MixVisionTransformer(nn.Module):
    """Hierarchical encoder: (B, 3, H, W) -> four maps at strides 4, 8, 16, 32."""

    def __init__(self, embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8),
                 mlp_ratios=(4, 4, 4, 4), depths=(2, 2, 2, 2), sr_ratios=(8, 4, 2, 1),
                 in_chans: int = 3, drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 patch_sizes=(7, 3, 3, 3), strides=(4, 2, 2, 2), norm_eps: float = 1e-6,
                 embed_norm_eps: float = 1e-5):
        super().__init__()
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        chans = (in_chans,) + self.embed_dims[:-1]
        cursor = 0
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}",
                    OverlapPatchEmbed(patch_sizes[i], strides[i], chans[i], embed_dims[i], embed_norm_eps))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], sr_ratios[i], drop_rate,
                      dpr[cursor + j], norm_eps, embed_norm_eps) for j in range(depths[i])))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=norm_eps))
            cursor += depths[i]
        self.apply(self._init_weights)

    @classmethod
    def from_spec(cls, spec: MiTSpec, drop_path_rate: float = 0.1) -> MixVisionTransformer:
        return cls(spec.embed_dims, spec.num_heads, spec.mlp_ratios, spec.depths, spec.sr_ratios,
                   drop_path_rate=drop_path_rate, patch_sizes=spec.patch_sizes, strides=spec.strides,
                   norm_eps=spec.norm_eps, embed_norm_eps=spec.embed_norm_eps)

    @classmethod
    def from_variant(cls, variant: str, drop_path_rate: float = 0.1) -> MixVisionTransformer:
        try:
            spec = MIT_SPECS[variant]
        except KeyError:
            raise ValueError(f"unknown MiT variant {variant!r}; choose one of {sorted(MIT_SPECS)}") from None
        return cls.from_spec(spec, drop_path_rate)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = x.shape[0]
        outs = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)  # (B, N, C_i)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # (B, C_i, H/s, W/s)
            outs.append(x)
        return outs
