"""The CUDA half of scripts/gpu_check.sh: engine checks on CUDA against CPU, then benchmarks.

    python scripts/gpu_check.py engine [--quick]   # correctness; exits 1 on a failed check
    python scripts/gpu_check.py bench [--quick]    # prints the table (docs/gpu_check.md)

Run from the repository root by gpu_check.sh, after the extension was built and the CUDA tests
passed. Every check prints one line ``ok|FAIL  what  measured``; a check that cannot run in this
environment prints ``SKIP  what  why`` and what to install.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sdcpc_core.checkpoints import DEFAULT_CHECKPOINT
from sdcpc_core.data.synthetic import generate_video
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.ops import backend, window_attention
from sdcpc_core.ops.window_attention import _WindowAttentionTorch

PRECISIONS = ("fp32", "fp16", "bf16")
# fraction of pixels whose label may differ from the fp32 CPU labels (boundary pixels whose two
# best classes are within rounding of each other)
LABEL_AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "bf16": 0.98}

failures: list[str] = []


def check(ok: bool, what: str, measured: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'}  {what}  {measured}", flush=True)
    if not ok:
        failures.append(what)


def agreement_checks(what: str, got, want, precision: str, reference: str = "fp32 CPU") -> None:
    """The two checks every engine here is held to against fp32 CPU results: labels agree on the
    precision's fraction of the worst frame's pixels, and as many frames were aggregated."""
    agree = min(float((g.labels == w.labels).mean()) for g, w in zip(got, want))
    check(agree >= LABEL_AGREEMENT[precision], f"{what} labels == {reference} labels",
          f"worst frame {agree:.5f} agree (need >= {LABEL_AGREEMENT[precision]})")
    check([r.frames_aggregated for r in got] == [r.frames_aggregated for r in want],
          f"{what} frames aggregated as on CPU", str([r.frames_aggregated for r in got]))


def engine_checks(quick: bool) -> int:
    if not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device", file=sys.stderr)
        return 3
    check(backend() == "cuda", "window attention backend on CUDA is the extension", f"backend()={backend()!r}")
    # fp32 means fp32 here: cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and later
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    n = 4 if quick else 8
    cpu = StreamingSegmenter.from_checkpoint(None, device="cpu")
    size = cpu.input_size or (256, 256)
    frames, _ = generate_video(seed=3, length=n, height=size[0], width=size[1])
    want = [cpu.step(f, return_probabilities=True) for f in frames]
    for precision in PRECISIONS:
        gpu = StreamingSegmenter.from_checkpoint(None, device="cuda", precision=precision)
        got = [gpu.step(f, return_probabilities=True) for f in frames]
        agreement_checks(f"embedded model {precision} CUDA", got, want, precision)
        if precision == "fp32":
            err = max(float((g.probabilities - w.probabilities).abs().max()) for g, w in zip(got, want))
            check(err <= 1e-3, "embedded model fp32 CUDA probabilities == CPU", f"max |diff| {err:.2e} (<= 1e-3)")
        clip = gpu.segment_clip(frames, return_probabilities=True)
        err = max(float((s.probabilities - c.probabilities).abs().max()) for s, c in zip(got, clip))
        same = all(np.array_equal(s.labels, c.labels) for s, c in zip(got, clip))
        tol = 1e-4 if precision == "fp32" else 1e-2
        check(err <= tol and (same or precision != "fp32"), f"{precision} CUDA streaming == clip mode",
              f"max |diff| {err:.2e} (<= {tol}), labels identical: {same}")
    onnxruntime_checks(quick)
    return 1 if failures else 0


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@contextlib.contextmanager
def _only_providers(ort, first):
    """Hide the GPU providers preferred to ``first`` from the engine's ONNX Runtime runner, which
    otherwise takes TensorRT whenever it is installed: the CUDA provider is checked on its own, and
    TensorRT with CUDA and CPU behind it (for any op it leaves), as a deployment runs it."""
    available = ort.get_available_providers
    hidden = GPU_PROVIDERS[:GPU_PROVIDERS.index(first)] if first in GPU_PROVIDERS else GPU_PROVIDERS
    ort.get_available_providers = lambda: [p for p in available() if p not in hidden]
    try:
        yield
    finally:
        ort.get_available_providers = available


def onnxruntime_checks(quick: bool, device: str = "cuda") -> None:
    """The exported embedded SD-CPC-B0 on ONNX Runtime's TensorRT and CUDA execution providers
    (each alone; fp32, and fp16 on TensorRT) against eager torch fp32 on the CPU: labels agree as
    the CUDA engine's must, streaming equals clip mode. ``device="cpu"`` runs the same checks on
    the CPU provider (the tests do, so that this code is exercised without a GPU)."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("SKIP  onnxruntime execution providers  onnxruntime is not installed "
              "(pip install onnxruntime-gpu)", flush=True)
        return
    if device == "cuda":
        if hasattr(ort, "preload_dlls"):  # CUDA / cuDNN libraries from torch or the nvidia wheels
            try:
                ort.preload_dlls()
            except Exception as exc:  # the providers below then say what they lack
                print(f"note  onnxruntime.preload_dlls() failed: {exc}", flush=True)
        providers = [p for p in GPU_PROVIDERS if p in ort.get_available_providers()]
        if not providers:
            print(f"SKIP  onnxruntime GPU providers  this onnxruntime {ort.__version__} offers only "
                  f"{ort.get_available_providers()}: pip uninstall onnxruntime && pip install "
                  "onnxruntime-gpu (and tensorrt for the TensorRT provider)", flush=True)
            return
        if quick:
            providers = providers[-1:]  # CUDA when present: no TensorRT engine build
    else:
        providers = ["CPUExecutionProvider"]
    n = 4 if quick else 8
    with tempfile.TemporaryDirectory(prefix="sdcpc_gpu_check_") as tmp:
        export = Path(tmp) / "sdcpc"
        from sdcpc_core.export import export_model

        export_model(DEFAULT_CHECKPOINT, export)
        cpu = StreamingSegmenter.from_checkpoint(export, device="cpu", backend="torch")
        frames, _ = generate_video(seed=5, length=n, height=cpu.input_size[0], width=cpu.input_size[1])
        want = [cpu.step(f) for f in frames]
        for provider in providers:
            precisions = ("fp32", "fp16") if provider == "TensorrtExecutionProvider" else ("fp32",)
            for precision in precisions:
                what = f"onnxruntime {provider.replace('ExecutionProvider', '')} {precision}"
                try:
                    with _only_providers(ort, provider):
                        eng = StreamingSegmenter.from_checkpoint(export, device=device, backend="onnxruntime",
                                                                 precision=precision)
                    got = [eng.step(f) for f in frames]
                except Exception as exc:  # a provider that cannot start (missing libraries): say so, go on
                    check(False, f"{what}: the session starts and runs", f"{type(exc).__name__}: {exc}")
                    continue
                active = eng.runner.providers[0]
                check(active == provider, f"{what}: the session runs on it", f"providers {eng.runner.providers}")
                agreement_checks(what, got, want, precision, reference="fp32 CPU torch")
                clip = eng.segment_clip(frames)
                same = np.mean([np.mean(s.labels == c.labels) for s, c in zip(got, clip)])
                check(same >= LABEL_AGREEMENT[precision], f"{what} streaming == clip mode",
                      f"{same:.5f} of labels equal")


