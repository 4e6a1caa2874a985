"""Peak memory and wall time of ``sdcpc adapt`` against recording length, input size and classes.

Each row runs ``sdcpc adapt`` in its own process under ``/usr/bin/time -v`` (peak RSS, wall time)
on a recording made by looping a video (default OpenCV's ``vtest.avi``, 768x576) to the given
length at 30 Hz, with a B0-shaped Hugging Face SegFormer with random weights as the teacher (the
shape of ``nvidia/segformer-b0-finetuned-ade-512-512``; this machine has no Hub access). The load
average before and after each row is printed beside it: on a shared machine the wall times are
contended.

    python benchmarks/adapt_memory.py --minutes-of-video 1 5 10 --sizes 240x320 480x640 \\
        --classes 19 150 --steps 20 --max-frames 200 --work /tmp/adapt_memory [--report]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2

VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
SDCPC = Path(sys.executable).with_name("sdcpc")


def looped_video(source: Path, frames: int, out: Path) -> Path:
    """``source`` looped to ``frames`` frames (MJPG .avi, 30 Hz)."""
    if out.is_file():
        return out
    cap = cv2.VideoCapture(str(source))
    loop = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        loop.append(frame)
    cap.release()
    if not loop:
        raise SystemExit(f"cannot read {source}")
    tmp = out.with_name(out.stem + ".tmp.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, loop[0].shape[1::-1])
    for i in range(frames):
        writer.write(loop[i % len(loop)])
    writer.release()
    os.replace(tmp, out)
    return out


def hf_teacher(folder: Path, classes: int) -> Path:
    """A B0-shaped SegformerForSemanticSegmentation with ``classes`` classes, random weights."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    names = [f"class {i}" for i in range(classes)]
    config = SegformerConfig(num_labels=classes, id2label=dict(enumerate(names)),
                             label2id={n: i for i, n in enumerate(names)})
    SegformerForSemanticSegmentation(config).eval().save_pretrained(folder)
    return folder


def timed(command: list[str]) -> dict:
    """Run under /usr/bin/time -v: peak RSS (bytes), wall seconds, exit code, the tail of stderr."""
    load = os.getloadavg()[0]
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)
    seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.group(1).split(":")))) if wall else None
    cache = re.search(r"cache: (\d+) frames, ([\d.]+) GiB in (\d+) s", done.stderr)
    return {"rss_gib": int(rss.group(1)) * 1024 / 2**30 if rss else None, "wall_s": seconds,
            "code": done.returncode, "load_before": load, "load_after": os.getloadavg()[0],
            "cache_frames": int(cache.group(1)) if cache else None,
            "cache_gib": float(cache.group(2)) if cache else None, "cache_s": int(cache.group(3)) if cache else None,
            "tail": done.stderr[-600:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes-of-video", type=float, nargs="+", default=[1, 5, 10])
    p.add_argument("--sizes", nargs="+", default=["240x320", "480x640"])
    p.add_argument("--classes", type=int, nargs="+", default=[19, 150])
    p.add_argument("--steps", type=int, default=20, help="training steps a row (memory, not the gain)")
    p.add_argument("--max-frames", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="write each row's report too (flicker of both "
                   "models on up to 200 frames: minutes on a loaded CPU with a random-weight teacher)")
    p.add_argument("--video", type=Path, default=VIDEO)
    p.add_argument("--work", type=Path, default=Path("/tmp/adapt_memory"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| recording | input | classes | frames cached | cache on disk | peak RSS | wall | load before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for classes in args.classes:
        teacher = hf_teacher(args.work / f"hf_b0_{classes}", classes)
        for size in args.sizes:
            h, w = map(int, size.split("x"))
            for minutes in args.minutes_of_video:
                frames = int(round(minutes * 60 * 30))
                video = looped_video(args.video, frames, args.work / f"video_{frames}.avi")
                out = args.work / f"row_{classes}_{size}_{frames}.pt"
                for stale in args.work.glob(out.stem + "*"):
                    if stale.is_file():
                        stale.unlink()
                t0 = time.time()
                row = timed([str(SDCPC), "adapt", str(teacher), str(video), "-o", str(out), "--input-size",
                             str(h), str(w), "--steps", str(args.steps), "--max-frames", str(args.max_frames),
                             "--threads", str(args.threads), *([] if args.report else ["--no-report"])])
                row.update(minutes=minutes, frames=frames, size=size, classes=classes, started=t0)
                rows.append(row)
                rss = "failed" if row["code"] else f"{row['rss_gib']:.2f} GiB"
                print(f"| {minutes:g} min ({frames} frames) | {size} | {classes} | {row['cache_frames']} | "
                      f"{row['cache_gib']} GiB | {rss} | {row['wall_s']:.0f} s | "
                      f"{row['load_before']:.1f}/{row['load_after']:.1f} |", flush=True)
                if row["code"]:
                    print(row["tail"], file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
