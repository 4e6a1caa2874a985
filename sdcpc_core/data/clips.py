"""Clip convention, clip sampling and clip-consistent transforms.

An item of every clip dataset is a dict::

    frames      float32 (T+1, 3, H, W), normalised with mean/std (0..255 scale); frames[:T] are the
                references in the order of ``reference_offsets``, frames[T] is the target
    label       int64 (H, W), the target frame's labels, 255 = ignore
    ref_labels  int64 (T, H, W), the references' labels (only where the dataset has them)
    video       str
    index       int, the target's frame index in its video

Transforms take and return ``(frames, labels)``: lists of (H, W, 3) uint8 RGB frames and of
(H, W) label maps (``None`` where a frame has no labels), in clip order.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sdcpc_core.classes import IGNORE_INDEX
from sdcpc_core.settings import IMAGENET_MEAN, IMAGENET_STD
from sdcpc_core.settings import reference_indices as reference_indices  # the clip readers' rule


def read_image(path) -> np.ndarray:
    """Image file -> (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_label(path) -> np.ndarray:
    """Label PNG -> (H, W) raw ids. Palette PNGs give their indices (PIL, not OpenCV, which
    would expand the palette to colours)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: label PNG must be single-channel or palette, got {im.mode}")
        a = np.array(im)
    return a.astype(np.uint8) if a.max(initial=0) < 256 else a.astype(np.int64)


def normalize(frames, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """List of (H, W, 3) uint8 RGB -> float32 (N, 3, H, W)."""
    x = torch.from_numpy(np.stack(frames)).float()  # (N, H, W, 3)
    x = (x - torch.tensor(mean)) / torch.tensor(std)
    return x.permute(0, 3, 1, 2).contiguous()


def make_item(frames, labels, video: str, index: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
              with_ref_labels: bool = True) -> dict:
    """Build the clip dict from transformed frames/labels (the last of each is the target)."""
    target = labels[-1]
    item = {
        "frames": normalize(frames, mean, std),
        "label": torch.from_numpy(np.asarray(target, dtype=np.int64)),
        "video": str(video),
        "index": int(index),
    }
    refs = labels[:-1]
    if with_ref_labels and refs and all(r is not None for r in refs):
        item["ref_labels"] = torch.from_numpy(np.stack(refs).astype(np.int64))
    return item


@dataclass
class ClipSample:
    """Raw clip before transforms: uint8 RGB frames and labels in clip order (target last)."""

    frames: list
    labels: list
    video: str
    index: int


class ClipDataset(Dataset):
    """Base of the clip datasets: subclasses give ``__len__`` and ``read_clip(i) -> ClipSample``."""

    def __init__(self, reference_offsets=(-9, -6, -3), transform=None, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, with_ref_labels: bool = True):
        self.reference_offsets = tuple(int(o) for o in reference_offsets)
        self.transform = transform
        self.mean, self.std = tuple(mean), tuple(std)
        self.with_ref_labels = with_ref_labels

    def read_clip(self, i: int) -> ClipSample:
        raise NotImplementedError

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        s = self.read_clip(i)
        frames, labels = s.frames, s.labels
        if self.transform is not None:
            frames, labels = self.transform(frames, labels)
        return make_item(frames, labels, s.video, s.index, self.mean, self.std,
                         self.with_ref_labels)


def _resize_all(frames, labels, size_wh):
    frames = [cv2.resize(f, size_wh, interpolation=cv2.INTER_LINEAR) for f in frames]
    labels = [None if lb is None else cv2.resize(lb, size_wh, interpolation=cv2.INTER_NEAREST)
              for lb in labels]
    return frames, labels


class ClipAugment:
    """Training augmentation with ONE draw of random parameters for the whole clip.

    Random resize (ratio of the input size), random crop (optionally limiting the share of one
    class in the target crop, as mmseg's ``cat_max_ratio``), padding (image 0, label ``ignore``),
    horizontal flip, photometric distortion (mmseg's PhotoMetricDistortion steps).
    """

    def __init__(self, crop_size, scale_range=(0.5, 2.0), flip_prob: float = 0.5,
                 photometric: bool = True, cat_max_ratio: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        self.crop_h, self.crop_w = (crop_size, crop_size) if np.isscalar(crop_size) else crop_size
        self.scale_range = scale_range
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def __call__(self, frames, labels, rng: np.random.Generator | None = None):
        if rng is None:  # torch's RNG is seeded per DataLoader worker
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        h, w = frames[0].shape[:2]
        ratio = rng.uniform(*self.scale_range)
        size_wh = (max(1, round(w * ratio)), max(1, round(h * ratio)))
        frames, labels = _resize_all(frames, labels, size_wh)
        y, x = self._crop_origin(labels[-1], frames[0].shape[:2], rng)
        ch, cw = self.crop_h, self.crop_w
        frames = [f[y:y + ch, x:x + cw] for f in frames]
        labels = [None if lb is None else lb[y:y + ch, x:x + cw] for lb in labels]
        if rng.random() < self.flip_prob:
            frames = [f[:, ::-1] for f in frames]
            labels = [None if lb is None else lb[:, ::-1] for lb in labels]
        if self.photometric:
            distort = PhotometricDistortion.draw(rng)
            frames = [distort(f) for f in frames]
        frames = [self._pad(f, 0) for f in frames]
        labels = [None if lb is None else self._pad(lb, self.ignore_index) for lb in labels]
        return frames, labels

    def _crop_origin(self, target, hw, rng):
        h, w = hw
        def draw():
            return int(rng.integers(0, max(h - self.crop_h, 0) + 1)), \
                int(rng.integers(0, max(w - self.crop_w, 0) + 1))
        y, x = draw()
        if self.cat_max_ratio >= 1.0 or target is None:
            return y, x
        for _ in range(10):
            crop = target[y:y + self.crop_h, x:x + self.crop_w]
            _, counts = np.unique(crop[crop != self.ignore_index], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
            y, x = draw()
        return y, x

    def _pad(self, a: np.ndarray, value) -> np.ndarray:
        ph, pw = self.crop_h - a.shape[0], self.crop_w - a.shape[1]
        if ph <= 0 and pw <= 0:
            return np.ascontiguousarray(a)
        pad = ((0, max(ph, 0)), (0, max(pw, 0))) + ((0, 0),) * (a.ndim - 2)
        return np.pad(a, pad, constant_values=value)


@dataclass(frozen=True)
class PhotometricDistortion:
    """Brightness, contrast, saturation, hue (each None = skipped), with fixed parameters."""

    brightness: float | None
    contrast: float | None
    contrast_first: bool
    saturation: float | None
    hue: int | None

    @classmethod
    def draw(cls, rng, brightness_delta=32, contrast_range=(0.5, 1.5),
             saturation_range=(0.5, 1.5), hue_delta=18) -> PhotometricDistortion:
        def maybe(value):
            return value if rng.random() < 0.5 else None
        return cls(
            brightness=maybe(rng.uniform(-brightness_delta, brightness_delta)),
            contrast=maybe(rng.uniform(*contrast_range)),
            contrast_first=bool(rng.random() < 0.5),
            saturation=maybe(rng.uniform(*saturation_range)),
            hue=maybe(int(rng.integers(-hue_delta, hue_delta + 1))),
        )

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> same."""
        x = frame.astype(np.float32)
        if self.brightness is not None:
            x = np.clip(x + self.brightness, 0, 255)
        if self.contrast_first and self.contrast is not None:
            x = np.clip(x * self.contrast, 0, 255)
        if self.saturation is not None or self.hue is not None:
            hsv = cv2.cvtColor(x.astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
            if self.saturation is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 255)
            if self.hue is not None:
                hsv[..., 0] = (hsv[..., 0] + self.hue) % 180  # OpenCV hue is 0..179
            x = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
        if not self.contrast_first and self.contrast is not None:
            x = np.clip(x * self.contrast, 0, 255)
        return x.astype(np.uint8)


class EvalTransform:
    """Deterministic evaluation resize.

    ``size``: None (keep), an int (short side to ``size``, aspect kept) or ``(h, w)``.
    Labels keep their original size unless ``resize_labels`` (evaluate at label resolution by
    upsampling logits to the label's size).
    """

    def __init__(self, size=None, resize_labels: bool = False):
        self.size = size
        self.resize_labels = resize_labels

    def __call__(self, frames, labels, rng=None):
        if self.size is None:
            return frames, labels
        h, w = frames[0].shape[:2]
        if np.isscalar(self.size):
            r = self.size / min(h, w)
            size_wh = (round(w * r), round(h * r))
        else:
            size_wh = (int(self.size[1]), int(self.size[0]))
        resized_frames, resized_labels = _resize_all(frames, labels, size_wh)
        return resized_frames, (resized_labels if self.resize_labels else labels)
