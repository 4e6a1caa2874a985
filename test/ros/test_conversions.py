"""conversions: round trips over random sizes, padding, byte order; rejection of bad messages."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdcpc_ros.conversions import (
    ImageConversionError,
    RawImage,
    array_to_image,
    compressed_to_array,
    image_to_array,
)

FAST = settings(max_examples=60, deadline=None)


class Compressed:
    def __init__(self, data, fmt="jpeg"):
        self.data, self.format = data, fmt


def make_image(pixels: np.ndarray, encoding: str, padding: int = 0, bigendian: bool = False):
    """Encode (H, W, C) pixels the way a camera driver would, with ``padding`` bytes per row."""
    h, w = pixels.shape[:2]
    order = ">" if bigendian else "<"
    rows = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(order)).reshape(h, -1)
    rows = rows.view(np.uint8)
    padded = np.full((h, rows.shape[1] + padding), 0xAB, dtype=np.uint8)
    padded[:, : rows.shape[1]] = rows
    return RawImage(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
                    step=padded.shape[1], data=padded.tobytes())


sizes = st.tuples(st.integers(1, 17), st.integers(1, 17))
padding = st.integers(0, 9)


@FAST
@given(size=sizes, pad=padding, seed=st.integers(0, 2**32 - 1),
       encoding=st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8"]))
def test_colour_encodings_come_back_as_rgb(size, pad, seed, encoding):
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    channels = {"rgb8": rgb, "bgr8": rgb[..., ::-1]}.get(encoding)
    if channels is None:
        alpha = np.full((*size, 1), 7, np.uint8)
        channels = np.concatenate([rgb if encoding == "rgba8" else rgb[..., ::-1], alpha], axis=2)
    out = image_to_array(make_image(channels, encoding, pad))
    assert out.dtype == np.uint8 and out.shape == (*size, 3)
    np.testing.assert_array_equal(out, rgb)


@FAST
@given(size=sizes, pad=padding, big=st.booleans(), seed=st.integers(0, 2**32 - 1),
       encoding=st.sampled_from(["mono8", "8UC1", "mono16", "16UC1"]))
def test_grey_encodings_replicate_to_three_channels(size, pad, big, seed, encoding):
    rng = np.random.default_rng(seed)
    if encoding in ("mono16", "16UC1"):
        grey = rng.integers(0, 65536, size, dtype=np.uint16)
        expected = (grey >> 8).astype(np.uint8)
    else:
        grey = expected = rng.integers(0, 256, size, dtype=np.uint8)
    out = image_to_array(make_image(grey[..., None], encoding, pad, big))
    np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2))


@FAST
@given(size=sizes, pad=padding, big=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_float_intensity_is_scaled_and_clipped(size, pad, big, seed):
    values = np.random.default_rng(seed).uniform(-0.5, 1.5, size).astype(np.float32)
    out = image_to_array(make_image(values[..., None], "32FC1", pad, big))
    expected = np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 1], expected)


@FAST
@given(size=sizes, seed=st.integers(0, 2**32 - 1),
       encoding=st.sampled_from(["mono8", "mono16", "rgb8", "bgr8", "32FC1"]))
def test_array_to_image_round_trips_through_the_reader(size, seed, encoding):
    rng = np.random.default_rng(seed)
    if encoding == "mono16":
        a = rng.integers(0, 65536, size, dtype=np.uint16)
    elif encoding == "32FC1":
        a = rng.uniform(0, 1, size).astype(np.float32)
    elif encoding in ("rgb8", "bgr8"):
        a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    else:
        a = rng.integers(0, 256, size, dtype=np.uint8)
    msg = array_to_image(a, encoding)
    assert (msg.height, msg.width, msg.encoding, msg.is_bigendian) == (*size, encoding, 0)
    assert msg.step * msg.height == len(msg.data)
    if encoding == "32FC1":
        back = np.frombuffer(msg.data, "<f4").reshape(size)
        np.testing.assert_array_equal(back, a)
    elif encoding == "mono16":
        np.testing.assert_array_equal(np.frombuffer(msg.data, "<u2").reshape(size), a)
    else:
        rgb = image_to_array(msg)
        expected = {"rgb8": a, "bgr8": a[..., ::-1] if a.ndim == 3 else a}.get(
            encoding, np.repeat(a[..., None], 3, axis=2))
        np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_png_and_jpeg_decode_to_rgb(ext):
    rgb = np.zeros((24, 40, 3), np.uint8)
    rgb[:, :20] = (250, 10, 10)  # red left half, blue right half
    rgb[:, 20:] = (10, 10, 250)
    ok, encoded = cv2.imencode(ext, rgb[..., ::-1])
    assert ok
    out = compressed_to_array(Compressed(encoded.tobytes(), ext[1:]))
    assert out.shape == (24, 40, 3)
    if ext == ".png":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert out[12, 5, 0] > 200 and out[12, 35, 2] > 200 and out[12, 5, 2] < 60


def _bad(**fields):
    base = {"height": 2, "width": 3, "encoding": "rgb8", "is_bigendian": 0, "step": 9, "data": bytes(18)}
    base.update(fields)
    return RawImage(**base)


@pytest.mark.parametrize("msg, words", [
    (_bad(encoding="yuv422"), "unsupported Image encoding 'yuv422'"),
    (_bad(encoding=""), "unsupported Image encoding ''"),
    (_bad(step=8), "step 8 is smaller than"),
    (_bad(data=bytes(17)), "fewer than step*height"),
    (_bad(height=0, data=b""), "zero size"),
    (_bad(width=0), "zero size"),
    (_bad(height=100000, width=100000, step=300000, data=b""), "above the limit"),
    (_bad(encoding="mono16", step=5, data=bytes(10)), "smaller than width*channels*bytes"),
    (_bad(data=[1, 2, 300] * 6), "not a byte buffer"),
])
def test_bad_image_messages_raise_with_a_clear_reason(msg, words):
    with pytest.raises(ImageConversionError) as err:
        image_to_array(msg)
    assert words in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_images_are_refused(bad):
    values = np.full((2, 2), 0.5, np.float32)
    values[1, 1] = bad
    with pytest.raises(ImageConversionError, match="NaN or infinite"):
        image_to_array(make_image(values[..., None], "32FC1"))


def test_size_limit_is_checked_before_reading_data():
    # 10x10 is fine at the default, refused with a small limit even though the data is complete.
    msg = make_image(np.zeros((10, 10, 3), np.uint8), "rgb8")
    assert image_to_array(msg).shape == (10, 10, 3)
    with pytest.raises(ImageConversionError, match="99"):
        image_to_array(msg, max_pixels=99)


def test_compressed_size_limit_is_checked_from_the_header():
    _, png = cv2.imencode(".png", np.zeros((50, 60, 3), np.uint8))
    with pytest.raises(ImageConversionError, match="60x50 = 3000 pixels"):
        compressed_to_array(Compressed(png.tobytes(), "png"), max_pixels=2999)
    _, jpg = cv2.imencode(".jpg", np.zeros((50, 60, 3), np.uint8))
    with pytest.raises(ImageConversionError, match="60x50 = 3000 pixels"):
        compressed_to_array(Compressed(jpg.tobytes()), max_pixels=2999)


def test_huge_declared_png_is_refused_without_decoding():
    _, png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    raw = bytearray(png.tobytes())
    raw[16:24] = (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big")  # forged IHDR
    with pytest.raises(ImageConversionError, match="above the limit"):
        compressed_to_array(Compressed(bytes(raw), "png"))


@given(junk=st.binary(min_size=0, max_size=300))
@FAST
def test_garbage_compressed_data_raises_conversion_error_only(junk):
    for prefix in (b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n"):
        try:
            out = compressed_to_array(Compressed(prefix + junk))
        except ImageConversionError:
            continue
        assert out.ndim == 3 and out.shape[2] == 3  # a valid image hidden in random bytes


def test_corrupt_and_depth_compressed_messages_are_named():
    _, jpg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ImageConversionError, match="neither JPEG nor PNG"):
        compressed_to_array(Compressed(b"GIF89a" + bytes(20)))
    with pytest.raises(ImageConversionError, match="no data"):
        compressed_to_array(Compressed(b""))
    with pytest.raises(ImageConversionError, match="corrupt"):
        compressed_to_array(Compressed(jpg.tobytes()[:4]))
    with pytest.raises(ImageConversionError, match="depth"):
        compressed_to_array(Compressed(jpg.tobytes(), "16UC1; compressedDepth png"))


@pytest.mark.parametrize("array_, encoding, words", [
    (np.zeros((2, 2, 3), np.uint8), "mono8", "(H, W) array"),
    (np.zeros((2, 2), np.uint8), "rgb8", "(H, W, 3) array"),
    (np.zeros((0, 2), np.uint8), "mono8", "non-empty"),
    (np.full((2, 2), 300, np.int32), "mono8", "use mono16"),
    (np.zeros((2, 2), np.uint8), "yuv422", "cannot publish encoding"),
    (np.zeros((2, 2), np.float32), "mono16", "integer array"),
])
def test_array_to_image_refuses_mismatched_arrays(array_, encoding, words):
    with pytest.raises(ImageConversionError) as err:
        array_to_image(array_, encoding)
    assert words in str(err.value)


def test_array_to_image_builds_a_real_ros_message_when_available():
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 34
    msg = array_to_image(np.arange(6, dtype=np.uint16).reshape(2, 3), "mono16", header)
    assert isinstance(msg, Image)
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 34
    assert (msg.step, msg.is_bigendian, bytes(msg.data[:4])) == (6, 0, b"\x00\x00\x01\x00")


def test_labels_to_array_keeps_class_ids_and_refuses_colour():
    from sdcpc_ros.conversions import RawImage, labels_to_array

    ids = np.array([[0, 300], [65535, 7]], dtype=">u2")
    rows = np.zeros((2, 6), np.uint8)  # 4 bytes of big-endian pixels + 2 bytes padding per row
    rows[:, :4] = ids.view(np.uint8).reshape(2, 4)
    msg = RawImage(height=2, width=2, encoding="16UC1", is_bigendian=1, step=6, data=rows.tobytes())
    out = labels_to_array(msg)
    assert out.dtype == np.uint16 and out.tolist() == [[0, 300], [65535, 7]]
    with pytest.raises(ImageConversionError, match="label image has encoding 'rgb8'"):
        labels_to_array(RawImage(height=1, width=1, encoding="rgb8", step=3, data=b"\0\0\0"))
