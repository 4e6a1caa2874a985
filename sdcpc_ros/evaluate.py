"""``sdcpc-eval``: convert data to rosbag2, then evaluate a bag offline (the engine) or live (the node).

Offline replays every image of the bag through the same :class:`StreamingSegmenter` the node uses
(no drops; stamps and frame_id feed its reset rules; a reset starts a new video for mVC) and scores
it against the label topic, matched by header stamp. Live plays the bag to a running ``sdcpc_node``
and scores what it publishes on ``~/labels``. Both write report.json, report.md and plots
(:mod:`sdcpc_ros.report`), also when the bag is damaged or the run is interrupted: every image is
accounted for as scored, unlabelled, label_error, unreadable or dropped.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sdcpc_core.engine import continuity_break
from sdcpc_ros import bags
from sdcpc_ros.bags import BagError, BagReader, format_stamp, stamp_to_ns
from sdcpc_ros.conversions import ImageConversionError, image_to_array

PAIRING_WINDOW_NS = 2_000_000_000  # how long (log time) an image waits for its label message
DEFAULT_MAX_TIME_GAP = 0.5  # the node's default
SAMPLE_HEIGHT = 120


# ---------------------------------------------------------------------------------------------
# reading image/label pairs
@dataclass
class Pair:
    """One image of the bag with its label (matched by stamp); ``error``: the image is unusable."""

    index: int
    log_time: int
    stamp: int | None = None
    frame_id: str = ""
    image: np.ndarray | None = None
    raw: bytes = b""
    labels: np.ndarray | None = None
    error: str | None = None
    label_error: str | None = None

    @property
    def stamp_s(self) -> float | None:
        return self.stamp / 1e9 if self.stamp else None  # 0 = unset, like the node

    @property
    def size(self):
        return None if self.image is None else self.image.shape[:2]


def _where(bag: BagReader, topic: str, index: int, stamp: int | None) -> str:
    return f"bag {bag.path}, topic {topic}, frame {index} (stamp {format_stamp(stamp)})"


def paired_frames(bag: BagReader, image_topic: str, label_topic: str | None,
                  problems: list[str]) -> Iterator[Pair]:
    """Images in log-time order, each with the label whose header stamp equals its own.

    An image waits up to ``PAIRING_WINDOW_NS`` of log time for its label. Label messages that cannot
    be decoded or matched are described in ``problems``.
    """
    topics = [image_topic] + ([label_topic] if label_topic else [])
    pending: deque = deque()  # (Pair, decoded message or None)
    labels: dict[int, tuple] = {}  # stamp -> (BagMessage, decoded)

    def ready(now: int | None) -> bool:
        pair = pending[0][0]
        return (now is None or pair.error is not None or pair.stamp in labels or not label_topic
                or now - pair.log_time > PAIRING_WINDOW_NS)

    def finish(pair: Pair, msg) -> Pair:
        if pair.error is None:
            try:
                pair.image = image_to_array(msg)
                if not pair.image.flags.writeable:  # a view of the message bytes
                    pair.image = pair.image.copy()
            except ImageConversionError as exc:
                pair.error = f"{_where(bag, image_topic, pair.index, pair.stamp)}: {exc}"
        label = labels.pop(pair.stamp, None)
        if label is not None and pair.error is None:
            try:
                pair.labels = bags.labels_from_message(label[1])
            except ValueError as exc:
                pair.label_error = f"{_where(bag, label_topic, label[0].index, pair.stamp)}: {exc}"
            else:
                if pair.labels.shape != pair.size:
                    pair.label_error = (
                        f"{_where(bag, label_topic, label[0].index, pair.stamp)}: label size "
                        f"{pair.labels.shape[1]}x{pair.labels.shape[0]} differs from image "
                        f"{pair.size[1]}x{pair.size[0]}")
                    pair.labels = None
        return pair

    for m in bag.messages(topics):
        if m.topic == label_topic:
            try:
                msg = bag.decode(m)
                labels[stamp_to_ns(msg.header.stamp)] = (m, msg)
            except BagError as exc:
                problems.append(f"label not usable, its image stays unlabelled: {exc}")
        else:
            pair = Pair(m.index, m.log_time, raw=m.data)
            msg = None
            try:
                msg = bag.decode(m, "frame")
                pair.stamp, pair.frame_id = stamp_to_ns(msg.header.stamp), str(msg.header.frame_id)
            except BagError as exc:
                pair.stamp, pair.error = m.log_time, str(exc)
            pending.append((pair, msg))
        while pending and ready(m.log_time):
            yield finish(*pending.popleft())
    while pending:
        yield finish(*pending.popleft())
    if labels:
        problems.append(f"{len(labels)} label messages on {label_topic} match no image stamp, e.g. "
                        f"{', '.join(format_stamp(s) for s in sorted(labels)[:3])}")


# ---------------------------------------------------------------------------------------------
# scoring
class ModelScore:
    """Metrics, per-frame latency and the per-window VC8 series of one model."""

    def __init__(self, num_classes: int):
        from sdcpc_core.metrics import VideoMetrics

        self.metrics = VideoMetrics(num_classes)
        self.latency_ms: list[float] = []
        self.vc_windows: list[tuple[int, float]] = []  # (frame index that closed the window, VC8)

    def update(self, index: int, pred, gt, latency_ms: float | None) -> None:
        self.metrics.update(pred, gt)
        closed = self.metrics.consistency[8].last_score if gt is not None else None
        if closed is not None:
            self.vc_windows.append((index, closed))
        if latency_ms is not None:
            self.latency_ms.append(float(latency_ms))

    def summary(self) -> dict:
        out = self.metrics.compute()
        lat = np.asarray(self.latency_ms, dtype=np.float64)
        out["latency_ms"] = ({"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                              "mean": float(lat.mean()), "max": float(lat.max()), "count": int(lat.size)}
                             if lat.size else {"p50": None, "p95": None, "mean": None, "max": None,
                                               "count": 0})
        out["vc8_windows"] = [[i, s] for i, s in self.vc_windows]
        return out


@dataclass
class Evaluation:
    """Collects every frame's fate, the per-model scores and sample frames; builds the report."""

    bag: str
    mode: str
    labels: object  # LabelSet
    models: list[str]
    settings: dict = field(default_factory=dict)
    sample_targets: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.scores = {m: ModelScore(self.labels.num_classes) for m in self.models}
        self.frames: list[dict] = []
        self.videos: list[dict] = []
        self.problems: list[str] = []
        self.errors: list[str] = []
        self.status = "complete"
        self.total: int | None = None
        self.samples: list[dict] = []

    def start_video(self, index: int, reason: str | None) -> None:
        for s in self.scores.values():
            s.metrics.start_video(f"video_{len(self.videos)}")
        self.videos.append({"first_frame": index, "frames": 0, "reason": reason or "stream start"})

    def skip(self, pair: Pair, status: str, reason: str) -> None:
        self.frames.append({"index": pair.index, "stamp": format_stamp(pair.stamp), "status": status,
                            "reason": reason, "video": len(self.videos) - 1 if self.videos else None})

    def add(self, pair: Pair, preds: dict, latencies: dict) -> None:
        gt = pair.labels
        status = "scored" if gt is not None else ("label_error" if pair.label_error else "unlabelled")
        for name, pred in preds.items():
            self.scores[name].update(pair.index, pred, gt, latencies.get(name))
        self.videos[-1]["frames"] += 1
        self.frames.append({"index": pair.index, "stamp": format_stamp(pair.stamp), "status": status,
                            "reason": pair.label_error or "", "video": len(self.videos) - 1,
                            "latency_ms": {k: round(float(v), 3) for k, v in latencies.items()}})
        if self.sample_targets and pair.index >= self.sample_targets[0] and pair.image is not None:
            while self.sample_targets and pair.index >= self.sample_targets[0]:
                self.sample_targets.pop(0)
            self.samples.append(_sample(pair, preds))

    def counts(self) -> dict:
        out = dict.fromkeys(("scored", "unlabelled", "label_error", "unreadable", "failed", "dropped",
                             "duplicate_stamp"), 0)
        for f in self.frames:
            out[f["status"]] += 1
        out["in_bag"] = self.total
        out["not_read"] = None if self.total is None else max(self.total - len(self.frames), 0)
        return out

    def report(self) -> dict:
        from sdcpc_core.metrics import nan_to_none

        return nan_to_none({
            "bag": self.bag, "mode": self.mode, "status": self.status,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": self.settings,
            "classes": list(self.labels.names), "frames": self.counts(),
            "models": {m: s.summary() for m, s in self.scores.items()},
            "videos": self.videos, "errors": self.errors, "problems": self.problems,
            "frame_log": self.frames,
        })


