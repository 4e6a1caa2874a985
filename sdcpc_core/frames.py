"""Frames from disk: an image folder (name order) or a video file (OpenCV), as RGB uint8.

One reader for ``sdcpc segment`` and ``sdcpc-eval convert``. A video that ends before the frame
count its container announces is reported (:attr:`VideoFrames.shortfall`), not cut short silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


class FrameSourceError(ValueError):
    """An input that cannot be read as frames; the message names the file or folder."""


def image_files(folder) -> list[Path]:
    """The images of ``folder`` in name order; an error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FrameSourceError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FrameSourceError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_image(path) -> np.ndarray:
    """Image file -> (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FrameSourceError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoFrames:
    """Iterates the frames of a video file as (H, W, 3) uint8 RGB.

    ``announced`` is the frame count in the container and ``fps`` its frame rate (None when it
    gives none); after the iteration, ``decoded`` is the number of frames read and ``shortfall``
    describes a video that ended early.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FrameSourceError(f"input {self.path} does not exist (give a video file or an image folder)")
        cap = cv2.VideoCapture(str(self.path))
        try:
            if not cap.isOpened():
                raise FrameSourceError(f"cannot open video {self.path} (unsupported container or codec?)")
            self.announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
            fps = float(cap.get(cv2.CAP_PROP_FPS))
            self.fps = fps if 0 < fps < 1000 else None  # some containers give 0 or nonsense
        finally:
            cap.release()
        self.decoded = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        cap = cv2.VideoCapture(str(self.path))
        self.decoded = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                self.decoded += 1
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()
        if self.decoded == 0:
            raise FrameSourceError(f"video {self.path} has no readable frames")

    @property
    def shortfall(self) -> str | None:
        """A warning when fewer frames were decoded than the container announces, else None."""
        if self.announced is None or self.decoded >= self.announced:
            return None
        return (f"video {self.path} ended after {self.decoded} of the {self.announced} frames its "
                "container announces (truncated or damaged file?)")


class ImageFolderFrames:
    """Iterates the images of a folder in name order as (H, W, 3) uint8 RGB."""

    shortfall = None  # every file is read or an error is raised
    fps = None

    def __init__(self, folder):
        self.path = Path(folder)
        self.files = image_files(self.path)
        self.announced = len(self.files)
        self.decoded = 0

    def __len__(self) -> int:
        return self.announced

    def __iter__(self) -> Iterator[np.ndarray]:
        self.decoded = 0
        for path in self.files:
            image = read_image(path)
            self.decoded += 1
            yield image


def open_frames(source) -> ImageFolderFrames | VideoFrames:
    """A folder of images or a video file; both iterate RGB frames and know ``announced``, ``fps``
    and, after the iteration, ``decoded`` and ``shortfall``."""
    source = Path(source)
    return ImageFolderFrames(source) if source.is_dir() else VideoFrames(source)
