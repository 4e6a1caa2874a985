"""Labels at the input resolution (on demand, not in CI): ms per frame of ``resized_labels`` for
smooth and noise logits, against the previous implementation in the same run.

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

from sdcpc_core.postprocess import resized_labels


def previous_resized_labels(logits, size):
    """The implementation this one replaced: four-neighbour agreement, boundary pixels mixed
    over all K classes, dense strips above 30 % boundary pixels (float rounding not checked)."""
    k, h, w = logits.shape
    y0, y1, fy = _coords(h, size[0])
    x0, x1, fx = _coords(w, size[1])
    flat = logits.float().permute(1, 2, 0).reshape(h * w, k)
    low = flat.argmax(1).view(h, w)
    labels = low[y0[:, None], x0[None, :]]
    mixed = ((labels != low[y0[:, None], x1[None, :]]) | (labels != low[y1[:, None], x0[None, :]])
             | (labels != low[y1[:, None], x1[None, :]]))
    ys, xs = mixed.nonzero(as_tuple=True)
    if ys.numel() > 0.3 * mixed.numel():
        rows = F.interpolate(logits.float()[None], size=(h, size[1]), mode="bilinear",
                             align_corners=False)[0].permute(1, 2, 0).contiguous()
        for start in range(0, size[0], 32):
            sl = slice(start, min(start + 32, size[0]))
            labels[sl] = torch.lerp(rows[y0[sl]], rows[y1[sl]], fy[sl].view(-1, 1, 1)).argmax(2)
        return labels
    for start in range(0, ys.numel(), 16384):
        y, x = ys[start:start + 16384], xs[start:start + 16384]
        wx = fx[x, None]
        top = torch.lerp(flat[y0[y] * w + x0[x]], flat[y0[y] * w + x1[x]], wx)
        bottom = torch.lerp(flat[y1[y] * w + x0[x]], flat[y1[y] * w + x1[x]], wx)
        labels[y, x] = torch.lerp(top, bottom, fy[y, None]).argmax(1)
    return labels


def _coords(in_size, out_size):
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * (in_size / out_size) - 0.5).clamp_min(0)
    lower = src.floor().long().clamp_max(in_size - 1)
    return lower, (lower + 1).clamp_max(in_size - 1), src - lower


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
    print(f"{'logits':8s} {'new ms':>8s} {'old ms':>8s} {'old/new':>8s}")
    for name, logits in cases.items():
        ref = F.interpolate(logits[None], size=(side, side), mode="bilinear", align_corners=False)[0].argmax(0)
        if not torch.equal(resized_labels(logits, (side, side)), ref):
            raise SystemExit(f"{name}: resized_labels differs from the reference")
        new = median_ms(lambda x=logits: resized_labels(x, (side, side)), args.runs)
        old = median_ms(lambda x=logits: previous_resized_labels(x, (side, side)), args.runs)
        print(f"{name:8s} {new:8.1f} {old:8.1f} {old / new:8.2f}")


if __name__ == "__main__":
    main()
