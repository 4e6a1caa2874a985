"""Hostile input: fuzzed image messages, a garbage burst into the running node, bad checkpoints and
parameter values at start-up and at run time.

``test_conversions.py`` covers each encoding's round trip and one example per refusal; here
hypothesis mixes every field at once (encoding, size, step, byte order, data length), puts NaN/inf
anywhere (including row padding, which must be ignored), damages real JPEG/PNG files, and checks that
``max_image_pixels`` refuses absurd images without allocating for them.
"""

import time
import tracemalloc

import cv2
import numpy as np
import psutil
import pytest
import rclpy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_harness import Client, domain_id_for, node_output, run_node, stop_node
from sensor_msgs.msg import Image
from std_msgs.msg import String
from test_node_e2e import diagnostic_value, frame_info, image_msg, stamp_of, synthetic_video

from sdcpc_core.classes import LabelSet
from sdcpc_core.engine import FrameError
from sdcpc_ros.conversions import ImageConversionError, RawImage, compressed_to_array, image_to_array
from sdcpc_ros.node import FrameInfo, SegmentationNode

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "mono16", "16UC1", "32FC1"]
BYTES = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "mono16": 2,
         "16UC1": 2, "32FC1": 4}
RELIABLE = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)


class Compressed:
    def __init__(self, data, fmt="jpeg"):
        self.data, self.format = data, fmt


# -- conversions, every field at once ------------------------------------------------------------

@FUZZ
@given(encoding=st.one_of(st.sampled_from(ENCODINGS), st.text(max_size=12)),
       height=st.integers(-3, 40), width=st.integers(-3, 40), step=st.integers(-5, 400),
       bigendian=st.integers(0, 1), extra=st.integers(-200, 200), seed=st.integers(0, 2**31))
def test_any_image_fields_give_rgb_or_a_conversion_error(encoding, height, width, step, bigendian,
                                                         extra, seed):
    size = max(0, max(step, 0) * max(height, 0) + extra)  # truncated, exact or oversized data
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    msg = RawImage(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                   step=step, data=data)
    try:
        out = image_to_array(msg)
    except ImageConversionError:
        complete = (encoding in BYTES and height > 0 and width > 0
                    and step >= width * BYTES[encoding] and size >= step * height)
        assert not complete or encoding == "32FC1"  # 32FC1: random bytes may be NaN/inf
        return
    assert encoding in BYTES and out.shape == (height, width, 3) and out.dtype == np.uint8
    assert size >= step * height >= width * BYTES[encoding] * height  # never read past the data


@FUZZ
@given(height=st.integers(1, 12), width=st.integers(1, 12), pad=st.integers(0, 3),
       bigendian=st.booleans(), bad=st.sampled_from([np.nan, np.inf, -np.inf]), data=st.data())
def test_non_finite_floats_refused_anywhere_in_the_image_but_not_in_row_padding(
        height, width, pad, bigendian, bad, data):
    values = np.full((height, width + pad), 0.25, np.float32)
    where = data.draw(st.sampled_from(["pixel", "padding", "none"]))
    if where == "pixel":
        values[data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))] = bad
    elif where == "padding" and pad:
        values[data.draw(st.integers(0, height - 1)), width + data.draw(st.integers(0, pad - 1))] = bad
    raw = values.astype(">f4" if bigendian else "<f4").tobytes()
    msg = RawImage(height=height, width=width, encoding="32FC1", is_bigendian=int(bigendian),
                   step=(width + pad) * 4, data=raw)
    if where == "pixel":
        with pytest.raises(ImageConversionError, match="NaN or infinite"):
            image_to_array(msg)
    else:
        assert (image_to_array(msg) == 64).all()  # 0.25 * 255, rounded


def _encoded(ext: str) -> bytes:
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :24] = (240, 30, 30)
    rgb[8:24, 30:40] = (20, 200, 90)
    return cv2.imencode(ext, rgb[..., ::-1])[1].tobytes()


JPEG, PNG = _encoded(".jpg"), _encoded(".png")


@FUZZ
@given(which=st.sampled_from(["jpeg", "png"]), data=st.data())
def test_damaged_jpeg_and_png_decode_to_their_size_or_raise_a_conversion_error(which, data):
    raw = bytearray(JPEG if which == "jpeg" else PNG)
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    raw = raw[: data.draw(st.integers(1, len(raw)))]  # truncated anywhere (or not at all)
    try:
        out = compressed_to_array(Compressed(bytes(raw), which))
    except ImageConversionError:
        return
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
    assert out.size <= 3 * 2**16 * 2**16


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except ImageConversionError:
        pass
    else:
        raise AssertionError("the absurd image was accepted")
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 2**32 - 1), width=st.integers(1, 2**32 - 1),
       limit=st.integers(1, 7680 * 4320), encoding=st.sampled_from(ENCODINGS))
