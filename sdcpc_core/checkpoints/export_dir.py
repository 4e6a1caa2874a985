"""The one rule for export directories (``sdcpc export``): what marks one, and where its checkpoint is.

It lives here, below ``sdcpc_core.export``, so that reading a checkpoint never imports the exporter:
the arrows run ``export`` → ``checkpoints``, never back.
"""

from __future__ import annotations

from pathlib import Path

METADATA = "sdcpc_export.json"  # marks an export directory
CHECKPOINT = "model.pt"  # the checkpoint an export directory carries (torch backend, re-exports)


def is_export_dir(path) -> bool:
    return path is not None and Path(path).is_dir() and (Path(path) / METADATA).exists()
