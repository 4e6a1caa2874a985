"""Unlabelled frames for ``sdcpc adapt``: video files, image folders and rosbag2 image topics.

Each source is one video (frames in time order), resized to the working size. A source's frames
must share one size (a camera does not change resolution mid-recording; two recordings glued
together should be two sources). Bags are read by :class:`sdcpc_core.bags.BagReader` (``rosbags``,
no ROS; a truncated MCAP recording up to its damage) and decoded by
:mod:`sdcpc_core.image_messages`, as the node and ``sdcpc-eval`` read them: ``sensor_msgs/Image``
in every encoding the node takes and ``sensor_msgs/CompressedImage`` (JPEG, PNG).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sdcpc_core.bags import BagError, BagReader
from sdcpc_core.frames import FrameSourceError, open_frames
from sdcpc_core.image_messages import ImageConversionError, compressed_to_array, image_to_array

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


@dataclass
class Source:
    """One source read into memory: (N, H, W, 3) uint8 RGB at the working size."""

    path: str
    frames: np.ndarray
    original_size: tuple[int, int]  # (H, W) as recorded
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)


def is_bag(path: Path) -> bool:
    """A rosbag2 folder (with metadata.yaml) or a single .mcap / .db3 file."""
    return (path.is_dir() and (path / "metadata.yaml").is_file()) or path.suffix in (".mcap", ".db3")


def one_size(path, index: int, frame, first):
    """The size of a source's first frame (``first``: None before it); raises FrameSourceError when
    frame ``index`` has another size (one source is one camera at one size)."""
    if first is None:
        return frame.shape[:2]
    if frame.shape[:2] != first:
        raise FrameSourceError(
            f"source {path}: frame {index} is {frame.shape[1]}x{frame.shape[0]} but the first "
            f"frame is {first[1]}x{first[0]}; one source is one camera at one size — split "
            "the recording into sources of one size each")
    return first


def bag_image_topic(bag, path: Path, topic: str | None):
    """(topic, its TopicInfo) of the image topic to read: ``topic``, or the bag's only image
    topic. Raises FrameSourceError naming the choices (--image-topic)."""
    images = {t: info for t, info in bag.topics.items() if info.msgtype in IMAGE_TYPES}
    if topic is None:
        if len(images) != 1:
            found = ", ".join(sorted(images)) or "none"
            raise FrameSourceError(f"bag {path} has {len(images)} image topics ({found}); "
                                   "choose one with --image-topic")
        topic = next(iter(images))
    if topic not in images:
        raise FrameSourceError(f"bag {path} has no image topic {topic!r}; its topics: "
                               f"{bag.describe_topics()}")
    return topic, images[topic]


class _BagFrames:
    """(H, W, 3) uint8 RGB frames of a bag's image topic in log-time order; ``shortfall`` says
    what was left out when the bag was damaged (a truncated MCAP file is read up to the damage).
    With ``wanted`` (message indices), the other messages are not decoded: None stands for them."""

    def __init__(self, path: Path, topic: str | None, wanted=None):
        self.path, self.topic, self.shortfall, self.wanted = path, topic, None, wanted

    def __iter__(self):
        path = self.path
        try:
            with BagReader(path) as bag:
                topic, info = bag_image_topic(bag, path, self.topic)
                compressed = info.msgtype.endswith("CompressedImage")
                decode = compressed_to_array if compressed else image_to_array
                for message in bag.messages([topic]):
                    if self.wanted is not None and message.index not in self.wanted:
                        yield None
                        continue
                    try:
                        yield decode(bag.decode(message, "image"))
                    except ImageConversionError as exc:
                        raise FrameSourceError(f"bag {path}, {topic} message {message.index}: "
                                               f"{exc}") from None
                self.shortfall = bag.damage
        except BagError as exc:  # cannot open, a message that cannot be deserialised, read broke off
            raise FrameSourceError(str(exc)) from None


def read_source(path, size: tuple[int, int], image_topic: str | None = None, every: int = 1,
                max_frames: int | None = None) -> Source:
    """Read one source at ``size`` (H, W), keeping every ``every``-th frame, at most ``max_frames``.

    Raises FrameSourceError (one line naming the source) for a missing, empty or unreadable
    source and for frames of mixed sizes.
    """
    path = Path(path)
    if not path.exists():
        raise FrameSourceError(f"source {path} does not exist (give a video file, an image folder "
                               "or a rosbag2)")
    if is_bag(path):
        frames_iter = shortfall = _BagFrames(path, image_topic)
    else:
        frames = open_frames(path)
        frames_iter, shortfall = frames, frames
    kept, first, notes = [], None, []
    h, w = size
    try:
        for index, frame in enumerate(frames_iter):
            first = one_size(path, index, frame, first)
            if index % every:
                continue
            if max_frames is not None and len(kept) >= max_frames:
                notes.append(f"used the first {len(kept)} frames (--max-frames); pass --every K to "
                             "sample a longer recording")
                break
            kept.append(frame if frame.shape[:2] == (h, w) else
                        cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA))
    except FrameSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file makes decoders raise anything
        raise FrameSourceError(f"source {path} cannot be read: {type(exc).__name__}: {exc}") from None
    if not kept:
        raise FrameSourceError(f"source {path} holds no frames")
    if shortfall is not None and getattr(shortfall, "shortfall", None):
        notes.append(shortfall.shortfall)
    return Source(str(path), np.stack(kept), tuple(first), notes)


def first_frame_size(path, image_topic: str | None = None) -> tuple[int, int]:
    """(H, W) of a source's first frame (the working size when nothing else gives one)."""
    path = Path(path)
    if not path.exists():
        raise FrameSourceError(f"source {path} does not exist (give a video file, an image folder "
                               "or a rosbag2)")
    it = iter(_BagFrames(path, image_topic) if is_bag(path) else open_frames(path))
    try:
        frame = next(iter(it))
    except StopIteration:
        raise FrameSourceError(f"source {path} holds no frames") from None
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
    return tuple(frame.shape[:2])
