"""``sdcpc adapt`` on the synthetic world: does self-training from the per-frame teacher give
SD-CPC's temporal gain without labels?

Source: unlabelled synthetic videos written as .mp4 files (as a camera recording would be; lossy
mp4v), 144x192, ``--source-videos`` x ``--source-length`` frames (default 4 x 150 = 600), video v
from seed ``--source-seed + v``. Held-out test: ``--test-videos`` x ``--test-length`` labelled
videos from seed ``--test-seed + v`` (never used while choosing the recipe; the recipe search
scores on ``--dev-seed``). Every model is scored through the streaming engine (every frame, CPU
fp32): the teacher (embedded per-frame SegFormer-B0), the adapted model, and for reference the
embedded supervised SD-CPC-B0. Targets (issue 27): mVC8 >= teacher + 0.03 and mIoU >= teacher + 0.01.

    .venv/bin/python benchmarks/adapt.py --minutes 12                  # the target run
    .venv/bin/python benchmarks/adapt.py --search 3 --set radius=0 --set radius=5 ...  # rank recipes

``--search M`` trains the default recipe and each ``--set`` variant (one KEY=VALUE, or several
joined with commas) for M minutes on the same sources (encoder cache and pseudo-labels reused
when they allow: the on-disk cache in the work dir) and prints each one's dev scores, best first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from sdcpc_core.adapt import AdaptOptions, Recipe, run_adapt
from sdcpc_core.checkpoints import BASELINE_CHECKPOINT, DEFAULT_CHECKPOINT
from sdcpc_core.data.synthetic import iter_video
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.metrics import VideoMetrics

SIZE = (144, 192)
THREADS = None  # --threads


def write_sources(folder: Path, videos: int, length: int, seed: int) -> list[Path]:
    """Unlabelled .mp4 files (mp4v, 10 fps), as a camera recording would be."""
    paths = []
    for v in range(videos):
        path = folder / f"source_{seed + v}.mp4"
        if not path.is_file():
            tmp = path.with_name(path.stem + ".tmp.mp4")
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, SIZE[::-1])
            for frame, _ in iter_video(seed + v, length, *SIZE):
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
            os.replace(tmp, path)
        paths.append(path)
    return paths


def labelled_videos(videos: int, length: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(np.stack(x) for x in zip(*iter_video(seed + v, length, *SIZE))) for v in range(videos)]


def score(checkpoint, videos) -> dict:
    """mIoU, mVC8, flicker through the streaming engine, each video a new stream."""
    engine = StreamingSegmenter.from_checkpoint(checkpoint, device="cpu", input_size=SIZE)
    metrics = VideoMetrics(engine.labels.num_classes, ns=(8,))
    t0 = time.perf_counter()
    for v, (frames, labels) in enumerate(videos):
        engine.reset(f"video {v}")
        metrics.start_video(str(v))
        for frame, gt in zip(frames, labels):
            metrics.update(engine.step(frame).labels, gt)
    metrics.end_video()
    out = metrics.compute()
    out["seconds"] = time.perf_counter() - t0
    return out


def line(name: str, s: dict) -> str:
    return f"{name:<34} mIoU {s['miou']:.3f}  mVC8 {s['mvc8']:.3f}  flicker {s['flicker']:.3f}"


def adapt(sources, out: Path, minutes: float, recipe: Recipe, cache: Path, report: bool = True) -> dict:
    """One ``sdcpc adapt`` run; its on-disk cache is kept in ``cache`` and reused by the next run
    when the teacher, sources and pseudo-label settings are the same."""
    if out.exists():
        out.unlink()
    opts = AdaptOptions(teacher=str(BASELINE_CHECKPOINT), sources=[str(s) for s in sources],
                        output=str(out), minutes=minutes, recipe=recipe, input_size=SIZE, report=report,
                        threads=THREADS, cache_dir=str(cache), keep_cache=True)
    return run_adapt(opts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--source-videos", type=int, default=4)
    p.add_argument("--source-length", type=int, default=150)
    p.add_argument("--source-seed", type=int, default=7000)
    p.add_argument("--test-videos", type=int, default=8)
    p.add_argument("--test-length", type=int, default=40)
    p.add_argument("--test-seed", type=int, default=9000)
    p.add_argument("--dev-seed", type=int, default=8000)
    p.add_argument("--set", dest="variants", action="append", default=[],
                   help="recipe override(s) KEY=VALUE[,KEY=VALUE] (a variant for --search; with no "
                   "--search, the recipe of the target run)")
    p.add_argument("--search", type=float, default=None, metavar="MINUTES",
                   help="rank the default recipe and each --set variant, MINUTES each, on the dev seeds")
    p.add_argument("--skip-default", action="store_true", help="--search: only the --set variants")
    p.add_argument("--workdir", default=None, help="keep sources and checkpoints here (default: a temp dir)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on this shared 2-core VM, 2 threads spin against other "
                   "engineers' work and ran a training step 10x slower, 8 s against 0.7 s)")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = p.parse_args(argv)

    global THREADS
    THREADS = args.threads
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sdcpc_adapt_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU threads {torch.get_num_threads()}; work dir {work}", flush=True)
    sources = write_sources(work, args.source_videos, args.source_length, args.source_seed)
    cache = work / "cache"
    results: dict = {"args": vars(args)}

    if args.search is not None:
        dev = labelled_videos(4, 40, args.dev_seed)
        teacher = score(BASELINE_CHECKPOINT, dev)
        print(line("teacher (dev)", teacher), flush=True)
        rows = []
        for variant in ([] if args.skip_default else [""]) + args.variants:
            recipe = Recipe().with_overrides([x for x in variant.split(",") if x])
            meta = adapt(sources, work / "search.pt", args.search, recipe, cache, report=False)
            s = score(work / "search.pt", dev)
            rows.append((variant or "default", s, meta["steps"], meta["pseudo_label_coverage"]))
            print(line(f"{variant or 'default'}", s) + f"  ({meta['steps']} steps, coverage "
                  f"{meta['pseudo_label_coverage']:.2f}; dmIoU {s['miou'] - teacher['miou']:+.3f} "
                  f"dmVC8 {s['mvc8'] - teacher['mvc8']:+.3f})", flush=True)
            print("  per-class IoU (teacher -> this): " + ", ".join(
                f"{a:.3f}->{b:.3f}" for a, b in zip(teacher["per_class_iou"], s["per_class_iou"])), flush=True)
        print("\nranked by mVC8 gain + mIoU gain (dev):")
        for name, s, steps, _cov in sorted(rows, key=lambda r: -(r[1]["mvc8"] + r[1]["miou"])):
            print(f"  {name:<40} dmIoU {s['miou'] - teacher['miou']:+.3f}  dmVC8 {s['mvc8'] - teacher['mvc8']:+.3f}"
                  f"  flicker {s['flicker']:.3f}  steps {steps}")
        results["search"] = {"teacher": teacher, "rows": [
            {"recipe": n, "miou": s["miou"], "mvc8": s["mvc8"], "flicker": s["flicker"], "steps": st,
             "coverage": c, "per_class_iou": s["per_class_iou"]} for n, s, st, c in rows]}
    else:
        recipe = Recipe().with_overrides([x for v in args.variants for x in v.split(",") if x])
        out = work / "adapted.pt"
        meta = adapt(sources, out, args.minutes, recipe, cache)
        test = labelled_videos(args.test_videos, args.test_length, args.test_seed)
        teacher = score(BASELINE_CHECKPOINT, test)
        adapted = score(out, test)
        supervised = score(DEFAULT_CHECKPOINT, test)
        print(f"\nheld-out: {args.test_videos} videos x {args.test_length} frames, seed {args.test_seed}, "
              f"{SIZE[0]}x{SIZE[1]}, streaming engine, CPU fp32")
        print(line("teacher (per-frame SegFormer-B0)", teacher))
        print(line(f"adapted ({meta['steps']} steps, {meta['minutes']:.1f} min)", adapted))
        print(line("supervised SD-CPC-B0 (reference)", supervised))
        d_miou, d_mvc = adapted["miou"] - teacher["miou"], adapted["mvc8"] - teacher["mvc8"]
        print(f"adapted - teacher: mIoU {d_miou:+.3f} (target >= +0.010: {'met' if d_miou >= 0.01 else 'NOT met'}), "
              f"mVC8 {d_mvc:+.3f} (target >= +0.030: {'met' if d_mvc >= 0.03 else 'NOT met'})")
        results.update(teacher=teacher, adapted=adapted, supervised=supervised,
                       training={k: v for k, v in meta.items() if k not in ("adapt_state", "history")})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
