"""Unlabelled frames for ``sdcpc adapt``: video files, image folders and rosbag2 image topics.

Each source is one video (frames in time order), resized to the working size. A source's frames
must share one size (a camera does not change resolution mid-recording; two recordings glued
together should be two sources). Bags are read with ``rosbags`` directly (no ROS, no
``sdcpc_ros``): ``sensor_msgs/Image`` in the usual 8/16-bit encodings and
``sensor_msgs/CompressedImage``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sdcpc_core.frames import FrameSourceError, open_frames

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


def _bag_frames(path: Path, topic: str | None):
    """Yield (H, W, 3) uint8 RGB frames of the bag's image topic in log-time order."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    try:  # message definitions from the bag; the standard ones when it carries none
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED))
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for damaged bags
        raise FrameSourceError(f"cannot open bag {path}: {type(exc).__name__}: {exc}") from None
    try:
        images = {c.topic: c for c in reader.connections if c.msgtype in IMAGE_TYPES}
        if topic is None:
            if len(images) != 1:
                found = ", ".join(sorted(images)) or "none"
                raise FrameSourceError(f"bag {path} has {len(images)} image topics ({found}); "
                                       "choose one with --image-topic")
            topic = next(iter(images))
        if topic not in images:
            found = ", ".join(f"{c.topic} ({c.msgtype})" for c in reader.connections) or "none"
            raise FrameSourceError(f"bag {path} has no image topic {topic!r}; its topics: {found}")
        conn = images[topic]
        for index, (_, _, data) in enumerate(reader.messages([conn])):
            try:
                msg = reader.deserialize(data, conn.msgtype)
                yield _image_array(msg, conn.msgtype)
            except FrameSourceError as exc:
                raise FrameSourceError(f"bag {path}, {topic} message {index}: {exc}") from None
            except Exception as exc:  # noqa: BLE001
                raise FrameSourceError(f"bag {path}, {topic} message {index} cannot be decoded: "
                                       f"{type(exc).__name__}: {exc}") from None
    finally:
        reader.close()


def _image_array(msg, msgtype: str) -> np.ndarray:
    """A deserialised Image / CompressedImage -> (H, W, 3) uint8 RGB."""
    if msgtype.endswith("CompressedImage"):
        bgr = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FrameSourceError(f"compressed image ({msg.format!r}) cannot be decoded")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    enc, h, w, step = str(msg.encoding), int(msg.height), int(msg.width), int(msg.step)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1,
                "mono16": 2, "16UC1": 2}
    if enc not in channels:
        raise FrameSourceError(f"image encoding {enc!r} is not supported here (rgb8, bgr8, rgba8, "
                               "bgra8, mono8, mono16); record or convert a colour image topic")
    size = channels[enc]
    data = np.asarray(msg.data, dtype=np.uint8)
    if h < 1 or w < 1 or step < w * size or data.size < h * step:
        raise FrameSourceError(f"image {w}x{h} {enc} with step {step} holds {data.size} bytes")
    rows = data[: h * step].reshape(h, step)[:, : w * size]
    if size == 2:
        big = bool(msg.is_bigendian)
        gray = rows.reshape(h, w, 2)[..., 0 if big else 1]  # the high byte
        return np.repeat(gray[..., None], 3, axis=2)
    pixels = rows.reshape(h, w, size)
    if size == 1:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3] if enc.startswith("rgb") else pixels[..., 2::-1])


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
        frames_iter, shortfall = _bag_frames(path, image_topic), None
    else:
        frames = open_frames(path)
        frames_iter, shortfall = frames, frames
    kept, first, notes = [], None, []
    h, w = size
    try:
        for index, frame in enumerate(frames_iter):
            if first is None:
                first = frame.shape[:2]
            elif frame.shape[:2] != first:
                raise FrameSourceError(
                    f"source {path}: frame {index} is {frame.shape[1]}x{frame.shape[0]} but the first "
                    f"frame is {first[1]}x{first[0]}; one source is one camera at one size — split "
                    "the recording into sources of one size each")
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
    it = _bag_frames(path, image_topic) if is_bag(path) else iter(open_frames(path))
    try:
        frame = next(iter(it))
    except StopIteration:
        raise FrameSourceError(f"source {path} holds no frames") from None
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
    return tuple(frame.shape[:2])
