"""Our checkpoint format: writing, reading and checking it.

Our format is a dict saved with ``torch.save`` and read with ``weights_only=True`` (no pickled
code runs on load)::

    {"format": "sdcpc", "version": 1, "config": SDCPCConfig.to_dict(), "labels": LabelSet.to_dict(),
     "mean": [r, g, b], "std": [r, g, b], "training": {...}, "input_size": [H, W] | None,
     "state_dict": {...}}

Published files are read by one module per layout (``nvlabs``, ``huggingface``, ``mmseg``) and
turned into this format by ``convert``.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from sdcpc_core.checkpoints.export_dir import CHECKPOINT as EXPORT_CHECKPOINT
from sdcpc_core.checkpoints.export_dir import is_export_dir
from sdcpc_core.classes import LabelSet
from sdcpc_core.models import MIT_SPECS, SDCPCConfig, build_model
from sdcpc_core.settings import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "sdcpc"
VERSION = 1
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CHECKPOINT = ASSETS / "sdcpc_b0_synthetic.pt"
BASELINE_CHECKPOINT = ASSETS / "segformer_b0_synthetic.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with what is wrong and what to do."""


def save_checkpoint(path, model: nn.Module, config: SDCPCConfig, labels: LabelSet,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, training: dict | None = None,
                    half: bool = False, input_size: tuple[int, int] | None = None) -> Path:
    """Write our checkpoint format; ``half`` stores floating tensors as fp16 (smaller files).

    ``input_size`` ([H, W]) is the resolution the model was trained for; the engine uses it when
    the caller does not choose one.
    """
    if labels.num_classes != config.num_classes:
        raise CheckpointError(f"label set has {labels.num_classes} classes but the model config has "
                              f"{config.num_classes}")
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": config.to_dict(),
               "labels": labels.to_dict(), "mean": [float(m) for m in mean],
               "std": [float(s) for s in std], "training": training or {},
               "input_size": [int(v) for v in input_size] if input_size else None, "state_dict": state}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint under the real name
    return path


def read_file(path) -> dict:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(path)
    if path.is_dir():  # an export directory stands for the checkpoint it carries
        if not (is_export_dir(path) and (path / EXPORT_CHECKPOINT).is_file()):
            raise CheckpointError(f"{path} is a directory, not a checkpoint; pass a .pt/.pth file, "
                                  f"a directory written by `sdcpc export` (with its {EXPORT_CHECKPOINT}) "
                                  "or a Hugging Face model directory (config.json + weights)")
        path = path / EXPORT_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing .pt/.pth file "
                              "(or leave it empty for the embedded default model)")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch zip archive or legacy pickle
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (neither a torch zip archive "
                              "nor a pickle); check the path, or re-download / re-export the file")
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):  # cut short: no central directory
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt zip "
                              "archive); re-download or re-export the file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it contains Python objects other than tensors and plain "
            f"containers ({_first_line(e)}). Only weights-only checkpoints are accepted; "
            "re-save the state dict with torch.save(model.state_dict(), ...) from a trusted environment"
        ) from None
    except Exception as e:  # noqa: BLE001 - damaged files make torch.load raise almost anything
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{_first_line(e)}. Re-download or re-export it") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors "
                              "or an sdcpc checkpoint")
    return obj


def _first_line(exc: BaseException) -> str:
    lines = str(exc).splitlines()
    return (lines[0][:200] if lines else "") or type(exc).__name__


def detect_variant(state_dict: dict, prefix: str = "") -> str | None:
    """Guess the MiT variant from encoder widths and depths; None if it is not a MiT encoder."""
    w = state_dict.get(prefix + "patch_embed1.proj.weight")
    if w is None:
        return None
    depths = tuple(len({k[len(prefix):].split(".")[1] for k in state_dict
                        if k.startswith(f"{prefix}block{i}.")}) for i in range(1, 5))
    for name, spec in MIT_SPECS.items():
        if spec.embed_dims[0] == w.shape[0] and spec.depths == depths:
            return name
    return None


