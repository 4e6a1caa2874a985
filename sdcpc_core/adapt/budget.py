"""Memory and disk of ``sdcpc adapt``, estimated before the heavy work, and the refusal.

Memory does not grow with the recording: the process holds the models, ONE segment while the cache
is built (its frames, encoder maps and the teacher's probabilities) and ONE training batch read
back from disk. Disk grows with the frames cached (``--max-frames``): one record a frame
(``store.py``). The coefficients below were fitted to peak RSS measured with ``/usr/bin/time -v``
(docs/adapt.md, "Memory and time") and rounded up.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 512 * 2**20  # a segment's working set while it is cached (sets its length)
MAX_SEGMENT = 256
MIN_SEGMENT = 16
PROBABILITY_COPIES = 6       # float32 (K, h, w) maps alive per frame while a segment is pseudo-labelled
#                              (measured: about 5; 150 classes, 240x320 and 480x640)
TRAIN_PIXEL_BYTES = 11 * 2**10  # a training step's memory per output pixel of a batch element …
TRAIN_CLASS_BYTES = 32          # … plus this per class (fitted: 150 classes 240x320 and 480x640, 19 at 480x640)
ENCODER_PIXEL_BYTES = 200    # encoder activations per input pixel of a batch of 16, two views, no
#                              autograd (measured: 160 at 240x320, 128 at 480x640)
DISK_MARGIN = 1 * 2**30      # free space left on the cache's disk
SLACK = 1.2                  # the working set's estimate x this + SLACK_BYTES: allocator, the report,
SLACK_BYTES = 256 * 2**20    # libraries loaded later (the fitted terms alone fell 0.07 GiB short)


@dataclass
class Estimate:
    memory: int       # peak resident bytes expected
    disk: int         # cache bytes
    segment: int      # frames per segment
    record: int       # bytes per cached frame


def gib(n: float) -> str:
    return f"{n / 2**30:.{2 if abs(n) < 2**30 else 1}f} GiB"


def segment_length(frame_bytes: int, maps_bytes: int, num_classes: int, out_pixels: int, need: int) -> int:
    """Frames per segment so that one segment's working set stays near SEGMENT_BYTES."""
    per_frame = frame_bytes + maps_bytes + PROBABILITY_COPIES * 4 * num_classes * out_pixels
    return max(need, MIN_SEGMENT, min(MAX_SEGMENT, SEGMENT_BYTES // per_frame))


def estimate(base_rss: int, size, out_hw, num_classes: int, maps_bytes: int, record: int, frames: int,
             batch: int, references: int, need: int) -> Estimate:
    """Peak memory (the process as it stands, ``base_rss``, plus the larger of the caching and
    the training working sets) and disk for ``frames`` cached frames. ``maps_bytes``: a frame's
    cached encoder maps, every view (fp16)."""
    h, w = size
    out_pixels = out_hw[0] * out_hw[1]
    frame_bytes = h * w * 3
    seg = segment_length(frame_bytes, maps_bytes, num_classes, out_pixels, need)
    caching = seg * (frame_bytes + maps_bytes + PROBABILITY_COPIES * 4 * num_classes * out_pixels) \
        + ENCODER_PIXEL_BYTES * 16 * h * w
    training = batch * (references + 1) * maps_bytes * 2 \
        + batch * out_pixels * (TRAIN_PIXEL_BYTES + TRAIN_CLASS_BYTES * num_classes)
    return Estimate(int(base_rss + SLACK * max(caching, training) + SLACK_BYTES), frames * record, seg, record)


def available_memory() -> int:
    """MemAvailable of /proc/meminfo (bytes); the machine's total where that is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def current_rss() -> int:
    """This process's resident bytes now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def free_disk(folder: Path) -> int:
    """Free bytes on the disk that holds ``folder`` (or its nearest existing parent)."""
    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def refusal(est: Estimate, memory_limit: int, disk_free: int, cached: int, size, num_classes: int,
            frames: int, folder: Path) -> str | None:
    """One line when the estimate does not fit (naming the setting to change), else None.
    ``cached``: bytes of the cache already on disk (a resumed run needs only the rest)."""
    if est.memory > memory_limit:
        return (f"sdcpc adapt would need about {gib(est.memory)} of memory ({num_classes} classes at "
                f"{size[0]}x{size[1]}) but {gib(memory_limit)} is available; lower --input-size (or "
                "--set batch_size=4), or raise --memory-limit if more will be free")
    need_disk = est.disk - cached + DISK_MARGIN
    if need_disk > disk_free:
        return (f"sdcpc adapt would cache {frames} frames in {gib(est.disk - cached)} on the disk of {folder} "
                f"but only {gib(disk_free)} is free (1 GiB kept); lower --max-frames or choose --cache-dir "
                "on a larger disk")
    return None
