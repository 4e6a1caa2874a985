"""Offline bag evaluation: same numbers as scoring in memory, GT vs GT = 1, damaged bags, Ctrl-C."""

import json

import numpy as np
import pytest
import torch

from sdcpc_core import bags
from sdcpc_core.bags import TYPESTORE, BagError
from sdcpc_core.checkpoints import save_tiny_checkpoint
from sdcpc_core.data.synthetic import SYNTHETIC_LABELS, generate_video
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.metrics import VideoMetrics
from sdcpc_ros.evaluation import cli
from sdcpc_ros.evaluation.live import score_live
from sdcpc_ros.evaluation.offline import evaluate_offline
from sdcpc_ros.evaluation.pairing import Pair
from sdcpc_ros.evaluation.report import markdown
from sdcpc_ros.evaluation.scoring import Evaluation

H, W, LENGTH, SEEDS = 40, 48, 10, (3, 4)


def make_checkpoint(path, temporal=True, seed=0):
    """Tiny random-weight model on the synthetic classes."""
    return save_tiny_checkpoint(path, temporal=temporal, seed=seed)


def make_bag(path, videos=2, length=LENGTH, seed=SEEDS[0], **kwargs):
    bags.write_bag(path, bags.synthetic_frames(videos, length, H, W, seed=seed), progress=False, **kwargs)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return make_bag(tmp_path_factory.mktemp("bag") / "synthetic")


