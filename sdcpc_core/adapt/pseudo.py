"""Pseudo-labels from the teacher, offline: it may look at future frames.

1. The teacher runs on every frame as a stream (an SD-CPC teacher with its own references), and
   on the mirrored video; the mirrored probabilities are flipped back and averaged (``flip``).
2. Temporal ensembling: frame t's probabilities are averaged with those of frames t-r … t+r
   (past AND future); with ``align`` each is first warped onto frame t by dense optical flow
   (OpenCV Farnebäck). On the synthetic world, where motion is about a pixel a frame and the
   frames are noisy, the plain average gave the better labels (docs/adapt.md), so it is the default.
3. Where the ensemble's argmax differs from the centre frame's own (mirror-averaged) argmax,
   ``disagree`` decides: ``ensemble`` (its label), ``centre`` (the frame's own), ``ignore``, or
   ``dynamic`` (the frame's own where that is a dynamic class: a small moving object that the
   unaligned average smears into the background; the ensemble's elsewhere).
4. The label is the ensemble's argmax where its probability reaches ``threshold``, else ignored.

Everything is at the network's output grid (stride 4), where the student's losses are computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from sdcpc_core.classes import IGNORE_INDEX
from sdcpc_core.settings import reference_indices

FLOW_MAX_WIDTH = 320  # optical flow is computed at most this wide (cost), then scaled


@dataclass
class PseudoLabels:
    """Per frame of all sources, concatenated: ``probs`` (N, K, h, w) fp16 ensembled probabilities,
    ``labels`` (N, h, w) uint8/int64 with IGNORE_INDEX below the threshold."""

    probs: torch.Tensor
    labels: torch.Tensor
    teacher_labels: torch.Tensor  # (N, h, w) the plain per-frame teacher's argmax (no ensembling)
    centre_probs: torch.Tensor | None = None  # (N, K, h, w) fp16 the frame's own (flip-averaged) probabilities

    @property
    def coverage(self) -> float:
        return float((self.labels != IGNORE_INDEX).float().mean())


def normalise(frames: np.ndarray, mean, std) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 normalised."""
    x = torch.from_numpy(frames).float().permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def stream_probabilities(model, frames: np.ndarray, mean, std, batch: int = 8) -> torch.Tensor:
    """The model's softmax (N, K, h4, w4) on one video, streamed as the engine does: each frame
    with its references at the model's offsets (clamped to the video's start)."""
    model.eval()
    offsets = tuple(model.reference_offsets)
    out, caches = [], {}
    keep = -min(offsets, default=0)
    for start in range(0, len(frames), batch):
        x = normalise(frames[start:start + batch], mean, std)
        if not offsets:  # per-frame: a whole batch at once
            out.append(model.forward_cached(model.encode(x))["logits"].float().softmax(1).half())
            continue
        for i in range(len(x)):
            t = start + i
            caches[t] = model.encode(x[i:i + 1])
            refs = [caches[j] for j in reference_indices(t, offsets)]
            out.append(model.forward_cached(caches[t], refs)["logits"].float().softmax(1).half())
            for j in [j for j in caches if j < t + 1 - keep]:
                del caches[j]
    return torch.cat(out)


def teacher_probabilities(teacher, frames: np.ndarray, mean, std, flip: bool) -> torch.Tensor:
    """Stream probabilities, averaged with those of the mirrored video flipped back (``flip``)."""
    probs = stream_probabilities(teacher, frames, mean, std).float()
    if flip:
        mirrored = stream_probabilities(teacher, np.ascontiguousarray(frames[:, :, ::-1]), mean, std)
        probs = (probs + mirrored.float().flip(-1)) / 2
    return probs


def _gray(frames: np.ndarray) -> list[np.ndarray]:
    h, w = frames.shape[1:3]
    scale = min(1.0, FLOW_MAX_WIDTH / w)
    size = (max(8, round(w * scale)), max(8, round(h * scale)))
    return [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
            for f in frames]


