"""Checkpoints: our format, one reader per published SegFormer layout, conversion, resolution.

    format.py       our format: save / read / load / check (weights-only, clear refusals)
    export_dir.py   the rule for export directories (``sdcpc export``), below the exporter
    published.py    ``Published``: what every reader returns (NVlabs-named tensors + description)
    nvlabs.py       NVlabs SegFormer .pth and ImageNet mit_b*.pth
    huggingface.py  Hugging Face directories / weight files (config.json + safetensors or .bin)
    mmseg.py        mmsegmentation 1.x SegFormer .pth
    hub.py          Hub ids -> a local snapshot (huggingface_hub, its cache, offline first)
    convert.py      read_published, convert_checkpoint, resolve_checkpoint (the converted-model cache)
"""

from sdcpc_core.checkpoints.convert import (
                                            SOURCES,
                                            build_published,
                                            checkpoint_problem,
                                            convert_checkpoint,
                                            load_pretrained,
                                            read_published,
                                            resolve_checkpoint,
)
from sdcpc_core.checkpoints.format import (
                                            ASSETS,
                                            BASELINE_CHECKPOINT,
                                            DEFAULT_CHECKPOINT,
                                            FORMAT,
                                            VERSION,
                                            CheckpointError,
                                            check_finite,
                                            check_state_dict,
                                            detect_variant,
                                            load_checkpoint,
                                            non_finite_tensors,
                                            read_file,
                                            save_checkpoint,
                                            save_tiny_checkpoint,
)
from sdcpc_core.checkpoints.published import Published
from sdcpc_core.settings import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ASSETS", "BASELINE_CHECKPOINT", "DEFAULT_CHECKPOINT", "FORMAT", "IMAGENET_MEAN", "IMAGENET_STD",
           "SOURCES", "VERSION", "CheckpointError", "Published", "build_published", "check_finite",
           "check_state_dict", "checkpoint_problem", "convert_checkpoint", "detect_variant", "load_checkpoint",
           "load_pretrained", "non_finite_tensors", "read_file", "read_published", "resolve_checkpoint",
           "save_checkpoint", "save_tiny_checkpoint"]
