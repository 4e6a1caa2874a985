"""Segmentation metrics accumulated frame by frame: mIoU, mVC_n and label flicker.

They follow the reference VSPW evaluation used by CFFM/MRCFA (see the spec's "Metrics" section):

- mIoU from one confusion matrix over the whole set; GT outside ``[0, K)`` is ignored; the mean
  runs over the classes that occur in the GT.
- mVC_n: per video, window starts ``0 .. L-n-1`` (the reference stops one window early, kept on
  purpose); videos with ``L <= n`` give no window; the mean pools all windows of all videos; a
  window whose GT-consistent region is empty is NaN and left out.
- Label flicker: the fraction of pixels whose predicted label changes between consecutive frames.

Inputs are integer numpy arrays (uint8, uint16, int64 …) of shape (H, W). Every ``compute()``
returns plain Python floats/ints/lists; undefined values are ``float('nan')``. Converting NaN to
``None`` for strict JSON is the caller's choice: :func:`nan_to_none` does it.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from sdcpc_core.classes import IGNORE_INDEX


def nan_to_none(obj):
    """Recursively replace float NaN by ``None`` in dicts/lists (for strict JSON)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def _labels(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        raise TypeError(f"labels must be integers, got dtype {a.dtype}")
    return a


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")


class SegmentationMetrics:
    """Confusion-matrix mIoU, per-class IoU and pixel accuracy.

    The matrix is (K, K+1): rows are GT classes, column K counts predictions outside ``[0, K)``
    (always wrong, never credited to another class).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index  # informative: every GT outside [0, K) is ignored
        self.confusion = np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)

    def reset(self) -> None:
        self.confusion[:] = 0

    def update(self, pred, gt) -> None:
        """Add one frame (or any batch of same-shaped arrays)."""
        pred, gt = _labels(pred), _labels(gt)
        _check_pair(pred, gt)
        k = self.num_classes
        gt = gt.astype(np.int64, copy=False).ravel()
        pred = pred.astype(np.int64, copy=False).ravel()
        valid = (gt >= 0) & (gt < k)
        gt, pred = gt[valid], pred[valid]
        pred = np.where((pred >= 0) & (pred < k), pred, k)
        counts = np.bincount(gt * (k + 1) + pred, minlength=k * (k + 1))
        self.confusion += counts.reshape(k, k + 1)

    def compute(self) -> dict:
        """``{"miou", "per_class_iou" (NaN where the class is absent from GT), "pixel_acc"}``."""
        k = self.num_classes
        diag = np.diag(self.confusion[:, :k]).astype(np.float64)
        gt_count = self.confusion.sum(1).astype(np.float64)
        pred_count = self.confusion[:, :k].sum(0).astype(np.float64)
        union = gt_count + pred_count - diag
        present = gt_count > 0
        iou = np.full(k, np.nan)
        iou[present] = diag[present] / union[present]
        total = gt_count.sum()
        return {
            "miou": float(iou[present].mean()) if present.any() else float("nan"),
            "per_class_iou": [float(v) for v in iou],
            "pixel_acc": float(diag.sum() / total) if total > 0 else float("nan"),
        }


class VideoConsistency:
    """mVC_n, fed one video at a time, frame by frame; keeps only the last n frames.

    A window starting at frame i is scored once frames i..i+n-1 are seen, and committed only when
    frame i+n arrives: that drops each video's last window, as the reference does.
    ``ignore_index=None`` (default) matches the reference, which does not treat ignore pixels
    specially; an int excludes pixels whose GT at the window start equals it.
    """

    def __init__(self, n: int, ignore_index: int | None = None):
        if n < 2:
            raise ValueError(f"window length n must be >= 2, got {n}")
        self.n = int(n)
        self.ignore_index = ignore_index
        self.score_sum = 0.0
        self.num_windows = 0  # windows with a non-empty region
        self.num_empty = 0  # windows left out (NaN)
        self.last_score: float | None = None  # score of the window the latest update closed, if any
        self.per_video: dict[str, float] = {}  # per-video mean, for inspection only
        self._frames: deque = deque(maxlen=self.n)
        self._pending: float | None = None
        self._video: str | None = None
        self._video_scores: list[float] = []

    def start_video(self, name: str | None = None) -> None:
        if self._video is not None:
            self.end_video()
        self._video = name if name is not None else f"video_{len(self.per_video)}"
        self._frames.clear()
        self._pending = None
        self._video_scores = []

    def _score_window(self) -> float:
        pred0, gt0 = self._frames[0]
        region = np.ones(gt0.shape, dtype=bool)
        same_pred = np.ones(gt0.shape, dtype=bool)
        for pred, gt in list(self._frames)[1:]:
            region &= gt == gt0
            same_pred &= pred == pred0
        if self.ignore_index is not None:
            region &= gt0 != self.ignore_index
        size = int(region.sum())
        return float("nan") if size == 0 else float((region & same_pred).sum()) / size

    def update(self, pred, gt) -> None:
        pred, gt = _labels(pred), _labels(gt)
        _check_pair(pred, gt)
        if self._video is None:
            self.start_video()
        self.last_score = None
        if self._pending is not None:  # a later frame exists: the pending window counts
            self._commit(self._pending)
            self._pending = None
        self._frames.append((pred.copy(), gt.copy()))
        if len(self._frames) == self.n:
            self._pending = self._score_window()

    def _commit(self, score: float) -> None:
        if math.isnan(score):
            self.num_empty += 1
            return
        self.score_sum += score
        self.num_windows += 1
        self.last_score = score
        self._video_scores.append(score)

    def end_video(self) -> None:
        """Close the current video; its last complete window is dropped (reference behaviour)."""
        if self._video is not None and self._video_scores:
            self.per_video[self._video] = float(np.mean(self._video_scores))
        self._video = None
        self._frames.clear()
        self._pending = None
        self._video_scores = []

    def compute(self) -> float:
        """Pooled mean over all windows of all videos (NaN if none)."""
        return self.score_sum / self.num_windows if self.num_windows else float("nan")


class LabelFlicker:
    """Fraction of pixels whose predicted label changes between consecutive frames of a video.

    Pooled over all consecutive pairs of all videos (pixel-weighted).
    """

    def __init__(self):
        self.changed = 0
        self.compared = 0
        self._previous: np.ndarray | None = None

    def start_video(self, name: str | None = None) -> None:
        self._previous = None

    def update(self, pred) -> None:
        pred = _labels(pred)
        if self._previous is not None and self._previous.shape == pred.shape:
            self.changed += int((self._previous != pred).sum())
            self.compared += pred.size
        self._previous = pred.copy()

    def end_video(self) -> None:
        self._previous = None

    def compute(self) -> float:
        return self.changed / self.compared if self.compared else float("nan")


class VideoMetrics:
    """mIoU, mVC_n for each n in ``ns`` and label flicker, fed one video at a time.

    ``start_video(name)``, ``update(pred, gt=None)`` per frame (``gt=None``: flicker only),
    ``end_video()``, then ``compute()`` → a plain dict (NaN where undefined; see :func:`nan_to_none`).
    """

    def __init__(self, num_classes: int, ns=(8, 16), ignore_index: int = IGNORE_INDEX):
        self.segmentation = SegmentationMetrics(num_classes, ignore_index)
        self.consistency = {int(n): VideoConsistency(n) for n in ns}
        self.flicker = LabelFlicker()
        self.num_frames = 0
        self.num_videos = 0
        self._open = False

    def start_video(self, name: str | None = None) -> None:
        if self._open:
            self.end_video()
        for vc in self.consistency.values():
            vc.start_video(name)
        self.flicker.start_video(name)
        self._open = True

    def update(self, pred, gt=None) -> None:
        if not self._open:
            self.start_video()
        self.flicker.update(pred)
        self.num_frames += 1
        if gt is None:
            return
        self.segmentation.update(pred, gt)
        for vc in self.consistency.values():
            vc.update(pred, gt)

    def end_video(self) -> None:
        if not self._open:
            return
        for vc in self.consistency.values():
            vc.end_video()
        self.flicker.end_video()
        self.num_videos += 1
        self._open = False

    def compute(self) -> dict:
        """``miou, per_class_iou, pixel_acc, mvc<n>..., mvc_windows {n: count}, flicker, ...``."""
        out = self.segmentation.compute()
        for n, vc in self.consistency.items():
            out[f"mvc{n}"] = vc.compute()
        out["mvc_windows"] = {str(n): vc.num_windows for n, vc in self.consistency.items()}
        out["flicker"] = self.flicker.compute()
        out["num_frames"] = self.num_frames
        out["num_videos"] = self.num_videos + int(self._open)
        return out
