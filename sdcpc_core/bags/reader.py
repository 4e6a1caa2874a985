"""Reading a rosbag2 (mcap, sqlite3) through ``rosbags``: :class:`BagReader` lists topics, yields raw
messages in log-time order and decodes them with errors that name the bag, topic and message. A
truncated MCAP file (no footer: the recorder died) is read by :mod:`sdcpc_core.bags.mcap_salvage`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rosbags.rosbag2 import Reader

from sdcpc_core.bags.mcap_salvage import Truncated, metadata_counts, scan_channels, scan_messages
from sdcpc_core.bags.messages import IMAGE_TYPE, TYPESTORE, BagError, format_stamp


class BagDamaged(BagError):
    """Reading stopped part-way: messages before ``position`` were delivered."""


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
            counts = metadata_counts(self.path / "metadata.yaml") if self.path.is_dir() else {}
            self.topics = {t: TopicInfo(m, counts.get(t)) for t, m in scan_channels(mcaps).items()}
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
                source = scan_messages(self._salvage, topics)
            for topic, msgtype, log_time, data in source:
                yield BagMessage(topic, msgtype, counts[topic], log_time, bytes(data))
                counts[topic] += 1
                last = (topic, counts[topic] - 1, log_time)
        except Truncated as exc:
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


