"""Self-training of SD-CPC's temporal modules on unlabelled video (``sdcpc adapt``).

The teacher labels the source offline (``pseudo.py``: flip views, past AND future frames
averaged, a confidence threshold). The student is causal: it is an ordinary SD-CPC that
sees only the current frame and its references (the past), as in the node. Its MiT encoder is
frozen, so every frame (and its mirror image) is encoded ONCE and the features are cached; a
training step then runs only SSEA, DSSA and the SegFormer head, which is what makes minutes on
a CPU enough. Losses on the pseudo-labels, as the supervised trainer's: CE(final) +
static_weight·CE(static) + mcp_weight·MCP-CL(embedding); confidence below the threshold is ignored.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdcpc_core.classes import IGNORE_INDEX
from sdcpc_core.losses import MCPContrastiveLoss
from sdcpc_core.models import SDCPCConfig, build_model
from sdcpc_core.models.temporal import FrameCache, difference_basis
from sdcpc_core.settings import reference_indices


@dataclass(frozen=True)
class Recipe:
    """What ``sdcpc adapt`` does; the defaults are the measured best (docs/adapt.md)."""

    radius: int = 3            # pseudo-labels average frames t-radius … t+radius (offline)
    align: bool = False        # … warped onto frame t by optical flow (lost: docs/adapt.md)
    flip: bool = True          # teacher on the mirrored video too; student trains on both views
    threshold: float = 0.0     # ensemble probability below this: ignored (0: every pixel) …
    balance: float = 0.0       # … except each class's most confident share ``balance`` (CBST)
    disagree: str = "dynamic"  # where the ensemble's class is not the frame's own: ensemble,
    #                            centre, ignore, or dynamic (the frame's own if a dynamic class)
    target: str = "hard"       # hard: CE on the pseudo-label; soft: CE on the ensembled probabilities
    class_weight: float = 0.5  # CE class weights frequency ** -class_weight (0: unweighted)
    distil_weight: float = 0.5  # + this x soft CE toward the teacher's own (flip-averaged) frame probabilities
    topk: int = 4              # teacher probabilities kept per pixel (the rest spread evenly; 1: label + confidence)
    train_head: bool = True    # the SegFormer head learns too (at head_lr); the encoder never does
    temporal_lr: float = 1e-3  # SSEA, DSSA, temporal projection (new modules)
    head_lr: float = 1e-4
    weight_decay: float = 0.01
    static_weight: float = 0.4
    mcp_weight: float = 0.1
    batch_size: int = 8
    stride_aug: bool = True    # references at 1x or 2x the offsets (a node that drops frames)
    warmup_steps: int = 20
    grad_clip: float = 1.0

    def __post_init__(self):
        problems = []
        if self.radius < 0:
            problems.append(f"radius must be >= 0, got {self.radius}")
        if not 0.0 <= self.threshold < 1.0:
            problems.append(f"threshold must be in [0, 1), got {self.threshold}")
        if not 0.0 <= self.balance <= 1.0:
            problems.append(f"balance must be in [0, 1], got {self.balance}")
        if self.disagree not in ("ensemble", "centre", "ignore", "dynamic"):
            problems.append(f"disagree must be ensemble, centre, ignore or dynamic, got {self.disagree!r}")
        if self.class_weight < 0 or self.distil_weight < 0:
            problems.append("class_weight and distil_weight must be >= 0")
        if self.target not in ("hard", "soft"):
            problems.append(f"target must be hard or soft, got {self.target!r}")
        if self.topk < 1:
            problems.append(f"topk must be >= 1, got {self.topk}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if problems:
            raise ValueError("adapt recipe: " + "; ".join(problems))

    def with_overrides(self, items) -> Recipe:
        """``["radius=2", "align=false"]`` -> a new recipe (values typed after the fields)."""
        kinds = {f.name: f.type for f in fields(self)}
        changes = {}
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in kinds:
                raise ValueError(f"recipe override {item!r}: use KEY=VALUE with KEY one of {sorted(kinds)}")
            kind = kinds[key]
            if kind == "bool":
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(f"recipe override {item!r}: {key} takes true or false")
                changes[key] = value.lower() in ("true", "1", "yes")
            else:
                try:
                    changes[key] = {"int": int, "float": float, "str": str}[kind](value)
                except ValueError:
                    raise ValueError(f"recipe override {item!r}: {key} takes a {kind}") from None
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


# -- the student ---------------------------------------------------------------------------------

def student_config(teacher_config: SDCPCConfig, reference_offsets=(-3, -2, -1),
                   embed_dim: int = 64) -> SDCPCConfig:
    """SD-CPC with the teacher's encoder and head, temporal modules at identity. A temporal
    teacher's own config is kept (its temporal modules continue from where they are)."""
    if teacher_config.temporal:
        return teacher_config
    return replace(teacher_config, temporal=True, reference_offsets=tuple(reference_offsets),
                   embed_dim=embed_dim, window=7, selection_ratio=0.25)


