"""rosbag2 (mcap, sqlite3) reading and writing through ``rosbags`` only: no rclpy needed.

Writing: :func:`write_bag` turns a stream of :class:`SourceFrame` (image + optional labels) into a
bag with an ``sensor_msgs/msg/Image`` rgb8 topic and a mono8/mono16 ground-truth label topic; the
``*_frames`` functions read image folders, video files, VSPW, Cityscapes sequences and the
synthetic generator. Videos are separated by a stamp jump of ``video_gap`` seconds (default 10 s),
which the engine's ``max_time_gap`` rule (node default 0.5 s) treats as a new stream; frame_id is
the same for every video (the camera's).

Reading: :class:`BagReader` lists topics, yields raw messages in log-time order and decodes them
with errors that name the bag, topic and message; a truncated MCAP file (no footer: the recorder
died) is salvaged by scanning its records up to the damage.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from sdcpc_ros.conversions import labels_to_array

IMAGE_TYPE = "sensor_msgs/msg/Image"
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_LABEL_TOPIC = "/camera/labels_gt"
DEFAULT_FRAME_ID = "camera"
DEFAULT_START_STAMP = 1_700_000_000.0  # seconds; stamps must be > 0 (0 means "unset" to the node)
DEFAULT_VIDEO_GAP = 10.0
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
TYPESTORE = get_typestore(Stores.ROS2_KILTED)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


class BagError(RuntimeError):
    """A bag that cannot be read or written as asked; the message names the bag (and topic/frame)."""


class BagDamaged(BagError):
    """Reading stopped part-way: messages before ``position`` were delivered."""


# ---------------------------------------------------------------------------------------------
# messages
def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def format_stamp(ns: int | None) -> str:
    return "?" if ns is None else f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def image_message(array: np.ndarray, stamp_ns: int, frame_id: str, encoding: str | None = None):
    """(H, W, 3) uint8 -> rgb8, (H, W) integer labels -> mono8 (< 256) or mono16; rosbags type."""
    a = np.asarray(array)
    if encoding is None:
        encoding = "rgb8" if a.ndim == 3 else ("mono8" if a.size == 0 or a.max() < 256 else "mono16")
    dtype = {"rgb8": "u1", "mono8": "u1", "mono16": "<u2"}[encoding]
    if (a.ndim == 3) != (encoding == "rgb8") or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"{encoding} needs {'(H, W, 3)' if encoding == 'rgb8' else '(H, W)'}, got {a.shape}")
    a = np.ascontiguousarray(a, dtype=dtype)
    types = TYPESTORE.types
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                                   nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id)
    return types[IMAGE_TYPE](header=header, height=a.shape[0], width=a.shape[1], encoding=encoding,
                             is_bigendian=0, step=int(a.strides[0]), data=a.reshape(-1).view(np.uint8))


def labels_from_message(msg) -> np.ndarray:
    """mono8/8UC1 -> (H, W) uint8, mono16/16UC1 -> uint16; any row padding; duck-typed message."""
    return labels_to_array(msg)


# ---------------------------------------------------------------------------------------------
# writing
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


def write_bag(path, frames: Iterable[SourceFrame], *, fps: float = 10.0, storage: str = "mcap",
              image_topic: str = DEFAULT_IMAGE_TOPIC, label_topic: str | None = DEFAULT_LABEL_TOPIC,
              frame_id: str = DEFAULT_FRAME_ID, start_stamp: float = DEFAULT_START_STAMP,
              video_gap: float = DEFAULT_VIDEO_GAP, total: int | None = None,
              progress: bool | None = None) -> BagSummary:
    """Write frames at ``fps``; image and label of a frame share one header and log time."""
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
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
        image_conn = writer.add_connection(image_topic, IMAGE_TYPE, typestore=TYPESTORE)
        label_conn = None
        bar = tqdm(frames, total=total, unit="frame", desc=f"writing {path.name}",
                   disable=None if progress is None else not progress)
        for frame in bar:
            if videos and frame.video != videos[-1]:
                stamp += round(video_gap * 1e9) - period
            if not videos or frame.video != videos[-1]:
                videos.append(frame.video)
            writer.write(image_conn, stamp, TYPESTORE.serialize_cdr(
                image_message(frame.image, stamp, frame_id, "rgb8"), IMAGE_TYPE))
            if frame.labels is not None and label_topic:
                if tuple(frame.labels.shape) != tuple(frame.image.shape[:2]):
                    raise BagError(f"{path}: video {frame.video!r} frame {count}: labels "
                                   f"{frame.labels.shape} differ from the image {frame.image.shape[:2]}")
                if label_conn is None:
                    label_conn = writer.add_connection(label_topic, IMAGE_TYPE, typestore=TYPESTORE)
                writer.write(label_conn, stamp, TYPESTORE.serialize_cdr(
                    image_message(frame.labels, stamp, frame_id), IMAGE_TYPE))
                labelled += 1
            count += 1
            stamp += period
    return BagSummary(path, count, labelled, videos)


# ---------------------------------------------------------------------------------------------
# sources
def _sorted_images(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def image_folder_frames(folder, label_folder=None, video: str | None = None,
                        label_map=None) -> Iterator[SourceFrame]:
    """Images in name order; labels are the label folder's PNG with the same stem (if any)."""
    from sdcpc_core.data.clips import read_image, read_label

    folder = Path(folder)
    for path in _sorted_images(folder):
        labels = None
        if label_folder is not None and (lp := Path(label_folder) / f"{path.stem}.png").is_file():
            labels = read_label(lp)
            labels = label_map(labels) if label_map else labels
        yield SourceFrame(video or folder.name, read_image(path), labels)


