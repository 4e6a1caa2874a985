"""Class metadata: names, palette, ignore id and the dynamic-class set, plus colour mapping."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IGNORE_INDEX = 255

# Names that usually move: masked out of SLAM feature extraction by default.
DEFAULT_DYNAMIC_NAMES = (
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    "animal", "dog", "cat", "vehicle",
    "van", "minibike", "motorbike", "boat", "ship", "airplane",  # ADE20K's vehicles
)


def default_palette(num_classes: int, seed: int = 7) -> np.ndarray:
    """A deterministic, well-spread (num_classes, 3) uint8 palette."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(num_classes, 3), dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class LabelSet:
    """What the model's class ids mean.

    ``names[i]`` and ``palette[i]`` describe class id ``i``; ``ignore_index`` marks unknown pixels;
    ``dynamic`` holds the ids of classes that move (people, vehicles).
    """

    names: tuple[str, ...]
    palette: np.ndarray = field(repr=False)  # (K, 3) uint8 RGB
    ignore_index: int = IGNORE_INDEX
    dynamic: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        palette = np.asarray(self.palette, dtype=np.uint8)
        if palette.shape != (len(self.names), 3):
            raise ValueError(
                f"palette has shape {palette.shape}, expected ({len(self.names)}, 3): "
                "one RGB colour per class name"
            )
        object.__setattr__(self, "palette", palette)
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "dynamic", tuple(sorted(int(i) for i in self.dynamic)))
        bad = [i for i in self.dynamic if not 0 <= i < len(self.names)]
        if bad:
            raise ValueError(f"dynamic class ids {bad} are outside [0, {len(self.names)})")
        lut = np.zeros((65536, 3), dtype=np.uint8)  # every uint16 id; unknown ids stay black
        lut[: len(self.names)] = palette
        object.__setattr__(self, "_lut", lut)

    def __eq__(self, other) -> bool:
        if not isinstance(other, LabelSet):
            return NotImplemented
        return (self.names == other.names and np.array_equal(self.palette, other.palette)
                and self.ignore_index == other.ignore_index and self.dynamic == other.dynamic)

    __hash__ = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def from_names(cls, names, palette=None, dynamic_names=DEFAULT_DYNAMIC_NAMES,
                   ignore_index: int = IGNORE_INDEX) -> LabelSet:
        names = tuple(names)
        palette = default_palette(len(names)) if palette is None else palette
        dynamic = tuple(i for i, n in enumerate(names) if n in set(dynamic_names))
        return cls(names, palette, ignore_index, dynamic)

    def ids_for(self, names) -> tuple[int, ...]:
        """Class ids for ``names``; an unknown name raises with the list of known names."""
        index = {n: i for i, n in enumerate(self.names)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"unknown class names {unknown}; known classes: {list(self.names)}")
        return tuple(sorted(index[n] for n in names))

    def with_dynamic(self, names) -> LabelSet:
        return LabelSet(self.names, self.palette, self.ignore_index, self.ids_for(names))

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) integer labels -> (H, W, 3) uint8 RGB; ignore/unknown ids are black."""
        labels = np.asarray(labels)
        if labels.dtype not in (np.uint8, np.uint16):
            labels = labels.astype(np.int64).clip(0, self._lut.shape[0] - 1)
        return self._lut[labels]

    def dynamic_mask(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) bool: True where the label is a dynamic class."""
        return np.isin(labels, np.asarray(self.dynamic, dtype=np.int64))

    def to_csv(self) -> str:
        """Palette as CSV (``id,name,red,green,blue,dynamic``), e.g. for Kimera-Semantics."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["id", "name", "red", "green", "blue", "dynamic"])
        for i, (name, rgb) in enumerate(zip(self.names, self.palette)):
            writer.writerow([i, name, *map(int, rgb), int(i in self.dynamic)])
        return out.getvalue()

    def to_dict(self) -> dict:
        """Plain types only, so it can live in a ``weights_only`` checkpoint."""
        return {"names": list(self.names), "palette": self.palette.tolist(),
                "ignore_index": self.ignore_index, "dynamic": list(self.dynamic)}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSet:
        return cls(tuple(d["names"]), np.asarray(d["palette"], dtype=np.uint8),
                   int(d.get("ignore_index", IGNORE_INDEX)), tuple(d.get("dynamic", ())))


CITYSCAPES_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
CITYSCAPES_PALETTE = np.array([
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
    [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
    [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
    [0, 80, 100], [0, 0, 230], [119, 11, 32]], dtype=np.uint8)
CITYSCAPES = LabelSet.from_names(CITYSCAPES_NAMES, CITYSCAPES_PALETTE)


def _ade20k() -> LabelSet:
    data = json.loads((Path(__file__).resolve().parent / "assets" / "ade20k150.json").read_text())
    names, palette = zip(*data["classes"])
    return LabelSet.from_names(names, np.asarray(palette, dtype=np.uint8))


ADE20K = _ade20k()
# What a published SegFormer file without class names was trained on, by its class count.
PUBLISHED_LABEL_SETS = {150: ADE20K, 19: CITYSCAPES}


def published_label_set(num_classes: int) -> LabelSet | None:
    """ADE20K-150 or Cityscapes-19 names and customary palette for that many classes, else None."""
    labels = PUBLISHED_LABEL_SETS.get(num_classes)
    return None if labels is None else LabelSet.from_dict(labels.to_dict())
