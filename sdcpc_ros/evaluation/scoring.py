"""Scoring of one evaluation: every frame's fate, per-model metrics, sample frames, report dict."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from sdcpc_core.bags import BagReader, format_stamp
from sdcpc_core.settings import STREAM_MAX_TIME_GAP
from sdcpc_ros.evaluation.pairing import Pair

DEFAULT_MAX_TIME_GAP = STREAM_MAX_TIME_GAP  # the node's default
SAMPLE_HEIGHT = 120


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


def sample_targets(total: int | None, k: int) -> list[int]:
    if k <= 0:
        return []
    if not total:
        return [0, 10, 30, 60][:k]
    return sorted({round(i * (total - 1) / max(k - 1, 1)) for i in range(k)})


def open_bag(bag: BagReader, image_topic: str, label_topic: str | None, explicit_label: bool,
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


def checkpoint_labels(checkpoint=None):
    """The LabelSet of a checkpoint (default: the embedded model) without building the network."""
    from sdcpc_core.checkpoints import DEFAULT_CHECKPOINT, load_checkpoint, read_file
    from sdcpc_core.classes import LabelSet

    path = checkpoint or DEFAULT_CHECKPOINT
    obj = read_file(path)
    return LabelSet.from_dict(obj["labels"]) if "labels" in obj else load_checkpoint(path)[1]["labels"]


