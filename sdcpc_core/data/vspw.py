"""VSPW reader: ``root/data/<video>/origin/*.jpg``, ``root/data/<video>/mask/*.png``, split files
``root/{train,val,test}.txt`` listing video names. 124 classes; masks shifted on load."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdcpc_core.classes import DEFAULT_DYNAMIC_NAMES, IGNORE_INDEX, LabelSet
from sdcpc_core.data.clips import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipDataset,
    ClipSample,
    read_image,
    read_label,
    reference_indices,
)

# Class names in raw-id order (raw id = position + 1; raw 0 is "others"), as in VSPW's
# label_num_dic_final.json; after the shift, class id = position.
VSPW_NAMES = (
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide",
    "handrail_or_fence", "window", "rail", "goal", "pillar", "pole", "floor", "ground", "grass",
    "sand", "athletic_field", "road", "path", "crosswalk", "building", "house", "bridge", "tower",
    "windmill", "well_or_well_lid", "other_construction", "sky", "mountain", "stone", "wood",
    "ice", "snowfield", "grandstand", "sea", "river", "lake", "waterfall", "water",
    "billboard_or_Bulletin_Board", "sculpture", "pipeline", "flag", "parasol_or_umbrella",
    "cushion_or_carpet", "tent", "roadblock", "car", "bus", "truck", "bicycle", "motorcycle",
    "wheeled_machine", "ship_or_boat", "raft", "airplane", "tyre", "traffic_light", "lamp",
    "person", "cat", "dog", "horse", "cattle", "other_animal", "tree", "flower", "other_plant",
    "toy", "ball_net", "backboard", "skateboard", "bat", "ball",
    "cupboard_or_showcase_or_storage_rack", "box", "traveling_case_or_trolley_case", "basket",
    "bag_or_package", "trash_can", "cage", "plate", "tub_or_bowl_or_pot", "bottle_or_cup",
    "barrel", "fishbowl", "bed", "pillow", "table_or_desk", "chair_or_seat", "bench", "sofa",
    "shelf", "bathtub", "gun", "commode", "roaster", "other_machine", "refrigerator",
    "washing_machine", "Microwave_oven", "fan", "curtain", "textiles", "clothes",
    "painting_or_poster", "mirror", "flower_pot_or_vase", "clock", "book", "tool", "blackboard",
    "tissue", "screen_or_television", "computer", "printer", "Mobile_phone", "keyboard",
    "other_electronic_product", "fruit", "food", "instrument", "train",
)
assert len(VSPW_NAMES) == 124
VSPW_LABELS = LabelSet.from_names(
    VSPW_NAMES, dynamic_names=DEFAULT_DYNAMIC_NAMES + (
        "ship_or_boat", "airplane", "wheeled_machine", "horse", "cattle", "other_animal"))

# raw 0 -> 255 (ignore), raw v in 1..254 -> v - 1, raw 255 stays 255
_SHIFT = np.concatenate([[IGNORE_INDEX], np.arange(254), [IGNORE_INDEX]]).astype(np.uint8)
assert _SHIFT.shape == (256,)


def shift_vspw_labels(raw: np.ndarray) -> np.ndarray:
    """Raw VSPW mask ids -> training ids (uint8)."""
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raw = np.clip(raw, 0, 255).astype(np.uint8)
    return _SHIFT[raw]


def vspw_videos(root, split: str) -> list[str]:
    """The video names listed in ``root/<split>.txt`` (one per line)."""
    split_file = Path(root) / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"VSPW split file {split_file} not found; give the VSPW root that holds "
                                f"{split}.txt, or name the videos explicitly")
    return [v.strip() for v in split_file.read_text().splitlines() if v.strip()]


class VSPWClips(ClipDataset):
    """One item per frame of every video of ``split``; references at ``reference_offsets``
    clamped to the video; ``ref_labels`` from the references' masks."""

    def __init__(self, root, split: str = "train", reference_offsets=(-9, -6, -3),
                 transform=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 with_ref_labels: bool = True, videos=None):
        super().__init__(reference_offsets, transform, mean, std, with_ref_labels)
        self.root = Path(root)
        if videos is None:
            videos = vspw_videos(self.root, split)
        self.labels = VSPW_LABELS
        self.videos: list[tuple[str, list[Path]]] = []  # (name, frame paths in order)
        self.samples: list[tuple[int, int]] = []  # (video number, frame index)
        for name in videos:
            frames = sorted((self.root / "data" / name / "origin").glob("*.jpg"))
            if not frames:
                raise FileNotFoundError(f"VSPW video {name}: no frames under "
                                        f"{self.root / 'data' / name / 'origin'}")
            self.samples += [(len(self.videos), t) for t in range(len(frames))]
            self.videos.append((name, frames))

    def __len__(self) -> int:
        return len(self.samples)

    def _mask(self, name: str, frame: Path) -> np.ndarray | None:
        path = self.root / "data" / name / "mask" / f"{frame.stem}.png"
        return shift_vspw_labels(read_label(path)) if path.is_file() else None

    def read_clip(self, i: int) -> ClipSample:
        v, t = self.samples[i]
        name, frames = self.videos[v]
        indices = reference_indices(t, self.reference_offsets, len(frames)) + [t]
        images = [read_image(frames[j]) for j in indices]
        labels = [self._mask(name, frames[j]) for j in indices]
        if labels[-1] is None:  # unlabelled split (test): all ignore
            labels[-1] = np.full(images[-1].shape[:2], IGNORE_INDEX, np.uint8)
        return ClipSample(images, labels, name, t)
