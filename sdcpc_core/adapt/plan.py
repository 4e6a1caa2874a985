"""Which frames ``sdcpc adapt`` uses: segments of consecutive frames spread over every source.

A recording is counted first (a video's container count, a bag's message count, an image
folder's files); nothing is decoded. When the recording (after ``--every``) holds no more than
``max_frames`` frames, all of it is used, cut into segments of at most ``segment`` frames.
Otherwise ``max_frames // clip`` clips of ``clip`` consecutive frames are spread evenly over the
whole recording, shared by the sources in proportion to their length: a 10-minute bag is sampled
from its first minute to its last, not cut after its first ``max_frames`` frames.

Segments are what the pseudo-labels (their temporal average) and the student's references see
as one video: both stay inside a segment. They are decoded one at a time
(:func:`iter_segments`): the memory a source takes does not grow with its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sdcpc_core.adapt.sources import _BagFrames, bag_image_topic, is_bag, one_size
from sdcpc_core.bags import BagError, BagReader
from sdcpc_core.frames import FrameSourceError, image_files, read_image

CLIP = 32  # frames per sampled clip (a second at 30 Hz) when the recording is longer than the budget


@dataclass(frozen=True)
class Segment:
    """Frames ``start, start+1, … start+length-1`` of source ``source`` after ``--every``."""

    source: int
    start: int
    length: int


def count_frames(path, image_topic: str | None = None) -> int:
    """A source's frame count without decoding it (the container's, the bag's or the folder's
    count). Raises FrameSourceError (one line) for a missing, empty or unreadable source."""
    path = Path(path)
    if not path.exists():
        raise FrameSourceError(f"source {path} does not exist (give a video file, an image folder "
                               "or a rosbag2)")
    if is_bag(path):
        return _bag_count(path, image_topic)
    if path.is_dir():
        files = image_files(path)  # raises for a folder without images
        return len(files)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise FrameSourceError(f"cannot open video {path} (unsupported container or codec?)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:  # a container without a count: decode to count (cheap next to the encoder)
            count = 0
            while cap.grab():
                count += 1
    finally:
        cap.release()
    if count == 0:
        raise FrameSourceError(f"source {path} holds no frames")
    return count


def _bag_count(path: Path, topic: str | None) -> int:
    try:
        with BagReader(path) as bag:
            topic, info = bag_image_topic(bag, path, topic)
            count = info.count
            if count is None:  # a damaged bag without counts: count its messages
                count = sum(1 for _ in bag.messages([topic]))
    except BagError as exc:
        raise FrameSourceError(str(exc)) from None
    if count == 0:
        raise FrameSourceError(f"source {path} holds no frames")
    return int(count)


def _chop(source: int, start: int, length: int, segment: int) -> list[Segment]:
    """``length`` consecutive frames as segments of at most ``segment`` frames, evenly sized."""
    pieces = -(-length // segment)
    bounds = np.linspace(start, start + length, pieces + 1).round().astype(int)
    return [Segment(source, int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def plan_segments(lengths: list[int], max_frames: int, segment: int, need: int,
                  clip: int = CLIP) -> list[Segment]:
    """Segments for sources of ``lengths`` frames (after ``--every``): all frames when they fit
    ``max_frames``, else evenly spread clips of ``clip`` frames (both at most ``segment`` long,
    none shorter than ``need``, the frames a target's references take)."""
    segment = max(segment, need)
    usable = [n if n >= need else 0 for n in lengths]
    if sum(usable) <= max_frames:
        return [s for i, n in enumerate(usable) if n for s in _chop(i, 0, n, segment)]
    clip = max(need, min(clip, segment, max_frames))
    clips = max(1, max_frames // clip)
    total = sum(usable)
    share = [n * clips / total for n in usable]
    counts = [int(s) for s in share]
    for i in np.argsort([c - s for c, s in zip(counts, share)])[: clips - sum(counts)]:
        counts[i] += 1  # largest remainders first
    out = []
    for i, (n, k) in enumerate(zip(usable, counts)):
        k = min(k, n // clip)
        if n and k == 0:
            k = 1  # every usable source is sampled at least once
        length = min(clip, n)
        centres = (np.arange(k) + 0.5) * n / k
        starts = np.clip((centres - length / 2).round().astype(int), 0, n - length)
        out += [Segment(i, int(s), length) for s in starts]
    return out


def segment_frames_wanted(segments: list[Segment], source: int, every: int) -> dict[int, tuple[int, int]]:
    """{raw frame index: (segment number, position in it)} for one source."""
    wanted = {}
    for number, seg in enumerate(segments):
        if seg.source == source:
            for pos in range(seg.length):
                wanted[(seg.start + pos) * every] = (number, pos)
    return wanted


def _raw_frames(path: Path, image_topic: str | None, wanted):
    """(raw index, frame or None) for every frame of a source; only the ``wanted`` indices are
    decoded (a video's other frames are grabbed and dropped, a bag's are not deserialised)."""
    if is_bag(path):
        for index, frame in enumerate(_BagFrames(path, image_topic, wanted)):
            yield index, frame
    elif path.is_dir():
        for index, file in enumerate(image_files(path)):
            yield index, (read_image(file) if index in wanted else None)
    else:
        cap = cv2.VideoCapture(str(path))
        try:
            index = 0
            while cap.grab():
                if index in wanted:
                    ok, bgr = cap.retrieve()
                    if not ok:
                        raise FrameSourceError(f"source {path}: frame {index} cannot be decoded")
                    yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                else:
                    yield index, None
                index += 1
        finally:
            cap.release()


def iter_segments(paths: list[str], segments: list[Segment], size: tuple[int, int], every: int,
                  image_topic: str | None = None, skip=frozenset(), on_frame=None):
    """Yield ``(segment number, (n, H, W, 3) uint8 RGB frames at size)`` in segment order, one
    segment in memory at a time; segments in ``skip`` (already cached) are not decoded.
    ``on_frame()`` is called for every raw frame read (progress). A segment that the source ends
    before (its container announced more frames than it holds) is yielded short; the caller
    decides. Raises FrameSourceError for mixed frame sizes and unreadable sources."""
    h, w = size
    for source, path in enumerate(map(Path, paths)):
        wanted = {k: v for k, v in segment_frames_wanted(segments, source, every).items() if v[0] not in skip}
        if not wanted:
            continue
        last_wanted = max(wanted)
        buffers: dict[int, list] = {}
        first = None
        try:
            for index, frame in _raw_frames(path, image_topic, wanted):
                if on_frame is not None:
                    on_frame()
                if frame is None:
                    continue
                first = one_size(path, index, frame, first)
                number, pos = wanted[index]
                buffers.setdefault(number, []).append(
                    frame if frame.shape[:2] == (h, w) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA))
                if pos == segments[number].length - 1:
                    yield number, np.stack(buffers.pop(number))
                if index >= last_wanted:
                    break
        except FrameSourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file makes decoders raise anything
            raise FrameSourceError(f"source {path} cannot be read: {type(exc).__name__}: {exc}") from None
        for number in sorted(buffers):  # the source ended early: what it gave
            yield number, np.stack(buffers[number])
