"""Start-up: refused parameters end the process with the parameter's name; compressed input; sim time."""

import cv2
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import qos_profile_sensor_data
from ros_harness import Client, domain_id_for, node_output, run_node, stop_node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image


@pytest.mark.parametrize("params, name, words", [
    ({"precision": "fp64"}, "precision", "fp32, fp16, bf16"),
    ({"device": "gpu0"}, "device", "auto, cpu, cuda, cuda:N"),
    ({"input_size": "[8,8]"}, "input_size", "[32, 8192]"),
    ({"reference_offsets": "[3]"}, "reference_offsets", "negative"),
    ({"max_time_gap": "-1.0"}, "max_time_gap", "Min: 0.001, Max: 3600.0"),
    ({"input_transport": "theora"}, "input_transport", "raw, compressed"),
    ({"checkpoint": "/nonexistent/model.pt"}, "checkpoint", "does not exist; pass an sdcpc checkpoint"),
    ({"checkpoint": "/"}, "checkpoint", "neither an export directory"),
    # a Hub id: tests run with HF_HUB_OFFLINE=1 and an empty Hugging Face cache (test/conftest.py)
    ({"checkpoint": "nvidia/segformer-b9-nowhere"}, "checkpoint", "not in the Hugging Face cache"),
    ({"dynamic_classes": '["unicorn"]'}, "dynamic_classes", "known classes"),
])
def test_bad_parameter_exits_non_zero_naming_it(params, name, words, tiny_checkpoint, tmp_path):
    params = {"checkpoint": str(tiny_checkpoint), **params}
    proc = run_node(params, domain_id_for(name), tmp_path, wait=True)
    out = node_output(proc)
    proc.log.close()
    assert proc.returncode == 2, out
    assert f"'{name}'" in out or f"{name} out of range" in out, out
    assert words in out, out


def test_compressed_input_best_effort_and_sim_time(tiny_checkpoint, tmp_path):
    domain = domain_id_for(__name__)
    proc = run_node({"checkpoint": str(tiny_checkpoint), "input_transport": "compressed",
                     "input_size": "[64,64]", "use_sim_time": "true",
                     "diagnostics_period": "0.2"}, domain, tmp_path)
    client = Client(domain)
    try:
        node = client.node
        labels, diagnostics = [], []
        node.create_subscription(Image, "/sdcpc/labels", labels.append, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
        pub = node.create_publisher(CompressedImage, "/image/compressed", qos_profile_sensor_data)
        clock = node.create_publisher(Clock, "/clock", 10)
        client.wait_for(lambda: pub.get_subscription_count() and clock.get_subscription_count()
                        and node.count_publishers("/sdcpc/labels"), "the node", proc=proc)
        frame = np.zeros((40, 56, 3), np.uint8)
        frame[:, 28:] = (200, 30, 30)
        msg = CompressedImage(format="png", data=cv2.imencode(".png", frame)[1].tobytes())
        msg.header.frame_id, msg.header.stamp.sec = "cam", 42
        sim = Clock()
        sim.clock.sec = 1234

        def send():  # best effort: repeat until something comes back
            pub.publish(msg)
            clock.publish(sim)
            return bool(labels) and any(d.header.stamp.sec == 1234 for d in diagnostics)

        client.wait_for(send, "labels of a PNG frame and diagnostics stamped with /clock",
                        proc=proc)
        out = labels[-1]
        assert (out.header.frame_id, out.header.stamp.sec) == ("cam", 42)
        assert (out.height, out.width, out.encoding) == (40, 56, "mono8")
    finally:
        client.close()
        stop_node(proc)
    assert proc.returncode == 0, node_output(proc)


def test_hub_id_in_the_cache_starts_offline_and_says_so(tmp_path):
    """`-p checkpoint:=owner/name` with the model in the Hugging Face cache and no network
    (HF_HUB_OFFLINE=1, test/conftest.py): converted once, labelled with its id2label names."""
    import sys
    from pathlib import Path

    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from sdcpc_ros.conversions import array_to_image
    from sdcpc_ros.node import LabelInfo

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
    from published_sources import TINY, hf_segformer, put_in_hub_cache

    names = ["floor", "person", "car", "wall"]
    hf_segformer(tmp_path / "hf", TINY, len(names), names)
    put_in_hub_cache(tmp_path / "hf", "robotlab/segformer-tiny-node")
    domain = domain_id_for("hub-id-" + __name__)
    proc = run_node({"checkpoint": "robotlab/segformer-tiny-node", "input_size": "[64,64]"}, domain, tmp_path)
    client = Client(domain)
    try:
        node = client.node
        labels, info = [], []
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(Image, "/sdcpc/labels", labels.append, 10)
        node.create_subscription(LabelInfo, "/sdcpc/label_info", info.append, latched)
        pub = node.create_publisher(Image, "/image", qos_profile_sensor_data)
        client.wait_for(lambda: info and pub.get_subscription_count(), "the node's label_info", proc=proc)
        frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)

        def send():
            pub.publish(array_to_image(frame, "rgb8"))
            return bool(labels)

        client.wait_for(send, "labels from the converted Hub model", proc=proc)
        assert [c.name for c in info[-1].classes] == names
        assert [c.dynamic for c in info[-1].classes] == [False, True, True, False]
    finally:
        client.close()
        stop_node(proc)
    out = Path(proc.log.name).read_text()  # stop_node closed the handle
    assert proc.returncode == 0, out
    assert "robotlab/segformer-tiny-node: found in the Hugging Face cache" in out and "no network used" in out
    assert "converted to" in out and "per-frame SegFormer" in out
