"""Procedural driving-like labelled video, built so that several frames beat one.

A scene is a wide textured panorama (road, sidewalk, terrain, building, vegetation, sky) seen
through a camera that pans smoothly (ego-motion), with moving objects (person, car, bicycle)
drawn in depth order (they occlude each other). Each frame is then degraded independently:

- the three moving classes share one body-texture distribution and overlapping shapes; their
  identity is shown by a class marker (car: two yellow lamps, person: a magenta cap, bicycle: a
  cyan ring) that BLINKS: visible in a frame with probability ``marker_prob``, independently per
  frame; a frame without the marker leaves the object ambiguous, a few past frames rarely do.
  The classes also move at different speeds (person slow, bicycle medium, car fast);
- confusable background pairs (road/sidewalk, vegetation/terrain) differ by subtle tints and
  patterns that a per-frame, spatially smooth colour field (fresh every frame) masks;
- transient occluders (glare, dropout, smear blotches, rain streaks) hide ~8 % of a frame on
  average (p90 ~13 %), at new places every frame, while the labels keep the class underneath;
- global brightness flicker (with occasional badly exposed frames), motion blur and sensor noise.

Motion is small (pan ≤ ~1.5 px/frame, objects ≤ ~3 px/frame at 256 px width, scaled with the
width), so over offsets like -9..-1 a point moves a few stride-8 cells at most.

Every frame is rendered on its own from ``(seed, t)``: ``SyntheticVideo(...).render(t)`` gives
random access, and a clip needs only its own frames.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import cv2
import numpy as np

from sdcpc_core.classes import LabelSet
from sdcpc_core.data.clips import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipDataset,
    ClipSample,
    reference_indices,
)

SYNTHETIC_NAMES = ("road", "sidewalk", "building", "vegetation", "terrain", "sky",
                   "person", "car", "bicycle")
SYNTHETIC_LABELS = LabelSet.from_names(SYNTHETIC_NAMES, np.array([
    [128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35], [152, 251, 152],
    [70, 130, 180], [220, 20, 60], [0, 0, 142], [119, 11, 32]], dtype=np.uint8))
ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, PERSON, CAR, BICYCLE = range(9)

# Base RGB per background class; confusable pairs are close on purpose.
_BASE = {ROAD: (96, 94, 100), SIDEWALK: (110, 104, 104), BUILDING: (128, 108, 96),
         VEGETATION: (62, 112, 52), TERRAIN: (88, 118, 58), SKY: (150, 180, 220)}
_MARKER = {PERSON: (235, 40, 200), CAR: (255, 230, 60), BICYCLE: (40, 230, 240)}
# (height as a fraction of H at the bottom of the image, aspect w/h range, speed px/frame @256)
_OBJECT = {PERSON: (0.30, (0.40, 0.95), (0.3, 1.0)),
           CAR: (0.24, (0.80, 1.90), (1.2, 3.0)),
           BICYCLE: (0.26, (0.60, 1.30), (0.8, 2.0))}


@dataclass(frozen=True)
class SyntheticOptions:
    """Knobs of the generator; speeds and sizes are in pixels at 256 px and scale with the image."""

    pan_speed: float = 1.5          # max camera pan, px/frame
    camera_shake: float = 2.0       # amplitude of the vertical camera bob, px
    objects_per_view: float = 4.0   # mean number of objects in one view
    marker_prob: float = 0.35       # per-frame visibility of an object's class marker
    color_field: float = 16.0       # std of the smooth per-frame colour field (0..255 scale)
    noise_std: tuple = (6.0, 20.0)  # per-frame sensor noise std range
    flicker: float = 0.15           # std of the per-frame log-gain
    bad_exposure_prob: float = 0.08  # frames with a strong gain drop/boost
    occluders: float = 4.0          # mean transient blotches per frame
    rain_prob: float = 0.3          # frames with rain streaks
    blur_prob: float = 0.3          # frames with horizontal motion blur


@dataclass
class _Object:
    cls: int
    x0: float          # world x of the left edge at t = 0
    vx: float          # px/frame
    top: int           # world y of the top edge
    mask: np.ndarray   # (h, w) bool
    rgb: np.ndarray    # (h, w, 3) float32
    marker: np.ndarray  # (h, w) bool, where the class marker is drawn


def _smooth_noise(rng, shape_hw, cell: float, channels: int = 0) -> np.ndarray:
    """Zero-mean, unit-ish std noise smooth at a scale of ``cell`` pixels: (H, W[, C]) float32."""
    h, w = shape_hw
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    small = rng.standard_normal((gh, gw, channels) if channels else (gh, gw)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


class SyntheticVideo:
    """One procedurally generated video; ``render(t)`` -> (frame (H, W, 3) uint8 RGB, labels (H, W)
    uint8), deterministic in ``(seed, t)``."""

    def __init__(self, seed: int, length: int, height: int, width: int,
                 options: SyntheticOptions | None = None):
        self.seed, self.length, self.height, self.width = int(seed), int(length), height, width
        self.opt = options or SyntheticOptions()
        self.scale = min(height, width) / 256.0
        self.speed = width / 256.0
        rng = np.random.default_rng([self.seed, 0x5EED])
        self._camera(rng)
        self._world(rng)
        self._objects(rng)
        self._noise = rng.standard_normal((height + 32, width + 32, 3)).astype(np.float32)

    # ---- world construction (once per video) ----
    def _camera(self, rng) -> None:
        t = np.arange(self.length, dtype=np.float64)
        vmax = self.opt.pan_speed * self.speed
        v0 = rng.uniform(-1.0, 1.0) * 0.6 * vmax
        period = rng.uniform(40, 120)
        velocity = v0 + 0.4 * vmax * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        x = np.concatenate([[0.0], np.cumsum(velocity)[:-1]])
        self.cam_x = x - x.min()  # (L,) float, >= 0
        self.jitter = round(self.opt.camera_shake * self.scale)
        bob = self.jitter * np.sin(2 * np.pi * t / rng.uniform(8, 20))
        self.cam_y = np.round(bob + self.jitter).astype(np.int64)  # (L,) in [0, 2*jitter]
        self.pano_w = self.width + int(np.ceil(self.cam_x.max())) + 1
        self.pano_h = self.height + 2 * self.jitter

    def _world(self, rng) -> None:
        ph, pw, s = self.pano_h, self.pano_w, self.scale
        lab = np.full((ph, pw), SKY, np.uint8)
        horizon = int(ph * rng.uniform(0.4, 0.52))
        curb = horizon + int(self.height * rng.uniform(0.09, 0.16))
        xs = np.arange(pw)
        wobble = (2 * s * np.sin(xs / (rng.uniform(30, 80) * s))).astype(np.int64)
        rows = np.arange(ph)[:, None]
        lab[horizon:] = SIDEWALK
        lab[rows >= (curb + wobble)[None, :]] = ROAD
        rgb = np.zeros((ph, pw, 3), np.float32)
        x = 0
        while x < pw:  # skyline segments: buildings or trees; sidewalk or grass strip below
            seg = int(rng.uniform(25, 90) * s)
            top = horizon - int(self.height * rng.uniform(0.08, 0.38))
            if rng.random() < 0.6:
                lab[max(top, 0):horizon, x:x + seg] = BUILDING
                tint = np.asarray(_BASE[BUILDING]) + rng.uniform(-25, 25, 3)
                rgb[max(top, 0):horizon, x:x + seg] = tint
                self._windows(rng, rgb, (max(top, 0), horizon, x, min(x + seg, pw)))
            else:
                for _ in range(rng.integers(1, 4)):
                    cx = int(x + rng.uniform(0, seg))
                    ax, ay = int(rng.uniform(0.3, 0.7) * seg) + 2, int(rng.uniform(0.5, 1.0)
                                                                       * (horizon - top)) + 2
                    cv2.ellipse(lab, (cx, horizon), (ax, ay), 0, 180, 360, VEGETATION, -1)
            if rng.random() < 0.3:
                band = lab[horizon:, x:x + seg]
                band[band == SIDEWALK] = TERRAIN
            x += seg
        for _ in range(int(pw / (40 * s))):  # bushes in front of the buildings
            cx, ax = int(rng.uniform(0, pw)), int(rng.uniform(4, 14) * s) + 1
            cv2.ellipse(lab, (cx, horizon), (ax, ax // 2 + 1), 0, 180, 360, VEGETATION, -1)
        self._texture(rng, lab, rgb, horizon, curb)
        self.pano_lab = lab
        self.pano_rgb = np.clip(rgb, 0, 255).astype(np.uint8)
        self.horizon, self.curb = horizon, curb

    def _windows(self, rng, rgb, box) -> None:
        y0, y1, x0, x1 = box
        period = max(4, int(rng.uniform(7, 12) * self.scale))
        size = max(2, int(period * rng.uniform(0.4, 0.6)))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        win = (((yy - y0) % period) < size) & (((xx - x0) % period) < size)
        region = rgb[y0:y1, x0:x1]
        region[win] = np.asarray((60, 70, 90), np.float32) + rng.uniform(-10, 10, 3)

    def _texture(self, rng, lab, rgb, horizon, curb) -> None:
        shape, s = lab.shape, self.scale
        grain = rng.standard_normal(shape).astype(np.float32)
        smooth = _smooth_noise(rng, shape, 20 * s)
        leafy = _smooth_noise(rng, shape, 5 * s)
        jitter = {c: np.asarray(b, np.float32) + rng.uniform(-8, 8, 3) for c, b in _BASE.items()}
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        tile = max(4, int(10 * s))
        masks = {c: lab == c for c in _BASE}
        m = masks[ROAD]
        rgb[m] = jitter[ROAD] + (6 * grain + 8 * smooth)[m][:, None]
        lane = (np.abs(yy - (curb + shape[0]) // 2) < max(1, int(s))) & ((xx // (20 * s)) % 2 == 0)
        rgb[m & lane] = (190, 190, 180)
        m = masks[SIDEWALK]
        lines = ((yy % tile) == 0) | ((xx % tile) == 0)
        rgb[m] = jitter[SIDEWALK] + (5 * grain - 14 * lines)[m][:, None]
        m = masks[BUILDING]
        rgb[m] += (5 * grain)[m][:, None]
        m = masks[VEGETATION]
        rgb[m] = jitter[VEGETATION] + (28 * leafy + 6 * grain)[m][:, None] * (0.6, 1.0, 0.5)
        m = masks[TERRAIN]
        rgb[m] = jitter[TERRAIN] + (10 * smooth + 6 * grain)[m][:, None] * (1.0, 0.9, 0.6)
        m = masks[SKY]
        fade = np.clip(yy / max(horizon, 1), 0, 1)[..., None] * (30, 20, 5)
        cloud = np.clip(smooth, 0, None)[..., None] * 25
        rgb[m] = (jitter[SKY] + fade + cloud)[m]

    def _objects(self, rng) -> None:
        span = self.pano_w + self.width  # objects may start off-panorama and drift in
        count = rng.poisson(self.opt.objects_per_view * span / self.width)
        self.objects = []
        for _ in range(count):
            cls = int(rng.choice([PERSON, CAR, BICYCLE], p=[0.35, 0.4, 0.25]))
            rel_h, aspects, speeds = _OBJECT[cls]
            lo = self.curb if cls == CAR else self.horizon + 2
            bottom = int(rng.uniform(lo, self.pano_h))
            depth = 0.35 + 0.65 * (bottom - self.horizon) / max(self.pano_h - self.horizon, 1)
            h = max(6, int(rel_h * self.height * depth * rng.uniform(0.8, 1.2)))
            w = max(4, int(h * rng.uniform(*aspects)))
            vx = rng.uniform(*speeds) * self.speed * rng.choice([-1, 1])
            mask, body, marker = self._sprite(rng, cls, h, w)
            self.objects.append(_Object(cls, rng.uniform(-self.width / 2, self.pano_w), vx,
                                        bottom - h, mask, body, marker))
        self.objects.sort(key=lambda o: o.top + o.mask.shape[0])  # far (higher) first

    def _sprite(self, rng, cls, h, w):
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (w // 2, h // 2), (max(w // 2 - 1, 1), max(h // 2 - 1, 1)), 0, 0, 360,
                    1, -1)
        for _ in range(2):  # lumps, shared by all classes
            c = (int(rng.uniform(0.2, 0.8) * w), int(rng.uniform(0.2, 0.8) * h))
            cv2.ellipse(mask, c, (max(1, int(w * rng.uniform(0.15, 0.35))),
                                  max(1, int(h * rng.uniform(0.15, 0.35)))), 0, 0, 360, 1, -1)
        color = rng.uniform(30, 220, 3).astype(np.float32)
        stripes = np.sin(np.arange(h)[:, None] / rng.uniform(1.5, 4.0) + np.zeros((1, w)))
        body = color + (18 * stripes + 8 * rng.standard_normal((h, w)))[..., None]
        marker = np.zeros((h, w), np.uint8)
        r = max(1, int(min(h, w) * 0.14))
        if cls == CAR:
            for cx in (w // 4, 3 * w // 4):
                cv2.circle(marker, (cx, int(h * 0.7)), r, 1, -1)
        elif cls == PERSON:
            cv2.ellipse(marker, (w // 2, max(r, int(h * 0.15))), (max(1, w // 3), r), 0, 0, 360,
                        1, -1)
        else:
            cv2.circle(marker, (w // 2, h // 2), int(r * 1.6) + 1, 1, max(1, r // 2))
        mask = mask.astype(bool)
        return mask, body.astype(np.float32), marker.astype(bool) & mask

    # ---- per-frame rendering ----
    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return (self.render(t) for t in range(self.length))

    def render(self, t: int):
        """Frame t -> ((H, W, 3) uint8 RGB, (H, W) uint8 labels)."""
        if not 0 <= t < self.length:
            raise IndexError(f"frame {t} outside [0, {self.length})")
        H, W, opt = self.height, self.width, self.opt
        rng = np.random.default_rng([self.seed, int(t), 1])
        cx, cy = self.cam_x[t], int(self.cam_y[t])
        x0 = round(cx)
        img = self.pano_rgb[cy:cy + H, x0:x0 + W].astype(np.float32)
        lab = self.pano_lab[cy:cy + H, x0:x0 + W].copy()
        for obj in self.objects:
            self._paste(obj, t, x0, cy, img, lab, rng.random() < opt.marker_prob)
        if rng.random() < opt.blur_prob:
            k = int(rng.integers(3, 10) * self.scale) | 1
            img = cv2.blur(img, (k, 1))
        gain = np.exp(rng.normal(0, opt.flicker))
        if rng.random() < opt.bad_exposure_prob:
            gain *= rng.choice([0.35, 1.9])
        field = _smooth_noise(rng, (H, W), rng.uniform(24, 64) * self.scale, 3)
        img = cv2.scaleAdd(img, float(gain), field * np.float32(opt.color_field))
        img = self._occlude(rng, img)
        dy, dx = rng.integers(0, 33, 2)
        sigma = rng.uniform(*opt.noise_std) * rng.choice([-1.0, 1.0])
        img = cv2.scaleAdd(self._noise[dy:dy + H, dx:dx + W], float(sigma), img)
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8), lab

    def _paste(self, obj, t, x0, y0, img, lab, show_marker) -> None:
        h, w = obj.mask.shape
        left = round(obj.x0 + obj.vx * t) - x0
        top = obj.top - y0
        ys, xs = max(top, 0), max(left, 0)
        ye, xe = min(top + h, self.height), min(left + w, self.width)
        if ye <= ys or xe <= xs:
            return
        sl = (slice(ys - top, ye - top), slice(xs - left, xe - left))
        m = obj.mask[sl]
        img[ys:ye, xs:xe][m] = obj.rgb[sl][m]
        lab[ys:ye, xs:xe][m] = obj.cls
        if show_marker:
            mk = obj.marker[sl]
            img[ys:ye, xs:xe][mk] = _MARKER[obj.cls]

    def _occlude(self, rng, img):
        """Transient occluders: glare, dropout, smear blotches and rain; labels untouched."""
        H, W, s = self.height, self.width, min(self.height, self.width)
        n = rng.poisson(self.opt.occluders)
        rain = rng.random() < self.opt.rain_prob
        if n == 0 and not rain:
            return img
        alpha = np.zeros((H, W), np.float32)
        fill = np.zeros((H, W, 3), np.float32)
        mean = img[::8, ::8].mean((0, 1))
        for _ in range(n):
            center = (int(rng.uniform(0, W)), int(rng.uniform(0, H)))
            axes = (int(rng.uniform(0.03, 0.14) * s) + 1, int(rng.uniform(0.03, 0.14) * s) + 1)
            kind = rng.random()
            color = ((245, 245, 235) if kind < 0.4 else (8, 8, 8) if kind < 0.7
                     else tuple(float(v) for v in mean))
            opacity = rng.uniform(0.8, 1.0)
            cv2.ellipse(alpha, center, axes, rng.uniform(0, 180), 0, 360, opacity, -1)
            cv2.ellipse(fill, center, axes, 0, 0, 360, color, -1)
        if rain:
            for _ in range(int(rng.integers(20, 60))):
                p = (int(rng.uniform(0, W)), int(rng.uniform(0, H)))
                length = rng.uniform(0.03, 0.1) * s
                q = (int(p[0] + 0.3 * length), int(p[1] + length))
                cv2.line(alpha, p, q, 0.6, max(1, int(self.scale)))
                cv2.line(fill, p, q, (200, 205, 215), max(1, int(self.scale)))
        k = max(3, int(3 * self.scale) | 1)
        alpha = cv2.blur(alpha, (k, k))[..., None]
        fill -= img  # img + alpha * (fill - img), in place
        fill *= alpha
        img += fill
        return img


def generate_video(seed: int, length: int, height: int, width: int, **options):
    """Whole video: frames (L, H, W, 3) uint8 RGB and labels (L, H, W) uint8."""
    video = SyntheticVideo(seed, length, height, width, replace(SyntheticOptions(), **options))
    frames, labels = zip(*video)
    return np.stack(frames), np.stack(labels)


def iter_video(seed: int, length: int, height: int, width: int, **options):
    """Lazily yields ``(frame, labels)`` for t = 0..length-1."""
    yield from SyntheticVideo(seed, length, height, width, replace(SyntheticOptions(), **options))


class SyntheticClips(ClipDataset):
    """Clips from ``num_videos`` synthetic videos; item i is frame ``i % length`` of video
    ``i // length`` with its references (labels for all frames, so ``ref_labels`` is present)."""

    def __init__(self, num_videos: int, length: int, height: int, width: int,
                 reference_offsets=(-3, -2, -1), seed: int = 0, options=None, transform=None,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, with_ref_labels: bool = True,
                 cache_videos: int = 8):
        super().__init__(reference_offsets, transform, mean, std, with_ref_labels)
        self.num_videos, self.length = int(num_videos), int(length)
        self.height, self.width, self.seed = height, width, int(seed)
        self.options = options if isinstance(options, SyntheticOptions) else \
            replace(SyntheticOptions(), **(options or {}))
        self.labels = SYNTHETIC_LABELS
        self._cache: OrderedDict[int, SyntheticVideo] = OrderedDict()
        self._cache_size = max(1, cache_videos)

    def __len__(self) -> int:
        return self.num_videos * self.length

    def video(self, v: int) -> SyntheticVideo:
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        seed = int(np.random.SeedSequence([self.seed, v]).generate_state(1)[0])
        video = SyntheticVideo(seed, self.length, self.height, self.width, self.options)
        self._cache[v] = video
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return video

    def read_clip(self, i: int) -> ClipSample:
        v, t = divmod(i, self.length)
        video = self.video(v)
        indices = reference_indices(t, self.reference_offsets, self.length) + [t]
        rendered = {j: video.render(j) for j in set(indices)}
        return ClipSample([rendered[j][0] for j in indices], [rendered[j][1] for j in indices],
                          f"synthetic_{v:05d}", t)