def test_max_image_pixels_refuses_absurd_images_before_allocating(height, width, limit, encoding):
    if height * width <= limit:
        return
    msg = RawImage(height=height, width=width, encoding=encoding,
                   step=min(width * BYTES[encoding], 2**32 - 1), data=bytes(64))
    assert _peak_bytes(lambda: image_to_array(msg, max_pixels=limit)) < 64 * 1024


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 65535), width=st.integers(1, 65535), which=st.sampled_from(["png", "jpeg"]))
def test_forged_compressed_headers_are_refused_before_decoding(height, width, which):
    limit = 640 * 480
    if height * width <= limit:
        return
    raw = bytearray(PNG if which == "png" else JPEG)
    if which == "png":
        raw[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    else:
        sof = next(i for i in range(2, len(raw) - 9) if raw[i] == 0xFF and raw[i + 1] == 0xC0)
        raw[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    peak = _peak_bytes(lambda: compressed_to_array(Compressed(bytes(raw), which), max_pixels=limit))
    assert peak < 256 * 1024


# -- the running node: a garbage burst, then good frames -----------------------------------------

def _garbage(rng, n: int) -> list[Image]:
    msgs = []
    for i in range(n):
        kind = i % 5
        h, w = int(rng.integers(0, 64)), int(rng.integers(0, 64))
        enc = str(rng.choice(ENCODINGS + ["yuv422", "", "rgb16", "RGB8"]))
        step = int(rng.integers(0, 300))
        # never a complete image: data shorter than step * height (or a zero size / zero step)
        data = rng.integers(0, 256, int(rng.integers(0, max(step * h, 1))), dtype=np.uint8).tobytes()
        if kind == 0:  # absurd size, tiny data: must be refused before allocating 30 GB
            h, w, step, data = 100_000, 100_000, 300_000, bytes(16)
        elif kind == 1:  # NaN float image
            h, w, enc, step = 4, 4, "32FC1", 16
            data = np.full(16, np.nan, np.float32).tobytes()
        msgs.append(Image(height=h, width=w, encoding=enc, step=step, data=data))
        msgs[-1].header.stamp.sec, msgs[-1].header.frame_id = 500, "garbage"
    return msgs


@pytest.fixture(scope="module")
def node_proc(tiny_checkpoint, tmp_path_factory):
    domain = domain_id_for(__name__)
    proc = run_node({"checkpoint": str(tiny_checkpoint), "input_size": "[64,64]",
                     "reliable_qos": "true", "device": "cpu", "diagnostics_period": "0.2"},
                    domain, tmp_path_factory.mktemp("logs"))
    client = Client(domain)
    yield proc, client
    client.close()
    stop_node(proc)
    with open(proc.log.name) as log:
        assert proc.returncode == 0, log.read()[-3000:]


def test_garbage_burst_then_good_frames_all_accounted(node_proc):
    proc, client = node_proc
    node = client.node
    labels, infos, diags = [], [], []
    node.create_subscription(Image, "/sdcpc/labels", labels.append, RELIABLE)
    node.create_subscription(FrameInfo or String, "/sdcpc/frame_info", infos.append, RELIABLE)
    from diagnostic_msgs.msg import DiagnosticArray
    node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    pub = node.create_publisher(Image, "/image", RELIABLE)
    client.wait_for(lambda: pub.get_subscription_count() > 0 and node.count_publishers("/sdcpc/labels")
                    and diags, "the node", proc=proc)
    rss_before = psutil.Process(proc.pid).memory_info().rss
    good = synthetic_video(3)

    def send_good(t):
        msg = image_msg(good[t], sec=600, nanosec=t * 100_000_000)
        pub.publish(msg)
        client.wait_for(lambda: labels and stamp_of(labels[-1]) == stamp_of(msg)
                        and infos and stamp_of(infos[-1]) == stamp_of(msg),
                        f"the good frame {t}", proc=proc)

    send_good(0)
    base = frame_info(infos[-1])
    garbage = _garbage(np.random.default_rng(1), 300)
    # Latest frame wins, so in a burst any garbage message may be replaced before the worker takes
    # it (counted as dropped, not rejected). The first few are paced, one at a time, so refusals
    # are certain to happen; then the rest arrive as a burst.
    paced = 5
    for i, msg in enumerate(garbage[:paced]):
        pub.publish(msg)
        client.wait_for(lambda i=i: diagnostic_value(diags, "rejected frames") == base["rejected_frames"] + i + 1,
                        f"garbage message {i} to be refused", proc=proc)
    for msg in garbage[paced:]:
        pub.publish(msg)
    for t in (1, 2):
        send_good(t)
    end = frame_info(infos[-1])
    rejected = end["rejected_frames"] - base["rejected_frames"]
    dropped = end["dropped_frames"] - base["dropped_frames"]
    assert rejected >= paced
    # every garbage message was refused or dropped (none segmented), the good ones answered
    assert rejected + dropped == len(garbage), (rejected, dropped)
    assert [stamp_of(m)[2] for m in labels] == ["camera"] * 3
    assert diagnostic_value(diags, "failed frames") == 0  # refused as input, never a segmentation failure
    assert psutil.Process(proc.pid).memory_info().rss < rss_before + 300 * 2**20
    assert proc.poll() is None


# -- bad checkpoints and parameter values at start-up ---------------------------------------------

def _random_bytes(path, _):
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _labels_disagree(path, tiny):
    obj = torch.load(tiny, weights_only=True)
    obj["labels"] = LabelSet.from_names(["a", "b"]).to_dict()
    torch.save(obj, path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("pwned",))


def _pickled_code(path, _):
    torch.save({"format": "sdcpc", "version": 1, "state_dict": _RunsCode()}, path)


@pytest.mark.parametrize("make, words", [
    (_random_bytes, "not a readable PyTorch checkpoint"),
    (_pickled_code, "refusing to load"),
    (_labels_disagree, "5 classes but the label set 2 class names"),
])
def test_bad_checkpoint_refused_at_start_up(make, words, tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.pt"
    make(bad, tiny_checkpoint)
    proc = run_node({"checkpoint": str(bad), "device": "cpu"}, domain_id_for(words), tmp_path,
                    wait=True)
    out = node_output(proc)
    proc.log.close()
    assert proc.returncode == 2, out
    assert "sdcpc_node: parameter 'checkpoint'" in out and words in out, out
    assert "Traceback" not in out and "pwned" not in out, out


@pytest.mark.parametrize("params, name, words", [
    ({"max_image_pixels": "0"}, "max_image_pixels", "Min: 1"),
    ({"diagnostics_period": "0.001"}, "diagnostics_period", "Min: 0.1, Max: 60.0"),
])
def test_parameters_not_covered_by_test_node_startup_exit_non_zero(params, name, words,
                                                                   tiny_checkpoint, tmp_path):
    proc = run_node({"checkpoint": str(tiny_checkpoint), **params}, domain_id_for(name), tmp_path,
                    wait=True)
    out = node_output(proc)
    proc.log.close()
    assert proc.returncode == 2, out
    assert name in out and words in out, out


# -- dynamic parameter updates (in-process node: the same validation path) -------------------------

@pytest.fixture
def local_node(tiny_checkpoint):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id_for("params_in_process"))
    node = SegmentationNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(tiny_checkpoint)), Parameter("device", value="cpu")])
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