def video_file_frames(path, label_folder=None) -> Iterator[SourceFrame]:
    """Frames of a video file (OpenCV); label ``<n>.png`` (any zero padding) belongs to frame n."""
    import cv2

    from sdcpc_core.data.clips import read_label

    labels_by_index = {}
    if label_folder is not None:
        for lp in Path(label_folder).glob("*.png"):
            digits = "".join(c for c in lp.stem if c.isdigit())
            if digits:
                labels_by_index[int(digits)] = lp
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    try:
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            lp = labels_by_index.get(index)
            yield SourceFrame(Path(path).stem, np.ascontiguousarray(bgr[..., ::-1]),
                              read_label(lp) if lp else None)
            index += 1
    finally:
        cap.release()
    if index == 0:
        raise BagError(f"video {path} has no readable frames")


def vspw_frames(root, videos=None, split: str | None = "val") -> Iterator[SourceFrame]:
    """VSPW ``data/<video>/origin/*.jpg`` + ``mask/*.png``, masks shifted (raw 0 -> 255, v -> v-1)."""
    from sdcpc_core.data.vspw import shift_vspw_labels

    root = Path(root)
    if videos is None:
        split_file = root / f"{split}.txt"
        videos = (split_file.read_text().split() if split and split_file.is_file()
                  else sorted(p.name for p in (root / "data").iterdir() if p.is_dir()))
    for name in videos:
        yield from image_folder_frames(root / "data" / name / "origin", root / "data" / name / "mask",
                                       video=name, label_map=shift_vspw_labels)


def cityscapes_frames(root, split: str = "val", cities=None) -> Iterator[SourceFrame]:
    """``leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``; a run of
    consecutive frame numbers is one video; labels (train ids) from ``gtFine`` where they exist."""
    from sdcpc_core.data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX
    from sdcpc_core.data.clips import read_image, read_label

    base = Path(root) / "leftImg8bit_sequence" / split
    if not base.is_dir():
        raise FileNotFoundError(f"no Cityscapes sequence folder {base}")
    for city_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        if cities and city_dir.name not in cities:
            continue
        previous = None
        for path in sorted(city_dir.glob(f"*{IMAGE_SUFFIX}")):
            city, seq, frame = path.name[: -len(IMAGE_SUFFIX)].rsplit("_", 2)
            n = int(frame)
            if previous is None or previous[0] != seq or n != previous[1] + 1:
                video = f"{city}_{seq}_{frame}"
            previous = (seq, n)
            gt = Path(root) / "gtFine" / split / city / f"{city}_{seq}_{frame}{LABEL_SUFFIX}"
            yield SourceFrame(video, read_image(path), read_label(gt) if gt.is_file() else None)


