"""numpy -> ``sensor_msgs/Image`` for publishing, and the message -> numpy readers of
:mod:`sdcpc_core.image_messages` (ROS-free, shared with bag reading and ``sdcpc adapt``) under the
names the node uses.

:func:`array_to_image` builds a real ``sensor_msgs.msg.Image`` when that is importable and a
:class:`RawImage` with the same fields otherwise.
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdcpc_core.image_messages import (  # noqa: F401  (the node's names for them)
    DEFAULT_MAX_PIXELS,
    INPUT_ENCODINGS,
    LABEL_ENCODINGS,
    ImageConversionError,
    compressed_to_array,
    image_to_array,
    labels_to_array,
)

OUTPUT_ENCODINGS = ("mono8", "mono16", "rgb8", "bgr8", "32FC1")
# Output encoding -> (dtype, number of dimensions of the array it takes).
_OUTPUT_LAYOUT = {"mono8": ("u1", 2), "mono16": ("u2", 2), "rgb8": ("u1", 3),
                  "bgr8": ("u1", 3), "32FC1": ("f4", 2)}


@dataclass
class RawImage:
    """The fields of ``sensor_msgs/msg/Image``, for use where the ROS message is not importable."""

    header: Any = None
    height: int = 0
    width: int = 0
    encoding: str = ""
    is_bigendian: int = 0
    step: int = 0
    data: Any = field(default_factory=bytes, repr=False)


def _image_class():
    try:
        from sensor_msgs.msg import Image
    except ImportError:
        return RawImage
    return Image


def array_to_image(array_: np.ndarray, encoding: str, header=None):
    """(H, W) or (H, W, 3) array -> ``sensor_msgs/Image`` (or :class:`RawImage`) with ``header``.

    Encodings: mono8 and mono16 (H, W) integer, rgb8/bgr8 (H, W, 3) uint8, 32FC1 (H, W) float.
    Data is written little-endian and unpadded (``step = width * channels * bytes``).
    """
    if encoding not in _OUTPUT_LAYOUT:
        raise ImageConversionError(
            f"cannot publish encoding {encoding!r}; supported: {', '.join(OUTPUT_ENCODINGS)}")
    kind, ndim = _OUTPUT_LAYOUT[encoding]
    a = np.asarray(array_)
    if a.ndim != ndim or (ndim == 3 and a.shape[2] != 3) or a.shape[0] == 0 or a.shape[1] == 0:
        expected = "(H, W, 3)" if ndim == 3 else "(H, W)"
        raise ImageConversionError(f"{encoding} needs a non-empty {expected} array, got {a.shape}")
    target = np.dtype("<" + kind)
    if a.dtype.kind in "ui" and kind != "f4":
        info = np.iinfo(target)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise ImageConversionError(
                f"{encoding} holds values in [{info.min}, {info.max}], the array has "
                f"[{a.min()}, {a.max()}]; use mono16 for more than 255 classes")
    elif a.dtype.kind not in "uif" and a.dtype != bool:
        raise ImageConversionError(f"cannot publish a {a.dtype} array as {encoding}")
    elif a.dtype.kind == "f" and kind != "f4":
        raise ImageConversionError(f"{encoding} needs an integer array, got {a.dtype}")
    a = np.ascontiguousarray(a, dtype=target)
    msg = _image_class()()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(a.strides[0])
    data = array.array("B")
    data.frombytes(a.reshape(-1).view(np.uint8))
    msg.data = data
    return msg