@pytest.mark.parametrize("name, value, words", [
    ("max_image_pixels", 0, "max_image_pixels"),
    ("max_image_pixels", -5, "max_image_pixels"),
    ("max_time_gap", 1e6, "max_time_gap"),
    ("max_time_gap", 0.0, "max_time_gap"),
    ("max_time_gap", "fast", "Wrong parameter type"),  # rclpy's words: no name
    ("dynamic_classes", ["person", "dragon"], "dragon"),
    ("input_size", [64, 64], "input_size"),
    ("checkpoint", "/tmp/other.pt", "checkpoint"),
    ("propagation_flow", "slow", "propagation_flow"),
])
def test_dynamic_updates_out_of_range_are_refused_and_change_nothing(local_node, name, value, words):
    before = {n: local_node.get_parameter(n).value for n in ("max_image_pixels", "max_time_gap")}
    try:
        result = local_node.set_parameters([Parameter(name, value=value)])[0]
        ok, reason = result.successful, result.reason
    except (rclpy.exceptions.InvalidParameterTypeException,
            rclpy.exceptions.ParameterImmutableException) as exc:
        ok, reason = False, str(exc)
    assert not ok
    assert words in reason, reason
    assert {n: local_node.get_parameter(n).value for n in before} == before
    assert local_node._max_pixels == before["max_image_pixels"]
    assert local_node._seg.max_time_gap == before["max_time_gap"]


def test_dynamic_propagation_flow_replaces_the_propagator(local_node):
    assert local_node._propagator.preset == "medium"
    assert local_node.set_parameters([Parameter("propagation_flow", value="fast")])[0].successful
    assert local_node._propagator.preset == "fast"


def test_dynamic_max_image_pixels_applies_to_the_next_frame(local_node):
    assert local_node.set_parameters([Parameter("max_image_pixels", value=1500)])[0].successful
    local_node._segment(image_msg(np.zeros((32, 40, 3), np.uint8), 1), 0.0)  # 1280 pixels: fine
    with pytest.raises(ImageConversionError, match="above the limit of 1500"):
        local_node._segment(image_msg(np.zeros((40, 40, 3), np.uint8), 2), 0.0)


def test_frames_too_small_for_the_network_are_refused_not_failed(local_node):
    # no input_size: the network sees the image's own size, and 8x12 cannot be encoded (MiT strides)
    local_node._on_image(image_msg(np.zeros((8, 12, 3), np.uint8), 1), {})
    deadline = time.monotonic() + 60
    while local_node._rejected + local_node._failed == 0:  # safety limit only
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert (local_node._rejected, local_node._failed) == (1, 0)
    with pytest.raises(FrameError, match="12x8 is smaller than 32 pixels.*input_size"):
        local_node._segment(image_msg(np.zeros((8, 12, 3), np.uint8), 2), 0.0)
