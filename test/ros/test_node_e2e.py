"""The node end to end: a real ``sdcpc_node`` process, real DDS, a synthetic video from the test."""

import json

import numpy as np
import pytest
import torch
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import (
    CLASS_NAMES,
    Client,
    domain_id_for,
    node_output,
    run_node,
    stop_node,
)
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.settings import TOOL_DEFAULTS
from sdcpc_ros.conversions import array_to_image
from sdcpc_ros.node import FrameInfo, LabelInfo

torch.set_num_threads(1)  # the node runs with OMP_NUM_THREADS=1: same arithmetic, same labels
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
OUTPUTS = ("labels", "color", "overlay", "confidence", "dynamic_mask")
H, W = 48, 80


def synthetic_video(n: int, seed: int = 0) -> list[np.ndarray]:
    """A bright square moving over a gradient: consecutive frames differ, deterministically."""
    rng = np.random.default_rng(seed)
    base = np.stack(np.meshgrid(np.linspace(0, 255, W), np.linspace(0, 255, H)), -1)
    frames = []
    for t in range(n):
        frame = np.zeros((H, W, 3), np.uint8)
        frame[..., :2] = base.astype(np.uint8)
        frame[..., 2] = rng.integers(0, 60, (H, W))
        frame[10:30, 5 + 6 * t:25 + 6 * t] = (250, 240, 30)
        frames.append(frame)
    return frames


def image_msg(frame, sec, nanosec=0, frame_id="camera", encoding="rgb8"):
    from std_msgs.msg import Header

    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = sec, nanosec
    if encoding == "bgr8":
        return array_to_image(frame[..., ::-1], "bgr8", header)
    return array_to_image(frame, "rgb8", header)


def as_array(msg) -> np.ndarray:
    dtype = {"mono8": np.uint8, "rgb8": np.uint8, "mono16": "<u2", "32FC1": "<f4"}[msg.encoding]
    a = np.frombuffer(bytes(msg.data), dtype)
    return a.reshape(msg.height, msg.width, -1).squeeze(-1) if msg.encoding != "rgb8" \
        else a.reshape(msg.height, msg.width, 3)


NODE_PARAMS = {"input_size": "[64,64]", "dynamic_classes": '["person","car"]',
               "publish_overlay": "true", "publish_confidence": "true", "reliable_qos": "true",
               "max_time_gap": "0.5", "device": "cpu", "diagnostics_period": "0.2"}


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    domain = domain_id_for(__name__)
    proc = run_node({**NODE_PARAMS, "checkpoint": str(tiny_checkpoint)}, domain,
                    tmp_path_factory.mktemp("logs"))
    client = Client(domain)
    node = client.node
    got = {name: [] for name in (*OUTPUTS, "frame_info", "label_info", "diagnostics")}
    for name in OUTPUTS:
        node.create_subscription(Image, f"/sdcpc/{name}", got[name].append, RELIABLE)
    node.create_subscription(FrameInfo or __import__("std_msgs.msg").msg.String,
                             "/sdcpc/frame_info", got["frame_info"].append, RELIABLE)
    node.create_subscription(LabelInfo or __import__("std_msgs.msg").msg.String,
                             "/sdcpc/label_info", got["label_info"].append, LATCHED)
    from diagnostic_msgs.msg import DiagnosticArray
    node.create_subscription(DiagnosticArray, "/diagnostics", got["diagnostics"].append, 10)
    pub = node.create_publisher(Image, "/image", RELIABLE)
    client.wait_for(lambda: got["label_info"] and pub.get_subscription_count() > 0
                    and all(client.node.count_publishers(f"/sdcpc/{n}") for n in OUTPUTS),
                    "the node to start", proc=proc)
    yield proc, client, pub, got
    client.close()
    stop_node(proc)
    assert proc.returncode == 0, node_output(proc)[-3000:]


def frame_info(msg) -> dict:
    if FrameInfo is None:
        return json.loads(msg.data)
    return {"frames_aggregated": msg.frames_aggregated, "dropped_frames": msg.dropped_frames,
            "rejected_frames": msg.rejected_frames, "reset_reason": msg.reset_reason,
            "inference_ms": msg.inference_ms, "node_latency_ms": msg.node_latency_ms}


def reset(client, proc):
    cli = client.node.create_client(Trigger, "/sdcpc/reset")
    client.wait_for(cli.service_is_ready, "~/reset", proc=proc)
    future = cli.call_async(Trigger.Request())
    client.wait_for(future.done, "the reset reply", proc=proc)
    assert future.result().success
    client.node.destroy_client(cli)