def flow_grid(gray_t: np.ndarray, gray_s: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """A grid_sample grid (1, h, w, 2) that pulls frame s's maps onto frame t's pixels."""
    flow = cv2.calcOpticalFlowFarneback(gray_t, gray_s, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # t -> s
    gh, gw = gray_t.shape
    h, w = out_hw
    flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_AREA)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    # pixel centres of the output grid in the flow image's coordinates, moved by the flow
    sx = (xs + 0.5) * gw / w - 0.5 + flow[..., 0]
    sy = (ys + 0.5) * gh / h - 0.5 + flow[..., 1]
    grid = np.stack([(sx + 0.5) / gw * 2 - 1, (sy + 0.5) / gh * 2 - 1], axis=-1)
    return torch.from_numpy(grid)[None]


def temporal_ensemble(probs: torch.Tensor, frames: np.ndarray, radius: int, align: bool) -> torch.Tensor:
    """Average each frame's (K, h, w) probabilities with its ±``radius`` neighbours in ONE video,
    warped onto it by optical flow when ``align``; neighbours beyond the video are skipped."""
    if radius <= 0:
        return probs
    n, _, h, w = probs.shape
    gray = _gray(frames) if align else None
    out = torch.empty_like(probs)
    for t in range(n):
        total = probs[t].clone()
        count = 1
        for s in range(max(0, t - radius), min(n, t + radius + 1)):
            if s == t:
                continue
            if align:
                grid = flow_grid(gray[t], gray[s], (h, w))
                warped = F.grid_sample(probs[s:s + 1], grid, mode="bilinear", padding_mode="border",
                                       align_corners=False)[0]
            else:
                warped = probs[s]
            total += warped
            count += 1
        out[t] = total / count
    return out


def shared_encoder_probabilities(teacher, views, start: int, length: int) -> torch.Tensor:
    """A per-frame teacher's probabilities from encoder maps already cached (the student's
    encoder IS the teacher's when the student is built from it): one encoder pass serves both.
    ``views``: [original] or [original, mirrored] lists of 4 maps; mirrored is flipped back."""
    probs = []
    with torch.no_grad():
        for v, view in enumerate(views):
            out = []
            for i in range(start, start + length, 16):
                maps = [m[i:min(i + 16, start + length)].float() for m in view]
                out.append(teacher.decode_head(maps).float().softmax(1))
            p = torch.cat(out)
            probs.append(p.flip(-1) if v else p)
    return sum(probs) / len(probs)


DISAGREE_MODES = ("ensemble", "centre", "ignore", "dynamic")


def make_pseudo_labels(probs_per_video: list[torch.Tensor], videos: list[np.ndarray], *, radius: int,
                       align: bool, threshold: float, balance: float = 0.0, disagree: str = "ensemble",
                       dynamic: tuple[int, ...] = (), progress=None) -> PseudoLabels:
    """Pseudo-labels for every frame of every video (concatenated in order) from the teacher's
    probabilities (``teacher_probabilities`` or ``shared_encoder_probabilities``). ``disagree``:
    what a pixel gets where the ensemble's class is not the frame's own (module docstring);
    ``dynamic``: the class ids ``disagree="dynamic"`` protects."""
    if disagree not in DISAGREE_MODES:
        raise ValueError(f"disagree must be one of {DISAGREE_MODES}, got {disagree!r}")
    probs, plain = [], []
    for p, frames in zip(probs_per_video, videos):
        plain.append(p.argmax(1).to(torch.uint8))
        probs.append(temporal_ensemble(p.float(), frames, radius, align).half())
        if progress is not None:
            progress(len(frames))
    probs = torch.cat(probs)
    centre_probs = torch.cat([p.half() for p in probs_per_video])
    centre = torch.cat(plain).long()
    conf, arg = probs.float().max(1)
    keep = conf >= class_thresholds(conf, arg, probs.shape[1], threshold, balance)[arg]
    labels = torch.where(keep, arg, torch.full_like(arg, IGNORE_INDEX))
    differ = arg != centre
    if disagree == "centre":
        labels = torch.where(differ, centre, labels)
    elif disagree == "ignore":
        labels = torch.where(differ, torch.full_like(labels, IGNORE_INDEX), labels)
    elif disagree == "dynamic" and dynamic:
        protect = differ & torch.isin(centre, torch.as_tensor(dynamic, dtype=centre.dtype))
        labels = torch.where(protect, centre, labels)
    return PseudoLabels(probs, labels.to(torch.uint8), centre.to(torch.uint8), centre_probs)


def class_weights(labels: torch.Tensor, k: int, power: float) -> torch.Tensor:
    """(K,) cross-entropy weights ``frequency ** -power`` of the pseudo-labels' classes, normalised
    so that the pixel-weighted mean is 1 (``power`` 0: all ones); a class never seen gets the
    largest weight of those seen."""
    counts = torch.bincount(labels[labels != IGNORE_INDEX].long().flatten(), minlength=k)[:k].double()
    return class_weights_from_counts(counts, power)


def class_weights_from_counts(counts: torch.Tensor, power: float) -> torch.Tensor:
    """``class_weights`` from (K,) pixel counts of the pseudo-labels' classes."""
    counts = counts.double()
    k = len(counts)
    if power <= 0 or counts.sum() == 0:
        return torch.ones(k)
    seen = counts > 0
    w = torch.zeros(k, dtype=torch.float64)
    w[seen] = (counts[seen] / counts.sum()) ** -power
    w[~seen] = w[seen].max()
    w = w / ((w * counts).sum() / counts.sum())
    return w.float()


def class_thresholds(conf: torch.Tensor, arg: torch.Tensor, k: int, threshold: float,
                     balance: float) -> torch.Tensor:
    """(K,) confidence thresholds. ``balance`` > 0 (class-balanced self-training, as CBST): a class
    keeps at least its ``balance`` most confident share of its pixels even below ``threshold``,
    so that rare, hard classes (on which the teacher is rarely sure) are not all ignored."""
    out = torch.full((k,), float(threshold))
    if balance > 0:
        for c in range(k):
            values = conf[arg == c]
            if values.numel():
                q = torch.quantile(values.float()[:: max(1, values.numel() // 100_000)], 1.0 - balance)
                out[c] = min(float(threshold), float(q))
    return out
