"""The on-disk cache of ``sdcpc adapt``: per frame, the frozen encoder's maps and compact pseudo-labels.

One file per segment (``seg_NNNNN.bin``), fixed-size records, one per frame: the four encoder maps
of each view (fp16), the pseudo-label and the teacher's own label (uint8, uint16 above 255
classes), and the teacher's probabilities as their ``topk`` largest classes per pixel (class ids and
probabilities quantised to 1/255; the rest of the mass spread evenly over the other classes when
read back). A record's size does not depend on the class count beyond ``topk``.

A segment file is written under a temporary name and renamed when complete, with a sidecar
``seg_NNNNN.json`` (its label histogram): a run interrupted while caching keeps its finished
segments and ``--resume`` starts after them. Records are read with ``os.pread``, not mapped:
mapped pages count in the process's resident memory, the page cache does not.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdcpc_core.classes import IGNORE_INDEX

PLAN = "plan.json"


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


def label_dtype(num_classes: int) -> str:
    return "uint8" if num_classes < IGNORE_INDEX else "uint16"


def record_fields(map_shapes, views: int, num_classes: int, out_hw, topk: int, distil: bool,
                  soft: bool) -> list[Field]:
    """The fields of one frame's record; ``map_shapes``: the encoder's 4 (C, h, w)."""
    fields = [Field(f"v{v}m{level}", "float16", tuple(s)) for v in range(views)
              for level, s in enumerate(map_shapes)]
    lab = label_dtype(num_classes)
    fields += [Field("labels", lab, tuple(out_hw)), Field("teacher_labels", lab, tuple(out_hw))]
    k = min(topk, num_classes)
    index = "uint8" if num_classes <= 256 else "uint16"
    for name, wanted in (("centre", distil), ("ensemble", soft)):
        if wanted:
            fields += [Field(f"{name}_ids", index, (k, *out_hw)), Field(f"{name}_p", "uint8", (k, *out_hw))]
    return fields


def record_bytes(fields) -> int:
    return sum(f.nbytes for f in fields)


# -- top-k probabilities ------------------------------------------------------------------------

def topk_encode(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, h, w) probabilities -> their ``k`` largest classes per pixel: ids (N, k, h, w) and
    probabilities quantised to uint8 (p * 255, rounded)."""
    values, ids = probs.float().topk(min(k, probs.shape[1]), dim=1)
    return ids, (values * 255).round().clamp(0, 255).to(torch.uint8)


def topk_decode(ids: torch.Tensor, quantised: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, k, h, w) ids + uint8 probabilities -> dense (N, K, h, w) float32 probabilities: the
    kept classes at their value, the remaining mass spread evenly over the other classes."""
    values = quantised.float() / 255
    n, k, h, w = values.shape
    rest = (1.0 - values.sum(1, keepdim=True)).clamp_min(0.0)
    fill = rest / max(num_classes - k, 1) if num_classes > k else torch.zeros_like(rest)
    dense = fill.expand(n, num_classes, h, w).clone()
    dense.scatter_(1, ids.long(), values)
    return dense


# -- writing --------------------------------------------------------------------------------------

def segment_path(folder: Path, number: int) -> Path:
    return folder / f"seg_{number:05d}.bin"


def finished_segments(folder: Path) -> dict[int, dict]:
    """{segment number: its sidecar} of the segments whose file and sidecar are both complete."""
    done = {}
    for bin_file in folder.glob("seg_*.bin"):
        sidecar = bin_file.with_suffix(".json")
        if sidecar.is_file():
            done[int(bin_file.stem[4:])] = json.loads(sidecar.read_text())
    return dict(sorted(done.items()))


def write_segment(folder: Path, number: int, fields, columns: dict[str, np.ndarray], histogram: np.ndarray,
                  extra: dict | None = None) -> None:
    """Write one segment's records (``columns``: field name -> (n, *shape) array) atomically."""
    n = len(next(iter(columns.values())))
    path = segment_path(folder, number)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for i in range(n):
            for fld in fields:
                f.write(np.ascontiguousarray(columns[fld.name][i], dtype=fld.dtype).tobytes())
    sidecar = {"frames": n, "histogram": histogram.tolist(), **(extra or {})}
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    os.replace(tmp, path)


def open_plan(folder: Path, key: dict) -> bool:
    """Whether ``folder`` holds a cache for ``key``; a cache for another key is cleared (only
    the files this module writes). Creates the folder and writes the plan."""
    plan = folder / PLAN
    if plan.is_file():
        try:
            same = json.loads(plan.read_text()).get("key") == key
        except ValueError:
            same = False
        if same:
            return True
        clear(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps({"key": key}, indent=1))
    return False


def clear(folder: Path) -> None:
    """Remove the cache files (and the folder when nothing else is left in it)."""
    if not folder.is_dir():
        return
    for p in list(folder.glob("seg_*")) + list(folder.glob("report_*.npy")) + [folder / PLAN]:
        p.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


# -- reading --------------------------------------------------------------------------------------

class FrameStore:
    """Random access to the records of the cached segments (global frame ids in segment order)."""

    def __init__(self, folder: Path, fields, segments: list[tuple[int, int]], num_classes: int):
        """``segments``: (segment number, frames) of the cached segments, in order."""
        self.folder, self.fields, self.num_classes = Path(folder), list(fields), num_classes
        self.size = record_bytes(self.fields)
        self.offsets, at = {}, 0
        for fld in self.fields:
            self.offsets[fld.name] = at
            at += fld.nbytes
        self.by_name = {f.name: f for f in self.fields}
        self.numbers = [n for n, _ in segments]
        self.lengths = [length for _, length in segments]
        self.starts = np.cumsum([0] + self.lengths[:-1]).tolist()
        self.segment_of = np.repeat(np.arange(len(self.lengths)), self.lengths)
        self.fds = [os.open(segment_path(self.folder, n), os.O_RDONLY) for n in self.numbers]

    def __len__(self) -> int:
        return int(sum(self.lengths))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def _read(self, frame: int, first: str, last: str) -> bytes:
        seg = int(self.segment_of[frame])
        pos = frame - self.starts[seg]
        start = self.offsets[first]
        end = self.offsets[last] + self.by_name[last].nbytes
        return os.pread(self.fds[seg], end - start, pos * self.size + start)

    def field(self, frames, name: str) -> np.ndarray:
        """(len(frames), *shape) of one field."""
        fld = self.by_name[name]
        return np.stack([np.frombuffer(self._read(int(i), name, name), fld.dtype).reshape(fld.shape)
                         for i in frames])

    def maps(self, frames, views) -> list[torch.Tensor]:
        """The 4 encoder maps (B, C, h, w) float32 of ``frames``, each in its view (0 or 1)."""
        out = [[] for _ in range(4)]
        for i, v in zip(frames, views):
            names = [f"v{int(v)}m{level}" for level in range(4)]
            raw = self._read(int(i), names[0], names[-1])
            at = 0
            for level, name in enumerate(names):
                fld = self.by_name[name]
                out[level].append(np.frombuffer(raw, fld.dtype, int(np.prod(fld.shape)), at).reshape(fld.shape))
                at += fld.nbytes
        return [torch.from_numpy(np.stack(level)).float() for level in out]

    def probabilities(self, frames, which: str) -> torch.Tensor:
        """Dense (B, K, h, w) probabilities of ``which`` ("centre" or "ensemble") from the top-k."""
        ids = torch.from_numpy(self.field(frames, f"{which}_ids").astype(np.int64))
        return topk_decode(ids, torch.from_numpy(self.field(frames, f"{which}_p")), self.num_classes)
