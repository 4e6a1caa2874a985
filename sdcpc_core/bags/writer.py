"""Writing a rosbag2 (mcap or sqlite3) of labelled video through ``rosbags``: no rclpy needed.

:func:`write_bag` turns a stream of :class:`SourceFrame` into a bag with a ``sensor_msgs/msg/Image``
rgb8 topic and a mono8/mono16 ground-truth label topic. Videos are separated by a stamp jump of
``video_gap`` seconds (default 10 s), which the engine's ``max_time_gap`` rule (node default 0.5 s)
treats as a new stream; frame_id is the same for every video (the camera's). A write that fails or
is interrupted removes its partial bag, so that a retry to the same path works.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from sdcpc_core.bags.messages import (
    DEFAULT_FRAME_ID,
    DEFAULT_IMAGE_TOPIC,
    DEFAULT_LABEL_TOPIC,
    DEFAULT_START_STAMP,
    DEFAULT_VIDEO_GAP,
    IMAGE_TYPE,
    TYPESTORE,
    BagError,
    image_message,
)

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


@dataclass
class SourceFrame:
    """One frame to write: ``image`` (H, W, 3) uint8 RGB, ``labels`` (H, W) ids or None."""

    video: str
    image: np.ndarray
    labels: np.ndarray | None = None


@dataclass
class BagSummary:
    path: Path
    frames: int
    labelled: int
    videos: list[str]
    interrupted: bool = False  # Ctrl-C: the bag is complete and holds the frames written so far


def write_bag(path, frames: Iterable[SourceFrame], *, fps: float = 10.0, storage: str = "mcap",
              image_topic: str = DEFAULT_IMAGE_TOPIC, label_topic: str | None = DEFAULT_LABEL_TOPIC,
              frame_id: str = DEFAULT_FRAME_ID, start_stamp: float = DEFAULT_START_STAMP,
              video_gap: float = DEFAULT_VIDEO_GAP, total: int | None = None,
              progress: bool | None = None) -> BagSummary:
    """Write frames at ``fps``; image and label of a frame share one header and log time.

    On an error the partial bag is removed; on Ctrl-C it is closed and kept (``interrupted``)."""
    from tqdm import tqdm

    if fps <= 0 or video_gap <= 0 or start_stamp <= 0:
        raise ValueError("fps, video_gap and start_stamp must be > 0")
    if storage not in STORAGES:
        raise ValueError(f"storage {storage!r} is not one of {sorted(STORAGES)}")
    path = Path(path)
    if path.exists():
        raise BagError(f"{path} exists already; choose a new output path (rosbag2 never overwrites)")
    period = round(1e9 / fps)
    stamp = round(start_stamp * 1e9)
    videos: list[str] = []
    count = labelled = 0
    interrupted = False
    try:
        with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
            image_conn = writer.add_connection(image_topic, IMAGE_TYPE, typestore=TYPESTORE)
            label_conn = None
            bar = tqdm(frames, total=total, unit="frame", desc=f"writing {path.name}",
                       disable=None if progress is None else not progress)
            try:
                for frame in bar:
                    if videos and frame.video != videos[-1]:
                        stamp += round(video_gap * 1e9) - period
                    if not videos or frame.video != videos[-1]:
                        videos.append(frame.video)
                    image = TYPESTORE.serialize_cdr(image_message(frame.image, stamp, frame_id, "rgb8"),
                                                    IMAGE_TYPE)
                    label = None
                    if frame.labels is not None and label_topic:
                        if tuple(frame.labels.shape) != tuple(frame.image.shape[:2]):
                            raise BagError(f"{path}: video {frame.video!r} frame {count}: labels "
                                           f"{frame.labels.shape} differ from the image "
                                           f"{frame.image.shape[:2]}")
                        label = TYPESTORE.serialize_cdr(image_message(frame.labels, stamp, frame_id),
                                                        IMAGE_TYPE)
                    writer.write(image_conn, stamp, image)
                    if label is not None:
                        if label_conn is None:
                            label_conn = writer.add_connection(label_topic, IMAGE_TYPE, typestore=TYPESTORE)
                        writer.write(label_conn, stamp, label)
                        labelled += 1
                    count += 1
                    stamp += period
            except KeyboardInterrupt:  # keep what was written: the bag is closed normally
                interrupted = True
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # no stub: a retry to the same path works
        raise
    return BagSummary(path, count, labelled, videos, interrupted)
