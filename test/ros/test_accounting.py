"""Every frame accounted for; non-finite outputs never published; one message per bad setting.

In-process node (no executor: the test calls the image callback with the message info a real
subscription passes, including publication sequence numbers with gaps for induced loss).
"""

import contextlib
import threading
import time

import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.parameter import Parameter
from ros_harness import domain_id_for
from sensor_msgs.msg import Image
from test_node_e2e import image_msg, synthetic_video

from sdcpc_core.cli import main as sdcpc_main
from sdcpc_core.cpu import cpu_features
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.settings import SettingError
from sdcpc_ros.node import SegmentationNode


@contextlib.contextmanager
def node_in_process(name, **params):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id_for(name))
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = None
    try:
        node = SegmentationNode(context=context, parameter_overrides=overrides)
        yield node
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=context)


def info(seq, gid=b"\x01" * 16):
    return {"publication_sequence_number": seq, "publisher_gid": {"data": gid}}


def wait_idle(node, timeout=120.0):
    deadline = time.monotonic() + timeout
    while node.accounting()["in_flight"]:
        assert time.monotonic() < deadline, "the worker did not finish"
        time.sleep(0.01)


def nan_on_calls(model, calls):
    """``forward_cached`` returns NaN logits on the listed calls (0-based)."""
    real, count = model.forward_cached, [0]

    def forward_cached(*args, **kwargs):
        out = real(*args, **kwargs)
        if count[0] in calls:
            out = {**out, "logits": torch.full_like(out["logits"], float("nan"))}
        count[0] += 1
        return out

    model.forward_cached = forward_cached


def test_every_published_frame_is_accounted_for_with_induced_loss(tiny_checkpoint):
    # backend torch: the test patches the torch model (the default, auto, is OpenVINO on a CPU)
    with node_in_process("accounting", checkpoint=str(tiny_checkpoint), device="cpu",
                         input_size=[64, 64], backend="torch") as node:
        nan_on_calls(node._seg.model, {1})
        labels = []
        node._pub["labels"].publish = labels.append
        node._wanted = lambda name: name == "labels"
        frames = synthetic_video(12)
        sent = 0
        # sequence numbers 1..20 from one publisher; 3, 4, 9 and 15-17 are lost in transport
        delivered = [1, 2, 5, 6, 7, 8, 10, 11, 12, 13, 14, 18, 19, 20]
        for k, seq in enumerate(delivered):
            if seq == 7:
                msg = Image(height=4, width=4, encoding="yuv422", step=8, data=bytes(32))  # refused
            else:
                msg = image_msg(frames[k % 12], 10, seq * 33_000_000, frame_id="cam")
            node._on_image(msg, info(seq))
            if seq in (10, 11, 12):  # a burst: the newest wins, older ones are replaced
                continue
            wait_idle(node)
        wait_idle(node)
        sent = 20
        counts = node.accounting()
        assert counts["lost"] == 6 and counts["rejected"] == 1 and counts["failed"] == 1
        assert counts["in_flight"] == 0
        assert (counts["published"] + counts["propagated"] + counts["replaced"] + counts["lost"]
                + counts["rejected"] + counts["failed"]) == counts["received"] == sent
        # a failed frame published nothing; every answer, network or propagated, published once
        assert len(labels) == counts["published"] + counts["propagated"]
        assert len({(m.header.stamp.sec, m.header.stamp.nanosec) for m in labels}) == len(labels)


def gate_network(node, gated_calls):
    """The network's step waits on an Event on the listed calls (0-based): the test decides how
    long the network is busy."""
    real, count, gate = node._seg.step, [0], threading.Event()

    def step(*args, **kwargs):
        if count[0] in gated_calls:
            assert gate.wait(60), "the test never opened the gate"
        count[0] += 1
        return real(*args, **kwargs)

    node._seg.step = step
    return gate