def synthetic_frames(videos: int, length: int, height: int, width: int,
                     seed: int = 0) -> Iterator[SourceFrame]:
    """The procedural generator (labels = ``SYNTHETIC_LABELS`` ids); video v uses seed + v."""
    from sdcpc_core.data.synthetic import iter_video

    for v in range(videos):
        for image, labels in iter_video(seed + v, length, height, width):
            yield SourceFrame(f"synthetic_{seed + v}", image, labels)


# ---------------------------------------------------------------------------------------------
# reading
@dataclass(frozen=True)
class TopicInfo:
    msgtype: str
    count: int | None  # None when unknown (salvaged file)


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    index: int  # position within its topic, from 0
    log_time: int  # ns
    data: bytes


class BagReader:
    """``with BagReader(path) as bag:`` -> ``bag.topics``, ``bag.messages(topics)``, ``bag.decode(m)``.

    ``path`` is a rosbag2 folder or a single ``.mcap`` / ``.db3`` file. ``damage`` says what was
    wrong when a truncated file had to be salvaged.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.damage: str | None = None
        self._reader = None
        self._salvage: list[Path] = []
        self.topics: dict[str, TopicInfo] = {}

    def __enter__(self) -> BagReader:
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags raises several types for damaged files
            self._reader = None
            mcaps = ([self.path] if self.path.suffix == ".mcap"
                     else sorted(self.path.glob("*.mcap")) if self.path.is_dir() else [])
            if not mcaps:
                raise BagError(f"bag {self.path} cannot be opened: {exc}") from None
            self._salvage = mcaps
            self.damage = (f"bag {self.path} is damaged ({exc}); its MCAP records were scanned up to "
                           "the damage and the messages before it are used")
            counts = _metadata_counts(self.path / "metadata.yaml") if self.path.is_dir() else {}
            self.topics = {t: TopicInfo(m, counts.get(t)) for t, m in _scan_channels(mcaps).items()}
            return self
        self.topics = {name: TopicInfo(info.msgtype, info.msgcount)
                       for name, info in self._reader.topics.items()}
        return self

    def __exit__(self, *exc) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001
                pass

    def describe_topics(self) -> str:
        if not self.topics:
            return "(none)"
        return ", ".join(f"{t} [{i.msgtype}{'' if i.count is None else f', {i.count} msgs'}]"
                         for t, i in sorted(self.topics.items()))

    def require(self, topic: str, msgtype: str = IMAGE_TYPE) -> None:
        """Raise BagError naming the bag and listing the topics that exist."""
        info = self.topics.get(topic)
        if info is None:
            raise BagError(f"bag {self.path} has no topic {topic!r}; topics in the bag: "
                           f"{self.describe_topics()}")
        if info.msgtype != msgtype:
            raise BagError(f"bag {self.path}: topic {topic!r} is {info.msgtype}, expected {msgtype}")

    def messages(self, topics) -> Iterator[BagMessage]:
        """Messages of ``topics`` in log-time order; :class:`BagDamaged` when reading breaks off."""
        topics = set(topics)
        counts = dict.fromkeys(topics, 0)
        last = None
        try:
            if self._reader is not None:
                conns = [c for c in self._reader.connections if c.topic in topics]
                source = ((c.topic, c.msgtype, t, d) for c, t, d in self._reader.messages(conns))
            else:
                source = _scan_messages(self._salvage, topics)
            for topic, msgtype, log_time, data in source:
                yield BagMessage(topic, msgtype, counts[topic], log_time, bytes(data))
                counts[topic] += 1
                last = (topic, counts[topic] - 1, log_time)
        except _Truncated as exc:
            self.damage = self.damage or f"bag {self.path} is damaged: {exc}"
        except Exception as exc:  # noqa: BLE001 - storage errors of every kind
            where = ("before its first message" if last is None else
                     f"after message {last[1]} of {last[0]} (log time {format_stamp(last[2])})")
            raise BagDamaged(f"bag {self.path} could not be read {where}: "
                             f"{type(exc).__name__}: {exc}") from None

    def decode(self, message: BagMessage, what: str = "message"):
        """The deserialized message; BagError naming bag, topic, ``what`` + index and log time."""
        try:
            return TYPESTORE.deserialize_cdr(message.data, message.msgtype)
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"bag {self.path}, topic {message.topic}, {what} {message.index} (log time "
                           f"{format_stamp(message.log_time)}): cannot be decoded: "
                           f"{type(exc).__name__}: {exc}") from None


# ---- salvage scanner for MCAP files without a valid footer (records: op u8, length u64, body)
class _Truncated(Exception):
    pass


_MAGIC = b"\x89MCAP0\r\n"


def _records(data: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
    pos = start
    while pos < len(data):
        if pos + 9 > len(data):
            raise _Truncated(f"record header cut at byte {pos}")
        op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        body = data[pos + 9: pos + 9 + length]
        if op == 0x06 and len(body) < length:  # a cut chunk: use its complete records
            yield op, body
            raise _Truncated(f"chunk at byte {pos} cut after {len(body)} of {length} bytes")
        if len(body) < length:
            raise _Truncated(f"record at byte {pos} cut after {len(body)} of {length} bytes")
        yield op, body
        if op in (0x02, 0x0F):  # footer, data end
            return
        pos += 9 + length


def _string(body: memoryview, pos: int) -> tuple[str, int]:
    n = struct.unpack_from("<I", body, pos)[0]
    return bytes(body[pos + 4: pos + 4 + n]).decode(), pos + 4 + n


def _scan(path: Path, schemas: dict, channels: dict) -> Iterator[tuple[int, int, memoryview]]:
    """Yield (channel id, log time, data) of every complete message record in file order."""
    data = memoryview(path.read_bytes())
    if bytes(data[:8]) != _MAGIC:
        raise BagError(f"{path} is not an MCAP file (bad magic)")
    stack = [_records(data, 8)]
    while stack:
        try:
            op, body = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        except _Truncated:
            if len(stack) > 1:  # damage inside a cut chunk: go on with the outer stream
                stack.pop()
                continue
            raise
        if op == 0x03:
            sid = struct.unpack_from("<H", body, 0)[0]
            schemas[sid], _ = _string(body, 2)
        elif op == 0x04:
            cid, sid = struct.unpack_from("<HH", body, 0)
            topic, _ = _string(body, 4)
            channels[cid] = (topic, schemas.get(sid, ""))
        elif op == 0x05:
            cid, _, log_time = struct.unpack_from("<HIQ", body, 0)
            yield cid, log_time, body[22:]
        elif op == 0x06:
            compression, pos = _string(body, 28)
            if compression:
                raise _Truncated(f"cannot salvage a {compression}-compressed chunk")
            records = body[pos + 8:]
            stack.append(_records(records, 0))


def _metadata_counts(path: Path) -> dict[str, int]:
    """Per-topic message counts from a rosbag2 metadata.yaml (what the recorder meant to write)."""
    import yaml

    try:
        info = yaml.safe_load(path.read_text())["rosbag2_bagfile_information"]
        return {t["topic_metadata"]["name"]: int(t["message_count"])
                for t in info["topics_with_message_count"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return {}


def _scan_channels(paths) -> dict[str, str]:
    schemas, channels = {}, {}
    for path in paths:
        try:
            for _ in _scan(path, schemas, channels):
                pass
        except _Truncated:
            pass
    return {topic: msgtype for topic, msgtype in channels.values()}


def _scan_messages(paths, topics) -> Iterator[tuple[str, str, int, memoryview]]:
    schemas, channels = {}, {}
    for path in paths:
        for cid, log_time, data in _scan(path, schemas, channels):
            topic, msgtype = channels.get(cid, ("", ""))
            if topic in topics:
                yield topic, msgtype, log_time, data
