"""Faults a robot's camera stream really shows, against the node process; the node must survive each.

Bag --loop (stamps going backwards), gaps, a resolution change, two cameras on one topic (frame_id
changes), a burst of 1000 frames in one second (every frame answered or counted as dropped), the
only output subscriber leaving and coming back, and an out-of-memory error during inference (the
node has no fault-injection hook, so that one runs the node in-process with the model patched).
"""

import contextlib
import time

import numpy as np
import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_harness import Client, domain_id_for, node_output, run_node, stop_node
from sensor_msgs.msg import Image
from std_msgs.msg import String
from test_node_e2e import frame_info, image_msg, stamp_of, synthetic_video

from sdcpc_core.engine import StreamingSegmenter
from sdcpc_ros.node import FrameInfo, SegmentationNode

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
BURST = 1000
PARAMS = {"input_size": "[64,64]", "reliable_qos": "true", "max_time_gap": "0.5",
          "device": "cpu", "diagnostics_period": "0.2", "publish_color": "false"}


class Stream:
    """The node process, a client with its publisher, and what came back."""

    def __init__(self, proc, client):
        self.proc, self.client = proc, client
        node = client.node
        self.labels, self.infos, self.diags = [], [], []
        # as deep as the burst, like frame_info: the test counts every label (on the default
        # backend, auto = OpenVINO, the node answers more than 100 of them during the burst)
        self.labels_sub = node.create_subscription(
            Image, "/sdcpc/labels", self.labels.append,
            QoSProfile(depth=BURST, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(FrameInfo or String, "/sdcpc/frame_info", self.infos.append,
                                 QoSProfile(depth=BURST, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 10)
        self.pub = node.create_publisher(
            Image, "/image", QoSProfile(depth=BURST, reliability=ReliabilityPolicy.RELIABLE))

    def wait(self, condition, what):
        self.client.wait_for(condition, what, proc=self.proc)

    def send(self, msg, outputs=True):
        """Publish one frame and wait for its frame_info (and labels): a stream with no drops."""
        self.pub.publish(msg)
        key = stamp_of(msg)
        self.wait(lambda: self.infos and stamp_of(self.infos[-1]) == key
                  and (not outputs or (self.labels and stamp_of(self.labels[-1]) == key)),
                  f"the outputs of {key}")
        return frame_info(self.infos[-1])

    def diagnostic(self, key):
        values = [v.value for d in self.diags for s in d.status for v in s.values if v.key == key]
        return values[-1] if values else None

    def assert_alive(self):
        assert self.proc.poll() is None, node_output(self.proc)[-3000:]
        frame = image_msg(synthetic_video(1)[0], sec=9000 + len(self.infos), frame_id="alive")
        self.send(frame)


@pytest.fixture(scope="module")
def stream(tiny_checkpoint, tmp_path_factory):
    domain = domain_id_for(__name__)
    proc = run_node({**PARAMS, "checkpoint": str(tiny_checkpoint)}, domain,
                    tmp_path_factory.mktemp("logs"))
    client = Client(domain)
    s = Stream(proc, client)
    s.wait(lambda: s.pub.get_subscription_count() > 0
           and client.node.count_publishers("/sdcpc/labels") > 0, "the node to start")
    yield s
    client.close()
    stop_node(proc)
    assert proc.returncode == 0, node_output(proc)[-3000:]


def test_bag_loop_resets_once_per_loop(stream):
    frame = synthetic_video(1)[0]
    loop = [(50, i * 100_000_000) for i in range(4)]  # a 0.4 s bag played with --loop
    resets = []
    for _ in range(3):
        for sec, nsec in loop:
            resets.append(stream.send(image_msg(frame, sec, nsec))["reset_reason"])
    # every loop restart jumps back 0.3 s: exactly one reset there, none inside a loop
    for k in range(1, 3):
        assert "backwards by 0.300" in resets[4 * k]
        assert resets[4 * k + 1: 4 * k + 4] == ["", "", ""]
    stream.wait(lambda: stream.diagnostic("buffer length") is not None, "diagnostics")
    lengths = [int(v.value) for d in stream.diags for st in d.status for v in st.values
               if v.key == "buffer length"]
    assert max(lengths) <= 2  # reference_offsets (-2, -1): never more than two cached frames
    stream.assert_alive()


def test_gaps_below_keep_and_above_max_time_gap_reset(stream):
    frame = synthetic_video(1)[0]
    first = stream.send(image_msg(frame, 60, 0))
    assert first["reset_reason"]  # a jump from the previous test's stream
    below = stream.send(image_msg(frame, 60, 450_000_000))  # 0.45 s < max_time_gap 0.5
    assert below["reset_reason"] == "" and below["frames_aggregated"] == 1
    above = stream.send(image_msg(frame, 61, 0))  # 0.55 s
    assert "gap of 0.550 s exceeds max_time_gap" in above["reset_reason"]
    assert above["frames_aggregated"] == 0
    long_gap = stream.send(image_msg(frame, 3661, 0))  # an hour of silence
    assert "exceeds max_time_gap" in long_gap["reset_reason"]
    after = stream.send(image_msg(frame, 3661, 100_000_000))
    assert after["reset_reason"] == "" and after["frames_aggregated"] == 1
    stream.assert_alive()


def test_frame_size_change_mid_stream(stream):
    small, large = synthetic_video(1)[0], np.full((96, 160, 3), 90, np.uint8)
    stream.send(image_msg(small, 70, 0))
    stream.send(image_msg(small, 70, 100_000_000))
    info = stream.send(image_msg(large, 70, 200_000_000))
    assert "frame size changed from 80x48 to 160x96" in info["reset_reason"]
    assert (stream.labels[-1].height, stream.labels[-1].width) == (96, 160)
    info = stream.send(image_msg(large, 70, 300_000_000))
    assert info["reset_reason"] == "" and info["frames_aggregated"] == 1
    info = stream.send(image_msg(small, 70, 400_000_000))
    assert "frame size changed from 160x96 to 80x48" in info["reset_reason"]
    assert (stream.labels[-1].height, stream.labels[-1].width) == (48, 80)
    stream.assert_alive()


def test_two_cameras_on_one_topic_reset_on_every_frame_id_change(stream):
    frame = synthetic_video(1)[0]
    ids = ["left", "left", "right", "left", "right", "right"]
    infos = [stream.send(image_msg(frame, 80, i * 50_000_000, frame_id=f))
             for i, f in enumerate(ids)]
    reasons = [i["reset_reason"] for i in infos]
    assert reasons[1] == "" and reasons[5] == ""
    assert reasons[2] == "frame_id changed from 'left' to 'right'"
    assert reasons[3] == "frame_id changed from 'right' to 'left'"
    assert reasons[4] == "frame_id changed from 'left' to 'right'"
    assert stream.labels[-1].header.frame_id == "right"
    stream.assert_alive()


def test_burst_of_1000_frames_in_one_second_is_fully_accounted(stream):
    frame = synthetic_video(1)[0]
    before = stream.send(image_msg(frame, 90, 0))
    dropped0, rejected0 = before["dropped_frames"], before["rejected_frames"]
    labels0, infos0 = len(stream.labels), len(stream.infos)
    msg = image_msg(frame, 91, 0)
    start = time.perf_counter()
    for i in range(BURST):  # paced over about one second
        msg.header.stamp.sec, msg.header.stamp.nanosec = 91, i * 1_000_000
        stream.pub.publish(msg)
        delay = start + (i + 1) / BURST - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if i % 50 == 0:
            stream.client.executor.spin_once(timeout_sec=0)
    last = (91, (BURST - 1) * 1_000_000, "camera")
    # latest frame wins: the last frame of the burst is never dropped
    stream.wait(lambda: stream.infos and stamp_of(stream.infos[-1]) == last
                and stream.labels and stamp_of(stream.labels[-1]) == last, "the burst's last frame")
    answered = len(stream.labels) - labels0
    assert len(stream.infos) - infos0 == answered
    end = frame_info(stream.infos[-1])
    dropped = end["dropped_frames"] - dropped0
    assert end["rejected_frames"] == rejected0
    assert answered + dropped == BURST, (answered, dropped)
    assert dropped > 0  # the node cannot segment 1000 frames per second here
    answered_stamps = [stamp_of(m)[1] for m in stream.labels[labels0:]]
    assert answered_stamps == sorted(answered_stamps)  # newest wins, never an older frame later
    stream.assert_alive()


def test_output_subscriber_leaving_and_coming_back(stream):
    frame = synthetic_video(1)[0]
    node = stream.client.node
    stream.send(image_msg(frame, 100, 0))
    node.destroy_subscription(stream.labels_sub)
    stream.wait(lambda: node.count_subscribers("/sdcpc/labels") == 0, "the subscriber to leave")
    before = len(stream.labels)
    for i in range(1, 6):  # nobody listens to ~/labels: frames still processed (frame_info)
        info = stream.send(image_msg(frame, 100, i * 100_000_000), outputs=False)
        assert info["reset_reason"] == ""
    assert len(stream.labels) == before
    stream.labels_sub = node.create_subscription(Image, "/sdcpc/labels", stream.labels.append,
                                                 RELIABLE)
    k = [0]

    def resumed():  # discovery takes a moment: keep the camera running until labels come back
        k[0] += 1
        stamp = 100.5 + 0.02 * k[0]  # one stream: no gap, no reset
        stream.pub.publish(image_msg(frame, int(stamp), int(round(stamp % 1 * 1e9))))
        stream.client.executor.spin_once(timeout_sec=0.1)
        return len(stream.labels) > before

    stream.wait(resumed, "~/labels to resume for the returning subscriber")
    assert stream.labels[-1].encoding == "mono8" and stream.labels[-1].height == 48
    stream.assert_alive()


# -- out of memory during inference (in-process: the node has no fault-injection hook) ----------

def _oom_on_call(model, fail_on: set, exc):
    """Make ``model.forward_cached`` raise ``exc`` on the listed calls (0-based)."""
    real, calls = model.forward_cached, [0]

    def forward_cached(*args, **kwargs):
        n = calls[0]
        calls[0] += 1
        if n in fail_on:
            raise exc
        return real(*args, **kwargs)

    model.forward_cached = forward_cached


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")],
                         ids=["OutOfMemoryError", "RuntimeError"])
def test_engine_survives_out_of_memory_on_one_frame(tiny_checkpoint, exc):
    frames = synthetic_video(5)
    ref = StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", input_size=(64, 64))
    eng = StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", input_size=(64, 64))
    _oom_on_call(eng.model, {2}, exc)
    expected = [ref.step(f, stamp=1 + 0.1 * t, frame_id="cam") for t, f in enumerate(frames)
                if t != 2]
    got = []
    for t, f in enumerate(frames):
        if t == 2:
            with pytest.raises(type(exc), match="out of memory"):
                eng.step(f, stamp=1 + 0.1 * t, frame_id="cam")
            assert eng.frames_seen == 2 and eng.buffer_length == 2  # nothing half-written
            continue
        got.append(eng.step(f, stamp=1 + 0.1 * t, frame_id="cam"))
    # the failed frame is skipped as if it never came: the stream goes on with the same results
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(e.labels, g.labels)
        assert (e.frames_aggregated, e.reset_reason) == (g.frames_aggregated, g.reset_reason)


@contextlib.contextmanager
def in_process_node(tiny_checkpoint, name: str, oom_on_call: int):
    """A SegmentationNode in this process (no executor: tests call its callbacks directly) whose
    model raises a CUDA out-of-memory error on call ``oom_on_call``."""
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id_for(name))
    node = SegmentationNode(context=context, parameter_overrides=[
        Parameter("checkpoint", value=str(tiny_checkpoint)), Parameter("device", value="cpu"),
        Parameter("input_size", value=[64, 64]),
        Parameter("backend", value="torch")])  # the torch model is patched; the default is auto
    try:
        _oom_on_call(node._seg.model, {oom_on_call}, torch.OutOfMemoryError("CUDA out of memory (test)"))
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def feed(node, msg, done: int) -> None:
    """Hand ``msg`` to the node's image callback and wait until the worker has finished with
    ``done`` frames in all (published, failed or refused)."""
    node._on_image(msg, {})
    deadline = time.monotonic() + 60
    while node._published + node._failed + node._rejected < done:  # safety limit only
        assert time.monotonic() < deadline, "the worker did not take the frame"
        time.sleep(0.01)


def test_node_worker_skips_an_out_of_memory_frame_logs_it_and_continues(tiny_checkpoint, capfd):
    with in_process_node(tiny_checkpoint, "oom_in_process", oom_on_call=1) as node:
        frames = synthetic_video(3)
        for t in range(3):
            feed(node, image_msg(frames[t], 5, t * 100_000_000), t + 1)
        assert (node._published, node._failed, node._dropped) == (2, 1, 0)
        assert node._worker.is_alive()
        assert node._seg.frames_seen == 2
    err = capfd.readouterr().err
    assert "segmentation failed: OutOfMemoryError: CUDA out of memory (test)" in err


def test_diagnostics_level_describes_the_last_period_not_the_whole_run(tiny_checkpoint):
    """ERROR while frames fail, back to OK once they stop (the total stays in the values); WARN
    before the first image and while input is refused."""
    with in_process_node(tiny_checkpoint, "diagnostic_levels", oom_on_call=1) as node:
        published = []
        node._pub_diag.publish = published.append
        frames = synthetic_video(3)

        def diagnose():
            node._publish_diagnostics()
            status = published[-1].status[0]
            return status.level, status.message, {v.key: v.value for v in status.values}

        level, message, _ = diagnose()
        assert level == DiagnosticStatus.WARN and message == "no images on /image yet"
        feed(node, image_msg(frames[0], 5, 0), 1)
        assert diagnose()[:2] == (DiagnosticStatus.OK, "segmenting")
        feed(node, image_msg(frames[1], 5, 100_000_000), 2)  # out of memory
        level, message, values = diagnose()
        assert level == DiagnosticStatus.ERROR and message.startswith("1 segmentation failures")
        feed(node, image_msg(frames[2], 5, 200_000_000), 3)
        level, _, values = diagnose()
        assert level == DiagnosticStatus.OK and values["failed frames"] == "1"
        feed(node, Image(height=4, width=4, encoding="yuv422", step=8, data=bytes(32)), 4)
        level, message, values = diagnose()
        assert level == DiagnosticStatus.WARN and message.startswith("1 input images refused")
        node._last_receipt -= 60  # the camera went silent a minute ago
        level, message, _ = diagnose()
        assert level == DiagnosticStatus.WARN and message.startswith("no images on /image for 6")
