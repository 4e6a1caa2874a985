"""SegFormer all-MLP decode head (key names match published ``decode_head.*`` weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Per-pixel linear projection: (B, Cin, H, W) -> (B, N, C)."""

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(2).transpose(1, 2))


class ConvBNReLU(nn.Module):
    """1×1 conv without bias + BatchNorm + ReLU (mmseg ``ConvModule`` layout: ``conv``, ``bn``)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class SegFormerHead(nn.Module):
    """Project the four encoder maps to ``embed_dim``, upsample to stride 4, fuse, classify.

    Split in two so temporal modules can add context to the fused feature before
    classification: ``fuse(features) -> (B, E, H/4, W/4)`` and ``classify(fused) -> logits``.

    ``stage_relu`` is mmsegmentation 1.x's variant of the head: each stage's projection is a 1×1
    conv + BN + ReLU (the BN folds into ``linear_ci`` when converting; the ReLU stays).
    """

    def __init__(self, in_channels=(32, 64, 160, 256), embed_dim: int = 256, num_classes: int = 19,
                 dropout: float = 0.1, stage_relu: bool = False):
        super().__init__()
        self.in_channels = tuple(in_channels)
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.stage_relu = stage_relu
        for i, c in enumerate(in_channels):
            setattr(self, f"linear_c{i + 1}", MLP(c, embed_dim))
        self.linear_fuse = ConvBNReLU(4 * embed_dim, embed_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.linear_pred = nn.Conv2d(embed_dim, num_classes, 1)

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """(B, E, H/4, W/4) = ReLU(BN(W · cat(up(linear_c4(c4)), …, linear_c1(c1)))), as published.

        Computed as ``Σ_i up(W_i · linear_ci(c_i))`` with ``W_i`` the fuse conv's slice for map
        i, folded into the projection: a 1×1 conv commutes with bilinear upsampling (its weights
        sum to one), so both orders agree to float rounding, but this one never builds the
        4E-channel stride-4 map (at 480×480 with E = 256: 0.2 instead of 3.9 GMACs).
        """
        size = features[0].shape[2:]
        fuse_weight = self.linear_fuse.conv.weight.flatten(1)  # (E, 4E): slices for c4, c3, c2, c1
        out = None
        for j, i in enumerate((4, 3, 2, 1)):  # published order of concatenation
            proj = getattr(self, f"linear_c{i}").proj
            w_i = fuse_weight[:, j * self.embed_dim:(j + 1) * self.embed_dim]  # (E, E)
            if self.stage_relu:  # the ReLU sits between the projection and the fuse: no folding
                x = F.relu(F.conv2d(features[i - 1], proj.weight[:, :, None, None], proj.bias))
                x = F.conv2d(x, w_i[:, :, None, None])  # (B, E, h_i, w_i)
            else:
                x = F.conv2d(features[i - 1], (w_i @ proj.weight)[:, :, None, None], w_i @ proj.bias)
            if x.shape[2:] != size:  # (B, E, h_i, w_i) -> (B, E, H/4, W/4)
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out = x if out is None else out.add_(x)
        return self.linear_fuse.act(self.linear_fuse.bn(out))

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear_pred(self.dropout(fused))  # (B, K, H/4, W/4)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.fuse(features))
