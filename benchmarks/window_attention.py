"""Benchmark: dense cross-frame attention vs window attention (PyTorch path, CUDA kernel).

VSPW scale by default: stride 8 of 480x480 -> 60x60 queries, 3 reference frames, C=256, w=9, with 25 %
(scattered at random, and clustered as selecting the most different locations gives) and 100 % of
the queries selected. On demand, not in CI:

    python benchmarks/window_attention.py [--device cpu|cuda] [--reps 3]

Keys and values are stored channels-last, as SD-CPC's frame cache holds them (the dense baseline
reads them as rows without a copy too). Each case runs in a fresh subprocess. Columns: median time
of forward and of forward+backward; peak extra memory of forward+backward over the inputs (CUDA:
torch.cuda.max_memory_allocated; CPU: peak RSS delta, ru_maxrss of the subprocess after the op minus
before it); achieved bandwidth = logical bytes / forward time, where logical bytes count every
key/value row once per query that reads it (window: M*T*w*w*C*2 elements; dense: M*T*N*C*2 elements
plus the fp32 M x T*N weights written and read once) plus q and the output; ratios are against dense
at the same selection.

On a shared, busy CPU prefer --threads 1 and more --reps: the window path runs many small ops, and with
one OpenMP thread per core any op that goes parallel waits for a thread the OS has descheduled, which
can inflate single runs many-fold (dense attention, a few large matmuls, suffers far less).
"""

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch


def dense_attention(q, k, v, query_index):
    """CFFM-style dense cross-frame attention of the selected queries to all T*N keys: (B, C, M)."""
    B, T, C, H, W = k.shape
    qs = q.flatten(2).gather(2, query_index[:, None].expand(B, C, query_index.shape[1]))  # B, C, M
    keys = k.permute(0, 1, 3, 4, 2).reshape(B, T * H * W, C)  # B, T*N, C (a view: k is channels-last)
    vals = v.permute(0, 1, 3, 4, 2).reshape(B, T * H * W, C)
    attn = (qs.transpose(1, 2) @ keys.transpose(1, 2) / math.sqrt(C)).softmax(-1)  # B, M, T*N
    return (attn @ vals).transpose(1, 2)  # B, C, M


def run_case(a):
    """One (method, selection) case; prints a JSON line."""
    from sdcpc_core.ops import window_attention
    from sdcpc_core.ops.window_attention import _WindowAttentionTorch

    dev = torch.device(a.device)
    torch.manual_seed(0)
    H = W = a.size // a.stride
    N, T, C, w = H * W, a.refs, a.channels, a.window
    M = max(1, round(N * a.selection))
    q = torch.randn(1, C, H, W, device=dev, requires_grad=True)
    # k, v stored channels-last, as SD-CPC caches them: (B, T, C, H, W) views of (B, T, H, W, C)
    k = torch.randn(1, T, H, W, C, device=dev).permute(0, 1, 4, 2, 3).requires_grad_()
    v = torch.randn(1, T, H, W, C, device=dev).permute(0, 1, 4, 2, 3).requires_grad_()
    if a.pattern == "clustered":  # like SD-CPC's top perceptual difference: objects, not salt
        field = torch.nn.functional.interpolate(torch.randn(1, 1, 6, 6), size=(H, W), mode="bicubic")
        idx = field.flatten().topk(M).indices.sort().values[None].to(dev)
    else:
        idx = torch.randperm(N, device=dev)[:M].sort().values[None]
    if a.method == "dense":
        fn = lambda: dense_attention(q, k, v, idx)  # noqa: E731
    elif a.method == "window-pytorch":
        fn = lambda: _WindowAttentionTorch.apply(q, k, v, idx, w, 1)  # noqa: E731
    else:
        fn = lambda: window_attention(q, k, v, w, 1, idx)  # noqa: E731

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def fwd_bwd():
        fn().sum().backward()
        q.grad = k.grad = v.grad = None

    # peak extra memory of one forward+backward (the first call: nothing cached yet)
    if dev.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd()
        sync()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        fwd_bwd()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base

    def timed(f):
        f()
        sync()
        ts = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            f()
            sync()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    with torch.no_grad():
        t_fwd = timed(fn)
    t_fb = timed(fwd_bwd)
    el = 4  # fp32
    if a.method == "dense":
        logical = (2 * M * C + 2 * M * T * N * C) * el + 2 * M * T * N * 4
    else:
        logical = (2 * M * C + 2 * M * T * w * w * C) * el
    print(json.dumps({"method": a.method, "selection": a.selection, "pattern": a.pattern, "M": M, "fwd_ms": t_fwd * 1e3,
                      "fwd_bwd_ms": t_fb * 1e3, "peak_mib": peak / 2**20, "gbps": logical / t_fwd / 1e9}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--refs", type=int, default=3)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--window", type=int, default=9)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--selection", type=float, help=argparse.SUPPRESS)
    p.add_argument("--pattern", default="random", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.method:
        return run_case(a)

    from sdcpc_core.ops import backend

    H = a.size // a.stride
    mem = "torch.cuda.max_memory_allocated" if a.device == "cuda" else "peak RSS delta (ru_maxrss)"
    print(f"device={a.device} threads={torch.get_num_threads()} torch={torch.__version__} grid={H}x{H} "
          f"T={a.refs} C={a.channels} w={a.window} fp32, median of {a.reps}; memory: {mem}")
    methods = ["dense", "window-pytorch", "window-cuda"]
    rows = []
    # 25 %: scattered at random (worst case for tiling) and clustered (what selecting the most
    # different locations gives: moving objects and boundaries); dense cost ignores the pattern
    for sel, pattern in ((0.25, "random"), (0.25, "clustered"), (1.0, "random")):
        for m in methods:
            if m == "dense" and pattern == "clustered":
                continue
            if m == "window-cuda" and (a.device != "cuda" or backend() != "cuda"):
                print(f"skip window-cuda sel={sel:.0%}: "
                      + ("no CUDA device" if a.device != "cuda" else "extension not built"))
                continue
            cmd = [sys.executable, __file__, "--method", m, "--selection", str(sel), "--pattern", pattern]
            cmd += [f"--{n}={getattr(a, n)}" for n in ("device", "size", "stride", "refs", "channels",
                                                        "window", "reps", "threads")]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(f"{m} sel={sel:.0%} failed:\n{r.stderr[-2000:]}")
                continue
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    dense = {r["selection"]: r for r in rows if r["method"] == "dense"}
    print("| method | sel | queries | M | fwd ms | fwd+bwd ms | peak MiB (fwd+bwd) | GB/s (fwd) | "
          "time vs dense (fwd) | mem vs dense |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = dense.get(r["selection"])
        tr = f"{r['fwd_ms'] / d['fwd_ms']:.3f}" if d else "-"
        mr = f"{r['peak_mib'] / d['peak_mib']:.3f}" if d and d["peak_mib"] > 0 else "-"
        print(f"| {r['method']} | {r['selection']:.0%} | {r['pattern']} | {r['M']} | {r['fwd_ms']:.1f} | "
              f"{r['fwd_bwd_ms']:.1f} | {r['peak_mib']:.1f} | {r['gbps']:.2f} | {tr} | {mr} |")


if __name__ == "__main__":
    main()
