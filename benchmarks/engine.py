"""Engine benchmark (on demand, not in CI): params, GFLOPs/frame, ms/frame and FPS.

Rows: per-frame SegFormer baseline, SD-CPC in clip mode (the paper's protocol: every target
re-encodes its references) and SD-CPC streaming (one encoder pass per frame, cached references),
for MiT-B0 and MiT-B1 at 480×480, random weights. The streaming/clip throughput ratio is measured
in the same run (target ≥ 3.5×).

    python benchmarks/engine.py [--size 480] [--frames 12] [--variants b0 b1] [--precision fp32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sdcpc_core.classes import LabelSet
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.models import SDCPCConfig, build_model
from sdcpc_core.postprocess import resized_labels


def gflops_per_frame(model, size: int, clip: bool) -> float:
    """FLOPs of one target frame: encode it (and, in clip mode, re-encode every reference),
    then aggregate. Post-processing (resizing the logits to the frame) is not counted."""
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        refs = [model.encode(x) for _ in model.reference_offsets]
        counter = FlopCounterMode(display=False)
        with counter:
            current = model.encode(x)
            if clip:
                refs = [model.encode(x) for _ in model.reference_offsets]
            model.forward_cached(current, refs)
    return counter.get_total_flops() / 1e9


def time_engine(engine: StreamingSegmenter, frames, clip: bool) -> float:
    """Median ms per frame after one warm-up frame."""
    if clip:
        engine.segment_clip(frames[:1])
        t = time.perf_counter()
        engine.segment_clip(frames)
        return (time.perf_counter() - t) * 1e3 / len(frames)
    engine.reset()
    engine.step(frames[0])
    times = []
    for f in frames:
        t = time.perf_counter()
        engine.step(f)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def streaming_breakdown(engine: StreamingSegmenter, frames) -> dict[str, float]:
    """Median ms of the three parts of a streaming step. Clip mode pays ``encode`` once per
    frame of the clip, the other two once per target: they bound the streaming/clip ratio."""
    model, parts = engine.model, {"encode": [], "aggregate + head": [], "resize labels": []}
    with torch.inference_mode():
        refs = [model.encode(engine.preprocess(frames[0])) for _ in model.reference_offsets]
        for f in frames:
            t0 = time.perf_counter()
            current = model.encode(engine.preprocess(f))
            t1 = time.perf_counter()
            logits = model.forward_cached(current, refs)["logits"]
            t2 = time.perf_counter()
            resized_labels(logits[0], f.shape[:2])
            t3 = time.perf_counter()
            for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[name].append(dt * 1e3)
    return {name: float(np.median(v)) for name, v in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--variants", nargs="+", default=["b0", "b1"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.frames)]
    labels = LabelSet.from_names([f"class_{i}" for i in range(124)])
    print(f"device {args.device}, precision {args.precision}, {args.size}x{args.size}, "
          f"{args.frames} frames, torch threads {torch.get_num_threads()}")
    print("| model | mode | params (M) | GFLOPs/frame | ms/frame | FPS |")
    print("|---|---|---|---|---|---|")
    breakdown = []
    for variant in args.variants:
        ms = {}
        for name, temporal, clip in (("SegFormer", False, False), ("SD-CPC", True, True),
                                     ("SD-CPC", True, False)):
            model = build_model(SDCPCConfig(variant=variant, num_classes=124, temporal=temporal)).eval()
            engine = StreamingSegmenter(model, labels, device=args.device, precision=args.precision)
            mode = "per-frame" if not temporal else ("clip" if clip else "streaming")
            ms[mode] = time_engine(engine, frames, clip)
            params = sum(q.numel() for q in model.parameters()) / 1e6
            gf = gflops_per_frame(model, args.size, clip)
            print(f"| {name}-{variant.upper()} | {mode} | {params:.2f} | {gf:.1f} | {ms[mode]:.1f} | "
                  f"{1e3 / ms[mode]:.2f} |")
        print(f"| {variant.upper()} streaming / clip throughput | | | | | **{ms['clip'] / ms['streaming']:.2f}×** |")
        parts = streaming_breakdown(engine, frames)
        breakdown.append(f"{variant.upper()} streaming step: " + ", ".join(
            f"{name} {v:.1f} ms" for name, v in parts.items()))
    print()
    print("\n".join(breakdown))


if __name__ == "__main__":
    main()
