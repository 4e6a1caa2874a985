"""Images of a bag paired with their ground-truth labels (matched by header stamp)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from sdcpc_core.bags import BagError, BagReader, format_stamp, stamp_to_ns
from sdcpc_ros.conversions import ImageConversionError, image_to_array, labels_to_array

PAIRING_WINDOW_NS = 2_000_000_000  # how long (log time) an image waits for its label message


@dataclass
class Pair:
    """One image of the bag with its label (matched by stamp); ``error``: the image is unusable."""

    index: int
    log_time: int
    stamp: int | None = None
    frame_id: str = ""
    image: np.ndarray | None = None
    raw: bytes = b""
    labels: np.ndarray | None = None
    error: str | None = None
    label_error: str | None = None

    @property
    def stamp_s(self) -> float | None:
        return self.stamp / 1e9 if self.stamp else None  # 0 = unset, like the node

    @property
    def size(self):
        return None if self.image is None else self.image.shape[:2]


def where(bag: BagReader, topic: str, index: int, stamp: int | None) -> str:
    return f"bag {bag.path}, topic {topic}, frame {index} (stamp {format_stamp(stamp)})"


def paired_frames(bag: BagReader, image_topic: str, label_topic: str | None,
                  problems: list[str]) -> Iterator[Pair]:
    """Images in log-time order, each with the label whose header stamp equals its own.

    An image waits up to ``PAIRING_WINDOW_NS`` of log time for its label. Label messages that cannot
    be decoded or matched are described in ``problems``.
    """
    topics = [image_topic] + ([label_topic] if label_topic else [])
    pending: deque = deque()  # (Pair, decoded message or None)
    labels: dict[int, tuple] = {}  # stamp -> (BagMessage, decoded)

    def ready(now: int | None) -> bool:
        pair = pending[0][0]
        return (now is None or pair.error is not None or pair.stamp in labels or not label_topic
                or now - pair.log_time > PAIRING_WINDOW_NS)

    def finish(pair: Pair, msg) -> Pair:
        if pair.error is None:
            try:
                pair.image = image_to_array(msg)
                if not pair.image.flags.writeable:  # a view of the message bytes
                    pair.image = pair.image.copy()
            except ImageConversionError as exc:
                pair.error = f"{where(bag, image_topic, pair.index, pair.stamp)}: {exc}"
        label = labels.pop(pair.stamp, None)
        if label is not None and pair.error is None:
            try:
                pair.labels = labels_to_array(label[1])
            except ValueError as exc:
                pair.label_error = f"{where(bag, label_topic, label[0].index, pair.stamp)}: {exc}"
            else:
                if pair.labels.shape != pair.size:
                    pair.label_error = (
                        f"{where(bag, label_topic, label[0].index, pair.stamp)}: label size "
                        f"{pair.labels.shape[1]}x{pair.labels.shape[0]} differs from image "
                        f"{pair.size[1]}x{pair.size[0]}")
                    pair.labels = None
        return pair

    for m in bag.messages(topics):
        if m.topic == label_topic:
            try:
                msg = bag.decode(m)
                labels[stamp_to_ns(msg.header.stamp)] = (m, msg)
            except BagError as exc:
                problems.append(f"label not usable, its image stays unlabelled: {exc}")
        else:
            pair = Pair(m.index, m.log_time, raw=m.data)
            msg = None
            try:
                msg = bag.decode(m, "frame")
                pair.stamp, pair.frame_id = stamp_to_ns(msg.header.stamp), str(msg.header.frame_id)
            except BagError as exc:
                pair.stamp, pair.error = m.log_time, str(exc)
            pending.append((pair, msg))
        while pending and ready(m.log_time):
            yield finish(*pending.popleft())
    while pending:
        yield finish(*pending.popleft())
    if labels:
        problems.append(f"{len(labels)} label messages on {label_topic} match no image stamp, e.g. "
                        f"{', '.join(format_stamp(s) for s in sorted(labels)[:3])}")


