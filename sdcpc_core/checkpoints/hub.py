"""Hugging Face Hub ids (``nvidia/segformer-b0-finetuned-ade-512-512``) -> a local model directory.

``huggingface_hub`` fetches into its normal cache (``HF_HUB_CACHE``, ``HF_HOME``) with its own
progress bars; an id already in the cache is used without touching the network. Only the files a
SegFormer needs are fetched (configs and weights: no TF/Flax/ONNX copies).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from sdcpc_core.checkpoints.format import CheckpointError

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
CONFIGS = ["config.json", "preprocessor_config.json", "model.safetensors.index.json"]
SAFETENSORS = CONFIGS + ["*.safetensors"]
PICKLED = CONFIGS + ["pytorch_model.bin"]


def looks_like_hub_id(value: str) -> bool:
    """``owner/name`` that is not a local path (a relative ``dir/file`` that exists wins)."""
    return bool(HUB_ID.fullmatch(value)) and not Path(value).exists() and not value.endswith(
        (".pt", ".pth", ".bin", ".safetensors"))


def download(repo_id: str, progress: Callable[[str], None] | None = None) -> Path:
    """The local snapshot directory of ``repo_id``: from the cache if there, else fetched."""
    try:
        import huggingface_hub
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise CheckpointError(f"{repo_id} looks like a Hugging Face Hub id, but huggingface_hub is not "
                              "installed: pip install huggingface_hub, or download the model elsewhere "
                              "and pass its directory") from None
    say = progress or (lambda line: None)
    cached = _cached(snapshot_download, repo_id, LocalEntryNotFoundError)
    if cached is not None:
        say(f"{repo_id}: found in the Hugging Face cache ({cached}); no network used")
        return cached
    how = (f"on a machine with network run `hf download {repo_id} --local-dir DIR` (or "
           f"huggingface_hub.snapshot_download('{repo_id}')), copy DIR here and pass DIR instead")
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"{repo_id} is no local path and not in the Hugging Face cache "
                              f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: {how}")
    say(f"{repo_id}: downloading from the Hugging Face Hub into {constants.HF_HUB_CACHE} "
        f"(huggingface_hub {huggingface_hub.__version__})")
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=SAFETENSORS))
        if not any(path.glob("*.safetensors")):  # older repositories: pickled weights only
            path = Path(snapshot_download(repo_id, allow_patterns=PICKLED))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise CheckpointError(f"{repo_id} is no local path and does not exist on the Hugging Face Hub (or "
                              "is private): check the path or the id, e.g. "
                              "nvidia/segformer-b0-finetuned-ade-512-512 (docs/models.md)") from None
    except GatedRepoError:
        raise CheckpointError(f"{repo_id} is gated on the Hugging Face Hub: accept its terms and log in "
                              "(`hf auth login`), or download it elsewhere and pass the directory") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"cannot download {repo_id} from the Hugging Face Hub ({first}): {how}") from None
    say(f"{repo_id}: downloaded to {path}")
    return path


def _cached(snapshot_download, repo_id: str, not_found) -> Path | None:
    for patterns in (SAFETENSORS, PICKLED):
        try:
            path = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        except not_found:
            return None
        except (OSError, ValueError):
            return None
        if (path / "config.json").is_file() and any(
                (path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin",
                                                     "model.safetensors.index.json")):
            return path
    return None
