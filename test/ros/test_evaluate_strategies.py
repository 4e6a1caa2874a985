"""Live scoring three ways (sdcpc_ros.evaluation.strategies): network frames only, labels held,
as published; per frames since the network frame, with the dynamic-mask recall."""

import numpy as np

from sdcpc_core.classes import LabelSet
from sdcpc_ros.evaluation.live import score_live
from sdcpc_ros.evaluation.pairing import Pair
from sdcpc_ros.evaluation.report import markdown
from sdcpc_ros.evaluation.scoring import Evaluation
from sdcpc_ros.evaluation.strategies import AnswerInfo, StrategyBreakdown, frame_info_entry


def scene(col):
    """4x4 labels: class 1 ('car', dynamic) in column ``col``, class 0 elsewhere."""
    a = np.zeros((4, 4), np.uint8)
    a[:, col] = 1
    return a


def test_every_frame_is_scored_three_ways_and_by_frames_since_the_network_frame():
    labels = LabelSet.from_names(["road", "car"], dynamic_names=["car"])
    stamps = [(i + 1) * 10**8 for i in range(4)]  # 10 Hz
    # the car moves one column a frame; frame 0 and 3 are network frames, 1 and 2 propagated from 0
    gts = [scene(c) for c in range(4)]
    pairs = [Pair(index=i, log_time=i, stamp=s, frame_id="cam", labels=gts[i]) for i, s in enumerate(stamps)]
    sent = {s: float(i) for i, s in enumerate(stamps)}
    answers = {stamps[0]: (0.1, gts[0]), stamps[1]: (1.02, gts[1]),  # carried exactly
               stamps[2]: (2.02, gts[1]), stamps[3]: (3.2, gts[3])}  # carried one column short
    infos = {stamps[0]: AnswerInfo(False, stamps[0]), stamps[1]: AnswerInfo(True, stamps[0]),
             stamps[2]: AnswerInfo(True, stamps[0]), stamps[3]: AnswerInfo(False, stamps[3])}
    ev = Evaluation(bag="b", mode="live", labels=labels, models=["node", "network", "held"])
    ev.total = len(pairs)
    breakdown = StrategyBreakdown(labels.num_classes, labels.dynamic)
    score_live(ev, pairs, sent, answers, max_time_gap=5.0, infos=infos, breakdown=breakdown)

    assert ev.counts()["scored"] == 4
    report = ev.report()
    assert report["models"]["network"]["miou"] == 1.0  # frames 0 and 3 only
    st = breakdown.summary()
    assert st["frames_per_bucket"] == {"0": 2, "1": 1, "2": 1, "3": 0, "4": 0, "5": 0, "6+": 0}
    # held: frame 0's car column on frames 1 and 2: no car pixel of theirs is found
    assert st["held"]["per_frames_since"]["1"]["dynamic_recall"] == 0.0
    assert st["node"]["per_frames_since"]["1"]["dynamic_recall"] == 1.0
    assert st["node"]["per_frames_since"]["2"]["dynamic_recall"] == 0.0
    assert st["node"]["not_network_frames"]["dynamic_recall"] == 0.5
    assert st["node"]["all"]["miou"] > st["held"]["all"]["miou"]
    assert st["network"]["per_frames_since"]["1"]["miou"] is None  # never scores propagated frames
    assert st["latency_ms"]["propagated"]["count"] == 2 and st["latency_ms"]["network"]["count"] == 2
    report["strategies"] = st
    text = markdown(report, [])
    assert "## Every frame three ways" in text and "every frame, labels held" in text


def test_frame_info_entries_from_messages_and_json():
    from sdcpc_interfaces.msg import FrameInfo
    from std_msgs.msg import String

    msg = FrameInfo(propagated=True)
    msg.header.stamp.sec, msg.header.stamp.nanosec = 5, 100
    msg.source_header.stamp.sec = 4
    assert frame_info_entry(msg) == (5 * 10**9 + 100, AnswerInfo(True, 4 * 10**9))
    old = String(data='{"header": {"stamp": {"sec": 2, "nanosec": 0}, "frame_id": "c"}}')
    assert frame_info_entry(old) == (2 * 10**9, AnswerInfo(False, 2 * 10**9))
