"""``sensor_msgs`` Image / CompressedImage / label images -> numpy, with validation.

The functions read message fields by name only (duck typing): they take a message from rclpy, from
``rosbags`` or anything with the same fields, and need neither ROS nor rclpy. Every malformed
message raises :class:`ImageConversionError` naming the field at fault, before any large
allocation. The other way (numpy -> a ROS message to publish) is ``sdcpc_ros.conversions``.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

# 8K UHD: larger frames are refused before anything is allocated for them.
DEFAULT_MAX_PIXELS = 7680 * 4320

# encoding -> (numpy dtype without byte order, channels)
_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "mono8": ("u1", 1),
    "8UC1": ("u1", 1),
    "mono16": ("u2", 1),
    "16UC1": ("u2", 1),
    "32FC1": ("f4", 1),
}
INPUT_ENCODINGS = tuple(_ENCODINGS)


class ImageConversionError(ValueError):
    """A message that cannot be turned into an image (or an array that cannot become a message)."""


def _byte_view(data, what: str) -> np.ndarray:
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints (hand-made messages)
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ImageConversionError(f"{what}.data is not a byte buffer: {exc}") from None


def _check_size(height, width, max_pixels: int, what: str) -> tuple[int, int]:
    try:
        height, width = int(height), int(width)
    except (TypeError, ValueError):
        raise ImageConversionError(
            f"{what} height/width must be integers, got {height!r} x {width!r}") from None
    if height <= 0 or width <= 0:
        raise ImageConversionError(
            f"{what} has zero size ({width}x{height}); the publisher sent an empty image")
    if height * width > max_pixels:
        raise ImageConversionError(
            f"{what} is {width}x{height} = {height * width} pixels, above the limit of "
            f"{max_pixels}; downscale at the camera or raise max_image_pixels")
    return height, width


def _unpack(msg, max_pixels: int) -> tuple[np.ndarray, str]:
    """Validate ``msg`` and return its pixels as (H, W, C) in native byte order, plus the encoding."""
    encoding = str(getattr(msg, "encoding", ""))
    if encoding not in _ENCODINGS:
        raise ImageConversionError(
            f"unsupported Image encoding {encoding!r}; supported: {', '.join(INPUT_ENCODINGS)} "
            "(convert at the source, e.g. image_proc, or publish rgb8/bgr8)")
    kind, channels = _ENCODINGS[encoding]
    height, width = _check_size(msg.height, msg.width, max_pixels, "Image")
    itemsize = np.dtype(kind).itemsize
    row_bytes = width * channels * itemsize
    step = int(msg.step)
    if step < row_bytes:
        raise ImageConversionError(
            f"Image step {step} is smaller than width*channels*bytes = {width}*{channels}*{itemsize}"
            f" = {row_bytes} for {encoding}; the publisher filled 'step' wrongly")
    buf = _byte_view(msg.data, "Image")
    if buf.size < step * height:
        raise ImageConversionError(
            f"Image data has {buf.size} bytes, fewer than step*height = {step}*{height} = "
            f"{step * height}; the message is truncated")
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    order = ">" if getattr(msg, "is_bigendian", 0) else "<"
    pixels = np.ascontiguousarray(rows).view(order + kind).reshape(height, width, channels)
    if itemsize > 1 and not pixels.dtype.isnative:
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels, encoding


def image_to_array(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``sensor_msgs/Image`` -> (H, W, 3) uint8 RGB, whatever the encoding, padding and byte order.

    mono16/16UC1 keep their high byte; 32FC1 is read as intensity in [0, 1] (clipped), like
    cv_bridge does; a NaN or infinite value is an error.
    """
    pixels, encoding = _unpack(msg, max_pixels)
    if encoding in ("rgb8", "rgba8"):
        return np.ascontiguousarray(pixels[..., :3])
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[..., 2::-1])
    gray = pixels[..., 0]
    if encoding in ("mono16", "16UC1"):
        gray = (gray >> 8).astype(np.uint8)
    elif encoding == "32FC1":
        if not np.isfinite(gray).all():
            raise ImageConversionError(
                "32FC1 Image contains NaN or infinite values; only finite intensities in [0, 1] "
                "can be segmented (depth images are not camera images)")
        gray = np.rint(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


LABEL_ENCODINGS = ("mono8", "8UC1", "mono16", "16UC1")


def labels_to_array(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A label image (class id per pixel: mono8/8UC1 or mono16/16UC1) -> (H, W) uint8 or uint16,
    any row padding and byte order; anything else is an ImageConversionError."""
    encoding = str(getattr(msg, "encoding", ""))
    if encoding not in LABEL_ENCODINGS:
        raise ImageConversionError(f"label image has encoding {encoding!r}; expected one of "
                                   f"{', '.join(LABEL_ENCODINGS)} (class ids per pixel)")
    return _unpack(msg, max_pixels)[0][..., 0]


def _png_size(data: np.ndarray) -> tuple[int, int] | None:
    if data.size >= 24 and bytes(data[12:16]) == b"IHDR":
        width, height = struct.unpack(">II", bytes(data[16:24]))
        return height, width
    return None


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(height, width) from the first start-of-frame segment, without decoding."""
    raw = data.tobytes() if data.size < 65536 else bytes(data[:65536])  # headers live at the front
    i = 2
    while i + 9 < len(raw):
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = struct.unpack(">H", raw[i + 2:i + 4])[0]
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", raw[i + 5:i + 9])
            return height, width
        i += 2 + length
    return None


def compressed_to_array(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg or png) -> (H, W, 3) uint8 RGB.

    The frame size is read from the file header and checked against ``max_pixels`` before decoding.
    """
    fmt = str(getattr(msg, "format", "")).lower()
    if "compresseddepth" in fmt:
        raise ImageConversionError(
            f"CompressedImage format {msg.format!r} is a depth image; subscribe to a colour camera")
    data = _byte_view(msg.data, "CompressedImage")
    if data.size == 0:
        raise ImageConversionError("CompressedImage has no data; the publisher sent an empty frame")
    if data[:8].tobytes() == b"\x89PNG\r\n\x1a\n":
        size = _png_size(data)
    elif data[:2].tobytes() == b"\xff\xd8":
        size = _jpeg_size(data)
    else:
        raise ImageConversionError(
            f"CompressedImage data (format {getattr(msg, 'format', '')!r}) is neither JPEG nor PNG;"
            " use image_transport 'compressed' with jpeg or png")
    if size is None:
        raise ImageConversionError(
            "CompressedImage header is corrupt (no image size found); the frame is damaged")
    _check_size(size[0], size[1], max_pixels, "CompressedImage")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[:2] != tuple(size):
        raise ImageConversionError("CompressedImage could not be decoded: corrupt JPEG/PNG data")
    return np.ascontiguousarray(bgr[..., ::-1])