def test_round_trip_matches_in_memory_engine_scoring(tmp_path, checkpoint, bag):
    report = evaluate_offline(bag, tmp_path / "out", checkpoint=checkpoint, progress=False)
    seg = StreamingSegmenter.from_checkpoint(checkpoint, device="cpu", max_time_gap=0.5)
    expected = VideoMetrics(SYNTHETIC_LABELS.num_classes)
    stamp = bags.DEFAULT_START_STAMP
    for seed in SEEDS:
        expected.start_video()
        frames, labels = generate_video(seed, LENGTH, H, W)
        for frame, gt in zip(frames, labels):
            expected.update(seg.step(frame, stamp=stamp, frame_id="camera").labels, gt)
            stamp += 0.1
        stamp += bags.DEFAULT_VIDEO_GAP - 0.1
    expected = expected.compute()
    got = report["models"]["sdcpc"]
    assert report["status"] == "complete" and len(report["videos"]) == 2
    assert report["frames"]["scored"] == report["frames"]["in_bag"] == 2 * LENGTH
    assert got["mvc_windows"] == expected["mvc_windows"] == {"8": 4, "16": 0}
    for key in ("miou", "pixel_acc", "mvc8", "flicker"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert got["per_class_iou"] == pytest.approx([None if np.isnan(v) else v for v in
                                                  expected["per_class_iou"]], abs=1e-12)
    assert got["mvc16"] is None  # strict JSON: NaN -> null
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["models"]["sdcpc"]["miou"] == pytest.approx(expected["miou"])
    for name in ("report.md", "per_class_iou.png", "vc_windows.png", "latency.png", "samples.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert "| mIoU |" in (tmp_path / "out" / "report.md").read_text()


def test_baseline_is_scored_side_by_side_on_the_same_frames(tmp_path, checkpoint, bag):
    base = make_checkpoint(tmp_path / "base.pt", temporal=False, seed=1)
    report = evaluate_offline(bag, tmp_path / "out", checkpoint=checkpoint, baseline=base,
                                       progress=False)
    assert set(report["models"]) == {"sdcpc", "baseline"}
    assert report["models"]["baseline"]["latency_ms"]["count"] == 2 * LENGTH
    assert report["models"]["baseline"]["miou"] != report["models"]["sdcpc"]["miou"]
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| metric | SD-CPC | baseline |" in text


def test_prediction_equal_to_ground_truth_scores_one(tmp_path, bag):
    report = evaluate_offline(bag, tmp_path / "out", predict_gt=True, progress=False)
    m = report["models"]["ground_truth"]
    assert m["miou"] == 1.0 and m["mvc8"] == 1.0 and m["pixel_acc"] == 1.0
    assert len(report["videos"]) == 2  # the 10 s stamp jump starts the second video


def test_truncated_bag_gives_partial_report_and_accounts_for_every_frame(tmp_path):
    path = make_bag(tmp_path / "big", videos=1, length=30, seed=1)
    big = path / "big.mcap"
    # 40x48 frames: ~8 KB per image+label, 1 MiB chunks -> keep a prefix of the single chunk
    big.write_bytes(big.read_bytes()[: int(big.stat().st_size * 0.5)])
    code = cli.main(["offline", str(path), "--out", str(tmp_path / "out"), "--predict-gt"])
    assert code == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    f = report["frames"]
    assert report["status"] == "partial" and str(path) in report["errors"][0]
    assert 0 < f["scored"] < 30 and f["in_bag"] == 30
    assert f["scored"] + f["unlabelled"] + f["unreadable"] + f["not_read"] == 30
    assert report["models"]["ground_truth"]["miou"] == 1.0
    assert "partial" in (tmp_path / "out" / "report.md").read_text()


def _write_raw(path, items):
    """items: (topic, stamp_ns, message or raw bytes)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for topic, stamp, msg in items:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, bags.IMAGE_TYPE, typestore=TYPESTORE)
            data = msg if isinstance(msg, bytes) else TYPESTORE.serialize_cdr(msg, bags.IMAGE_TYPE)
            w.write(conns[topic], stamp, data)


def test_bad_messages_are_listed_with_bag_topic_frame_and_stamp(tmp_path):
    img, lbl = bags.DEFAULT_IMAGE_TOPIC, bags.DEFAULT_LABEL_TOPIC
    frames, labels = generate_video(9, 5, H, W)
    t = [int(1e9) * 100 + i * 100_000_000 for i in range(5)]
    bad_encoding = bags.image_message(frames[2], t[2], "camera")
    bad_encoding.encoding = "yuv422_weird"
    items = []
    for i in range(5):
        items.append((img, t[i], b"\x00\x01garbage" if i == 1 else
                      bad_encoding if i == 2 else bags.image_message(frames[i], t[i], "camera")))
        gt = labels[i][:20] if i == 3 else labels[i]  # frame 3: label size differs
        items.append((lbl, t[i], bags.image_message(gt, t[i], "camera")))
    _write_raw(tmp_path / "b", items)
    report = evaluate_offline(tmp_path / "b", tmp_path / "out", predict_gt=True, progress=False)
    log = {fr["index"]: fr for fr in report["frame_log"]}
    assert [log[i]["status"] for i in range(5)] == ["scored", "unreadable", "unreadable", "unlabelled",
                                                    "scored"]
    assert f"bag {tmp_path / 'b'}" in log[1]["reason"] and "frame 1" in log[1]["reason"]
    assert "yuv422_weird" in log[2]["reason"] and "stamp 100.200000000" in log[2]["reason"]
    assert "label size 48x20 differs from image 48x40" in log[3]["reason"]
    assert report["status"] == "complete" and report["models"]["ground_truth"]["miou"] == 1.0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "frame 2 (stamp 100.200000000): unreadable" in md


def test_missing_topic_lists_available_topics(tmp_path, bag, capsys):
    code = cli.main(["offline", str(bag), "--out", str(tmp_path / "o"), "--predict-gt",
                          "--image-topic", "/nope"])
    err = capsys.readouterr().err
    assert code == 2 and "/nope" in err and bags.DEFAULT_IMAGE_TOPIC in err and str(bag) in err
    with pytest.raises(BagError, match="/camera/labels_gt"):  # an explicit label topic must exist
        evaluate_offline(bag, tmp_path / "o", predict_gt=True, label_topic="/gt",
                                  explicit_label_topic=True, progress=False)


def test_bag_without_labels_still_reports_flicker_and_latency(tmp_path, checkpoint):
    path = make_bag(tmp_path / "nolabels", videos=1, length=4, label_topic=None)
    report = evaluate_offline(path, tmp_path / "out", checkpoint=checkpoint, progress=False)
    m = report["models"]["sdcpc"]
    assert m["miou"] is None and m["mvc8"] is None
    assert m["flicker"] is not None and m["latency_ms"]["count"] == 4
    assert report["frames"]["unlabelled"] == 4 and "no label topic" in report["problems"][0]


class _Interrupting:
    """Wraps a segmenter; Ctrl-C arrives during the third frame."""

    def __init__(self, seg):
        self.seg, self.labels, self.calls = seg, seg.labels, 0

    def step(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return self.seg.step(*args, **kwargs)


def test_ctrl_c_writes_a_partial_report(tmp_path, checkpoint, bag):
    seg = _Interrupting(StreamingSegmenter.from_checkpoint(checkpoint, device="cpu"))
    report = evaluate_offline(bag, tmp_path / "out", segmenter=seg, progress=False)
    assert report["status"] == "interrupted" and "interrupted" in report["errors"][0]
    assert report["frames"]["scored"] == 2 and report["frames"]["not_read"] == 2 * LENGTH - 2
    assert json.loads((tmp_path / "out" / "report.json").read_text())["status"] == "interrupted"


class _RunningOutOfMemory(_Interrupting):
    """Wraps a segmenter; the model fails on the third frame as a GPU out of memory would."""

    def step(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.seg.step(*args, **kwargs)

    def reset(self, reason):
        self.seg.reset(reason)


def test_model_failure_on_one_frame_is_listed_and_evaluation_goes_on(tmp_path, checkpoint, bag):
    seg = _RunningOutOfMemory(StreamingSegmenter.from_checkpoint(checkpoint, device="cpu"))
    report = evaluate_offline(bag, tmp_path / "out", segmenter=seg, progress=False)
    assert report["frames"]["failed"] == 1 and report["frames"]["scored"] == 2 * LENGTH - 1
    failed = [f for f in report["frame_log"] if f["status"] == "failed"]
    assert failed[0]["index"] == 2 and "OutOfMemoryError" in failed[0]["reason"]
    assert "failed" in (tmp_path / "out" / "report.md").read_text()


def test_convert_cli_then_offline_cli(tmp_path):
    out = tmp_path / "s.db3dir"
    assert cli.main(["convert", "synthetic", str(out), "--videos", "1", "--length", "3",
                          "--size", "32", "40", "--storage", "sqlite3", "--fps", "5"]) == 0
    assert cli.main(["offline", str(out), "--out", str(tmp_path / "r"), "--predict-gt"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["frames"]["scored"] == 3 and report["models"]["ground_truth"]["miou"] == 1.0


def test_live_scoring_skips_frames_whose_stamp_was_already_published():
    """Labels are matched to images by stamp: a second image with the same stamp is not published
    (see evaluate_live) and is reported as such; the first keeps its own answer."""
    from sdcpc_core.classes import LabelSet

    labels = LabelSet.from_names(["a", "b"])
    gt = np.zeros((4, 4), np.uint8)
    pairs = [Pair(index=i, log_time=i, stamp=s, frame_id="cam", labels=gt)
             for i, s in enumerate([10**9, 2 * 10**9, 2 * 10**9, 3 * 10**9])]
    sent = {10**9: 0.0, 2 * 10**9: 1.0, 3 * 10**9: 3.0}
    answers = {s: (t + 0.05, gt) for s, t in sent.items()}
    ev = Evaluation(bag="b", mode="live", labels=labels, models=["node"])
    ev.total = len(pairs)
    score_live(ev, pairs, sent, answers, max_time_gap=5.0)
    counts = ev.counts()
    assert (counts["scored"], counts["duplicate_stamp"], counts["dropped"]) == (3, 1, 0)
    dup = next(f for f in ev.frames if f["status"] == "duplicate_stamp")
    assert dup["index"] == 2 and "frame 1 has the same header stamp" in dup["reason"]
    assert "duplicate stamps" in markdown(ev.report(), [])


def test_live_videos_split_where_the_input_stream_breaks_not_where_answers_are_sparse():
    """The node judges gaps on every image it receives: frames it dropped do not make a cut, a
    jump in the published stamps does."""
    from sdcpc_core.classes import LabelSet

    labels = LabelSet.from_names(["a", "b"])
    gt = np.zeros((4, 4), np.uint8)
    stamps = [int(s * 10**9) for s in (1.0, 1.2, 1.4, 1.6, 1.8, 9.0, 9.2)]
    pairs = [Pair(index=i, log_time=i, stamp=s, frame_id="cam", labels=gt)
             for i, s in enumerate(stamps)]
    sent = {s: float(i) for i, s in enumerate(stamps)}
    answered = [stamps[0], stamps[4], stamps[6]]  # 0.8 s between the first two answers
    answers = {s: (sent[s] + 0.05, gt) for s in answered}
    ev = Evaluation(bag="b", mode="live", labels=labels, models=["node"])
    ev.total = len(pairs)
    score_live(ev, pairs, sent, answers, max_time_gap=0.5)
    assert (ev.counts()["scored"], ev.counts()["dropped"]) == (3, 4)
    assert len(ev.videos) == 2 and ev.videos[1]["first_frame"] == 6
    assert "gap of 7.200 s" in ev.videos[1]["reason"]


def test_samples_have_no_ground_truth_column_without_labels(tmp_path, checkpoint):
    import cv2

    path = make_bag(tmp_path / "nolabels", videos=1, length=4, label_topic=None)
    evaluate_offline(path, tmp_path / "out", checkpoint=checkpoint, samples=2, progress=False)
    evaluate_offline(make_bag(tmp_path / "labels", videos=1, length=4), tmp_path / "out_gt",
                     checkpoint=checkpoint, samples=2, progress=False)
    without = cv2.imread(str(tmp_path / "out" / "samples.png")).shape[1]
    with_gt = cv2.imread(str(tmp_path / "out_gt" / "samples.png")).shape[1]
    assert without == round(2.6 * 2 * 90) and with_gt == round(2.6 * 3 * 90)  # input | SD-CPC [| GT]


def test_plot_failure_is_recorded_in_report_json(tmp_path, bag, monkeypatch):
    from sdcpc_ros.evaluation import report

    def broken(*args):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(report, "_vc_plot", broken)
    evaluate_offline(bag, tmp_path / "out", predict_gt=True, progress=False)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "plot vc_windows.png not written: RuntimeError: no fonts" in saved["problems"]
    assert not (tmp_path / "out" / "vc_windows.png").exists()
    assert (tmp_path / "out" / "per_class_iou.png").is_file()  # the other plots are still written


def test_offline_cli_shows_progress_and_ctrl_c_is_one_line(tmp_path, bag, capsys, monkeypatch):
    assert cli.main(["offline", str(bag), "--out", str(tmp_path / "r"), "--predict-gt"]) == 0
    err = capsys.readouterr().err
    assert "evaluating" in err and f"{2 * LENGTH}/{2 * LENGTH}" in err  # tqdm, also without a TTY

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(StreamingSegmenter, "from_checkpoint", interrupted)
    assert cli.main(["offline", str(bag), "--out", str(tmp_path / "r2")]) == 130
    assert capsys.readouterr().err.strip() == "sdcpc-eval offline: interrupted (Ctrl-C)"


def test_ctrl_c_before_live_playback_is_one_line(tmp_path, bag, capsys, monkeypatch):
    def interrupted(*args, **kwargs):  # e.g. while the node starts
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "evaluate_live", interrupted)
    assert cli.main(["live", str(bag), "--out", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err.strip() == "sdcpc-eval live: interrupted (Ctrl-C)"