def _thumb(a: np.ndarray, nearest: bool) -> np.ndarray:
    import cv2

    h, w = a.shape[:2]
    if h <= SAMPLE_HEIGHT:
        return a.copy()
    size = (max(1, round(w * SAMPLE_HEIGHT / h)), SAMPLE_HEIGHT)
    return cv2.resize(a, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _sample(pair: Pair, preds: dict) -> dict:
    return {"index": pair.index, "stamp": format_stamp(pair.stamp), "image": _thumb(pair.image, False),
            "preds": {k: _thumb(np.asarray(v), True) for k, v in preds.items()},
            "gt": None if pair.labels is None else _thumb(pair.labels, True)}


def _sample_targets(total: int | None, k: int) -> list[int]:
    if k <= 0:
        return []
    if not total:
        return [0, 10, 30, 60][:k]
    return sorted({round(i * (total - 1) / max(k - 1, 1)) for i in range(k)})


def _open_bag(bag: BagReader, image_topic: str, label_topic: str | None, explicit_label: bool,
              ev: Evaluation) -> str | None:
    bag.require(image_topic)
    if bag.damage:
        ev.errors.append(bag.damage)
        ev.status = "partial"
    ev.total = bag.topics[image_topic].count
    if label_topic and label_topic not in bag.topics:
        if explicit_label:
            bag.require(label_topic)
        ev.problems.append(f"bag {bag.path} has no label topic {label_topic}: only flicker and latency "
                           f"are measured; topics in the bag: {bag.describe_topics()}")
        return None
    return label_topic


# ---------------------------------------------------------------------------------------------
# offline
def evaluate_offline(bag_path, out_dir, *, checkpoint=None, baseline=None, segmenter=None,
                     baseline_segmenter=None, image_topic=bags.DEFAULT_IMAGE_TOPIC,
                     label_topic=bags.DEFAULT_LABEL_TOPIC, explicit_label_topic=False,
                     input_size=None, device="cpu", precision="fp32",
                     max_time_gap=DEFAULT_MAX_TIME_GAP, predict_gt=False, samples=4,
                     progress=None) -> dict:
    """Replay the bag through the engine (or, ``predict_gt``, score the label topic against itself)
    and write the report to ``out_dir``; returns the report dict (``status`` complete, partial or
    interrupted; ``errors`` says why)."""
    from tqdm import tqdm

    from sdcpc_core.data.synthetic import SYNTHETIC_LABELS
    from sdcpc_core.engine import FrameError, StreamingSegmenter
    from sdcpc_ros.report import write_report

    kwargs = {"device": device, "precision": precision, "input_size": input_size,
              "max_time_gap": max_time_gap}
    models: dict = {}
    if predict_gt:
        labelset = checkpoint_labels(checkpoint) if checkpoint else SYNTHETIC_LABELS
    else:
        models["sdcpc"] = segmenter or StreamingSegmenter.from_checkpoint(checkpoint, **kwargs)
        if baseline or baseline_segmenter:
            models["baseline"] = baseline_segmenter or StreamingSegmenter.from_checkpoint(baseline, **kwargs)
        labelset = models["sdcpc"].labels
    settings = {"checkpoint": str(checkpoint or "embedded default") if not predict_gt else None,
                "baseline": str(baseline) if baseline else None, "image_topic": image_topic,
                "label_topic": label_topic, "input_size": list(input_size) if input_size else None,
                "device": device, "precision": precision, "max_time_gap": max_time_gap,
                "predict_gt": predict_gt}
    ev = Evaluation(str(bag_path), "offline", labelset, ["ground_truth"] if predict_gt else list(models),
                    settings)
    with BagReader(bag_path) as bag:  # an unopenable bag or a missing topic: error, no report
        label_topic = _open_bag(bag, image_topic, label_topic, explicit_label_topic, ev)
        ev.sample_targets = _sample_targets(ev.total, samples)
        try:
            previous = None
            for pair in tqdm(paired_frames(bag, image_topic, label_topic, ev.problems), total=ev.total,
                             unit="frame", desc="evaluating", disable=None if progress is None else not progress):
                if pair.error:
                    ev.skip(pair, "unreadable", pair.error)
                    continue
                current = (pair.stamp_s, pair.frame_id, pair.size)
                if predict_gt:
                    if pair.labels is None:
                        ev.skip(pair, "unlabelled", pair.label_error or "no label with this stamp")
                        continue
                    reason = continuity_break(previous, current, max_time_gap)
                    if previous is None or reason:
                        ev.start_video(pair.index, reason)
                    previous = current
                    ev.add(pair, {"ground_truth": pair.labels}, {})
                    continue
                preds, latencies = {}, {}
                try:
                    for name, seg in models.items():
                        res = seg.step(pair.image, stamp=pair.stamp_s, frame_id=pair.frame_id or None)
                        preds[name], latencies[name] = res.labels, res.latency_ms
                        if name == "sdcpc" and (previous is None or res.reset_reason):
                            ev.start_video(pair.index, res.reset_reason)
                except FrameError as exc:
                    ev.skip(pair, "unreadable", f"{_where(bag, image_topic, pair.index, pair.stamp)}: {exc}")
                    continue
                except (RuntimeError, MemoryError) as exc:  # the model failed (e.g. out of memory)
                    for seg in models.values():
                        seg.reset(f"segmentation failed on the previous frame: {type(exc).__name__}")
                    ev.skip(pair, "failed", f"{_where(bag, image_topic, pair.index, pair.stamp)}: "
                                            f"{type(exc).__name__}: {exc}")
                    continue
                previous = current
                ev.add(pair, preds, latencies)
        except BagError as exc:
            ev.errors.append(str(exc))
            ev.status = "partial"
        except KeyboardInterrupt:
            ev.errors.append(f"interrupted (Ctrl-C) after {len(ev.frames)} frames of {bag_path}")
            ev.status = "interrupted"
    report = ev.report()
    write_report(out_dir, report, labelset, ev.samples)
    return report


# ---------------------------------------------------------------------------------------------
# live
def checkpoint_labels(checkpoint=None):
    """The LabelSet of a checkpoint (default: the embedded model) without building the network."""
    from sdcpc_core.checkpoints import DEFAULT_CHECKPOINT, load_checkpoint, read_file
    from sdcpc_core.classes import LabelSet

    path = checkpoint or DEFAULT_CHECKPOINT
    obj = read_file(path)
    return LabelSet.from_dict(obj["labels"]) if "labels" in obj else load_checkpoint(path)[1]["labels"]


def _node_command(node_name, image_topic, checkpoint, input_size, device, max_time_gap) -> list[str]:
    cmd = [sys.executable, "-m", "sdcpc_ros.node", "--ros-args", "-r", f"__node:={node_name}",
           "-r", f"image:={image_topic}", "-p", "reliable_qos:=true", "-p", "publish_color:=false",
           "-p", f"max_time_gap:={float(max_time_gap)}", "-p", f"device:={device}"]
    if checkpoint:
        cmd += ["-p", f"checkpoint:={Path(checkpoint).resolve()}"]
    if input_size:
        cmd += ["-p", f"input_size:=[{int(input_size[0])}, {int(input_size[1])}]"]
    return cmd


def evaluate_live(bag_path, out_dir, *, rate=1.0, checkpoint=None, connect=False, node_name="sdcpc",
                  labels_topic=None, image_topic=bags.DEFAULT_IMAGE_TOPIC,
                  label_topic=bags.DEFAULT_LABEL_TOPIC, explicit_label_topic=False,
                  publish_topic=None, input_size=None, device="cpu",
                  max_time_gap=DEFAULT_MAX_TIME_GAP, startup_timeout=120.0, drain_timeout=10.0,
                  max_pause=1.0, samples=4) -> dict:
    """Play the bag's images to ``sdcpc_node`` (started here unless ``connect``) at recorded speed ×
    ``rate``, record ``~/labels``, match by stamp and score; unanswered frames count as dropped."""
    import subprocess
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from sdcpc_ros.report import write_report

    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labelset = checkpoint_labels(checkpoint)
    labels_topic = labels_topic or f"/{node_name}/labels"
    publish_topic = publish_topic or image_topic
    settings = {"checkpoint": str(checkpoint or "embedded default"), "rate": rate,
                "image_topic": image_topic, "label_topic": label_topic, "publish_topic": publish_topic,
                "labels_topic": labels_topic, "node": "connected" if connect else "started",
                "max_time_gap": max_time_gap, "input_size": list(input_size) if input_size else None,
                "device": device}
    ev = Evaluation(str(bag_path), "live", labelset, ["node"], settings)
    with BagReader(bag_path) as probe:  # fail fast, before a node is started
        probe.require(image_topic)
        if explicit_label_topic:
            probe.require(label_topic)

    answers: dict[int, tuple[float, np.ndarray]] = {}
    sent: dict[int, float] = {}
    context = rclpy.Context()
    rclpy.init(context=context)
    player = rclpy.create_node("sdcpc_eval_player", context=context)
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                          reliability=ReliabilityPolicy.RELIABLE)
    pub = player.create_publisher(Image, publish_topic, reliable)

    def on_labels(msg) -> None:
        arrival = time.perf_counter()
        try:
            answers[stamp_to_ns(msg.header.stamp)] = (arrival, bags.labels_from_message(msg))
        except ValueError as exc:
            ev.problems.append(f"unusable message on {labels_topic}: {exc}")

    player.create_subscription(Image, labels_topic, on_labels, reliable)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(player)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    proc = log = None
    pairs: list[Pair] = []
    try:
        if not connect:
            log = open(out_dir / "node.log", "w")  # noqa: SIM115 - closed in finally
            proc = subprocess.Popen(_node_command(node_name, publish_topic, checkpoint, input_size,
                                                  device, max_time_gap),
                                    stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + startup_timeout
        while pub.get_subscription_count() == 0 or player.count_publishers(labels_topic) == 0:
            if proc is not None and proc.poll() is not None:
                log.flush()
                raise RuntimeError(f"sdcpc_node exited with {proc.returncode} before it was ready; "
                                   f"its log ({out_dir / 'node.log'}):\n"
                                   + (out_dir / "node.log").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"no node subscribed to {publish_topic} and publishing {labels_topic} "
                                   f"within {startup_timeout:.0f} s")
            time.sleep(0.1)
        with BagReader(bag_path) as bag:
            label_topic = _open_bag(bag, image_topic, label_topic, explicit_label_topic, ev)
            ev.sample_targets = _sample_targets(ev.total, samples)
            keep = list(ev.sample_targets)
            t_play = last_log = None
            for pair in paired_frames(bag, image_topic, label_topic, ev.problems):
                pairs.append(pair)
                if pair.error:
                    continue
                if t_play is None:
                    t_play = time.perf_counter()
                else:
                    t_play += min(max(pair.log_time - last_log, 0) / 1e9 / rate, max_pause)
                last_log = pair.log_time
                if pair.stamp in sent:  # its answer could not be told from the earlier frame's
                    continue
                time.sleep(max(0.0, t_play - time.perf_counter()))
                sent[pair.stamp] = time.perf_counter()
                pub.publish(pair.raw)
                pair.raw = b""  # keep memory for labels only
                if not any(0 <= pair.index - t < 10 for t in keep):
                    pair.image = None  # only frames near a sample target keep their pixels
        quiet_since, seen = time.monotonic(), len(answers)
        while len(answers) < len(sent) and time.monotonic() - quiet_since < drain_timeout:
            time.sleep(0.05)
            if len(answers) != seen:
                quiet_since, seen = time.monotonic(), len(answers)
    except BagError as exc:
        ev.errors.append(str(exc))
        ev.status = "partial"
    except KeyboardInterrupt:
        ev.errors.append(f"interrupted (Ctrl-C) after publishing {len(sent)} frames of {bag_path}")
        ev.status = "interrupted"
    finally:
        if proc is not None:
            proc.send_signal(2)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        executor.shutdown()
        player.destroy_node()
        rclpy.try_shutdown(context=context)
    _score_live(ev, pairs, sent, answers, max_time_gap)
    report = ev.report()
    write_report(out_dir, report, labelset, ev.samples)
    return report


def _score_live(ev: Evaluation, pairs, sent, answers, max_time_gap) -> None:
    """Score each published frame against the node's answer with the same stamp. A frame whose
    stamp an earlier frame already had was not published: the node's labels carry only the
    stamp, so the two answers could not be told apart."""
    previous, first_with_stamp = None, {}
    for pair in pairs:
        if pair.error:
            ev.skip(pair, "unreadable", pair.error)
            continue
        first = first_with_stamp.setdefault(pair.stamp, pair.index)
        if first != pair.index:
            ev.skip(pair, "duplicate_stamp", f"not published: frame {first} has the same header stamp "
                    f"{format_stamp(pair.stamp)}, and labels are matched to images by stamp")
            continue
        if pair.stamp not in sent:
            ev.skip(pair, "dropped", "not published (run stopped)")
            continue
        answer = answers.get(pair.stamp)
        if answer is None:
            ev.skip(pair, "dropped", "published, never answered on ~/labels")
            continue
        arrival, pred = answer
        current = (pair.stamp_s, pair.frame_id, pred.shape)
        reason = continuity_break(previous, current, max_time_gap)
        if previous is None or reason:
            ev.start_video(pair.index, reason)
        previous = current
        if pair.labels is not None and pair.labels.shape != pred.shape:
            pair.label_error = f"node output {pred.shape} differs from the label {pair.labels.shape}"
            pair.labels = None
        ev.add(pair, {"node": pred}, {"node": (arrival - sent[pair.stamp]) * 1e3})


# ---------------------------------------------------------------------------------------------
# command line
def _add_bag_options(p) -> None:
    p.add_argument("--fps", type=float, default=10.0, help="frame rate for the stamps (default 10)")
    p.add_argument("--storage", choices=sorted(bags.STORAGES), default="mcap")
    p.add_argument("--image-topic", default=bags.DEFAULT_IMAGE_TOPIC)
    p.add_argument("--label-topic", default=bags.DEFAULT_LABEL_TOPIC)
    p.add_argument("--frame-id", default=bags.DEFAULT_FRAME_ID)
    p.add_argument("--start-stamp", type=float, default=bags.DEFAULT_START_STAMP,
                   help="stamp of the first frame, seconds (default %(default)s)")
    p.add_argument("--video-gap", type=float, default=bags.DEFAULT_VIDEO_GAP,
                   help="stamp jump between videos, seconds (default 10; > the node's max_time_gap)")


def _add_eval_options(p) -> None:
    p.add_argument("bag", help="rosbag2 folder, or a .mcap / .db3 file")
    p.add_argument("--out", required=True, help="folder for report.json, report.md and the plots")
    p.add_argument("--checkpoint", default=None, help="sdcpc checkpoint (default: the embedded model)")
    p.add_argument("--image-topic", default=bags.DEFAULT_IMAGE_TOPIC)
    p.add_argument("--label-topic", default=None,
                   help=f"ground-truth mono8 topic (default {bags.DEFAULT_LABEL_TOPIC} if present; '' = none)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--max-time-gap", type=float, default=DEFAULT_MAX_TIME_GAP,
                   help="seconds between stamps that start a new stream/video (default 0.5, the node's)")
    p.add_argument("--samples", type=int, default=4, help="sample frames in samples.png (default 4)")


def _convert(args) -> int:
    common = {"fps": args.fps, "storage": args.storage, "image_topic": args.image_topic,
              "label_topic": args.label_topic or None, "frame_id": args.frame_id,
              "start_stamp": args.start_stamp, "video_gap": args.video_gap}
    total = None
    if args.source == "synthetic":
        frames = bags.synthetic_frames(args.videos, args.length, *args.size, seed=args.seed)
        total = args.videos * args.length
    elif args.source == "images":
        frames = bags.image_folder_frames(args.input, args.labels)
    elif args.source == "video":
        frames = bags.video_file_frames(args.input, args.labels)
    elif args.source == "vspw":
        frames = bags.vspw_frames(args.input, args.videos, args.split)
    else:
        frames = bags.cityscapes_frames(args.input, args.split, args.cities)
    summary = bags.write_bag(args.output, frames, total=total, **common)
    print(f"wrote {summary.path}: {summary.frames} frames ({summary.labelled} labelled) in "
          f"{len(summary.videos)} videos on {args.image_topic}"
          + (f" and {args.label_topic}" if summary.labelled else ""))
    return 0


def _print_outcome(report: dict, out) -> int:
    f = report["frames"]
    print(f"{report['mode']} evaluation {report['status']}: {f['scored']} frames scored, "
          f"{f['unlabelled']} unlabelled, {f['label_error']} label errors, {f['unreadable']} unreadable, "
          f"{f['dropped']} dropped; report in {Path(out) / 'report.md'}")
    for line in report["problems"][:10] + report["errors"]:
        print(f"sdcpc-eval: {line}", file=sys.stderr)
    return {"complete": 0, "partial": 1, "interrupted": 130}[report["status"]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdcpc-eval", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="image folders, videos, VSPW, Cityscapes, synthetic -> rosbag2")
    sources = convert.add_subparsers(dest="source", required=True)
    p = sources.add_parser("synthetic", help="the procedural labelled generator")
    p.add_argument("output")
    p.add_argument("--videos", type=int, default=3)
    p.add_argument("--length", type=int, default=30, help="frames per video")
    p.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=1000, help="video v uses seed + v (default 1000)")
    _add_bag_options(p)
    for name, what in (("images", "a folder of images (one video), name order"),
                       ("video", "a video file (OpenCV)")):
        p = sources.add_parser(name, help=what)
        p.add_argument("input")
        p.add_argument("output")
        p.add_argument("--labels", default=None, help="folder of label PNGs (class ids) by name/frame number")
        _add_bag_options(p)
    p = sources.add_parser("vspw", help="VSPW root (data/<video>/origin|mask), labels shifted")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--split", default="val")
    p.add_argument("--videos", nargs="*", default=None)
    _add_bag_options(p)
    p = sources.add_parser("cityscapes", help="Cityscapes leftImg8bit_sequence + gtFine train ids")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--split", default="val")
    p.add_argument("--cities", nargs="*", default=None)
    _add_bag_options(p)

    p = sub.add_parser("offline", help="replay every frame through the engine and score it")
    _add_eval_options(p)
    p.add_argument("--baseline", default=None, help="per-frame baseline checkpoint, scored side by side")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--predict-gt", action="store_true",
                   help="score the label topic against itself (checks the bag and scoring: expect 1.0)")

    p = sub.add_parser("live", help="play the bag to sdcpc_node and score what it publishes")
    _add_eval_options(p)
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1)")
    p.add_argument("--connect", action="store_true", help="use a running node instead of starting one")
    p.add_argument("--node-name", default="sdcpc")
    p.add_argument("--labels-topic", default=None, help="the node's labels topic (default /<node>/labels)")
    p.add_argument("--publish-topic", default=None, help="topic the node reads images from (default the "
                   "bag's image topic)")
    p.add_argument("--max-pause", type=float, default=1.0,
                   help="longest wait between two frames in seconds (shortens video gaps; default 1)")
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--startup-timeout", type=float, default=120.0)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "convert":
            return _convert(args)
        explicit = args.label_topic is not None
        label_topic = (args.label_topic if explicit else bags.DEFAULT_LABEL_TOPIC) or None
        common = {"checkpoint": args.checkpoint, "image_topic": args.image_topic,
                  "label_topic": label_topic, "explicit_label_topic": explicit and bool(label_topic),
                  "input_size": args.input_size, "device": args.device,
                  "max_time_gap": args.max_time_gap, "samples": args.samples}
        if args.command == "offline":
            report = evaluate_offline(args.bag, args.out, baseline=args.baseline,
                                      precision=args.precision, predict_gt=args.predict_gt, **common)
        else:
            report = evaluate_live(args.bag, args.out, rate=args.rate, connect=args.connect,
                                   node_name=args.node_name, labels_topic=args.labels_topic,
                                   publish_topic=args.publish_topic, max_pause=args.max_pause,
                                   drain_timeout=args.drain_timeout,
                                   startup_timeout=args.startup_timeout, **common)
        return _print_outcome(report, args.out)
    except (BagError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"sdcpc-eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdcpc-eval: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
