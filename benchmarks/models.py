"""Engine step of every published SegFormer shape at its published input size (docs/models.md).

On demand, not in CI. Random weights of each published shape (MiT-B0…B5 with the published head
width and class count: ADE20K-150 at 512×512, B5 at 640×640; Cityscapes-19 at 1024×1024), the
per-frame model as ``sdcpc_node`` runs a converted checkpoint, full engine ``step`` (preprocess,
network, labels at a 640×480 camera frame's size), median ms over ``--frames`` after a warm-up.

    python benchmarks/models.py [--variants b0 b1 …] [--datasets ade cityscapes] [--frames 3]
                                [--runs torch:fp32 openvino:bf16 …] [--threads 2]

``--runs`` are backend:precision pairs (default: torch fp32, the exact reference path, and OpenVINO
fp32 and bf16, the node's default backend); OpenVINO exports each shape once into a temporary
cache first (not timed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import cpu_line  # noqa: E402

from sdcpc_core.classes import LabelSet  # noqa: E402
from sdcpc_core.engine import StreamingSegmenter  # noqa: E402
from sdcpc_core.models import SDCPCConfig, build_model  # noqa: E402

PUBLISHED = {  # dataset -> (classes, {variant: input size}); the Hub's nvidia/segformer-* names
    "ade": (150, {"b0": 512, "b1": 512, "b2": 512, "b3": 512, "b4": 512, "b5": 640}),
    "cityscapes": (19, {v: 1024 for v in ("b0", "b1", "b2", "b3", "b4", "b5")}),
}


def engine_step_ms(variant: str, classes: int, size: int, backend: str, precision: str, frames: int) -> float:
    torch.manual_seed(0)
    model = build_model(SDCPCConfig(variant=variant, num_classes=classes, temporal=False)).eval()
    labels = LabelSet.from_names([f"class_{i}" for i in range(classes)])
    engine = StreamingSegmenter(model, labels, input_size=(size, size), precision=precision,
                                backend=backend)
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    for _ in range(2):  # warm-up: thread pools, the label kernel's compilation, graph compilation
        engine.step(frame)
    times = []
    for _ in range(frames):
        t = time.perf_counter()
        engine.step(frame)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["b0", "b1", "b2", "b3", "b4", "b5"])
    p.add_argument("--datasets", nargs="+", default=["ade", "cityscapes"], choices=sorted(PUBLISHED))
    p.add_argument("--runs", nargs="+", default=["torch:fp32", "openvino:fp32", "openvino:bf16"])
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("SDCPC_CACHE_DIR", tempfile.mkdtemp(prefix="sdcpc-models-"))
    runs = [tuple(r.split(":")) for r in args.runs]
    print(f"{cpu_line()}; torch {torch.__version__}, {args.threads} threads")
    print(f"{'model':<34} {'input':>9} " + " ".join(f"{b + ' ' + p:>15}" for b, p in runs))
    for dataset in args.datasets:
        classes, sizes = PUBLISHED[dataset]
        for variant in args.variants:
            size = sizes[variant]
            cells = []
            for backend, precision in runs:
                ms = engine_step_ms(variant, classes, size, backend, precision, args.frames)
                cells.append(f"{ms:>9.0f} ms")
            name = f"segformer-{variant}-{dataset} ({classes})"
            print(f"{name:<34} {size:>4}×{size:<4} " + " ".join(f"{c:>15}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
