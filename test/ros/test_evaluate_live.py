"""Live evaluation end to end: the real node as a process (own ROS domain, localhost discovery)."""

import json
import os
import zlib

import pytest
from test_evaluate import make_bag, make_checkpoint

import sdcpc_ros.node  # noqa: F401  (the live mode starts this node; rclpy presence: conftest.py)
from sdcpc_core import bags
from sdcpc_ros.evaluation.live import evaluate_live
from sdcpc_ros.evaluation.offline import evaluate_offline


def offline_scores_of(bag, checkpoint, stamps: set) -> dict:
    """Metrics of the engine run offline on the bag's frames whose stamps are in ``stamps``, every
    frame of the bag observed (the node observes every image it receives, answered or not),
    videos split where the engine resets (as the live report does)."""
    from sdcpc_core.engine import StreamingSegmenter
    from sdcpc_core.metrics import VideoMetrics
    from sdcpc_ros.evaluation.pairing import paired_frames

    seg = StreamingSegmenter.from_checkpoint(checkpoint, device="cpu", max_time_gap=0.5)
    metrics = VideoMetrics(seg.labels.num_classes)
    first = True
    with bags.BagReader(bag) as b:
        for pair in paired_frames(b, bags.DEFAULT_IMAGE_TOPIC, bags.DEFAULT_LABEL_TOPIC, []):
            number = seg.observe(pair.stamp_s)
            if bags.format_stamp(pair.stamp) not in stamps:
                continue
            res = seg.step(pair.image, stamp=pair.stamp_s, frame_id=pair.frame_id,
                           input_number=number)
            if first or res.reset_reason:
                metrics.start_video()
                first = False
            metrics.update(res.labels, pair.labels)
    return metrics.compute()


def test_live_replay_scores_what_the_node_publishes(tmp_path, monkeypatch):
    domain = 1 + (zlib.crc32(b"test_evaluate_live") + os.getpid()) % 100
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    checkpoint = make_checkpoint(tmp_path / "tiny.pt")
    bag = make_bag(tmp_path / "bag", videos=2, length=5, fps=5.0, video_gap=2.0)
    report = evaluate_live(bag, tmp_path / "live", checkpoint=checkpoint, rate=1.0,
                                    drain_timeout=20.0, startup_timeout=120.0, samples=2)
    f = report["frames"]
    assert report["status"] == "complete", report["errors"]
    assert f["in_bag"] == 10 and f["scored"] + f["dropped"] == 10 and f["unreadable"] == 0
    assert f["scored"] >= 1, (tmp_path / "live" / "node.log").read_text()[-3000:]
    node = report["models"]["node"]
    assert node["latency_ms"]["count"] == f["scored"] and node["latency_ms"]["p50"] > 0
    assert 0.0 <= node["miou"] <= 1.0
    answered = [fr for fr in report["frame_log"] if fr["status"] == "scored"]
    with bags.BagReader(bag) as b:
        stamps = {bags.format_stamp(bags.stamp_to_ns(b.decode(m).header.stamp))
                  for m in b.messages([bags.DEFAULT_IMAGE_TOPIC])}
    assert {fr["stamp"] for fr in answered} <= stamps  # answers carry the input's exact stamps
    # the node's engine segmented exactly the answered frames and observed every one: the same
    # frames, with their stamps, through the engine offline give the same scores, dropped or not
    expected = offline_scores_of(bag, checkpoint, {fr["stamp"] for fr in answered})
    assert node["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert node["flicker"] == pytest.approx(expected["flicker"], abs=1e-9)
    if f["dropped"] == 0:  # nothing dropped: also the whole offline replay of the bag
        offline = evaluate_offline(bag, tmp_path / "offline", checkpoint=checkpoint, progress=False)
        assert node["miou"] == pytest.approx(offline["models"]["sdcpc"]["miou"], abs=1e-9)
        assert len(report["videos"]) == 2
    saved = json.loads((tmp_path / "live" / "report.json").read_text())
    assert saved["mode"] == "live" and (tmp_path / "live" / "report.md").is_file()


def test_the_started_node_gets_the_stream_settings():
    """``sdcpc-eval live --backend openvino --precision bf16`` starts the node with them."""
    from sdcpc_ros.evaluation.cli import build_parser
    from sdcpc_ros.evaluation.live import _node_command

    args = build_parser().parse_args(["live", "x.bag", "--out", "o", "--backend", "openvino",
                                      "--precision", "bf16"])
    assert (args.backend, args.precision) == ("openvino", "bf16")
    cmd = _node_command("sdcpc", "/image", None, None, "cpu", 0.5, args.precision, args.backend)
    assert cmd[cmd.index("backend:=openvino") - 1] == "-p"
    assert cmd[cmd.index("precision:=bf16") - 1] == "-p"
    default = _node_command("sdcpc", "/image", None, None, "cpu", 0.5)
    assert "backend:=torch" in default and "precision:=fp32" in default


def test_the_started_node_gets_the_propagation_flow_and_the_flag_needs_propagate(capsys):
    """``--propagate --propagation-flow fast`` starts the node with both; the flow alone is an
    error that says what to add."""
    from sdcpc_ros.evaluation.cli import build_parser, main
    from sdcpc_ros.evaluation.live import _node_command

    args = build_parser().parse_args(["live", "x.bag", "--out", "o", "--propagate", "--propagation-flow", "fast"])
    cmd = _node_command("sdcpc", "/image", None, None, "cpu", 0.5, propagate=args.propagate,
                        propagation_flow=args.propagation_flow)
    assert cmd[cmd.index("propagate:=true") - 1] == "-p"
    assert cmd[cmd.index("propagation_flow:=fast") - 1] == "-p"
    assert not any("propagation_flow" in c for c in _node_command("sdcpc", "/image", None, None, "cpu", 0.5))
    with pytest.raises(SystemExit) as exit_info:
        main(["live", "x.bag", "--out", "o", "--propagation-flow", "medium"])
    assert exit_info.value.code == 2 and "add --propagate" in capsys.readouterr().err
