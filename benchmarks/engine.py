"""Engine benchmark (on demand, not in CI): full ``step`` on every backend × precision.

Rows: SD-CPC-B0 and SegFormer-B0 (random weights, 150 classes) and the embedded SD-CPC-B0 /
baseline, all at 480×480, each on every installed backend (torch eager, ONNX Runtime, OpenVINO)
and precision it supports; median ms of a full engine ``step`` (preprocess, network, labels at
input size). The yardstick: the per-frame SegFormer-B0 network alone in torch fp32 eager
(``model(x)``). The machine is noisy (a VM whose speed drifts by 10–20 % over minutes), so the
timing is interleaved: every engine and the yardstick take a few frames in turn, round after
round, and each row's median is over the same stretch of time as every other row's.

    python benchmarks/engine.py [--size 480] [--frames 30] [--threads 2] [--no-embedded]
    python benchmarks/engine.py --table     # engine step vs input size and reference count

The first line printed is the CPU (``cpu:``, its model and instruction sets from /proc/cpuinfo):
every figure is this CPU's. int8 rows run the graphs quantised by ``sdcpc_core.quantize``
(calibrated on synthetic frames: for speed; the embedded model's agreement is printed).
Exports (one per model, in a temporary folder) take a minute or two each before timing starts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdcpc_core.openmp import sleep_when_idle

# before PyTorch is imported: the engine rows run as the node runs them (sdcpc_core.openmp); the
# yardstick runs in its own process with OpenMP's default policy (benchmarks/yardstick.py)
OPENMP_SLEEPS = sleep_when_idle()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from sdcpc_core.checkpoints import BASELINE_CHECKPOINT, DEFAULT_CHECKPOINT, load_checkpoint  # noqa: E402
from sdcpc_core.classes import LabelSet  # noqa: E402
from sdcpc_core.cpu import cpu_features  # noqa: E402
from sdcpc_core.data.synthetic import generate_video  # noqa: E402
from sdcpc_core.engine import StreamingSegmenter  # noqa: E402
from sdcpc_core.export import export_module  # noqa: E402
from sdcpc_core.models import SDCPCConfig, build_model  # noqa: E402
from sdcpc_core.quantize import SYNTHETIC, quantize_export  # noqa: E402
from sdcpc_core.runtimes import choose_precision, installed, openvino_offers  # noqa: E402
from sdcpc_core.settings import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import cpu_line  # noqa: E402  (benchmarks/cpu.py: every benchmark's first line)

YARDSTICK = "yardstick"
BLOCK = 3  # frames per row and round of the interleaved timing (the first one not timed)
PRECISIONS = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
CALIBRATION_FRAMES = 16  # synthetic frames per int8 calibration (speed rows; CI tests use 48)
TABLE_SIZES = ((480, 480), (512, 1024), (720, 1280))
TABLE_REFERENCES = {3: (-9, -6, -3), 5: (-15, -12, -9, -6, -3)}
def combinations(backends=None):
    """(backend, precision) rows: every installed backend x supported precision (``backends``: only
    these, and torch fp32, the reference every agreement line compares with)."""
    for backend, precisions in PRECISIONS.items():
        if not installed(backend) or (backends and backend not in backends and backend != "torch"):
            continue
        if backends and backend == "torch" and "torch" not in backends:
            precisions = ("fp32",)
        for p in precisions:
            if backend == "openvino" and not openvino_offers(p):
                continue
            if p == "bf16" and not cpu_features().bf16_dot:
                continue  # emulated bf16 (no AVX512-BF16/AMX) is slower than fp32
            if p == "int8" and backend == "openvino" and not installed("nncf"):
                continue
            yield backend, p


def interleaved(runs: dict, frames, block: int = BLOCK) -> tuple[dict, dict]:
    """Timing in rounds: {key: callable(frame)} -> (median ms per key, every step's labels per
    engine). Each round gives every row the next ``block`` frames in a row and times all but the
    first (which wakes the row's thread pools after the previous row's: PyTorch's OpenMP,
    OpenVINO's and the label kernel's threads otherwise steal each other's cores). Two warm-up
    frames each first, then a fresh stream."""
    for run in runs.values():
        for f in frames[:2]:
            run(f)
    for run in runs.values():
        getattr(run, "reset", lambda: None)()
    times = {k: [] for k in runs}
    labels = {k: [] for k in runs}
    rounds = len(frames) // block
    for r in range(rounds):
        for k, run in runs.items():
            for i in range(r * block, (r + 1) * block):
                t = time.perf_counter()
                out = run(frames[i])
                elapsed = (time.perf_counter() - t) * 1e3
                if isinstance(out, float):  # a row timed in its own process (the yardstick)
                    elapsed, out = out, None
                if i > r * block:
                    times[k].append(elapsed)
                if out is not None:
                    labels[k].append(out.labels)
        print(f"\r  round {r + 1}/{rounds}", end="", flush=True)
    print()
    return {k: float(np.median(v)) for k, v in times.items()}, labels


class Stepper:
    """An engine's ``step`` as one callable, with its ``reset``."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, frame):
        return self.engine.step(frame)

    def reset(self):
        self.engine.reset()


class Yardstick:
    """SegFormer-B0 network alone, torch fp32 eager, random weights, 150 classes, run in its own
    process (benchmarks/yardstick.py) with OpenMP's default wait policy: a callable whose result
    is the network's time in ms (the frame argument is ignored: a fixed input)."""

    def __init__(self, size: int, threads: int):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY" or not OPENMP_SLEEPS}
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("yardstick.py")), "--size", str(size),
             "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("benchmarks/yardstick.py did not start; run it alone to see why")

    def __call__(self, _frame) -> float:
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def models(size: int, embedded: bool):
    """(row name, model, meta) for the random-weights and embedded models."""
    labels = LabelSet.from_names([f"class_{i}" for i in range(150)])
    meta = {"labels": labels, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    for name, temporal in (("SD-CPC-B0", True), ("SegFormer-B0", False)):
        torch.manual_seed(0)
        yield name, build_model(SDCPCConfig(variant="b0", num_classes=150, temporal=temporal)).eval(), meta
    if embedded:
        for name, path in (("SD-CPC-B0 embedded", DEFAULT_CHECKPOINT), ("SegFormer-B0 embedded", BASELINE_CHECKPOINT)):
            model, m = load_checkpoint(path)
            yield name, model.float().eval(), m


def arithmetic(model: torch.nn.Module, size: int) -> tuple[float, float]:
    """(GMAC of one streaming step as exported: encode + aggregate against 3 references with the
    fixed-shape fine stage, GMAC of that fine stage alone), counted by PyTorch's FLOP counter."""
    fine = getattr(getattr(model, "dssa", None), "fine", None)
    x = torch.zeros(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        if fine is not None:
            fine.fixed_shape = True
        try:
            cache = model.encode(x)
            model.forward_cached(cache, [cache] * len(model.reference_offsets))
        finally:
            if fine is not None:
                fine.fixed_shape = False
    fine_flops = sum(sum(v.values()) for k, v in counter.get_flop_counts().items() if k.split(".")[-1] == "fine")
    return counter.get_total_flops() / 2e9, fine_flops / 2e9


def export(model, meta, size, out: Path, int8_runtimes, name: str, calibration_frames=CALIBRATION_FRAMES) -> Path:
    """Export ``model`` to ``out`` (and its int8 graphs for ``int8_runtimes``), saying how long."""
    t = time.perf_counter()
    export_dir = export_module(model, meta, size, out)
    print(f"exported {name} in {time.perf_counter() - t:.0f} s")
    if int8_runtimes:
        t = time.perf_counter()
        quantize_export(export_dir, SYNTHETIC, runtimes=tuple(int8_runtimes), frames=calibration_frames,
                        model=model, segmenter_cls=StreamingSegmenter)
        print(f"quantised {name} to int8 ({', '.join(int8_runtimes)}) in {time.perf_counter() - t:.0f} s")
    return export_dir


def table(args) -> None:
    """Engine step of SD-CPC-B0 (random weights, 150 classes) against input size and reference
    count, on torch fp32 and the fastest graph rows; interleaved within each size."""
    wanted = {("torch", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")} | (
        set() if args.no_int8 else {("openvino", "int8")})
    combos = [(b, q) for b, q in combinations() if (b, q) in wanted]
    header = "| input | references | " + " | ".join(f"{b} {q} ms/step" for b, q in combos) + " |"
    labels = LabelSet.from_names([f"class_{i}" for i in range(150)])
    meta = {"labels": labels, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    results = {}
    for size in TABLE_SIZES:
        frames = list(generate_video(3, args.frames, *size)[0])
        runs = {}
        with tempfile.TemporaryDirectory(prefix="sdcpc_bench_") as tmp:
            for count, offsets in TABLE_REFERENCES.items():
                torch.manual_seed(0)
                model = build_model(SDCPCConfig(variant="b0", num_classes=150, reference_offsets=offsets)).eval()
                name = f"{size[0]}x{size[1]}, {count} refs"
                export_dir = export(model, meta, size, Path(tmp) / f"r{count}",
                                    [b for b, q in combos if q == "int8"], name, args.calibration_frames)
                for backend, precision in combos:
                    runs[size, count, backend, precision] = Stepper(StreamingSegmenter(
                        model, meta["labels"], device="cpu", backend=backend, precision=precision,
                        input_size=size, export_dir=None if backend == "torch" else export_dir))
            print(f"timing {size[0]}x{size[1]}: {len(runs)} rows interleaved")
            results.update(interleaved(runs, frames)[0])
        for count in TABLE_REFERENCES:  # each size's rows as soon as they are measured
            cells = " | ".join(f"{results[size, count, b, q]:.0f}" for b, q in combos)
            print(f"{header}\n| {size[0]}×{size[1]} | {count} | {cells} |", flush=True)
    print()
    print(header)
    print("|---|---|" + "---|" * len(combos))
    for size in TABLE_SIZES:
        for count in TABLE_REFERENCES:
            cells = " | ".join(f"{results[size, count, b, q]:.0f}" for b, q in combos)
            print(f"| {size[0]}×{size[1]} | {count} | {cells} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every backend")
    p.add_argument("--no-embedded", action="store_true", help="skip the embedded models")
    p.add_argument("--calibration-frames", type=int, default=CALIBRATION_FRAMES,
                   help=f"synthetic frames per int8 calibration of --table (default {CALIBRATION_FRAMES})")
    p.add_argument("--backends", nargs="+", choices=list(PRECISIONS), default=None,
                   help="only these backends (torch fp32 is always timed: the reference)")
    p.add_argument("--no-int8", action="store_true", help="--table without the int8 column (no quantisation)")
    p.add_argument("--table", action="store_true", help="only the table of step vs input size "
                   f"({', '.join(f'{h}x{w}' for h, w in TABLE_SIZES)}) and reference count (3, 5)")
    args = p.parse_args()
    if args.frames < BLOCK:
        p.error(f"--frames must be at least {BLOCK} (one round of the interleaved timing)")
    torch.set_num_threads(args.threads)
    print(cpu_line())
    print("(figures are this CPU's, timed while other work may share it: compare rows of one run)")
    if args.table:
        table(args)
        return
    size = (args.size, args.size)
    frames = list(generate_video(3, args.frames, args.size, args.size)[0])
    combos = list(combinations(args.backends))
    print(f"{args.size}x{args.size}, {args.frames} frames, {args.threads} threads; backends: "
          + ", ".join(f"{b} {q}" for b, q in combos))
    runs, gmac = {}, {}
    with tempfile.TemporaryDirectory(prefix="sdcpc_bench_") as tmp:
        for name, model, meta in models(args.size, not args.no_embedded):
            gmac[name] = arithmetic(model, args.size)
            export_dir = None
            if any(b != "torch" for b, _ in combos):
                export_dir = export(model, meta, size, Path(tmp) / name.replace(" ", "_"),
                                    [b for b, q in combos if q == "int8"], name)
            for backend, precision in combos:
                runs[name, backend, precision] = Stepper(StreamingSegmenter(
                    model, meta["labels"], device="cpu", backend=backend, precision=precision,
                    input_size=size, export_dir=None if backend == "torch" else export_dir))
        runs[YARDSTICK] = Yardstick(args.size, args.threads)
        print(f"timing {len(runs)} rows interleaved: {len(frames) // BLOCK} rounds of {BLOCK} frames; "
              f"OpenMP threads {'sleep when idle' if OPENMP_SLEEPS else 'spin (OMP_WAIT_POLICY set)'} "
              "here, the yardstick in its own process with OpenMP's default policy")
        try:
            ms, labels = interleaved(runs, frames)
        finally:
            runs[YARDSTICK].close()
    yard = ms.pop(YARDSTICK)
    for (name, backend, precision), v in ms.items():
        print(f"  {name:22s} {backend:12s} {precision}: {v:7.1f} ms/step")
    print()
    print("| model | backend | precision | ms/step | FPS | vs yardstick |")
    print("|---|---|---|---|---|---|")
    for (name, backend, precision), v in ms.items():
        print(f"| {name} | {backend} | {precision} | {v:.1f} | {1e3 / v:.1f} | {v / yard:.2f}× |")
    print(f"| yardstick: SegFormer-B0 network, torch fp32 eager | | | {yard:.1f} | {1e3 / yard:.1f} | 1.00× |")
    print()
    summarize(ms, labels, gmac, combos, yard)


def summarize(ms: dict, labels: dict, gmac: dict, combos: list, yard: float) -> None:
    """The lines the targets read: fastest backend, agreement, temporal overhead, what auto picks."""
    sd = {k: v for k, v in ms.items() if k[0] == "SD-CPC-B0"}
    fastest = min(sd, key=sd.get)
    _, backend, precision = fastest
    seg = ms["SegFormer-B0", backend, precision]
    print(f"fastest backend: {backend} {precision}")
    # Label agreement is a property of the network's margins: random weights give near-uniform
    # logits over 150 classes, whose top two are often closer than bf16 rounding (docs/
    # benchmarks-engine.md). It is printed, but the line the targets read is the trained network's
    # (the embedded SD-CPC-B0), as in the CI parity tests; with --no-embedded, the random one's.
    agreement = {}
    for name in ("SD-CPC-B0", "SD-CPC-B0 embedded"):
        if (name, backend, precision) in labels:
            agreement[name] = np.mean([np.mean(a == b) for a, b in zip(labels[name, backend, precision],
                                                                       labels[name, "torch", "fp32"])])
    print(f"label agreement of the random-weights SD-CPC-B0, same backends: {100 * agreement['SD-CPC-B0']:.2f}%")
    agree = agreement.get("SD-CPC-B0 embedded", agreement["SD-CPC-B0"])
    if "SD-CPC-B0 embedded" not in agreement:
        print("(no embedded model timed: the agreement line below is the random-weights one)")
    # The temporal overhead is bounded below by the networks' arithmetic (docs/benchmarks-engine.md)
    for pair in (("SD-CPC-B0", "SegFormer-B0"), ("SD-CPC-B0 embedded", "SegFormer-B0 embedded")):
        if all(n in gmac for n in pair):
            (total, fine), (base, _) = gmac[pair[0]], gmac[pair[1]]
            print(f"arithmetic per step, {pair[0]} / {pair[1]} as exported: {total:.2f} / {base:.2f} GMAC "
                  f"= {total / base:.2f}x ({(total - fine) / base:.2f}x without the fine stage)")
    if ("SD-CPC-B0 embedded", backend, precision) in ms:
        print(f"temporal overhead of the embedded models, {backend} {precision}: "
              f"{ms['SD-CPC-B0 embedded', backend, precision] / ms['SegFormer-B0 embedded', backend, precision]:.2f}x")
    print(f"step vs yardstick (SD-CPC-B0 step, fastest backend / SegFormer-B0 network, torch fp32): "
          f"{sd[fastest] / yard:.2f}x")
    overhead = sd[fastest] / seg
    if "SD-CPC-B0" in gmac and "SegFormer-B0" in gmac:
        ratio = gmac["SD-CPC-B0"][0] / gmac["SegFormer-B0"][0]
        print(f"temporal overhead (SD-CPC-B0 / SegFormer-B0 step, fastest backend): {overhead:.2f}x against "
              f"the arithmetic ratio {ratio:.2f}x: {'within' if overhead <= ratio else 'ABOVE'} it")
    print(f"label agreement (fastest backend vs torch fp32): {100 * agree:.2f}%")
    for b, q in combos:  # every int8 row against torch fp32, on the trained network where timed
        name = "SD-CPC-B0 embedded" if ("SD-CPC-B0 embedded", b, q) in labels else "SD-CPC-B0"
        if q == "int8":
            a = np.mean([np.mean(x == y) for x, y in zip(labels[name, b, q], labels[name, "torch", "fp32"])])
            print(f"int8 label agreement, {name}, {b} vs torch fp32: {100 * a:.2f}%")
    print(f"speedup (SD-CPC-B0 step, fastest backend vs torch fp32): "
          f"{sd['SD-CPC-B0', 'torch', 'fp32'] / sd[fastest]:.2f}x")
    print_auto(sd, yard)


def print_auto(sd: dict, yard: float) -> None:
    """What ``precision: auto`` picks on this CPU for each graph backend timed (a model with int8
    graphs), and its SD-CPC-B0 step against the yardstick."""
    for backend in dict.fromkeys(b for _, b, _ in sd if b != "torch"):
        precision, why, _ = choose_precision("auto", backend, torch.device("cpu"), True)
        if ("SD-CPC-B0", backend, precision) in sd:
            step = sd["SD-CPC-B0", backend, precision]
            print(f"precision auto on {backend}: {precision} ({why}): SD-CPC-B0 {step:.1f} ms/step = "
                  f"{step / yard:.2f}x the yardstick")


if __name__ == "__main__":
    main()
