"""Streaming inference: one backbone pass per frame, a ring buffer of cached frames, reset rules.

``StreamingSegmenter.step`` is what the ROS node, the CLI and the replay evaluation all call, so
what is measured offline is what runs on the robot. ``segment_clip`` is the paper's protocol
(every target re-encodes its references) and must give the same numbers.

Reference frames: target ``n`` uses frames ``n + o`` for ``o`` in ``reference_offsets``. A frame
that does not exist (stream start, after a reset) is replaced by the oldest frame still available,
and the very first frame of a stream is its own reference.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdcpc_core.checkpoints import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
from sdcpc_core.classes import LabelSet
from sdcpc_core.data.clips import IMAGENET_MEAN, IMAGENET_STD, reference_indices
from sdcpc_core.models.temporal import FrameCache
from sdcpc_core.postprocess import labels_and_confidence, resized_labels

MIN_SIDE = 32  # stride 4 then spatial reduction 8 in MiT stage 1: smaller inputs cannot be encoded
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class FrameError(ValueError):
    """A frame the engine cannot segment (wrong shape or dtype)."""


@dataclass
class SegmentationResult:
    """Per-frame output at input resolution."""

    labels: np.ndarray  # (H, W) uint8 (≤ 255 classes) or uint16
    confidence: np.ndarray | None  # (H, W) float32 max softmax probability, when asked for
    dynamic_mask: np.ndarray  # (H, W) bool: label is a dynamic class
    frame_index: int  # frames seen since the engine was built
    frames_aggregated: int  # distinct past frames used as references
    reset_reason: str | None  # why the buffer was cleared before this frame, if it was
    latency_ms: float  # preprocessing + network + postprocessing
    probabilities: torch.Tensor | None = None  # (K, H, W) float32 when asked for


def resolve_device(device: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> torch.device, with a clear error if unusable."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices exist")
    elif dev.type != "cpu":
        raise ValueError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def continuity_break(previous, current, max_time_gap: float | None) -> str | None:
    """The stream's reset rules on ``(stamp_s, frame_id, (H, W))`` pairs: why ``current`` cannot
    continue ``previous`` (size or frame_id change, stamp going backwards, gap above
    ``max_time_gap``), or None. ``None`` stamps / frame_ids disable their rules."""
    if previous is None:
        return None
    (last_stamp, last_id, last_size), (stamp, frame_id, size) = previous, current
    if tuple(size) != tuple(last_size):
        return f"frame size changed from {last_size[1]}x{last_size[0]} to {size[1]}x{size[0]}"
    if frame_id is not None and last_id is not None and frame_id != last_id:
        return f"frame_id changed from {last_id!r} to {frame_id!r}"
    if stamp is not None and last_stamp is not None:
        if stamp < last_stamp:
            return f"stamp went backwards by {last_stamp - stamp:.3f} s"
        if max_time_gap is not None and stamp - last_stamp > max_time_gap:
            return f"gap of {stamp - last_stamp:.3f} s exceeds max_time_gap {max_time_gap} s"
    return None


class StreamingSegmenter:
    """Segment a stream frame by frame with SD-CPC (or the per-frame baseline)."""

    def __init__(self, model: torch.nn.Module, labels: LabelSet, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, *, device: str = "auto", precision: str = "fp32",
                 channels_last: bool = False, input_size: tuple[int, int] | None = None,
                 reference_offsets=None, max_time_gap: float | None = None, dynamic_classes=None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
        if input_size is not None:
            input_size = tuple(int(s) for s in input_size)
            if len(input_size) != 2 or min(input_size) < MIN_SIDE:
                raise ValueError(f"input_size must be [height, width], each >= {MIN_SIDE}; got {list(input_size)}")
        offsets = tuple(model.reference_offsets if reference_offsets is None else reference_offsets)
        if any(o >= 0 for o in offsets):
            raise ValueError(f"reference_offsets {list(offsets)}: a stream has only past frames, use negative offsets")
        if max_time_gap is not None and max_time_gap <= 0:
            raise ValueError(f"max_time_gap must be > 0 seconds, got {max_time_gap}")
        self.device = resolve_device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.input_size = input_size
        self.reference_offsets = offsets
        self.max_time_gap = max_time_gap
        self.labels = labels if dynamic_classes is None else labels.with_dynamic(dynamic_classes)
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._lock = threading.Lock()
        self._buffer: dict[int, FrameCache] = {}
        self._frame_count = 0
        self._stream_start = 0
        self._last: tuple | None = None  # (stamp, frame_id, (H, W)) of the previous frame
        self._pending_reset: str | None = None

    @classmethod
    def from_checkpoint(cls, path=None, **kwargs) -> StreamingSegmenter:
        """Build from our checkpoint; ``path=None`` (or "") is the embedded default model.

        ``input_size`` defaults to the checkpoint's recorded training resolution, if any.
        """
        path = Path(path) if path else DEFAULT_CHECKPOINT
        if not path.exists() and path == DEFAULT_CHECKPOINT:
            raise CheckpointError(f"the embedded default model {path} is missing from this install; "
                                  "reinstall sdcpc or pass a checkpoint path")
        model, meta = load_checkpoint(path)
        if kwargs.get("input_size") is None and meta.get("input_size"):
            kwargs["input_size"] = tuple(meta["input_size"])
        return cls(model, meta["labels"], meta["mean"], meta["std"], **kwargs)

    # -- buffer -------------------------------------------------------------------------------
    @property
    def buffer_length(self) -> int:
        return len(self._buffer)

    @property
    def frames_seen(self) -> int:
        return self._frame_count

    def reset(self, reason: str = "requested") -> None:
        """Forget all past frames; the next frame starts a new stream."""
        with self._lock:
            self._clear(reason)

    def _clear(self, reason: str) -> None:
        self._buffer.clear()
        self._stream_start = self._frame_count
        self._last = None
        self._pending_reset = reason

    def _check_continuity(self, stamp, frame_id, size) -> None:
        reason = continuity_break(self._last, (stamp, frame_id, size), self.max_time_gap)
        if reason:
            self._clear(reason)

    # -- tensors ------------------------------------------------------------------------------
    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def preprocess(self, frame) -> torch.Tensor:
        """(H, W, 3) uint8 RGB (numpy or tensor) -> (1, 3, h, w) normalised float on the device."""
        x = torch.as_tensor(np.ascontiguousarray(frame) if isinstance(frame, np.ndarray) else frame)
        if x.ndim != 3 or x.shape[2] != 3 or x.dtype != torch.uint8 or min(x.shape[:2]) < 1:
            raise FrameError(f"expected an (H, W, 3) uint8 RGB frame, got shape {tuple(x.shape)} "
                             f"dtype {x.dtype}; convert the image to rgb8 first")
        if self.input_size is None and min(x.shape[:2]) < MIN_SIDE:  # the network's strides need it
            raise FrameError(f"frame {x.shape[1]}x{x.shape[0]} is smaller than {MIN_SIDE} pixels on a "
                             "side, the least the network takes at its own size; set input_size to "
                             "resize frames (the node's input_size parameter)")
        x = x.to(self.device, non_blocking=True).permute(2, 0, 1).unsqueeze(0).float()
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _postprocess(self, logits, size, t0, index, aggregated, reset_reason, with_confidence,
                     with_probs):
        if with_confidence:
            labels, confidence = labels_and_confidence(logits[0], size)
            confidence = confidence.cpu().numpy()
        else:
            labels, confidence = resized_labels(logits[0], size), None
        probs = None
        if with_probs:
            full = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)[0]
            probs = full.softmax(0).cpu()  # (K, H, W)
        dtype = np.uint8 if self.labels.num_classes <= 255 else np.uint16
        labels = labels.cpu().numpy().astype(dtype)
        return SegmentationResult(
            labels=labels, confidence=confidence, dynamic_mask=self.labels.dynamic_mask(labels),
            frame_index=index, frames_aggregated=aggregated, reset_reason=reset_reason,
            latency_ms=(time.perf_counter() - t0) * 1e3, probabilities=probs)

    # -- streaming ----------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, frame, stamp: float | None = None, frame_id: str | None = None,
             return_confidence: bool = False, return_probabilities: bool = False) -> SegmentationResult:
        """Segment the next frame of the stream (stamp in seconds, for the reset rules).

        Labels alone are cheap to resize (see ``sdcpc_core.postprocess``); the confidence map
        and the (K, H, W) probabilities cost a pass over every class at every pixel, so they
        are computed only when asked for.
        """
        t0 = time.perf_counter()
        size = tuple(np.shape(frame)[:2])
        x = self.preprocess(frame)
        with self._lock:
            self._check_continuity(stamp, frame_id, size)
            index = self._frame_count
            with self._autocast():
                current = self.model.encode(x)
                ref_ids = reference_indices(index, self.reference_offsets, first=self._stream_start)
                refs = [current if i == index else self._buffer[i] for i in ref_ids]
                logits = self.model.forward_cached(current, refs)["logits"]
            self._buffer[index] = current
            self._frame_count += 1
            self._last = (stamp, frame_id, size)
            oldest_needed = self._frame_count + min(self.reference_offsets, default=0)
            for i in [i for i in self._buffer if i < oldest_needed]:
                del self._buffer[i]
            reset_reason, self._pending_reset = self._pending_reset, None
        aggregated = len({i for i in ref_ids if i != index})
        return self._postprocess(logits, size, t0, index, aggregated, reset_reason,
                                 return_confidence, return_probabilities)

    @torch.inference_mode()
    def segment_clip(self, frames, return_confidence: bool = False,
                     return_probabilities: bool = False) -> list[SegmentationResult]:
        """The paper's protocol: each target re-encodes its reference frames (no cache reuse)."""
        results = []
        for t, frame in enumerate(frames):
            t0 = time.perf_counter()
            ref_ids = reference_indices(t, self.reference_offsets)
            with self._autocast():
                current = self.model.encode(self.preprocess(frame))
                refs = [current if i == t else self.model.encode(self.preprocess(frames[i]))
                        for i in ref_ids]
                logits = self.model.forward_cached(current, refs)["logits"]
            aggregated = len({i for i in ref_ids if i != t})
            results.append(self._postprocess(logits, tuple(np.shape(frame)[:2]), t0, t, aggregated,
                                             None, return_confidence, return_probabilities))
        return results
