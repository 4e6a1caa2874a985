"""What every published-layout reader returns: NVlabs-named tensors plus the model's description.

The readers (``nvlabs``, ``huggingface``, ``mmseg``) differ only in names and packing; each turns
its file into a ``Published``: encoder and head tensors under the names our modules use (the NVlabs
ones, ``segformer_state_dict_keys.json``), the encoder's shape, and what the source says about
classes, normalisation and input size. ``convert`` builds our model from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from sdcpc_core.checkpoints.format import CheckpointError
from sdcpc_core.classes import LabelSet, published_label_set
from sdcpc_core.models.mit import MIT_SPECS, MiTSpec

PUBLISHED_HEADS = (1, 2, 5, 8)  # every published MiT (B0–B5) has these head counts


@dataclass
class Published:
    layout: str  # "nvlabs", "imagenet", "huggingface", "mmsegmentation"
    source: str  # what the user passed (a path or a Hub id)
    encoder: dict[str, torch.Tensor]  # NVlabs names without "backbone." (patch_embed1.proj.weight …)
    head: dict[str, torch.Tensor]  # NVlabs names without "decode_head." (empty: an encoder only)
    spec: MiTSpec
    head_stage_relu: bool = False
    labels: LabelSet | None = None  # class names (and palette) the source carries
    mean: tuple[float, float, float] | None = None  # 0–255 scale, RGB
    std: tuple[float, float, float] | None = None
    input_size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)  # ignored keys, assumptions made
    ignored: list[str] = field(default_factory=list)  # source tensors deliberately not used

    @property
    def num_classes(self) -> int | None:
        w = self.head.get("linear_pred.weight")
        return None if w is None else int(w.shape[0])

    @property
    def decoder_dim(self) -> int | None:
        w = self.head.get("linear_pred.weight")
        return None if w is None else int(w.shape[1])

    @property
    def variant(self) -> str:
        """``b0``…``b5`` when the encoder has a published shape, else ``custom``."""
        return variant_name(self.spec)


def variant_name(spec: MiTSpec) -> str:
    for name, published in MIT_SPECS.items():
        if (published.embed_dims, published.num_heads, published.depths, published.mlp_ratios,
                published.sr_ratios, published.patch_sizes, published.strides) == (
                spec.embed_dims, spec.num_heads, spec.depths, spec.mlp_ratios, spec.sr_ratios,
                spec.patch_sizes, spec.strides):
            return name
    return "custom"


def inferred_heads(widths) -> tuple[int, ...]:
    """Head counts the weights do not record: MiT's rule, stage width = one head's width × heads
    with one head in stage 1 (mmseg builds widths this way; all published B0–B5 follow it)."""
    if all(w % widths[0] == 0 for w in widths):
        return tuple(w // widths[0] for w in widths)
    return PUBLISHED_HEADS


def describe_encoder(state: dict, source: str, num_heads=None, strides=(4, 2, 2, 2),
                     norm_eps: float = 1e-6, embed_norm_eps: float = 1e-5) -> MiTSpec:
    """The shape of a MiT encoder read off its NVlabs-named weights.

    Widths, depths, patch sizes, MLP and reduction ratios are in the tensors; head counts and
    strides are not: they come from the source's description, else MiT's rules (``inferred_heads``,
    strides 4, 2, 2, 2).
    """
    dims, depths, patches, mlp, sr = [], [], [], [], []
    for i in range(1, 5):
        proj = state.get(f"patch_embed{i}.proj.weight")
        if proj is None:
            raise CheckpointError(f"{source}: no MiT stage {i} (patch_embed{i}.proj.weight is missing); "
                                  "the file is not a complete MiT/SegFormer encoder")
        dims.append(int(proj.shape[0]))
        patches.append(int(proj.shape[-1]))
        blocks = {int(m.group(1)) for k in state for m in [re.match(rf"block{i}\.(\d+)\.", k)] if m}
        if not blocks or blocks != set(range(len(blocks))):
            raise CheckpointError(f"{source}: MiT stage {i} has blocks {sorted(blocks)}; expected 0…n-1")
        depths.append(len(blocks))
        fc1 = state.get(f"block{i}.0.mlp.fc1.weight")
        if fc1 is None or fc1.shape[0] % dims[-1]:
            raise CheckpointError(f"{source}: block{i}.0.mlp.fc1.weight is missing or not a multiple "
                                  f"of the stage width {dims[-1]}")
        mlp.append(int(fc1.shape[0]) // dims[-1])
        reduction = state.get(f"block{i}.0.attn.sr.weight")
        sr.append(1 if reduction is None else int(reduction.shape[-1]))
    heads = tuple(num_heads) if num_heads else inferred_heads(dims)
    try:
        return MiTSpec(tuple(dims), heads, tuple(depths), tuple(mlp), tuple(sr), tuple(patches),
                       tuple(strides), norm_eps, embed_norm_eps)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}; the source's description does not fit its weights") from None


def labels_from_meta(meta, num_classes: int | None) -> LabelSet | None:
    """Class names (and palette) a ``.pth`` file's ``meta`` carries: ``dataset_meta`` (mmseg 1.x,
    mmengine) or ``CLASSES`` / ``PALETTE`` (NVlabs, mmseg 0.x); else ADE20K-150 / Cityscapes-19 by
    class count; None for an encoder or an unknown count."""
    if num_classes is None:
        return None
    if isinstance(meta, dict):
        dataset = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
        names = dataset.get("classes", meta.get("CLASSES"))
        palette = dataset.get("palette", meta.get("PALETTE"))
        if isinstance(names, (list, tuple)) and len(names) == num_classes:
            fits = isinstance(palette, (list, tuple)) and len(palette) == num_classes
            return LabelSet.from_names([str(n).strip() for n in names],
                                       [list(p) for p in palette] if fits else None)
    return published_label_set(num_classes)
