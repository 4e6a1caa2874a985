"""Labels for the frames the network has no time for: the last network labels carried along the
image motion (DIS optical flow on a downscaled grey image, labels warped nearest-neighbour).

A :class:`KeyFrame` holds what a network frame leaves behind (its labels, optional confidence, a
small grey copy of its image). :meth:`LabelPropagator.propagate` measures the dense motion from a
later frame back to the key frame and looks every pixel's label up where it came from. Where the
motion is uncertain (the warped key image disagrees with the new image, or the pixel came from
outside the key image) the confidence is lowered and, by ``uncertain``, the label is kept as
warped, replaced by the key frame's label at the same place ("hold"), or set to ignore.
ROS-free; the node (``sdcpc_ros.node``) runs it in its own thread (OpenCV releases the GIL).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

FLOW_WIDTH = 256  # width of the grey images the flow is computed on
PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
UNCERTAIN_POLICIES = ("warp", "hold", "ignore")
PHOTOMETRIC_TOLERANCE = 40.0  # grey levels of disagreement at which a pixel's motion counts as wrong


def grey_small(rgb: np.ndarray, width: int = FLOW_WIDTH) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> uint8 grey at ``width`` columns (never enlarged), aspect kept, its mean
    brightness scaled to 128 (an exposure change or flicker is not taken for motion)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    if w > width:
        grey = cv2.resize(grey, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    return cv2.convertScaleAbs(grey, alpha=128.0 / max(float(grey.mean()), 1.0))


@dataclass
class KeyFrame:
    """What a network frame leaves for propagation; ``meta`` is the caller's (stamp, number...)."""

    grey: np.ndarray  # grey_small of the frame's image
    labels: np.ndarray  # (H, W) class ids at the image's resolution
    confidence: np.ndarray | None = None  # (H, W) float32, when the network gave one
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_frame(cls, rgb: np.ndarray, labels: np.ndarray, confidence=None, width: int = FLOW_WIDTH,
                   **meta) -> KeyFrame:
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"labels {labels.shape} and image {rgb.shape[:2]} differ in size")
        return cls(grey_small(rgb, width), labels, confidence, meta)

    @property
    def size(self) -> tuple[int, int]:
        return self.labels.shape[0], self.labels.shape[1]


@dataclass
class Propagated:
    """Labels carried to a new frame, with how sure the motion was."""

    labels: np.ndarray  # (H, W), the key frame's dtype
    confidence: np.ndarray | None  # (H, W) float32 in [0, 1]: key confidence x motion certainty
    uncertain_fraction: float  # share of pixels whose motion was judged uncertain
    elapsed_ms: float  # grey image, flow, warp


class LabelPropagator:
    """Carries a key frame's labels to later frames. Not thread-safe (one DIS instance): one
    thread calls :meth:`propagate`; :meth:`KeyFrame.from_frame` may run anywhere."""

    def __init__(self, preset: str = "medium", width: int = FLOW_WIDTH, uncertain: str = "hold",
                 tolerance: float = PHOTOMETRIC_TOLERANCE, ignore_id: int = 255):
        if preset not in PRESETS:
            raise ValueError(f"flow preset {preset!r} is not one of {', '.join(PRESETS)}")
        if uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain policy {uncertain!r} is not one of {', '.join(UNCERTAIN_POLICIES)}")
        if width < 16 or tolerance <= 0:
            raise ValueError(f"flow width must be >= 16 and tolerance > 0, got {width} and {tolerance}")
        self.width, self.uncertain, self.tolerance, self.ignore_id = width, uncertain, tolerance, ignore_id
        self.preset = preset
        self._flow = cv2.DISOpticalFlow_create(PRESETS[preset])
        self._warm: tuple[KeyFrame, np.ndarray] | None = None  # the last flow and its key frame
        self._grid: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def key_frame(self, rgb: np.ndarray, labels: np.ndarray, confidence=None, **meta) -> KeyFrame:
        """A key frame at this propagator's flow width."""
        return KeyFrame.from_frame(rgb, labels, confidence, self.width, **meta)

    def _pixel_grid(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if (h, w) not in self._grid:
            if len(self._grid) > 4:
                self._grid.clear()
            self._grid[(h, w)] = tuple(np.meshgrid(np.arange(w, dtype=np.float32),
                                                   np.arange(h, dtype=np.float32)))
        return self._grid[(h, w)]

    def motion(self, key: KeyFrame, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flow from ``grey`` back to the key image and each pixel's certainty in [0, 1], both at
        the flow's (small) resolution. The flow (dx, dy) says where a pixel of the new frame was in
        the key frame.

        Warm start: when the previous call measured the motion to the same key frame, DIS starts
        from that flow (the frames are close in time, so it is nearly right) instead of from zero,
        which lets it follow the motion as it grows over long gaps between network frames."""
        if grey.shape != key.grey.shape:
            raise ValueError(f"frame {grey.shape} and key frame {key.grey.shape} differ in size")
        start = self._warm[1] if self._warm is not None and self._warm[0] is key else None
        flow = self._flow.calc(grey, key.grey, start)
        self._warm = (key, flow.copy())
        h, w = grey.shape
        gx, gy = self._pixel_grid(h, w)
        map_x, map_y = gx + flow[..., 0], gy + flow[..., 1]
        warped = cv2.remap(key.grey, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        error = cv2.absdiff(warped, grey).astype(np.float32)
        certainty = np.clip(1.0 - error / self.tolerance, 0.0, 1.0)
        outside = (map_x < 0) | (map_x > w - 1) | (map_y < 0) | (map_y > h - 1)
        certainty[outside] = 0.0
        return flow, certainty

    def propagate(self, key: KeyFrame, rgb: np.ndarray, confidence: bool = True) -> Propagated:
        """The key frame's labels (and, if ``confidence``, its confidence times the motion's
        certainty; else None) carried to the frame ``rgb`` (same size)."""
        start = time.perf_counter()
        if rgb.shape[:2] != key.size:
            raise ValueError(f"frame {rgb.shape[:2]} and key frame {key.size} differ in size")
        flow, certainty = self.motion(key, grey_small(rgb, self.width))
        uncertain = certainty < 0.5
        if self.uncertain == "hold":  # no motion there: the key frame's label at the same place
            flow[uncertain] = 0.0
        h, w = key.size
        fh, fw = flow.shape[:2]
        if (fh, fw) != (h, w):  # flow to full resolution, in full-resolution pixels
            flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
            flow[..., 0] *= w / fw
            flow[..., 1] *= h / fh
        gx, gy = self._pixel_grid(h, w)
        flow[..., 0] += gx
        flow[..., 1] += gy
        labels = cv2.remap(key.labels, flow[..., 0], flow[..., 1], cv2.INTER_NEAREST,
                           borderMode=cv2.BORDER_REPLICATE)
        full_certainty = None
        if confidence or self.uncertain == "ignore":
            full_certainty = cv2.resize(certainty, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.uncertain == "ignore":
            labels[full_certainty < 0.5] = self.ignore_id
        out_confidence = None
        if confidence:
            out_confidence = full_certainty
            if key.confidence is not None:
                out_confidence = full_certainty * cv2.remap(
                    key.confidence, flow[..., 0], flow[..., 1], cv2.INTER_NEAREST,
                    borderMode=cv2.BORDER_REPLICATE)
            out_confidence = out_confidence.astype(np.float32, copy=False)
        return Propagated(labels, out_confidence, float(uncertain.mean()),
                          (time.perf_counter() - start) * 1e3)