def check_state_dict(model: nn.Module, state_dict: dict, what: str, source: str,
                     ignore_prefixes=()) -> None:
    """Raise a CheckpointError listing missing/unexpected keys and shape mismatches (expected vs found)."""
    expected = model.state_dict()
    found = {k: v for k, v in state_dict.items() if not k.startswith(tuple(ignore_prefixes))}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(found[k].shape)}"
              for k in sorted(set(expected) & set(found)) if expected[k].shape != found[k].shape]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{source} does not fit the {what}:"]
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatches, e.g. " + "; ".join(shapes[:4]))
    if missing:
        lines.append(f"  {len(missing)} missing keys, e.g. {missing[:4]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys, e.g. {unexpected[:4]}")
    hint = _mismatch_hint(model, found)
    if hint:
        lines.append("  " + hint)
    raise CheckpointError("\n".join(lines))


def _mismatch_hint(model: nn.Module, found: dict) -> str:
    """Name the likely cause (other variant, other class count) and the fix."""
    expected = model.state_dict()
    hints = []
    ours = detect_variant(expected, "backbone.") or detect_variant(expected)
    theirs = detect_variant(found, "backbone.") or detect_variant(found)
    if ours and theirs and ours != theirs:
        hints.append(f"the file holds a MiT-{theirs.upper()} encoder but the model is "
                     f"MiT-{ours.upper()}: build the model with variant='{theirs}'")
    for key in ("decode_head.linear_pred.weight", "linear_pred.weight"):
        if key in found and key in expected and found[key].shape[0] != expected[key].shape[0]:
            hints.append(f"the file's head has {found[key].shape[0]} classes, the model "
                         f"{expected[key].shape[0]}: set num_classes={found[key].shape[0]} or load "
                         "the encoder only (load_head=False)")
    return "what to do: " + "; ".join(hints) if hints else ""


def load_checkpoint(path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Our checkpoint -> (model in eval mode, metadata with ``config``, ``labels`` (LabelSet), ...)."""
    obj = read_file(path)
    if obj.get("format") != FORMAT:
        hint = ("it looks like a published MiT/SegFormer file: convert it with "
                "`sdcpc convert SOURCE -o OUT.pt` (or pass it where a checkpoint is taken: it is "
                "converted once and cached)"
                if "state_dict" in obj or detect_variant(obj) else "it is not an sdcpc checkpoint")
        raise CheckpointError(f"{path}: {hint}")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {obj.get('version')} is not "
                              f"supported (this sdcpc reads version {VERSION}); upgrade sdcpc")
    try:
        config = SDCPCConfig.from_dict(dict(obj["config"]))
        labels = LabelSet.from_dict(obj["labels"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: broken metadata ({e}); re-export the checkpoint") from None
    if labels.num_classes != config.num_classes:
        raise CheckpointError(f"{path}: broken metadata: the model has {config.num_classes} classes "
                              f"but the label set {labels.num_classes} class names; re-export the checkpoint")
    for key in ("mean", "std"):
        value = obj.get(key)
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
                and (key == "mean" or min(value) > 0)):
            raise CheckpointError(f"{path}: broken metadata: {key} must be 3 finite numbers (RGB)"
                                  f"{', all > 0' if key == 'std' else ''}, got {value!r}")
    state = obj.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: broken checkpoint: 'state_dict' must be a dict of tensors, "
                              f"got {type(state).__name__}; re-export the checkpoint")
    model = build_model(config)
    check_state_dict(model, state, f"model it describes ({config.variant}, {config.num_classes} classes)",
                     str(path))
    check_finite(state, str(path))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    meta["config"], meta["labels"] = config, labels
    return model.to(map_location).eval(), meta


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors holding NaN or ±inf."""
    return [k for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


def check_finite(state: dict, source: str) -> None:
    """Refuse weights with NaN/inf: such a model labels every pixel with garbage, silently."""
    bad = non_finite_tensors(state)
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise CheckpointError(f"{source}: {len(bad)} weight tensor(s) hold NaN or inf values ({shown}); "
                              "the file is damaged or training diverged: use an earlier checkpoint")


def save_tiny_checkpoint(path, labels: LabelSet | None = None, *, temporal: bool = True,
                         seed: int = 0) -> Path:
    """A small random-weight model (b0, embed and decoder width 32, window 3, references -2, -1)
    for tests, CI and the soak benchmark; ``labels`` default to the synthetic classes."""
    if labels is None:
        from sdcpc_core.data.synthetic import SYNTHETIC_LABELS

        labels = SYNTHETIC_LABELS
    torch.manual_seed(seed)
    config = SDCPCConfig(variant="b0", num_classes=labels.num_classes, embed_dim=32, decoder_dim=32,
                         reference_offsets=(-2, -1), window=3, temporal=temporal)
    return save_checkpoint(path, build_model(config), config, labels)
