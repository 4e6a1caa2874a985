"""Streaming inference: one backbone pass per frame, a ring buffer of cached frames, reset rules.

``StreamingSegmenter.step`` is what the ROS node, the CLI and the replay evaluation all call, so
what is measured offline is what runs on the robot. ``segment_clip`` is the paper's protocol
(every target re-encodes its references) and must give the same numbers.

Settings (device, precision, input size, references, reset rules, ...) are one validated
``sdcpc_core.settings.StreamSettings``; ``update`` changes those that may change while streaming.

Reference frames: target ``n`` uses frames ``n + o`` for ``o`` in ``reference_offsets``. A frame
that does not exist (stream start, after a reset) is replaced by the oldest frame still available,
and the very first frame of a stream is its own reference (``settings.reference_indices``).

Continuity is the camera's: a caller that skips frames while busy (the node) reports every input
image with ``observe``; gaps, stamps going backwards and frame_id or size changes are judged on
that input stream, so frames skipped by a slow consumer are not taken for a scene cut.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sdcpc_core.checkpoints import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint, resolve_checkpoint
from sdcpc_core.classes import LabelSet
from sdcpc_core.export import CHECKPOINT as EXPORT_CHECKPOINT
from sdcpc_core.export import is_export_dir, read_export
from sdcpc_core.models.temporal import FrameCache
from sdcpc_core.postprocess import labels_and_confidence, resized_labels, warm_up
from sdcpc_core.settings import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIN_SIDE,
    SETTINGS,
    SettingError,
    StreamSettings,
    reference_indices,
)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class FrameError(ValueError):
    """A frame the engine cannot segment (wrong shape or dtype)."""


class NonFiniteOutputError(RuntimeError):
    """The network produced NaN/inf logits for a frame: nothing may be published for it."""


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
    reference_age_s: float | None = None  # stamp minus the oldest aggregated reference's stamp
    frames_since_reset: int = 0  # input frames of this continuous stream before this one


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
    """The stream's reset rules on ``(stamp_s, frame_id, (H, W))`` triples: why ``current`` cannot
    continue ``previous`` (size or frame_id change, stamp going backwards, gap above
    ``max_time_gap``), or None. ``None`` stamps / frame_ids / sizes disable their rules."""
    if previous is None:
        return None
    (last_stamp, last_id, last_size), (stamp, frame_id, size) = previous, current
    if size is not None and last_size is not None and tuple(size) != tuple(last_size):
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
    """Segment a stream frame by frame with SD-CPC (or the per-frame baseline).

    ``settings`` (a StreamSettings) or keyword overrides of its fields, e.g.
    ``StreamingSegmenter(model, labels, device="cpu", precision="bf16")``.
    """

    def __init__(self, model: torch.nn.Module, labels: LabelSet, settings: StreamSettings | None = None,
                 export_dir=None, export_progress=None, source=None, **overrides):
        settings = (settings or StreamSettings()).replace(**overrides)
        self._checkpoint_labels = labels
        self.labels = self._labels_for(settings.dynamic_classes)
        self.settings = settings
        self._model_offsets = tuple(model.reference_offsets)
        self.device = resolve_device(settings.device)
        self.model = model.to(self.device).eval()
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        mean, std = settings.mean or IMAGENET_MEAN, settings.std or IMAGENET_STD
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # an on-the-fly export records mean/std; export_progress(str) hears of it, stage by stage.
        # ``source`` (the model's checkpoint file) keys the export cache; without it an on-the-fly
        # export is made afresh. runtime_note: which backend and precision run, and why.
        self.runtime_note = ""
        self.precision_warning: str | None = None  # a precision asked for that is slow on this CPU
        self.runner = self._build_runner(export_dir, labels, export_progress, source)
        if self.device.type == "cpu":
            warm_up()  # the label kernel: ~0.2 s from its disk cache, here rather than at frame 1
        self._lock = threading.Lock()  # the model and the buffer
        self._buffer: dict[int, tuple[FrameCache, float | None]] = {}  # index -> (cache, stamp)
        self._frame_count = 0
        self._stream_start = 0
        self._last: tuple | None = None  # (stamp, frame_id, (H, W)) of the previous segmented frame
        self._pending_reset: str | None = None
        # The input stream (every frame observed, segmented or not), guarded by its own lock so
        # that observing never waits for the network.
        self._input_lock = threading.Lock()
        self._last_input: tuple | None = None
        self._input_count = 0
        self._input_stream_start = 0  # input count at the last break
        self._breaks: list[tuple[int, str]] = []  # (input number, reason), not yet applied

    @classmethod
    def from_checkpoint(cls, path=None, settings: StreamSettings | None = None, export_progress=None,
                        **overrides) -> StreamingSegmenter:
        """Build from our checkpoint; ``path=None`` (or "") is the embedded default model.

        Unset ``input_size``, ``mean`` and ``std`` take the checkpoint's recorded values.
        """
        settings = (settings or StreamSettings()).replace(**overrides)
        # a Hub id, a Hugging Face directory or a published .pth: converted once, then cached
        path = resolve_checkpoint(path, progress=export_progress)
        if not path.exists() and path == DEFAULT_CHECKPOINT:
            raise CheckpointError(f"the embedded default model {path} is missing from this install; "
                                  "reinstall sdcpc or pass a checkpoint path")
        export_dir = None
        if is_export_dir(path):  # an export directory: its graphs, and its checkpoint for torch
            export_dir, meta = path, read_export(path)
            if not (path / EXPORT_CHECKPOINT).is_file():
                raise CheckpointError(f"export directory {path} lacks {EXPORT_CHECKPOINT}; re-export it "
                                      "with `sdcpc export CKPT -o DIR`")
            model, _ = load_checkpoint(path / EXPORT_CHECKPOINT)
            if model.config != meta["config"]:
                raise CheckpointError(f"{path}: {EXPORT_CHECKPOINT} and the export metadata describe "
                                      "different models; re-export the directory")
        else:
            model, meta = load_checkpoint(path)
        settings = settings.replace(
            input_size=settings.input_size or (tuple(meta["input_size"]) if meta.get("input_size") else None),
            mean=settings.mean or tuple(meta["mean"]), std=settings.std or tuple(meta["std"]))
        return cls(model, meta["labels"], settings, export_dir=export_dir, export_progress=export_progress,
                   source=None if export_dir is not None else path)

    def _build_runner(self, export_dir, labels, progress=None, source=None):
        """The backend that runs ``encode`` and ``aggregate`` (sdcpc_core.runtimes). A backend other
        than torch runs an export directory's graphs; given none, the model's export is taken from
        the export cache (``sdcpc_core.exports``), made there first if absent (``progress(str)``
        hears of it). Sets ``runtime_note``."""
        from sdcpc_core import runtimes
        from sdcpc_core.export import read_export

        backend, why = runtimes.choose_backend(self.settings.backend, self.device, self.precision,
                                               fixed_size=export_dir is not None or self.input_size is not None)
        why = f"{why}; {self._settle_precision(backend, export_dir, source)}"
        if backend == "torch":
            self.runtime_note = f"backend torch, precision {self.precision} ({why}; the exact reference path)"
            return runtimes.TorchRunner(self.model, self.device, self.precision)
        cls = runtimes.OnnxRuntimeRunner if backend == "onnxruntime" else runtimes.OpenVINORunner
        cls.check(self.device, self.precision)  # a refused setting costs no export
        if export_dir is None:
            from sdcpc_core.exports import cached_export

            export_dir, where = cached_export(self.model, labels, self.input_size, backend, self.precision,
                                              self._mean.flatten().tolist(), self._std.flatten().tolist(),
                                              source=source, progress=progress,
                                              segmenter_cls=type(self))
            self.model.to(self.device)
            meta = read_export(export_dir, check_graphs=False)  # checked when it was written
        else:
            where = f"export directory {export_dir}"
            meta = read_export(export_dir)
        self.runtime_note = f"backend {backend}, precision {self.precision} ({why}; {where})"
        export_dir = Path(export_dir)
        if self.input_size is not None and tuple(self.input_size) != tuple(meta["input_size"]):
            raise SettingError("input_size", self.input_size, f"the export {export_dir} takes "
                               f"{meta['input_size']} only; unset it or re-export with --input-size")
        if self.settings.input_size is None:
            self.settings = self.settings.replace(input_size=tuple(meta["input_size"]))
        self._check_int8_weights(meta, backend)
        if meta["config"].temporal and len(self.reference_offsets) != meta["num_references"]:
            raise SettingError("reference_offsets", self.reference_offsets, f"the export {export_dir} "
                               f"aggregates {meta['num_references']} references; use as many offsets")
        return cls(export_dir, meta, self.device, self.precision)

    def _settle_precision(self, backend: str, export_dir, source) -> str:
        """Resolve ``precision`` (``auto``: per backend and CPU, ``runtimes.choose_precision``) into
        the settings; sets ``precision_warning``. Returns why, with the CPU's instruction sets."""
        from sdcpc_core import runtimes
        from sdcpc_core.exports import is_embedded
        from sdcpc_core.quantize import has_int8

        if backend == "torch":
            int8_graphs = False
        elif export_dir is not None:
            int8_graphs = has_int8(export_dir, backend)
        else:  # the embedded models are quantised on the fly (sdcpc_core.exports)
            int8_graphs = is_embedded(source)
        precision, why, self.precision_warning = runtimes.choose_precision(
            self.precision, backend, self.device, int8_graphs)
        self.settings = self.settings.replace(precision=precision)
        return why

    def _check_int8_weights(self, meta: dict, backend: str) -> None:
        """Warn when int8 graphs with 8-bit weights (exported before sdcpc quantised weights to 7
        bits) run on a CPU without VNNI, where their 16-bit intermediate sums saturate."""
        from sdcpc_core.cpu import cpu_features
        from sdcpc_core.quantize import WEIGHT_BITS

        cpu = cpu_features()
        bits = meta.get("int8", {}).get(backend, {}).get("weight_bits", 8)
        if self.precision == "int8" and bits > WEIGHT_BITS and not cpu.int8_dot:
            self.precision_warning = (
                f"this export's int8 graphs have {bits}-bit weights, which saturate on a CPU without "
                f"VNNI ({cpu.short}): labels may disagree with fp32 (97 % of pixels measured); "
                "re-export them (sdcpc export CKPT -o DIR --int8 --calibration SOURCE) or use precision auto")

    @property
    def backend(self) -> str:
        """The backend in use (``auto`` resolved)."""
        return self.runner.name

    # -- settings -----------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def channels_last(self) -> bool:
        return self.settings.channels_last

    @property
    def input_size(self) -> tuple[int, int] | None:
        return self.settings.input_size

    @property
    def max_time_gap(self) -> float | None:
        return self.settings.max_time_gap

    @property
    def reference_offsets(self) -> tuple[int, ...]:
        offsets = self.settings.reference_offsets
        return self._model_offsets if offsets is None else offsets

    def _labels_for(self, dynamic_classes) -> LabelSet:
        if dynamic_classes is None:
            return self._checkpoint_labels
        try:
            return self._checkpoint_labels.with_dynamic(dynamic_classes)
        except ValueError as exc:
            raise SettingError("dynamic_classes", dynamic_classes, str(exc)) from None

    def check_update(self, **changes) -> StreamSettings:
        """The settings ``update`` would apply, validated, without applying them. Only settings
        marked ``runtime`` may change while streaming (max_time_gap, dynamic_classes)."""
        new = self.settings.replace(**changes)
        for name, value in self.settings.changed(new).items():
            if not SETTINGS[name].runtime:
                raise SettingError(name, value, "cannot change while streaming; build a new engine "
                                   "(node: restart it with the new value)")
        self._labels_for(new.dynamic_classes)
        return new

    def update(self, **changes) -> None:
        """Change settings while streaming (see ``check_update``); takes effect at the next frame."""
        new = self.check_update(**changes)
        labels = self._labels_for(new.dynamic_classes)
        with self._lock, self._input_lock:
            self.settings, self.labels = new, labels

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
        with self._input_lock:
            self._last_input = None
            self._breaks.clear()
            self._input_stream_start = self._input_count

    def _clear(self, reason: str) -> None:
        self._buffer.clear()
        self._stream_start = self._frame_count
        self._last = None
        self._pending_reset = reason

    # -- continuity ---------------------------------------------------------------------------
    def observe(self, stamp: float | None = None, frame_id: str | None = None,
                size: tuple[int, int] | None = None) -> int:
        """Report an input frame (segmented or not) and return its input number, to pass to
        ``step(..., input_number=)`` if this frame is segmented. A break in the input stream
        (gap above max_time_gap, stamp going backwards, frame_id or size change) resets the
        buffer before the next frame segmented at or after it. Cheap; never waits for the network."""
        with self._input_lock:
            number = self._input_count
            reason = continuity_break(self._last_input, (stamp, frame_id, size), self.max_time_gap)
            if reason:
                self._breaks.append((number, reason))
                self._input_stream_start = number
            self._last_input = (stamp, frame_id, size)
            self._input_count += 1
            return number

    def _catch_up(self, input_number: int) -> int:
        """Apply the input-stream breaks up to and including ``input_number`` (lock held); returns
        how many input frames the stream had before this one."""
        with self._input_lock:
            due = [reason for number, reason in self._breaks if number <= input_number]
            self._breaks = [(n, r) for n, r in self._breaks if n > input_number]
            since_reset = input_number - self._input_stream_start
        if due:
            self._clear(due[-1])
        return max(since_reset, 0)

    # -- tensors ------------------------------------------------------------------------------
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
             return_confidence: bool = False, return_probabilities: bool = False,
             input_number: int | None = None) -> SegmentationResult:
        """Segment the next frame of the stream (stamp in seconds, for the reset rules).

        ``input_number``: what ``observe`` returned for this frame, when the caller reports every
        input frame (segmented or not) with ``observe``; without it the frame is observed here.
        Labels alone are cheap to resize (see ``sdcpc_core.postprocess``); the confidence map
        and the (K, H, W) probabilities cost a pass over every class at every pixel, so they
        are computed only when asked for. Raises NonFiniteOutputError (state unchanged) if the
        network's output is not finite.
        """
        t0 = time.perf_counter()
        size = tuple(np.shape(frame)[:2])
        x = self.preprocess(frame)
        if input_number is None:
            input_number = self.observe(stamp, frame_id, size)
        with self._lock:
            since_reset = self._catch_up(input_number)
            # size and frame_id against the previous segmented frame too (an observer may not
            # know the size of a compressed image); the time rules are the input stream's
            reason = continuity_break(self._last, (None, frame_id, size), None)
            if reason:
                self._clear(reason)
            index = self._frame_count
            current = self.runner.encode(x)
            ref_ids = reference_indices(index, self.reference_offsets, first=self._stream_start)
            refs = [current if i == index else self._buffer[i][0] for i in ref_ids]
            logits = self.runner.aggregate(current, refs)
            if not _all_finite(logits):
                raise NonFiniteOutputError(
                    f"the network produced NaN/inf logits for frame {index}; nothing is published for "
                    "it (check the weights with `sdcpc info`, or try precision fp32)")
            past = {i for i in ref_ids if i != index}
            ref_stamps = [self._buffer[i][1] for i in past]
            self._buffer[index] = (current, stamp)
            self._frame_count += 1
            self._last = (stamp, frame_id, size)
            oldest_needed = self._frame_count + min(self.reference_offsets, default=0)
            for i in [i for i in self._buffer if i < oldest_needed]:
                del self._buffer[i]
            reset_reason, self._pending_reset = self._pending_reset, None
        age = (stamp - min(ref_stamps) if past and stamp is not None
               and all(t is not None for t in ref_stamps) else None)
        result = self._postprocess(logits, size, t0, index, len(past), reset_reason,
                                   return_confidence, return_probabilities)
        result.reference_age_s, result.frames_since_reset = age, since_reset
        return result

    @torch.inference_mode()
    def segment_clip(self, frames, return_confidence: bool = False,
                     return_probabilities: bool = False) -> list[SegmentationResult]:
        """The paper's protocol: each target re-encodes its reference frames (no cache reuse)."""
        results = []
        for t, frame in enumerate(frames):
            t0 = time.perf_counter()
            ref_ids = reference_indices(t, self.reference_offsets)
            current = self.runner.encode(self.preprocess(frame))
            refs = [current if i == t else self.runner.encode(self.preprocess(frames[i]))
                    for i in ref_ids]
            logits = self.runner.aggregate(current, refs)
            aggregated = len({i for i in ref_ids if i != t})
            results.append(self._postprocess(logits, tuple(np.shape(frame)[:2]), t0, t, aggregated,
                                             None, return_confidence, return_probabilities))
        return results


def _all_finite(x: torch.Tensor) -> bool:
    """``isfinite(x).all()`` from two reductions (max and min propagate NaN; ±inf shows in one of
    them) instead of a boolean map of every logit."""
    return bool(torch.isfinite(torch.stack([x.amax(), x.amin()])).all())