def stamp_of(msg) -> tuple:
    header = msg.header if hasattr(msg, "header") else None
    if header is None:  # std_msgs/String JSON frame_info
        h = json.loads(msg.data)["header"]
        return h["stamp"]["sec"], h["stamp"]["nanosec"], h["frame_id"]
    return header.stamp.sec, header.stamp.nanosec, header.frame_id


def wait_for_frame(client, proc, got, msg, outputs=OUTPUTS):
    """Wait until every output of ``msg`` (matched by its header) has arrived."""
    key = stamp_of(msg)
    client.wait_for(lambda: all(got[n] and stamp_of(got[n][-1]) == key
                                for n in (*outputs, "frame_info")),
                    f"the outputs of the frame stamped {key}", proc=proc)


def send_and_wait(client, proc, pub, got, msg):
    """Publish one frame and wait for all its outputs: a stream with no drops."""
    pub.publish(msg)
    wait_for_frame(client, proc, got, msg)


def diagnostic_value(diagnostics, key):
    """The integer value ``key`` in the newest of the received DiagnosticArrays (0 if none)."""
    values = [int(v.value) for d in diagnostics for s in d.status for v in s.values if v.key == key]
    return values[-1] if values else 0


def test_label_info_is_latched_and_describes_the_checkpoint(setup):
    _, _, _, got = setup
    info = got["label_info"][-1]
    if LabelInfo is None:
        info = json.loads(info.data)
        names = [c["name"] for c in info["classes"]]
        dynamic, encoding, ignore = info["dynamic_ids"], info["labels_encoding"], info["ignore_id"]
    else:
        names = [c.name for c in info.classes]
        dynamic, encoding, ignore = list(info.dynamic_ids), info.labels_encoding, info.ignore_id
        assert [c.dynamic for c in info.classes] == [n in ("person", "car") for n in names]
    assert names == list(CLASS_NAMES)
    assert dynamic == [1, 2] and encoding == "mono8" and ignore == 255


def test_outputs_match_the_engine_frame_by_frame(setup, tiny_checkpoint):
    proc, client, pub, got = setup
    reset(client, proc)
    # the node's defaults (TOOL_DEFAULTS: the fastest installed backend, from the same export cache)
    engine = StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", input_size=(64, 64),
                                                max_time_gap=0.5, dynamic_classes=["person", "car"],
                                                **TOOL_DEFAULTS)
    for name in got:
        got[name].clear()
    frames = synthetic_video(5)
    for t, frame in enumerate(frames):
        # bgr8 on odd frames: the node must undo the channel order
        msg = image_msg(frame, sec=100, nanosec=t * 100_000_000, encoding="bgr8" if t % 2 else "rgb8")
        send_and_wait(client, proc, pub, got, msg)
        expected = engine.step(frame, stamp=100 + t * 0.1, frame_id="camera",
                               return_confidence=True)
        for name in OUTPUTS:
            out = got[name][-1]
            assert (out.header.stamp.sec, out.header.stamp.nanosec, out.header.frame_id) == \
                (100, t * 100_000_000, "camera"), name
            assert (out.height, out.width) == (H, W), name
        labels = got["labels"][-1]
        assert labels.encoding == "mono8"
        np.testing.assert_array_equal(as_array(labels), expected.labels)
        mask = got["dynamic_mask"][-1]
        assert mask.encoding == "mono8"
        np.testing.assert_array_equal(as_array(mask), np.isin(expected.labels, [1, 2]) * 255)
        assert got["color"][-1].encoding == "rgb8"
        np.testing.assert_array_equal(as_array(got["color"][-1]),
                                      engine.labels.colorize(expected.labels))
        assert got["confidence"][-1].encoding == "32FC1"
        np.testing.assert_allclose(as_array(got["confidence"][-1]), expected.confidence, atol=1e-5)
        assert got["overlay"][-1].encoding == "rgb8"
        info = frame_info(got["frame_info"][-1])
        assert info["frames_aggregated"] == expected.frames_aggregated
        assert info["reset_reason"] == ("service" if t == 0 else "")
    assert len({as_array(m).tobytes() for m in got["labels"]}) > 1  # labels follow the video


