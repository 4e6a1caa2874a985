"""Live evaluation end to end: the real node as a process (own ROS domain, localhost discovery)."""

import json
import os
import zlib

import pytest
from test_evaluate import make_bag, make_checkpoint

import sdcpc_ros.node  # noqa: F401  (the live mode starts this node; rclpy presence: conftest.py)
from sdcpc_ros import bags
from sdcpc_ros.evaluation.live import evaluate_live
from sdcpc_ros.evaluation.offline import evaluate_offline


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
    if f["dropped"] == 0:  # nothing dropped: the node ran the same stream as the offline replay
        offline = evaluate_offline(bag, tmp_path / "offline", checkpoint=checkpoint,
                                            progress=False)
        assert node["miou"] == pytest.approx(offline["models"]["sdcpc"]["miou"], abs=1e-9)
        assert len(report["videos"]) == 2
    saved = json.loads((tmp_path / "live" / "report.json").read_text())
    assert saved["mode"] == "live" and (tmp_path / "live" / "report.md").is_file()
