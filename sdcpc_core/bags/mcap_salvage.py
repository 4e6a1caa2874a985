"""Salvage of MCAP files without a valid footer (the recorder died): their records
(op u8, length u64, body) are scanned up to the damage and the complete messages before it used."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from sdcpc_core.bags.messages import BagError


class Truncated(Exception):
    """The file ends inside a record; the message says where."""


_MAGIC = b"\x89MCAP0\r\n"


def _records(data: memoryview, start: int) -> Iterator[tuple[int, memoryview]]:
    pos = start
    while pos < len(data):
        if pos + 9 > len(data):
            raise Truncated(f"record header cut at byte {pos}")
        op, length = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        body = data[pos + 9: pos + 9 + length]
        if op == 0x06 and len(body) < length:  # a cut chunk: use its complete records
            yield op, body
            raise Truncated(f"chunk at byte {pos} cut after {len(body)} of {length} bytes")
        if len(body) < length:
            raise Truncated(f"record at byte {pos} cut after {len(body)} of {length} bytes")
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
        except Truncated:
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
                raise Truncated(f"cannot salvage a {compression}-compressed chunk")
            records = body[pos + 8:]
            stack.append(_records(records, 0))


def metadata_counts(path: Path) -> dict[str, int]:
    """Per-topic message counts from a rosbag2 metadata.yaml (what the recorder meant to write)."""
    import yaml

    try:
        info = yaml.safe_load(path.read_text())["rosbag2_bagfile_information"]
        return {t["topic_metadata"]["name"]: int(t["message_count"])
                for t in info["topics_with_message_count"]}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return {}


def scan_channels(paths) -> dict[str, str]:
    schemas, channels = {}, {}
    for path in paths:
        try:
            for _ in _scan(path, schemas, channels):
                pass
        except Truncated:
            pass
    return {topic: msgtype for topic, msgtype in channels.values()}


def scan_messages(paths, topics) -> Iterator[tuple[str, str, int, memoryview]]:
    schemas, channels = {}, {}
    for path in paths:
        for cid, log_time, data in _scan(path, schemas, channels):
            topic, msgtype = channels.get(cid, ("", ""))
            if topic in topics:
                yield topic, msgtype, log_time, data