def student_from_teacher(teacher: nn.Module, config: SDCPCConfig) -> nn.Module:
    """A student built from ``config`` carrying the teacher's encoder and head (and, for a
    temporal teacher, its temporal modules): it starts out computing what the teacher computes."""
    student = build_model(config)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"the teacher's weights do not fit the student: unexpected {unexpected[:4]}")
    return student


def same_encoder(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models carry the same MiT encoder weights."""
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def encode_features(model: nn.Module, features) -> FrameCache:
    """``SDCPC.encode`` from encoder maps already computed (the frozen encoder's cache)."""
    static, static_logits = model.ssea(features)
    probabilities = static_logits.float().softmax(1)
    basis = difference_basis(static, static_logits, model.dssa.difference, probabilities)
    return FrameCache(tuple(features), static, static_logits, basis,
                      *model.dssa.coarse.summarize(static, probabilities))


class CachedStudent(nn.Module):
    """One training forward from cached encoder maps: references without autograd (as a stream
    reuses them), the target with it. A module so that DDP can wrap it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, target_features, reference_features) -> dict:
        with torch.no_grad():
            refs = [encode_features(self.model, f) for f in reference_features]
        # the coarse stage's key/value projections must still learn: project outside no_grad
        refs = [r._replace(proto_keys=None, proto_values=None) for r in refs]
        return self.model.forward_cached(encode_features(self.model, target_features), refs)


# -- losses ------------------------------------------------------------------------------------

def soft_cross_entropy(logits: torch.Tensor, probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over ``mask`` pixels of -Σ_k p_k log softmax(logits)_k; logits resized to the target."""
    logits = F.interpolate(logits.float(), size=probs.shape[-2:], mode="bilinear", align_corners=False)
    per_pixel = -(probs.float() * logits.log_softmax(1)).sum(1)
    return (per_pixel * mask).sum() / mask.sum().clamp_min(1.0)


def hard_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if bool((labels == IGNORE_INDEX).all()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE_INDEX)


# -- batches -----------------------------------------------------------------------------------

class BatchSampler:
    """Random (view, frame) targets with their references, read from the on-disk cache
    (:class:`sdcpc_core.adapt.store.FrameStore`); references stay inside the target's segment."""

    def __init__(self, frames, offsets, recipe: Recipe, generator: np.random.Generator, views: int):
        self.frames, self.recipe, self.rng, self.views = frames, recipe, generator, views
        self.offsets = tuple(offsets)
        self.index = np.concatenate([np.stack([np.full(n, s), np.arange(n)], 1)
                                     for s, n in enumerate(frames.lengths)])  # (N, 2) segment, t

    def draw(self) -> dict:
        r, store = self.recipe, self.frames
        picks = self.rng.integers(0, len(self.index), r.batch_size)
        flips = self.rng.integers(0, self.views, r.batch_size)
        stride = int(self.rng.integers(1, 3)) if r.stride_aug else 1
        targets, refs = [], [[] for _ in self.offsets]
        for pick in picks:
            seg, t = self.index[pick]
            start, n = store.starts[seg], store.lengths[seg]
            targets.append(start + t)
            for j, i in enumerate(reference_indices(int(t), [o * stride for o in self.offsets], n)):
                refs[j].append(start + i)
        mirrored = torch.as_tensor(flips).bool()

        def unflip(x):
            x[mirrored] = x[mirrored].flip(-1)
            return x

        labels = unflip(torch.from_numpy(store.field(targets, "labels").astype(np.int64)))
        batch = {"target": store.maps(targets, flips), "references": [store.maps(ids, flips) for ids in refs],
                 "labels": labels}
        if r.target == "soft":
            batch["probs"] = unflip(store.probabilities(targets, "ensemble"))
        if r.distil_weight > 0:
            batch["centre_probs"] = unflip(store.probabilities(targets, "centre"))
        return batch


def lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at progress 1 (time or steps)."""
    factor = max(0.0, 1.0 - progress)
    if step < warmup:
        factor *= (step + 1) / warmup
    return factor


def build_optimizer(student: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW: temporal modules at ``temporal_lr``, the head at ``head_lr`` (if it learns); the
    encoder (and a frozen head) get ``requires_grad=False``."""
    for p in student.backbone.parameters():
        p.requires_grad_(False)
    for p in student.decode_head.parameters():
        p.requires_grad_(recipe.train_head)
    temporal = [p for n, p in student.named_parameters()
                if not n.startswith(("backbone.", "decode_head.")) and p.requires_grad]
    groups = [{"params": temporal, "lr": recipe.temporal_lr, "base_lr": recipe.temporal_lr}]
    if recipe.train_head:
        groups.append({"params": list(student.decode_head.parameters()), "lr": recipe.head_lr,
                       "base_lr": recipe.head_lr})
    return torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)


def make_criterion(config: SDCPCConfig, recipe: Recipe) -> MCPContrastiveLoss | None:
    if recipe.mcp_weight <= 0:
        return None
    return MCPContrastiveLoss(config.num_classes, config.embed_dim, max_pixels_per_class=256,
                              ignore_index=IGNORE_INDEX)


def compute_losses(step_module: nn.Module, batch: dict, recipe: Recipe, criterion,
                   class_weight: torch.Tensor | None = None) -> dict:
    """The step's losses; ``class_weight`` (K,) weighs the hard cross-entropies (``class_weight``)."""
    out = step_module(batch["target"], batch["references"])
    labels = batch["labels"]
    mask = (labels != IGNORE_INDEX).float()
    if recipe.target == "soft":
        ce = soft_cross_entropy(out["logits"], batch["probs"], mask)
        static = soft_cross_entropy(out["static_logits"], batch["probs"], mask)
    else:
        ce = hard_cross_entropy(out["logits"], labels, class_weight)
        static = hard_cross_entropy(out["static_logits"], labels, class_weight)
    losses = {"ce": ce, "static": static}
    total = ce + recipe.static_weight * static
    if recipe.distil_weight > 0:
        everywhere = torch.ones_like(mask)
        losses["distil"] = soft_cross_entropy(out["logits"], batch["centre_probs"], everywhere)
        total = total + recipe.distil_weight * losses["distil"]
    if criterion is not None:
        losses["mcp"] = criterion(out["embedding"].float(), labels)
        total = total + recipe.mcp_weight * losses["mcp"]
    losses["loss"] = total
    losses["coverage"] = mask.mean()
    return losses


def set_train_mode(student: nn.Module, recipe: Recipe) -> None:
    """Train mode for what learns; the frozen encoder (and a frozen head: its BN statistics,
    dropout) stay in eval mode."""
    student.train()
    student.backbone.eval()
    if not recipe.train_head:
        student.decode_head.eval()


def clip_grad(params, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else math.inf)
    return float(norm)


class Clock:
    """Training time, kept across a resume (``elapsed_s`` carries on)."""

    def __init__(self, elapsed: float = 0.0):
        self.base, self.t0 = elapsed, time.perf_counter()

    @property
    def elapsed(self) -> float:
        return self.base + time.perf_counter() - self.t0
