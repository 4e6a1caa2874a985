"""mmsegmentation 1.x SegFormer checkpoints (``backbone.layers.*``, ``decode_head.convs.*``).

The encoder is the same network under other names and packing: q, k and v in one
``in_proj_weight`` (q rows, then k, then v), 1×1 convs where NVlabs has linears, LayerNorm eps 1e-6
everywhere. The head differs in arithmetic: each stage's projection is a 1×1 conv + BN + ReLU
(NVlabs: a plain linear), and the four maps are concatenated c1…c4 (NVlabs: c4…c1). The BN folds
into the projection exactly; the ReLU is kept (``head_stage_relu``); the concatenation order is a
permutation of the fuse conv's input channels. Class names and palette: ``meta.dataset_meta``
(mmseg 0.x files, which the 1.x model zoo still links: ``meta.CLASSES`` / ``meta.PALETTE``).
Checked against mmsegmentation 1.2.2 itself (``scripts/mmseg_reference.py``).
"""

from __future__ import annotations

import re

import torch

from sdcpc_core.checkpoints.format import CheckpointError
from sdcpc_core.checkpoints.published import Published, describe_encoder, labels_from_meta

MMSEG_LAYER_NORM_EPS = 1e-6
BN_EPS = 1e-5  # mmseg's SyncBN / BN default
ENCODER_RULES = [
    (r"layers\.(\d)\.0\.projection\.(\w+)", lambda i, p: f"patch_embed{int(i) + 1}.proj.{p}"),
    (r"layers\.(\d)\.0\.norm\.(\w+)", lambda i, p: f"patch_embed{int(i) + 1}.norm.{p}"),
    (r"layers\.(\d)\.1\.(\d+)\.norm([12])\.(\w+)", lambda i, j, n, p: f"block{int(i) + 1}.{j}.norm{n}.{p}"),
    (r"layers\.(\d)\.1\.(\d+)\.attn\.attn\.out_proj\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.attn.proj.{p}"),
    (r"layers\.(\d)\.1\.(\d+)\.attn\.sr\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.attn.sr.{p}"),
    (r"layers\.(\d)\.1\.(\d+)\.attn\.norm\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.attn.norm.{p}"),
    (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.0\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.mlp.fc1.{p}"),
    (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.1\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.mlp.dwconv.dwconv.{p}"),
    (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.4\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.mlp.fc2.{p}"),
    (r"layers\.(\d)\.2\.(\w+)", lambda i, p: f"norm{int(i) + 1}.{p}"),
]
IN_PROJ = re.compile(r"layers\.(\d)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)")
LINEAR_FROM_CONV = re.compile(r"block\d\.\d+\.mlp\.fc[12]\.weight")


def is_mmseg(state: dict) -> bool:
    return "backbone.layers.0.0.projection.weight" in state


def read(obj: dict, source: str) -> Published:
    state = obj.get("state_dict", obj)
    notes = []
    ignored = sorted(k for k in state if k.startswith("auxiliary_head."))
    if ignored:
        notes.append(f"ignored {len(ignored)} auxiliary-head tensors (training only)")
    encoder = _encoder({k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}, source)
    heads = _num_heads(obj.get("meta"))
    if heads is None:
        notes.append("head counts not in the file's config: inferred from the stage widths (one head in "
                     "stage 1, as every published MiT)")
    spec = describe_encoder(encoder, source, heads, norm_eps=MMSEG_LAYER_NORM_EPS,
                            embed_norm_eps=MMSEG_LAYER_NORM_EPS)
    head = _head({k[len("decode_head."):]: v for k, v in state.items() if k.startswith("decode_head.")}, source)
    unknown = sorted(k for k in state if not k.startswith(("backbone.", "decode_head.", "auxiliary_head.",
                                                           "data_preprocessor.")))
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} tensors are not SegFormer weights (e.g. {unknown[:3]})")
    pub = Published("mmsegmentation", source, encoder, head, spec, head_stage_relu=bool(head), notes=notes,
                    ignored=ignored)
    pub.labels = labels_from_meta(obj.get("meta"), pub.num_classes)
    return pub


def _encoder(state: dict, source: str) -> dict:
    out, unknown = {}, []
    for key, value in state.items():
        m = IN_PROJ.fullmatch(key)
        if m:
            i, j, param = m.groups()
            q, k, v = value.chunk(3, 0)  # (3C, …): q rows, then k, then v
            prefix = f"block{int(i) + 1}.{j}.attn"
            out[f"{prefix}.q.{param}"] = q.contiguous()
            out[f"{prefix}.kv.{param}"] = torch.cat([k, v], 0)
            continue
        for pattern, target in ENCODER_RULES:
            m = re.fullmatch(pattern, key)
            if m:
                name = target(*m.groups())
                out[name] = value.flatten(1) if LINEAR_FROM_CONV.fullmatch(name) else value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: backbone tensors not in mmsegmentation's MiT layout "
                              f"(e.g. {unknown[:3]}); is this a SegFormer checkpoint?")
    return out


def _head(state: dict, source: str) -> dict:
    if not state:
        return {}
    try:
        out = {}
        for i in range(4):
            weight = state[f"convs.{i}.conv.weight"].flatten(1)  # (E, C_i)
            scale, shift = _fold_bn(state, f"convs.{i}.bn")
            out[f"linear_c{i + 1}.proj.weight"] = weight * scale[:, None]
            out[f"linear_c{i + 1}.proj.bias"] = shift
        fuse = state["fusion_conv.conv.weight"]  # (E, 4E, 1, 1), input blocks c1, c2, c3, c4
        width = fuse.shape[1] // 4
        blocks = [fuse[:, s * width:(s + 1) * width] for s in range(4)]
        out["linear_fuse.conv.weight"] = torch.cat(blocks[::-1], 1)  # ours: c4, c3, c2, c1
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if f"fusion_conv.bn.{p}" in state:
                out[f"linear_fuse.bn.{p}"] = state[f"fusion_conv.bn.{p}"]
        out["linear_pred.weight"] = state["conv_seg.weight"]
        out["linear_pred.bias"] = state["conv_seg.bias"]
    except KeyError as e:
        raise CheckpointError(f"{source}: the decode head lacks {e.args[0]!r}; not an mmsegmentation 1.x "
                              "SegformerHead (or a damaged file)") from None
    return out


def _fold_bn(state: dict, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(x) = scale * x + shift in eval mode (float64 while folding, then float32)."""
    gamma, beta = state[f"{prefix}.weight"].double(), state[f"{prefix}.bias"].double()
    mean, var = state[f"{prefix}.running_mean"].double(), state[f"{prefix}.running_var"].double()
    scale = gamma / torch.sqrt(var + BN_EPS)
    return scale.float(), (beta - mean * scale).float()


def _num_heads(meta) -> tuple[int, ...] | None:
    """The backbone's head counts from the config text mmengine stores in ``meta.cfg``."""
    cfg = meta.get("cfg") if isinstance(meta, dict) else None
    if not isinstance(cfg, str):
        return None
    m = re.search(r"num_heads\s*=\s*\[([\d,\s]+)\]", cfg)
    return tuple(int(h) for h in m.group(1).split(",") if h.strip()) if m else None