def test_stamp_going_backwards_and_time_gap_reset_the_buffer(setup):
    proc, client, pub, got = setup
    frame = synthetic_video(1)[0]
    send_and_wait(client, proc, pub, got, image_msg(frame, sec=200))
    send_and_wait(client, proc, pub, got, image_msg(frame, sec=200, nanosec=200_000_000))
    assert frame_info(got["frame_info"][-1])["reset_reason"] == ""
    send_and_wait(client, proc, pub, got, image_msg(frame, sec=199))
    assert "backwards" in frame_info(got["frame_info"][-1])["reset_reason"]
    assert frame_info(got["frame_info"][-1])["frames_aggregated"] == 0
    send_and_wait(client, proc, pub, got, image_msg(frame, sec=205))
    assert "max_time_gap" in frame_info(got["frame_info"][-1])["reset_reason"]
    send_and_wait(client, proc, pub, got, image_msg(frame, sec=205, nanosec=1, frame_id="other"))
    assert "frame_id" in frame_info(got["frame_info"][-1])["reset_reason"]


def test_garbage_messages_are_counted_and_the_node_keeps_going(setup):
    proc, client, pub, got = setup
    bad = [Image(height=4, width=4, encoding="yuv422", step=8, data=bytes(32)),
           Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(10)),
           Image(height=0, width=0, encoding="rgb8", step=0),
           Image(height=4, width=4, encoding="rgb8", step=5, data=bytes(20))]
    client.wait_for(lambda: got["diagnostics"], "diagnostics", proc=proc)
    for msg in bad:
        # one at a time (the newest message wins): wait until the worker has refused it
        rejected = diagnostic_value(got["diagnostics"], "rejected frames")
        pub.publish(msg)
        client.wait_for(lambda r=rejected: diagnostic_value(got["diagnostics"], "rejected frames") == r + 1,
                        "the refusal to be counted", proc=proc)
    from diagnostic_msgs.msg import DiagnosticStatus

    assert got["diagnostics"][-1].status[0].level == DiagnosticStatus.WARN
    good = image_msg(synthetic_video(1)[0], sec=300)
    send_and_wait(client, proc, pub, got, good)
    assert frame_info(got["frame_info"][-1])["rejected_frames"] >= len(bad)
    assert proc.poll() is None
    assert "image refused: unsupported Image encoding 'yuv422'" in node_output(proc)


def test_publishing_faster_than_inference_drops_and_counts_frames(setup):
    proc, client, pub, got = setup
    send_and_wait(client, proc, pub, got, image_msg(synthetic_video(1)[0], sec=400))
    start_labels = len(got["labels"])
    dropped_before = frame_info(got["frame_info"][-1])["dropped_frames"]
    big = np.zeros((480, 640, 3), np.uint8)  # slower to convert and resize than to publish
    burst = 30
    for i in range(burst):
        pub.publish(image_msg(big, sec=401, nanosec=i * 1000))
    # the last frame of the burst is never dropped: wait for it
    wait_for_frame(client, proc, got, image_msg(big, sec=401, nanosec=(burst - 1) * 1000))
    processed = len(got["labels"]) - start_labels
    dropped = frame_info(got["frame_info"][-1])["dropped_frames"] - dropped_before
    assert processed < burst and dropped > 0
    assert processed + dropped <= burst


def test_dynamic_parameter_updates_are_validated(setup):
    proc, client, _, got = setup
    cli = client.node.create_client(SetParameters, "/sdcpc/set_parameters")
    client.wait_for(cli.service_is_ready, "set_parameters", proc=proc)

    def set_param(name, value):
        if isinstance(value, float):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=value)
        future = cli.call_async(SetParameters.Request(parameters=[ParameterMsg(name=name, value=pv)]))
        client.wait_for(future.done, "set_parameters reply", proc=proc)
        return future.result().results[0]

    refused = set_param("max_time_gap", -1.0)
    assert not refused.successful and "max_time_gap" in refused.reason
    refused = set_param("dynamic_classes", ["unicorn"])
    assert not refused.successful and "unicorn" in refused.reason
    infos = len(got["label_info"])
    assert set_param("dynamic_classes", ["sky"]).successful
    client.wait_for(lambda: len(got["label_info"]) > infos, "updated label_info", proc=proc)
    info = got["label_info"][-1]
    dynamic = json.loads(info.data)["dynamic_ids"] if LabelInfo is None else list(info.dynamic_ids)
    assert dynamic == [CLASS_NAMES.index("sky")]
