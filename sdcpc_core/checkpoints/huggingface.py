"""Hugging Face SegFormer directories: ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``.

What ``save_pretrained`` writes and the Hub serves (``nvidia/segformer-b*-finetuned-*``, the
encoder-only ``nvidia/mit-b*``). The files are read, never a live ``transformers`` model (its
in-memory names differ between versions): reading needs ``safetensors`` at most. The encoder's
shape, the class names (``id2label``) and, from ``preprocessor_config.json``, the normalisation
and input size come from the directory itself. Key names: ``../shared/spec/checkpoint-sources.md``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from sdcpc_core.checkpoints.format import CheckpointError, read_file
from sdcpc_core.checkpoints.published import Published, describe_encoder
from sdcpc_core.classes import LabelSet, published_label_set

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEX = "model.safetensors.index.json"
HF_LAYER_NORM_EPS = 1e-5  # transformers builds every SegFormer LayerNorm with the default eps

# Hub name (after "segformer.encoder." / "decode_head.") -> NVlabs name; key and value are merged.
ENCODER_RULES = [
    (r"patch_embeddings\.(\d)\.proj\.(\w+)", lambda i, p: f"patch_embed{int(i) + 1}.proj.{p}"),
    (r"patch_embeddings\.(\d)\.layer_norm\.(\w+)", lambda i, p: f"patch_embed{int(i) + 1}.norm.{p}"),
    (r"block\.(\d)\.(\d+)\.layer_norm_1\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.norm1.{p}"),
    (r"block\.(\d)\.(\d+)\.layer_norm_2\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.norm2.{p}"),
    (r"block\.(\d)\.(\d+)\.attention\.self\.query\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.attn.q.{p}"),
    (r"block\.(\d)\.(\d+)\.attention\.self\.sr\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.attn.sr.{p}"),
    (r"block\.(\d)\.(\d+)\.attention\.self\.layer_norm\.(\w+)",
     lambda i, j, p: f"block{int(i) + 1}.{j}.attn.norm.{p}"),
    (r"block\.(\d)\.(\d+)\.attention\.output\.dense\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.attn.proj.{p}"),
    (r"block\.(\d)\.(\d+)\.mlp\.dense1\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.mlp.fc1.{p}"),
    (r"block\.(\d)\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)",
     lambda i, j, p: f"block{int(i) + 1}.{j}.mlp.dwconv.dwconv.{p}"),
    (r"block\.(\d)\.(\d+)\.mlp\.dense2\.(\w+)", lambda i, j, p: f"block{int(i) + 1}.{j}.mlp.fc2.{p}"),
    (r"layer_norm\.(\d)\.(\w+)", lambda i, p: f"norm{int(i) + 1}.{p}"),
]
KEY_VALUE = re.compile(r"block\.(\d)\.(\d+)\.attention\.self\.(key|value)\.(\w+)")
HEAD_RULES = [
    (r"linear_c\.(\d)\.proj\.(\w+)", lambda i, p: f"linear_c{int(i) + 1}.proj.{p}"),
    (r"linear_fuse\.weight", lambda: "linear_fuse.conv.weight"),
    (r"batch_norm\.(\w+)", lambda p: f"linear_fuse.bn.{p}"),
    (r"classifier\.(\w+)", lambda p: f"linear_pred.{p}"),
]


def is_directory(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def read(path: Path, source: str | None = None) -> Published:
    """A directory, or one of its weight files (``config.json`` must lie beside it)."""
    path = Path(path)
    source = source or str(path)
    directory = path if path.is_dir() else path.parent
    if not (directory / CONFIG).is_file():
        raise CheckpointError(f"{source}: no {CONFIG} in {directory}; a Hugging Face model needs the "
                              f"config.json it was saved with (download the whole repository, e.g. "
                              f"`hf download nvidia/segformer-b0-finetuned-ade-512-512 --local-dir DIR`)")
    config = _read_json(directory / CONFIG, source)
    _check_segformer(config, source)
    state = _read_weights(path if path.is_file() else directory, source)
    encoder, head, ignored = _rename(state, source)
    notes = [f"ignored {len(ignored)} ImageNet classifier tensors ({ignored[0]} …)"] if ignored else []
    spec = describe_encoder(encoder, source, config.get("num_attention_heads"),
                            tuple(config.get("strides", (4, 2, 2, 2))), HF_LAYER_NORM_EPS, HF_LAYER_NORM_EPS)
    _check_config_fits(config, spec, head, source)
    pub = Published("huggingface", source, encoder, head, spec, notes=notes, ignored=ignored)
    pub.labels = _labels(config, pub.num_classes)
    _read_preprocessor(directory, pub)
    return pub


def _read_json(path: Path, source: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{source}: {path.name} is not readable JSON ({e}); re-download the model") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: {path.name} holds a {type(data).__name__}, not a JSON object")
    return data


def _check_segformer(config: dict, source: str) -> None:
    model_type = config.get("model_type")
    if model_type != "segformer":
        archs = ", ".join(config.get("architectures") or []) or "no architectures listed"
        raise CheckpointError(
            f"{source} is a {model_type!r} model ({archs}), not a SegFormer: sdcpc runs SegFormer / MiT "
            "networks; pass a SegFormer such as nvidia/segformer-b0-finetuned-ade-512-512 or "
            "nvidia/segformer-b1-finetuned-cityscapes-1024-1024 (docs/models.md)")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (published SegFormers use "
                              "'gelu'); this is not a published SegFormer shape")
    if config.get("num_channels", 3) != 3:
        raise CheckpointError(f"{source}: the model takes {config.get('num_channels')}-channel images; sdcpc "
                              "segments RGB camera images (3 channels)")
    if config.get("num_encoder_blocks", 4) != 4:
        raise CheckpointError(f"{source}: {config.get('num_encoder_blocks')} encoder stages; sdcpc's MiT "
                              "has 4 (as every published SegFormer)")


def _read_weights(path: Path, source: str) -> dict:
    if path.is_file():
        files = [path]
    elif (path / SHARD_INDEX).is_file():
        index = _read_json(path / SHARD_INDEX, source)
        files = sorted({path / name for name in index.get("weight_map", {}).values()})
    else:
        files = [path / name for name in WEIGHTS if (path / name).is_file()][:1]
    if not files:
        raise CheckpointError(f"{source}: no weights in {path} (expected {' or '.join(WEIGHTS)}); "
                              "download the model's weight file too")
    state = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{source}: weight shard {file.name} is missing; re-download the model")
        if file.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                state.update(load_file(str(file)))
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{source}: {file.name} is not a readable safetensors file ({e}); "
                                      "re-download the model") from None
        else:
            obj = read_file(file)
            state.update(obj.get("state_dict", obj))
    return state


def _rename(state: dict, source: str) -> tuple[dict, dict, list[str]]:
    encoder, head, kv, ignored, unknown = {}, {}, {}, [], []
    for key, value in state.items():
        if key.startswith("classifier."):  # SegformerForImageClassification (nvidia/mit-b*)
            ignored.append(key)
            continue
        if key.startswith("decode_head."):
            name = _apply(HEAD_RULES, key[len("decode_head."):])
            (head.__setitem__(name, value) if name else unknown.append(key))
            continue
        rest = re.sub(r"^(segformer\.)?encoder\.", "", key)
        if rest == key:
            unknown.append(key)
            continue
        m = KEY_VALUE.fullmatch(rest)
        if m:
            i, j, which, param = m.groups()
            kv.setdefault(f"block{int(i) + 1}.{j}.attn.kv.{param}", {})[which] = value
            continue
        name = _apply(ENCODER_RULES, rest)
        (encoder.__setitem__(name, value) if name else unknown.append(key))
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} tensors are not SegFormer weights "
                              f"(e.g. {unknown[:3]}); is this a SegFormer checkpoint?")
    for name, parts in kv.items():
        if set(parts) != {"key", "value"}:
            raise CheckpointError(f"{source}: {name} lacks its attention {({'key', 'value'} - set(parts)).pop()} "
                                  "tensor; the weights are incomplete, re-download the model")
        encoder[name] = torch.cat([parts["key"], parts["value"]], 0)  # key rows first, then value
    return encoder, head, sorted(ignored)


def _apply(rules, name: str) -> str | None:
    for pattern, target in rules:
        m = re.fullmatch(pattern, name)
        if m:
            return target(*m.groups())
    return None


def _check_config_fits(config: dict, spec, head: dict, source: str) -> None:
    """config.json must describe the weights: a mismatch means a config from another model."""
    said = {"hidden_sizes": spec.embed_dims, "depths": spec.depths, "sr_ratios": spec.sr_ratios,
            "patch_sizes": spec.patch_sizes, "mlp_ratios": spec.mlp_ratios}
    wrong = [f"{name} {list(config[name])} but the weights have {list(found)}"
             for name, found in said.items() if name in config and tuple(config[name]) != tuple(found)]
    pred = head.get("linear_pred.weight")
    if pred is not None:
        if "decoder_hidden_size" in config and config["decoder_hidden_size"] != pred.shape[1]:
            wrong.append(f"decoder_hidden_size {config['decoder_hidden_size']} but the weights have {pred.shape[1]}")
        labels = config.get("id2label")
        if isinstance(labels, dict) and labels and len(labels) != pred.shape[0]:
            wrong.append(f"{len(labels)} labels in id2label but the classifier has {pred.shape[0]} classes")
    if wrong:
        raise CheckpointError(f"{source}: config.json does not describe these weights: " + "; ".join(wrong)
                              + ". The config and the weights come from different models: re-download both")


def _labels(config: dict, num_classes: int | None) -> LabelSet | None:
    if num_classes is None:
        return None
    id2label = config.get("id2label") or {}
    try:
        names = [str(id2label[k]).strip() for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        names = []
    published = published_label_set(num_classes)
    if len(names) != num_classes or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return published  # transformers' placeholder names: the published set by count, if any
    return LabelSet.from_names(names, None if published is None else published.palette)


def _read_preprocessor(directory: Path, pub: Published) -> None:
    file = directory / PREPROCESSOR
    if not file.is_file():
        pub.notes.append(f"no {PREPROCESSOR}: ImageNet mean/std assumed")
        return
    pre = _read_json(file, pub.source)
    scale = float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    if pre.get("do_normalize", True) and "image_mean" in pre and "image_std" in pre:
        pub.mean = tuple(float(m) / scale for m in pre["image_mean"])
        pub.std = tuple(float(s) / scale for s in pre["image_std"])
    size = pre.get("size")
    if isinstance(size, dict) and "height" in size and "width" in size:
        pub.input_size = (int(size["height"]), int(size["width"]))
    elif isinstance(size, int):
        pub.input_size = (size, size)
