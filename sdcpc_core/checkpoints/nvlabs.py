"""NVlabs SegFormer releases (``segformer.b*.….pth``) and ImageNet ``mit_b*.pth`` encoders.

SegFormer files are ``{"state_dict": …, "meta": …}`` with ``backbone.`` / ``decode_head.``
prefixes (an unused ``decode_head.conv_seg`` from mmseg 0.x's base class); the encoders are bare
MiT keys plus an ImageNet ``head.*`` classifier. Our names are theirs, so reading is sorting.
Class names: ``meta.CLASSES`` / ``meta.PALETTE`` where the file has them, else ADE20K-150 or
Cityscapes-19 by class count (``published.labels_from_meta``).
"""

from __future__ import annotations

from sdcpc_core.checkpoints.format import CheckpointError
from sdcpc_core.checkpoints.published import Published, describe_encoder, labels_from_meta

UNUSED_KEYS = ("decode_head.conv_seg.", "head.", "auxiliary_head.")


def is_nvlabs(state: dict) -> bool:
    return "backbone.patch_embed1.proj.weight" in state or "patch_embed1.proj.weight" in state


def read(obj: dict, source: str) -> Published:
    state = obj.get("state_dict", obj)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    notes = []
    ignored = sorted(k for k in state if k.startswith(UNUSED_KEYS))
    if ignored:
        notes.append(f"ignored {len(ignored)} unused published tensors ({ignored[0]} …)")
    if "backbone.patch_embed1.proj.weight" in state:
        unknown = sorted(k for k in state if not k.startswith(("backbone.", "decode_head.", "auxiliary_head.")))
        if unknown:
            raise CheckpointError(f"{source}: {len(unknown)} tensors are neither backbone.* nor decode_head.* "
                                  f"(e.g. {unknown[:3]}): not a published SegFormer file")
        layout = "nvlabs"
        encoder = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        head = {k[len("decode_head."):]: v for k, v in state.items()
                if k.startswith("decode_head.") and not k.startswith(UNUSED_KEYS)}
    else:
        layout = "imagenet"
        encoder = {k: v for k, v in state.items() if not k.startswith(UNUSED_KEYS)}
        head = {}
    pub = Published(layout, source, encoder, head, describe_encoder(encoder, source), notes=notes,
                    ignored=ignored)
    pub.labels = labels_from_meta(obj.get("meta"), pub.num_classes)
    return pub

