"""Cityscapes sequence reader: labelled targets from ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``
(19 train ids, 255 ignore), references from ``leftImg8bit_sequence/<split>/<city>/
<city>_<seq>_<frame:06d>_leftImg8bit.png`` at the target's frame number + offset."""

from __future__ import annotations

from pathlib import Path

from sdcpc_core.classes import CITYSCAPES
from sdcpc_core.data.clips import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipDataset,
    ClipSample,
    read_image,
    read_label,
)

LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
IMAGE_SUFFIX = "_leftImg8bit.png"


def parse_name(name: str, suffix: str) -> tuple[str, str, int]:
    """``<city>_<seq>_<frame>`` + ``suffix`` -> (city, seq, frame number)."""
    if not name.endswith(suffix):
        raise ValueError(f"Cityscapes file name {name!r} does not end with {suffix!r}")
    city, seq, frame = name[: -len(suffix)].rsplit("_", 2)
    return city, seq, int(frame)


def file_name(city: str, seq: str, frame: int, suffix: str) -> str:
    """The inverse of :func:`parse_name` (frame numbers have six digits)."""
    return f"{city}_{seq}_{frame:06d}{suffix}"


class CityscapesSequenceClips(ClipDataset):
    """One item per labelled frame; a reference frame that is missing from the sequence folder
    is replaced by the nearest existing frame of the same sequence. No ``ref_labels``."""

    def __init__(self, root, split: str = "train", reference_offsets=(-9, -6, -3),
                 transform=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__(reference_offsets, transform, mean, std, with_ref_labels=False)
        self.root, self.split = Path(root), split
        self.labels = CITYSCAPES
        self.samples: list[tuple[str, str, int, Path]] = []  # city, seq, frame, label path
        self._present: dict[tuple[str, str], tuple[int, ...]] = {}
        for path in sorted((self.root / "gtFine" / split).glob(f"*/*{LABEL_SUFFIX}")):
            self.samples.append((*parse_name(path.name, LABEL_SUFFIX), path))
        if not self.samples:
            raise FileNotFoundError(f"no *{LABEL_SUFFIX} under {self.root / 'gtFine' / split}")

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, city: str, seq: str, frame: int) -> Path:
        return (self.root / "leftImg8bit_sequence" / self.split / city
                / file_name(city, seq, frame, IMAGE_SUFFIX))

    def sequence_frames(self, city: str, seq: str) -> tuple[int, ...]:
        """Frame numbers present in the sequence folder for (city, seq), sorted (cached)."""
        key = (city, seq)
        if key not in self._present:
            folder = self.root / "leftImg8bit_sequence" / self.split / city
            self._present[key] = tuple(sorted(
                parse_name(p.name, IMAGE_SUFFIX)[2]
                for p in folder.glob(f"{city}_{seq}_*{IMAGE_SUFFIX}")))
        return self._present[key]

    def reference_frames(self, city: str, seq: str, frame: int) -> list[int]:
        """Frame numbers for the references: frame + offset, or the nearest existing frame."""
        present = self.sequence_frames(city, seq)
        if not present:
            return []
        return [min(present, key=lambda f, w=frame + o: (abs(f - w), abs(f - frame)))
                for o in self.reference_offsets]

    def read_clip(self, i: int) -> ClipSample:
        city, seq, frame, label_path = self.samples[i]
        target_path = self.image_path(city, seq, frame)
        if not target_path.is_file():  # labelled frame from leftImg8bit when no sequence copy
            target_path = (self.root / "leftImg8bit" / self.split / city
                           / file_name(city, seq, frame, IMAGE_SUFFIX))
        target = read_image(target_path)
        ref_frames = self.reference_frames(city, seq, frame)
        refs = ([read_image(self.image_path(city, seq, f)) for f in ref_frames] if ref_frames
                else [target] * len(self.reference_offsets))  # no sequence: the target itself
        labels = [None] * len(refs) + [read_label(label_path)]
        return ClipSample(refs + [target], labels, f"{city}_{seq}", frame)
