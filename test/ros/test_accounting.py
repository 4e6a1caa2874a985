"""Every frame accounted for; non-finite outputs never published; one message per bad setting.

In-process node (no executor: the test calls the image callback with the message info a real
subscription passes, including publication sequence numbers with gaps for induced loss).
"""

import contextlib
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
        assert (counts["published"] + counts["replaced"] + counts["lost"] + counts["rejected"]
                + counts["failed"]) == counts["received"] == sent
        assert len(labels) == counts["published"]  # a failed frame published nothing


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
        if openvino:
            assert "on cpu (openvino, fp32)" in err and "auto: OpenVINO is installed" in err, err
            assert ("exported now in" in err) == (run == 0) and ("cached export" in err) == (run == 1), err
        else:
            assert "on cpu (torch, fp32)" in err and "auto: OpenVINO is not installed" in err, err


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
