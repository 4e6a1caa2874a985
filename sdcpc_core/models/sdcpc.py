"""The SD-CPC video model, the per-frame SegFormer baseline, and their explicit config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from sdcpc_core.models.head import SegFormerHead
from sdcpc_core.models.mit import MIT_SPECS, MiTSpec, MixVisionTransformer
from sdcpc_core.models.temporal import DIFFERENCE_KINDS, DSSA, SSEA, FrameCache, difference_basis


@dataclass(frozen=True)
class SDCPCConfig:
    """Everything that shapes the network. ``temporal=False`` gives the per-frame SegFormer."""

    variant: str = "b0"  # a MiT name (b0–b5), or a label for ``encoder``'s shape
    num_classes: int = 19
    embed_dim: int = 256  # C: width of SSEA / DSSA
    decoder_dim: int | None = None  # SegFormer head width; None: 256 for B0/B1, 768 for B2–B5
    reference_offsets: tuple[int, ...] = (-9, -6, -3)
    window: int = 9
    dilation: int = 1
    selection_ratio: float = 0.25
    pool_scales: tuple[int, ...] = (1, 2, 4, 8)
    difference: str = "bhattacharyya"
    temporal: bool = True
    drop_path_rate: float = 0.1
    # Any SegFormer-shaped encoder (read from a converted checkpoint's own description); None: the
    # published shape named by ``variant``.
    encoder: MiTSpec | None = None
    head_stage_relu: bool = False  # mmsegmentation 1.x head: ReLU after each stage's projection

    def __post_init__(self):
        object.__setattr__(self, "reference_offsets", tuple(int(o) for o in self.reference_offsets))
        object.__setattr__(self, "pool_scales", tuple(int(s) for s in self.pool_scales))
        if isinstance(self.encoder, dict):
            object.__setattr__(self, "encoder", MiTSpec(**self.encoder))
        if self.decoder_dim is None:
            object.__setattr__(self, "decoder_dim", 256 if self.variant in ("b0", "b1") else 768)
        problems = []
        if self.encoder is None and self.variant not in MIT_SPECS:
            problems.append(f"variant {self.variant!r} is not one of {sorted(MIT_SPECS)}")
        if self.num_classes < 1:
            problems.append(f"num_classes must be >= 1, got {self.num_classes}")
        if self.embed_dim < 1 or self.decoder_dim < 1:
            problems.append("embed_dim and decoder_dim must be positive")
        if self.temporal:
            if not self.reference_offsets:
                problems.append("a temporal model needs at least one reference offset")
            if any(o == 0 for o in self.reference_offsets):
                problems.append(f"reference_offsets {self.reference_offsets} must not contain 0 (the target)")
            if self.window < 1 or self.window % 2 == 0:
                problems.append(f"window must be odd and >= 1, got {self.window}")
            if self.dilation < 1:
                problems.append(f"dilation must be >= 1, got {self.dilation}")
            if not 0.0 < self.selection_ratio <= 1.0:
                problems.append(f"selection_ratio must be in (0, 1], got {self.selection_ratio}")
            if self.difference not in DIFFERENCE_KINDS:
                problems.append(f"difference {self.difference!r} is not one of {DIFFERENCE_KINDS}")
        if problems:
            raise ValueError("invalid SDCPCConfig: " + "; ".join(problems))

    @property
    def mit_spec(self) -> MiTSpec:
        """The encoder's shape: ``encoder`` if given, else the published ``variant``'s."""
        return self.encoder if self.encoder is not None else MIT_SPECS[self.variant]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reference_offsets"] = list(self.reference_offsets)
        d["pool_scales"] = list(self.pool_scales)
        if self.encoder is None:  # files written before custom encoders existed stay identical
            del d["encoder"]
        else:
            d["encoder"] = self.encoder.to_dict()
        if not self.head_stage_relu:
            del d["head_stage_relu"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SDCPCConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SDCPCConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)


class SegFormer(nn.Module):
    """Per-frame baseline: MiT encoder + all-MLP head. Uses only the last (target) frame."""

    def __init__(self, config: SDCPCConfig):
        super().__init__()
        self.config = config
        self.backbone = MixVisionTransformer.from_spec(config.mit_spec, config.drop_path_rate)
        self.decode_head = SegFormerHead(self.backbone.embed_dims, config.decoder_dim, config.num_classes,
                                         stage_relu=config.head_stage_relu)

    @property
    def reference_offsets(self) -> tuple[int, ...]:
        return ()

    def encode(self, images: torch.Tensor) -> FrameCache:
        features = tuple(self.backbone(images))
        return FrameCache(features, features[1], features[1][:, :0])

    def forward_cached(self, target: FrameCache, references=()) -> dict:
        return {"logits": self.decode_head(list(target.features))}

    def forward(self, frames: torch.Tensor) -> dict:
        if frames.ndim == 5:
            frames = frames[:, -1]
        return self.forward_cached(self.encode(frames))

    def param_groups(self, lr: float, weight_decay: float, head_lr_mult: float = 10.0) -> list[dict]:
        return _param_groups(self, lr, weight_decay, head_lr_mult)


class SDCPC(SegFormer):
    """SegFormer + SSEA + DSSA. The target is the LAST frame of the input clip.

    The temporal context enters the head's fused stride-4 feature through ``temporal_proj``,
    which starts at zero: a freshly built SD-CPC computes exactly what its per-frame SegFormer
    would, so published SegFormer weights are a sound starting point.
    """

    def __init__(self, config: SDCPCConfig):
        super().__init__(config)
        self.ssea = SSEA(self.backbone.embed_dims, config.embed_dim, config.num_classes, config.pool_scales)
        self.dssa = DSSA(config.embed_dim, config.window, config.dilation, config.selection_ratio,
                         config.difference)
        self.temporal_proj = nn.Conv2d(config.embed_dim, config.decoder_dim, 1)
        nn.init.zeros_(self.temporal_proj.weight)
        nn.init.zeros_(self.temporal_proj.bias)

    @property
    def reference_offsets(self) -> tuple[int, ...]:
        return self.config.reference_offsets

    def encode(self, images: torch.Tensor) -> FrameCache:
        """One frame (batch) -> its cacheable static perception."""
        features = tuple(self.backbone(images))
        static, static_logits = self.ssea(features)
        probabilities = static_logits.float().softmax(1)  # (B, K, h, w)
        basis = difference_basis(static, static_logits, self.dssa.difference, probabilities)
        return FrameCache(features, static, static_logits, basis, *self.dssa.coarse.summarize(static, probabilities))

    def forward_cached(self, target: FrameCache, references: list[FrameCache]) -> dict:
        if len(references) == 0:
            references = [target]  # nothing to compare with: the frame is its own reference
        enriched, diff = self.dssa(target, list(references))  # (B, C, h8, w8), (B, 1, h8, w8)
        fused = self.decode_head.fuse(list(target.features))  # (B, E, h4, w4)
        if self.training:
            context = F.interpolate(self.temporal_proj(enriched), size=fused.shape[2:], mode="bilinear",
                                    align_corners=False)
            logits = self.decode_head.classify(fused + context)
        else:
            logits = self.decode_head.classify(fused) + self._class_context(enriched, fused.shape[2:])
        return {"logits": logits,
                "static_logits": target.static_logits, "embedding": enriched, "difference": diff}

    def _class_context(self, enriched: torch.Tensor, size) -> torch.Tensor:
        """``linear_pred(up(temporal_proj(enriched)))`` without dropout, as K channels upsampled
        instead of E: both maps are 1×1 convs and bilinear upsampling commutes with them (its
        weights sum to one), so ``linear_pred ∘ temporal_proj`` runs once, at stride 8."""
        pred = self.decode_head.linear_pred.weight.flatten(1).float()  # (K, E)
        with torch.autocast(enriched.device.type, enabled=False):  # fold the weights in fp32
            weight = pred @ self.temporal_proj.weight.flatten(1).float()  # (K, C)
            bias = pred @ self.temporal_proj.bias.float()  # (K,)
        context = F.conv2d(enriched, weight[:, :, None, None].to(enriched.dtype), bias.to(enriched.dtype))
        return F.interpolate(context, size=size, mode="bilinear", align_corners=False)  # (B, K, h4, w4)

    def forward(self, frames: torch.Tensor, reference_grad: bool = True) -> dict:
        """frames: (B, T+1, 3, H, W), references in ``reference_offsets`` order, target last.

        ``reference_grad=False`` encodes the references without autograd (as a stream would reuse
        them): training then costs about one backward pass per clip instead of T+1.
        """
        if frames.ndim != 5:
            raise ValueError(f"SDCPC expects frames (B, T+1, 3, H, W), got {tuple(frames.shape)}")
        b, t1 = frames.shape[:2]
        if reference_grad:
            caches = _unbatch(self.encode(frames.flatten(0, 1)), b, t1)
        else:
            with torch.no_grad():
                caches = _unbatch(self.encode(frames[:, :-1].flatten(0, 1)), b, t1 - 1)
            # the coarse stage's key/value projections must still learn: project outside no_grad
            caches = [c._replace(proto_keys=None, proto_values=None) for c in caches]
            caches.append(self.encode(frames[:, -1]))
        return self.forward_cached(caches[-1], caches[:-1])


def _unbatch(cache: FrameCache, b: int, t: int) -> list[FrameCache]:
    """A cache of B*T frames (frame-major within each clip) -> T caches of B frames."""
    split = lambda x: x.unflatten(0, (b, t))  # noqa: E731
    feats = [split(f) for f in cache.features]
    maps = [None if x is None else split(x) for x in cache[1:]]  # static, logits, basis, …
    return [FrameCache(tuple(f[:, i] for f in feats), *(None if x is None else x[:, i] for x in maps))
            for i in range(t)]


def build_model(config: SDCPCConfig) -> SegFormer:
    """SDCPC when ``config.temporal`` else the per-frame SegFormer baseline."""
    return SDCPC(config) if config.temporal else SegFormer(config)


NORM_LAYERS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def _param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
    """AdamW groups: encoder at ``lr``, everything else at ``lr * head_lr_mult``; no weight decay
    on normalisation layers (LayerNorm, BatchNorm, GroupNorm: weight and bias) and position blocks
    (``pos_block``), as the spec's protocol says; every other weight and bias is decayed."""
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = not name.startswith("backbone.")
        no_decay = id(p) in no_decay_ids or "pos_block" in name
        groups.setdefault((is_head, no_decay), []).append(p)
    return [{"params": ps, "lr": lr * (head_lr_mult if head else 1.0),
             "lr_mult": head_lr_mult if head else 1.0,
             "weight_decay": 0.0 if nd else weight_decay}
            for (head, nd), ps in sorted(groups.items())]
