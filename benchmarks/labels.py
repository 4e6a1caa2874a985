"""Labels at the input resolution (on demand, not in CI): ms per frame of ``resized_labels`` for
smooth and noise logits: the compiled CPU kernel (numba), the PyTorch path, and the definition
itself (F.interpolate of the whole volume, then argmax), in the same run.

Smooth logits: bilinear ×8 upsampling of noise (regions with boundaries); noise logits: i.i.d.
normal (boundaries everywhere, the worst case). Default: 150 classes, stride-4 logits 120×120
-> 480×480, 2 threads, median of N runs. Every result is checked against the reference
(argmax of F.interpolate of the whole volume).

    python benchmarks/labels.py [--size 480] [--classes 150] [--threads 2] [--runs 15]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import sdcpc_core.postprocess as post
from sdcpc_core.postprocess import resized_labels


def median_ms(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=480, help="output side (logits are size/4)")
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    k, side, low = args.classes, args.size, args.size // 4
    cases = {
        "smooth": F.interpolate(torch.randn(1, k, max(1, low // 8), max(1, low // 8)) * 4, size=(low, low),
                                mode="bilinear", align_corners=False)[0],
        "noise": torch.randn(k, low, low),
    }
    print(f"resized_labels, {k} classes, {low}x{low} -> {side}x{side}, {args.threads} threads, "
          f"median of {args.runs}")
    print(f"{'logits':8s} {'kernel ms':>10s} {'pytorch ms':>11s} {'definition ms':>14s} {'definition/kernel':>18s}")

    def labels_with(kernel, x):
        post.USE_KERNEL = kernel
        try:
            return resized_labels(x, (side, side))
        finally:
            post.USE_KERNEL = True

    for name, logits in cases.items():
        ref = definition(logits, side)
        for kernel in (True, False):
            if not torch.equal(labels_with(kernel, logits), ref):
                raise SystemExit(f"{name}: resized_labels (kernel={kernel}) differs from the reference")
        fast = median_ms(lambda x=logits: labels_with(True, x), args.runs)
        plain = median_ms(lambda x=logits: labels_with(False, x), args.runs)
        full = median_ms(lambda x=logits: definition(x, side), args.runs)
        print(f"{name:8s} {fast:10.1f} {plain:11.1f} {full:14.1f} {full / fast:17.1f}x")


def definition(logits, side):
    return F.interpolate(logits[None], size=(side, side), mode="bilinear", align_corners=False)[0].argmax(0)


if __name__ == "__main__":
    main()
