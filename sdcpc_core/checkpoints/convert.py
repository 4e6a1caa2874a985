"""Any published SegFormer -> our format; and where a checkpoint is taken, what a name stands for.

``read_published`` picks the reader for a source (a Hugging Face directory or weight file, a Hub
id, an NVlabs / ImageNet ``.pth``, an mmsegmentation 1.x ``.pth``); ``convert_checkpoint`` builds
the model the source describes (SD-CPC with its temporal modules at identity, or the per-frame
SegFormer) and writes our format. ``resolve_checkpoint`` is what every command, the node and the
evaluation call on the name they are given: our files and export directories pass through, anything
published is converted once into the cache (keyed by the source's content) and reused.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sdcpc_core import cache
from sdcpc_core.checkpoints import hub, huggingface, mmseg, nvlabs
from sdcpc_core.checkpoints.export_dir import is_export_dir
from sdcpc_core.checkpoints.format import (
    DEFAULT_CHECKPOINT,
    FORMAT,
    CheckpointError,
    check_finite,
    check_state_dict,
    load_checkpoint,
    read_file,
    save_checkpoint,
)
from sdcpc_core.checkpoints.published import Published
from sdcpc_core.classes import LabelSet
from sdcpc_core.models import SDCPCConfig, build_model
from sdcpc_core.settings import IMAGENET_MEAN, IMAGENET_STD

CONVERTER_VERSION = 1  # part of the cache key: bump when a conversion's result would change
SOURCES = ("an sdcpc checkpoint, an export directory (sdcpc export), a Hugging Face SegFormer directory "
           "or Hub id (nvidia/segformer-b0-finetuned-ade-512-512), an NVlabs SegFormer or ImageNet "
           "mit_b*.pth, or an mmsegmentation 1.x SegFormer .pth")


def read_published(source, progress: Callable[[str], None] | None = None) -> Published:
    """The published model at ``source`` (path or Hub id) as NVlabs-named tensors + description."""
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists():
        if hub.looks_like_hub_id(text):
            return huggingface.read(hub.download(text, progress), source=text)
        raise CheckpointError(f"{text} does not exist; pass {SOURCES}")
    if path.is_dir():
        if huggingface.is_directory(path):
            return huggingface.read(path)
        raise CheckpointError(f"{path} is a directory without config.json: not a Hugging Face model "
                              f"directory; pass {SOURCES}")
    if path.suffix == ".safetensors" or (path.parent / huggingface.CONFIG).is_file():
        return huggingface.read(path)
    obj = read_file(path)
    if obj.get("format") == FORMAT:
        raise CheckpointError(f"{path} is already an sdcpc checkpoint")
    if "format" in obj:
        raise CheckpointError(f"{path} declares format {obj['format']!r}: not an sdcpc checkpoint (format "
                              f"{FORMAT!r}) and not a published SegFormer; re-export or re-convert it")
    state = obj.get("state_dict", obj)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict of tensors")
    if mmseg.is_mmseg(state):
        return mmseg.read(obj, str(path))
    if nvlabs.is_nvlabs({k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}):
        return nvlabs.read(obj, str(path))
    if any(k.startswith(("segformer.", "encoder.", "decode_head.linear_c.")) for k in state):
        raise CheckpointError(f"{path} holds Hugging Face SegFormer weights but no config.json lies beside "
                              "it: pass the whole model directory (config.json + weights)")
    shown = sorted(state)[:3]
    raise CheckpointError(f"{path}: no MiT/SegFormer weights found (first keys {shown}); pass {SOURCES}")


def build_published(pub: Published, *, temporal: bool = True, **config_overrides) -> tuple[nn.Module, SDCPCConfig]:
    """Our model with the published weights loaded (an SD-CPC's temporal modules at identity)."""
    settings = {"variant": pub.variant, "temporal": temporal, "head_stage_relu": pub.head_stage_relu,
                "encoder": None if pub.variant != "custom" and _published_eps(pub) else pub.spec}
    if pub.num_classes is not None:
        settings.update(num_classes=pub.num_classes, decoder_dim=pub.decoder_dim)
    settings.update(config_overrides)
    if "num_classes" not in settings:
        raise CheckpointError(f"{pub.source} holds only an encoder: say how many classes the head has "
                              "(num_classes / --num-classes); the head starts untrained")
    config = SDCPCConfig(**settings)
    model = build_model(config)
    load_published(model, pub, load_head=pub.num_classes is not None)
    return model, config


def _published_eps(pub: Published) -> bool:
    from sdcpc_core.models import MIT_SPECS

    spec = MIT_SPECS[pub.variant]
    return (spec.norm_eps, spec.embed_norm_eps) == (pub.spec.norm_eps, pub.spec.embed_norm_eps)


def load_published(model: nn.Module, pub: Published, load_head: bool = True) -> dict:
    """Published tensors into ``model`` (encoder, and the head when given and wanted)."""
    check_state_dict(model.backbone, pub.encoder, "model's MiT encoder", pub.source)
    check_finite({**pub.encoder, **(pub.head if load_head else {})}, pub.source)
    model.backbone.load_state_dict(pub.encoder)
    loaded = ["backbone"]
    if pub.head and load_head:
        check_state_dict(model.decode_head, pub.head, "model's SegFormer head", pub.source)
        model.decode_head.load_state_dict(pub.head)
        loaded.append("decode_head")
    return {"loaded": loaded, "variant": pub.variant, "layout": pub.layout, "notes": list(pub.notes),
            "ignored_keys": list(pub.ignored)}


def load_pretrained(model: nn.Module, source, load_head: bool = True) -> dict:
    """Load any published MiT / SegFormer (``read_published``'s sources) into a built model.

    Temporal modules of an SD-CPC model are left as built (``temporal_proj`` is zero), so the
    model starts out computing what the published per-frame SegFormer computes.
    """
    return load_published(model, read_published(source), load_head)


def convert_checkpoint(source, output, *, temporal: bool = True, labels: LabelSet | None = None,
                       half: bool = False, input_size=None, progress=None, **config_overrides) -> Path:
    """Any supported source -> our format (what the engine, node and evaluation load).

    Class names: ``labels`` if given, else the source's own (Hub ``id2label``, mmseg
    ``dataset_meta``, NVlabs ``meta.CLASSES``), else ADE20K-150 / Cityscapes-19 by class count.
    An sdcpc checkpoint is re-written (e.g. as fp16 or with a recorded ``input_size``).
    """
    path = Path(str(source)).expanduser()
    if _is_sdcpc_file(path):
        model, meta = load_checkpoint(path)
        return save_checkpoint(output, model, meta["config"], labels or meta["labels"], meta["mean"],
                               meta["std"], meta.get("training"), half=half,
                               input_size=input_size or meta.get("input_size"))
    pub = read_published(source, progress)
    if labels is not None:
        config_overrides.setdefault("num_classes", labels.num_classes)
    model, config = build_published(pub, temporal=temporal, **config_overrides)
    if labels is None:
        labels = pub.labels if pub.labels is not None and pub.labels.num_classes == config.num_classes else (
            LabelSet.from_names([f"class_{i:03d}" for i in range(config.num_classes)]))
    if labels.num_classes != config.num_classes:
        raise CheckpointError(f"{len(labels.names)} class names given for a model with {config.num_classes} "
                              "classes; give one name per class")
    training = {"initialised_from": str(source), "layout": pub.layout,
                "loaded": ["backbone"] + (["decode_head"] if pub.num_classes is not None else []),
                "note": "converted, not trained by sdcpc", "conversion_notes": list(pub.notes)}
    return save_checkpoint(output, model, config, labels, pub.mean or IMAGENET_MEAN, pub.std or IMAGENET_STD,
                           training=training, half=half, input_size=input_size or pub.input_size)


def resolve_checkpoint(spec, *, temporal: bool = False, progress: Callable[[str], None] | None = None) -> Path:
    """The loadable checkpoint (our file, or an export directory) that ``spec`` stands for.

    Empty: the embedded model. Our files and export directories: themselves. Anything published
    (Hub id, Hugging Face directory, NVlabs / mmseg ``.pth``): converted once into the cache as the
    per-frame SegFormer (``temporal=False``: a converted SD-CPC's temporal modules are at identity,
    so it would compute the same labels at 1.5–1.9× the cost; ``sdcpc convert`` or ``sdcpc adapt``
    make a temporal model), keyed by the source's content, and reused afterwards.
    ``progress(line)`` hears where the model came from.
    """
    say = progress or (lambda line: None)
    if not spec:
        return DEFAULT_CHECKPOINT
    text = str(spec)
    path = Path(text).expanduser()
    if not path.exists():
        if not hub.looks_like_hub_id(text):
            raise CheckpointError(f"checkpoint {text} does not exist; pass {SOURCES}, or leave it empty for "
                                  "the embedded default model")
        path = hub.download(text, say)
    if is_export_dir(path) or _is_sdcpc_file(path):
        return path
    key = f"{cache.content_digest(path)}-{'sdcpc' if temporal else 'segformer'}-v{CONVERTER_VERSION}"
    entry, built = cache.build_once(
        "converted", key, lambda tmp: convert_checkpoint(path, tmp / "model.pt", temporal=temporal, progress=say))
    model_file = entry / "model.pt"
    kind = "SD-CPC (temporal modules at identity)" if temporal else "per-frame SegFormer"
    say(f"{text}: {'converted to' if built else 'using its conversion cached at'} {model_file} ({kind})")
    return model_file


def _is_sdcpc_file(path: Path) -> bool:
    """Whether ``path`` is one of our checkpoint files (not a published one), judged from its
    metadata: a torch zip archive is memory-mapped, so its tensors are not read here and the loader
    that follows reads them once. A file that cannot be read raises read_file's CheckpointError."""
    if not path.is_file() or path.suffix == ".safetensors" or (path.parent / huggingface.CONFIG).is_file():
        return False  # a Hugging Face weight file
    if zipfile.is_zipfile(path):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - read_file below says what is wrong with the file
            obj = None
        if isinstance(obj, dict):
            return obj.get("format") == FORMAT
    return read_file(path).get("format") == FORMAT


def checkpoint_problem(value) -> str | None:
    """Why ``value`` cannot name a checkpoint, judged without loading or downloading; None if it may."""
    if not value:
        return None
    path = Path(str(value)).expanduser()
    if path.exists():
        if path.is_dir() and not (is_export_dir(path) or huggingface.is_directory(path)):
            return ("is a directory that is neither an export directory (sdcpc export) nor a Hugging Face "
                    "model directory (config.json + weights)")
        return None
    if hub.looks_like_hub_id(str(value)):
        return None
    return f"does not exist; pass {SOURCES}, or leave it empty for the embedded default model"