def capture(node):
    """Labels and frame infos as the node publishes them (both 'subscribed')."""
    labels, infos = [], []
    node._pub["labels"].publish = labels.append
    node._wanted = lambda name: name == "labels"
    node._pub_frame_info.publish = infos.append
    node._pub_frame_info.get_subscription_count = lambda: 1
    return labels, infos


def stamp_of(header):
    return header.stamp.sec * 10**9 + header.stamp.nanosec


@pytest.mark.parametrize("propagate", [True, False])
def test_frames_the_network_has_no_time_for_are_propagated_or_dropped_and_counted(tiny_checkpoint,
                                                                                  propagate):
    """While the network is held busy on frame 1, frames 2-4 arrive: with propagation each is
    answered with frame 0's labels carried to it (FrameInfo says so, and from which frame) and
    never enters the frame buffer; without it they are dropped. The last one is the network's
    next frame either way. Every frame ends in exactly one count."""
    with node_in_process(f"propagation_{propagate}", checkpoint=str(tiny_checkpoint), device="cpu",
                         input_size=[64, 64], backend="torch", propagate=propagate) as node:
        gate = gate_network(node, {1})
        labels, infos = capture(node)
        frame = synthetic_video(1)[0]  # one image: the carried labels equal the key frame's
        msgs = [image_msg(frame, 10, k * 33_000_000, frame_id="cam") for k in range(6)]
        node._on_image(msgs[0], info(1))
        wait_idle(node)
        node._on_image(msgs[1], info(2))  # the network takes it and waits at the gate
        deadline = time.monotonic() + 60
        while not node._busy:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for k in (2, 3, 4):
            node._on_image(msgs[k], info(k + 1))
            time.sleep(0.2)
        gate.set()
        wait_idle(node)
        counts = node.accounting()
        answered = [stamp_of(m.header) for m in labels]
        if propagate:
            # 2 and 3 carried (3 replaced 2 as the network's next, 4 replaced 3), 4 by the network
            assert counts["propagated"] == 2 and counts["published"] == 3 and counts["replaced"] == 0
            assert sorted(answered) == [stamp_of(m.header) for m in msgs[:5]]
            carried = [i for i in infos if i.propagated]
            assert [stamp_of(i.header) for i in carried] == [stamp_of(msgs[k].header) for k in (2, 3)]
            for i in carried:  # from frame 0, the last network frame finished when they came
                assert stamp_of(i.source_header) == stamp_of(msgs[0].header)
                assert i.source_frames_ago == i.header.stamp.nanosec // 33_000_000
                assert i.source_age_s == pytest.approx(i.source_frames_ago * 0.033)
                assert i.inference_ms == 0.0 and i.frames_aggregated == 0
            network = {stamp_of(i.header): i for i in infos if not i.propagated}
            assert all(stamp_of(i.source_header) == s for s, i in network.items())
            by_stamp = {stamp_of(m.header): bytes(m.data) for m in labels}
            assert by_stamp[stamp_of(msgs[2].header)] == by_stamp[stamp_of(msgs[0].header)]
            assert infos[-1].propagated_frames == 2
        else:
            assert counts["propagated"] == 0 and counts["published"] == 3 and counts["replaced"] == 2
            assert not any(i.propagated for i in infos)
        assert node._seg.frames_seen == 3  # frames 0, 1 and 4: propagated ones never enter the buffer
        assert counts["in_flight"] == 0
        diags = []
        node._pub_diag.publish = diags.append
        node._publish_diagnostics()
        values = {kv.key: kv.value for kv in diags[-1].status[0].values}
        assert values["propagated frames"] == str(counts["propagated"])
        assert values["published frames"] == "3" and values["network steps"] == "3"
        assert (float(values["propagated latency p95 (ms)"]) > 0) == propagate
        assert (counts["published"] + counts["propagated"] + counts["replaced"] + counts["lost"]
                + counts["rejected"] + counts["failed"]) == counts["received"] == 5