def _time(fn, reps: int) -> float:
    """Median milliseconds of fn() on the current stream, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def _peak_mib(fn) -> float:
    """Peak memory allocated by fn() beyond what was allocated before it, MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _attention_case(path, q, k, v, idx, window, quick):
    """(forward ms, forward+backward ms, peak MiB of forward+backward) of one path."""
    def op():
        if path == "kernel":
            return window_attention(q, k, v, window, 1, idx)
        return _WindowAttentionTorch.apply(q, k, v, idx, window, 1)

    def fwd_bwd():
        out = op()
        torch.autograd.grad(out, (q, k, v), torch.ones_like(out))

    with torch.no_grad():
        fwd = _time(op, 5 if quick else 20)
    return fwd, _time(fwd_bwd, 3 if quick else 10), _peak_mib(fwd_bwd)


def attention_rows(quick: bool) -> list[tuple]:
    """VSPW scale: 60×60 stride-8 grid of 480×480, T = 3, C = 256, w = 9; 25 % and 100 % selected."""
    B, T, C, H, W, window = 1, 3, 256, 60, 60, 9
    g = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for dtype in (torch.float32,) if quick else (torch.float32, torch.bfloat16):
        q = torch.randn(B, C, H, W, device="cuda", generator=g).to(dtype).requires_grad_()
        k = torch.randn(B, T, C, H, W, device="cuda", generator=g).to(dtype).requires_grad_()
        v = torch.randn(B, T, C, H, W, device="cuda", generator=g).to(dtype).requires_grad_()
        for sel in (0.25, 1.0):
            m = math.ceil(sel * H * W)
            idx = torch.randperm(H * W, device="cuda", generator=g)[:m].sort().values[None]
            for path in ("kernel", "pytorch"):
                fwd, both, peak = _attention_case(path, q, k, v, idx, window, quick)
                rows.append((f"window attention {path}", str(dtype).replace("torch.", ""),
                             f"{sel:.0%} of {H}x{W}, T={T}, C={C}, w={window}",
                             f"{fwd:.3f}", f"{both:.3f}", f"{peak:.1f}", ""))
    return rows


def engine_rows(quick: bool) -> list[tuple]:
    """Streaming FPS at 480×480 (random weights, 124 classes as VSPW) per variant and precision."""
    from sdcpc_core.classes import LabelSet
    from sdcpc_core.models import SDCPCConfig, build_model

    size, n = 480, (6 if quick else 20)
    frames, _ = generate_video(seed=0, length=n + 1, height=size, width=size)
    labels = LabelSet.from_names([f"class{i}" for i in range(124)])
    rows = []
    for variant in ("b0",) if quick else ("b0", "b1", "b2"):
        torch.manual_seed(0)
        model = build_model(SDCPCConfig(variant=variant, num_classes=124))
        for precision in PRECISIONS:
            eng = StreamingSegmenter(model, labels, device="cuda", precision=precision)
            eng.step(frames[0])
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            for f in frames[1:]:
                eng.step(f)  # returns labels on the host: each step ends synchronised
            ms = (time.perf_counter() - t) * 1e3 / n
            rows.append((f"engine SD-CPC-{variant.upper()} streaming", precision, f"{size}x{size}, {n} frames",
                         f"{ms:.2f}", "", f"{torch.cuda.max_memory_allocated() / 2**20:.0f}", f"{1e3 / ms:.1f}"))
            del eng
    return rows


def bench(quick: bool) -> int:
    if not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device", file=sys.stderr)
        return 3
    rows = attention_rows(quick) + engine_rows(quick)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"backend {backend()}{', quick' if quick else ''}\n")
    print("| what | dtype | case | fwd ms | fwd+bwd ms | peak MiB | FPS |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["engine", "bench"])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    return engine_checks(a.quick) if a.what == "engine" else bench(a.quick)


if __name__ == "__main__":
    sys.exit(main())
