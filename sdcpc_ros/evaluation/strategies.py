"""Every camera frame scored three ways from one live run of a node that propagates labels:

* ``network``: the frames the network answered itself (the others are not scored);
* ``held``: every answered frame, a propagated one given its source network frame's labels as they
  were (what a consumer holding the last labels would have);
* ``node``: every answered frame as published (network or propagated labels).

Besides the models' usual metrics (mIoU, mVC8, flicker), :class:`StrategyBreakdown` keeps mIoU and
the dynamic-mask recall per strategy and per number of camera frames since the source network
frame (0 = the network's own frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("network", "held", "node")
STRATEGY_TITLES = {"network": "network frames only", "held": "every frame, last labels held",
                   "node": "every frame, propagated"}
MAX_BUCKET = 6  # frames since the network frame: 0..5, then 6+


@dataclass
class AnswerInfo:
    """What ``~/frame_info`` said about one answer."""

    propagated: bool
    source_stamp: int  # ns, the network frame the labels come from (own stamp when not propagated)


def frame_info_entry(msg) -> tuple[int, AnswerInfo]:
    """(stamp ns, AnswerInfo) from a FrameInfo message or its std_msgs/String JSON twin; a node
    without propagation (older FrameInfo) reads as a network answer."""
    import json

    if hasattr(msg, "header"):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        source = getattr(msg, "source_header", None)
        source_stamp = stamp if source is None else source.stamp.sec * 10**9 + source.stamp.nanosec
        return stamp, AnswerInfo(bool(getattr(msg, "propagated", False)), source_stamp)
    d = json.loads(msg.data)
    st = d["header"]["stamp"]
    stamp = st["sec"] * 10**9 + st["nanosec"]
    src = d.get("source_header", d["header"])["stamp"]
    return stamp, AnswerInfo(bool(d.get("propagated", False)), src["sec"] * 10**9 + src["nanosec"])


class StrategyBreakdown:
    """mIoU and dynamic-mask recall per strategy and per frames since the network frame, and the
    latency of each answer kind."""

    def __init__(self, num_classes: int, dynamic_ids):
        from sdcpc_core.metrics import SegmentationMetrics

        self.dynamic = np.zeros(max(num_classes, 256), bool)
        self.dynamic[list(dynamic_ids)] = True
        self.num_classes = num_classes
        self.metrics = {(s, k): SegmentationMetrics(num_classes) for s in STRATEGIES
                        for k in range(MAX_BUCKET + 1)}
        self.recall = {(s, k): [0, 0] for s in STRATEGIES for k in range(MAX_BUCKET + 1)}
        self.frames = dict.fromkeys(range(MAX_BUCKET + 1), 0)
        self.latency_ms = {"network": [], "propagated": []}

    def add(self, frames_since: int, preds: dict, gt, latency_ms: float | None, propagated: bool) -> None:
        k = min(max(frames_since, 0), MAX_BUCKET)
        self.frames[k] += 1
        if latency_ms is not None:
            self.latency_ms["propagated" if propagated else "network"].append(float(latency_ms))
        if gt is None:
            return
        gt_dynamic = self.dynamic[np.minimum(gt, self.dynamic.size - 1)] & (gt < self.num_classes)
        for name, pred in preds.items():
            self.metrics[(name, k)].update(pred, gt)
            hit = self.dynamic[np.minimum(pred, self.dynamic.size - 1)] & gt_dynamic
            self.recall[(name, k)][0] += int(hit.sum())
            self.recall[(name, k)][1] += int(gt_dynamic.sum())

    def _pooled(self, name: str, buckets) -> dict:
        from sdcpc_core.metrics import SegmentationMetrics

        pooled = SegmentationMetrics(self.num_classes)
        hits = total = 0
        for k in buckets:
            pooled.confusion += self.metrics[(name, k)].confusion
            hits += self.recall[(name, k)][0]
            total += self.recall[(name, k)][1]
        miou = pooled.compute()["miou"] if pooled.confusion.sum() else None
        return {"miou": miou, "dynamic_recall": hits / total if total else None,
                "dynamic_pixels": total}

    def summary(self) -> dict:
        """Per strategy: every frame pooled, the propagated frames alone (k >= 1), and each k."""
        buckets = range(MAX_BUCKET + 1)
        out = {"frames_per_bucket": {_bucket(k): self.frames[k] for k in buckets},
               "latency_ms": {kind: _percentiles(v) for kind, v in self.latency_ms.items()}}
        for name in STRATEGIES:
            out[name] = {"all": self._pooled(name, buckets),
                         "not_network_frames": self._pooled(name, range(1, MAX_BUCKET + 1)),
                         "per_frames_since": {_bucket(k): self._pooled(name, [k]) for k in buckets}}
        return out


def _bucket(k: int) -> str:
    return f"{k}+" if k == MAX_BUCKET else str(k)


def _percentiles(values) -> dict:
    if not values:
        return {"p50": None, "p95": None, "count": 0}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "count": int(a.size)}