def test_propagation_waits_for_a_first_network_frame_and_follows_the_parameter(tiny_checkpoint):
    """No network frame yet: nothing to carry, the frame is dropped; a reset or propagate:=false
    forgets the key frame."""
    with node_in_process("propagation_key", checkpoint=str(tiny_checkpoint), device="cpu",
                         input_size=[64, 64], backend="torch", propagate=True) as node:
        gate = gate_network(node, {0})
        labels, infos = capture(node)
        frames = synthetic_video(4)
        node._on_image(image_msg(frames[0], 10, 0, frame_id="cam"), info(1))
        while not node._busy:
            time.sleep(0.01)
        node._on_image(image_msg(frames[1], 10, 33_000_000, frame_id="cam"), info(2))
        node._on_image(image_msg(frames[2], 10, 66_000_000, frame_id="cam"), info(3))
        gate.set()
        wait_idle(node)
        assert node.accounting()["propagated"] == 0 and node.accounting()["replaced"] == 1
        assert node._key is not None

        def busy_then(stamps_ns):
            """The network held busy on the first stamp; the others arrive meanwhile."""
            gate = gate_network(node, {0})
            node._on_image(image_msg(frames[0], 10, stamps_ns[0], frame_id="cam"), {})
            while not node._busy:
                time.sleep(0.01)
            for k, stamp in enumerate(stamps_ns[1:]):
                node._on_image(image_msg(frames[1 + k % 3], 10 + stamp // 10**9, stamp % 10**9,
                                         frame_id="cam"), {})
                time.sleep(0.1)
            gate.set()
            wait_idle(node)

        # a continuous 10 Hz stream: a key frame older than max_time_gap (0.5 s) is still carried
        before = node.accounting()["propagated"]
        busy_then([100_000_000, 200_000_000, 300_000_000, 400_000_000, 500_000_000, 600_000_000,
                   700_000_000, 800_000_000])
        assert node.accounting()["propagated"] - before >= 5
        assert max(i.source_age_s for i in infos if i.propagated) > 0.5
        # a cut (a 2 s gap): nothing is carried across it; the frames wait for the network
        before = node.accounting()
        busy_then([3_000_000_000, 5_000_000_000, 5_100_000_000])
        after = node.accounting()
        assert after["propagated"] == before["propagated"]
        assert after["replaced"] - before["replaced"] == 1 and after["published"] - before["published"] == 2
        assert node.set_parameters([Parameter("propagate", value=False)])[0].successful
        assert node._key is None and not node._propagate


def test_non_finite_output_is_a_failed_frame_and_the_next_frame_is_tried_again(tiny_checkpoint,
                                                                               capfd):
    with node_in_process("non_finite", checkpoint=str(tiny_checkpoint), device="cpu",
                         input_size=[64, 64], diagnostics_period=0.5, backend="torch") as node:
        nan_on_calls(node._seg.model, {1})
        labels, diags = [], []
        node._pub["labels"].publish = labels.append
        node._pub_diag.publish = diags.append
        node._wanted = lambda name: name == "labels"
        frames = synthetic_video(3)
        for t in range(3):
            node._on_image(image_msg(frames[t], 10, t * 33_000_000, frame_id="cam"), {})
            wait_idle(node)
            node._publish_diagnostics()
            level = diags[-1].status[0].level
            assert level == (DiagnosticStatus.ERROR if t == 1 else DiagnosticStatus.OK)
        assert [m.header.stamp.nanosec for m in labels] == [0, 66_000_000]
        assert node.accounting()["failed"] == 1
    assert "segmentation failed: NonFiniteOutputError" in capfd.readouterr().err


