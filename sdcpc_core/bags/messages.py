"""What every bag of ``sdcpc-eval`` shares: the type store, topic defaults, stamps, image messages."""

from __future__ import annotations

import numpy as np
from rosbags.typesys import Stores, get_typestore

from sdcpc_core.image_messages import ImageConversionError

IMAGE_TYPE = "sensor_msgs/msg/Image"
DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_LABEL_TOPIC = "/camera/labels_gt"
DEFAULT_FRAME_ID = "camera"
DEFAULT_START_STAMP = 1_700_000_000.0  # seconds; stamps must be > 0 (0 means "unset" to the node)
DEFAULT_VIDEO_GAP = 10.0
TYPESTORE = get_typestore(Stores.ROS2_KILTED)


class BagError(RuntimeError):
    """A bag that cannot be read or written as asked; the message names the bag (and topic/frame)."""


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def format_stamp(ns: int | None) -> str:
    return "?" if ns is None else f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def image_message(array: np.ndarray, stamp_ns: int, frame_id: str, encoding: str | None = None):
    """(H, W, 3) uint8 -> rgb8, (H, W) integer labels -> mono8 (< 256) or mono16; rosbags type.

    Values that do not fit the encoding (labels outside 0..65535) raise ImageConversionError.
    """
    a = np.asarray(array)
    if encoding is None:
        encoding = "rgb8" if a.ndim == 3 else ("mono8" if a.size == 0 or a.max() < 256 else "mono16")
    dtype = {"rgb8": "u1", "mono8": "u1", "mono16": "<u2"}[encoding]
    if (a.ndim == 3) != (encoding == "rgb8") or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"{encoding} needs {'(H, W, 3)' if encoding == 'rgb8' else '(H, W)'}, got {a.shape}")
    if a.dtype.kind in "ui":  # refused, not narrowed (as conversions.array_to_image does)
        info = np.iinfo(np.dtype(dtype))
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise ImageConversionError(
                f"{encoding} holds values in [{info.min}, {info.max}], the array has "
                f"[{a.min()}, {a.max()}]; class ids must be non-negative and below 65536")
    elif a.dtype != bool:
        raise ImageConversionError(f"{encoding} needs an integer array, got {a.dtype}")
    a = np.ascontiguousarray(a, dtype=dtype)
    types = TYPESTORE.types
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000,
                                                   nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id)
    return types[IMAGE_TYPE](header=header, height=a.shape[0], width=a.shape[1], encoding=encoding,
                             is_bigendian=0, step=int(a.strides[0]), data=a.reshape(-1).view(np.uint8))