@pytest.mark.parametrize("name, value, cli", [
    ("precision", "fp64", ["--precision", "fp64"]),
    ("reference_offsets", [3], ["--reference-offsets", "3"]),
    ("input_size", [8, 8], ["--input-size", "8", "8"]),
])
def test_node_engine_and_cli_refuse_a_bad_value_with_the_same_message(name, value, cli,
                                                                      tiny_checkpoint, tmp_path,
                                                                      capsys):
    with pytest.raises(SettingError) as engine_error:
        StreamingSegmenter.from_checkpoint(tiny_checkpoint, device="cpu", **{name: value})
    message = str(engine_error.value)
    assert message.startswith(f"setting '{name}' = ")

    with pytest.raises(SettingError) as node_error:
        with node_in_process(f"same_message_{name}", checkpoint=str(tiny_checkpoint),
                             device="cpu", **{name: value}):
            pass
    assert str(node_error.value) == message

    rc = sdcpc_main(["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                     "--checkpoint", str(tiny_checkpoint), "--device", "cpu", *cli])
    assert rc == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("openvino", [True, False])
def test_start_up_line_says_which_backend_and_precision_run_and_why(tiny_checkpoint, capfd, tmp_path,
                                                                  monkeypatch, openvino):
    """On defaults the node runs the fastest installed backend (OpenVINO on a CPU), exported once
    into the cache; the start-up line says so, or why it runs torch."""
    from sdcpc_core import runtimes

    monkeypatch.setenv("SDCPC_CACHE_DIR", str(tmp_path / "cache"))  # empty, whatever ran before

    real = runtimes.installed
    if openvino and not real("openvino"):
        pytest.skip("openvino is not installed")
    monkeypatch.setattr(runtimes, "installed", lambda backend: openvino if backend == "openvino" else real(backend))
    for run in range(1 + openvino):  # a second start finds the export in the cache
        with node_in_process(f"startup_{openvino}_{run}", checkpoint=str(tiny_checkpoint), device="cpu",
                             input_size=[64, 64]):
            pass
        err = capfd.readouterr().err
        if openvino:  # precision auto: per this CPU (test_precision_auto pins the rule per CPU class)
            precision = runtimes.choose_precision("auto", "openvino", torch.device("cpu"), False)[0]
            assert f"on cpu (openvino, {precision})" in err and "auto: OpenVINO is installed" in err, err
            assert f"this CPU has {cpu_features().short}" in err, err
            assert ("exported now in" in err) == (run == 0) and ("cached export" in err) == (run == 1), err
        else:
            assert "on cpu (torch, fp32)" in err and "auto: OpenVINO is not installed" in err, err
            assert "backend torch runs fp32, the exact reference" in err, err


def test_an_export_directory_is_a_checkpoint_for_the_node(tiny_checkpoint, tmp_path, capfd):
    """``-p checkpoint:=DIR`` with a directory written by ``sdcpc export`` (docs/deployment.md):
    the node starts on the exported graphs and publishes their labels, equal to eager torch's."""
    pytest.importorskip("onnxruntime", reason="the deploy runtimes are installed by scripts/setup.sh")
    from sdcpc_core.export import export_model

    export = export_model(tiny_checkpoint, tmp_path / "export", input_size=(64, 64))
    frames = synthetic_video(3)
    results = {}
    runs = {"export, onnxruntime": (export, "onnxruntime"), "export, torch": (export, "torch"),
            "checkpoint, onnxruntime": (tiny_checkpoint, "onnxruntime")}  # exported on the fly
    for run, (checkpoint, backend) in runs.items():
        with node_in_process(f"export_dir_{len(results)}", checkpoint=str(checkpoint), device="cpu",
                             backend=backend, input_size=[64, 64]) as node:
            labels = []
            node._pub["labels"].publish = labels.append
            node._wanted = lambda name: name == "labels"
            for k, frame in enumerate(frames):
                node._on_image(image_msg(frame, 10, (k + 1) * 33_000_000, frame_id="cam"), info(k + 1))
                wait_idle(node)
            results[run] = [bytes(m.data) for m in labels]
        err = capfd.readouterr().err
        assert f"on cpu ({backend}, fp32)" in err
        # a plain checkpoint on a graph backend is exported first, and the node says so
        assert ("exporting the model's graphs once" in err) == (run == "checkpoint, onnxruntime"), err
    assert len(results["export, onnxruntime"]) == len(frames)
    assert results["export, onnxruntime"] == results["export, torch"] == results["checkpoint, onnxruntime"]
