"""Soak test: a synthetic camera stream into a running ``sdcpc_node`` for minutes or hours.

    python benchmarks/soak.py --seconds 60 --tiny-checkpoint --input-size 64 80 --out out/soak
    python benchmarks/soak.py --seconds 3600 --checkpoint model.pt --input-size 480 640 --out out/soak_1h
    python benchmarks/soak.py --seconds 60 --mode overload --tiny-checkpoint --input-size 64 80
    python benchmarks/soak.py --seconds 900 --video /usr/share/doc/opencv-doc/examples/data/vtest.avi \
        --best-effort --max-time-gap 0.5 --out out/soak_video    # a camera as a user has it

Starts the node as its own process on a private ROS domain (localhost discovery, through
:mod:`sdcpc_ros.node_process`), publishes 640x480 rgb8 frames (``--size``) reliably at ``--rate`` Hz
(``--mode camera``, default 30 Hz) or at twice what the node was measured to sustain during the
warm-up (``--mode overload``: its output rate while it was dropping frames, else 1000 / its
per-frame time), and every second records the node process's RSS (psutil), its GPU
memory (``nvidia-smi``, when present), how many frames were sent, answered (``~/labels``) and
dropped (``~/frame_info`` / ``/diagnostics``). Latency is publish -> ``~/labels`` received, per frame.

Pass criteria (checked and printed; exit code 1 when one fails):
  * memory: RSS growth after the warm-up < 5 % (median of the last 5 samples against the median of
    the first 5 after the warm-up);
  * bounded queue: the backlog (sent - answered - dropped) does not grow over the run (least-squares
    trend over the whole run < 10 frames) and never exceeds ``2 + 2 * rate`` frames, and the
    buffer length in diagnostics never exceeds the number of references + 1;
  * accounting: after the stream stops, sent = answered (by the network or by propagation) +
    dropped + rejected + failed, allowing only frames in flight (<= 4: pending, being segmented,
    waiting for and in propagation);
  * the node is still running at the end and exits cleanly on SIGINT.
Writes ``soak.json`` (configuration, machine, samples, summary, criteria) and ``soak.png`` (RSS and
latency over time) into ``--out``.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

MEMORY_GROWTH_LIMIT = 0.05
IN_FLIGHT_LIMIT = 4  # pending, being segmented, waiting for and in propagation
BACKLOG_TREND_LIMIT = 10.0


def buffer_bound(checkpoint: str) -> int:
    """Most frames the engine may cache: -min(reference_offsets) of the checkpoint."""
    from sdcpc_core.checkpoints import read_file, resolve_checkpoint

    offsets = read_file(resolve_checkpoint(checkpoint))["config"]["reference_offsets"]
    return -min(offsets)


def gpu_memory_mb(pid: int) -> float | None:
    """GPU memory used by ``pid`` (nvidia-smi), None without an NVIDIA GPU."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    used = [float(line.split(",")[1]) for line in out.splitlines()
            if line.strip() and line.split(",")[0].strip() == str(pid)]
    return sum(used) if used else 0.0


def percentiles(values) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


class Observer:
    """Everything the benchmark hears from the node, updated from the executor thread."""

    def __init__(self, client, frame_info_type):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.lock = threading.Lock()
        self.sent_at: dict[tuple, float] = {}  # stamp -> perf_counter at publish
        self.latency: list[tuple[float, float]] = []  # (seconds since start, ms)
        self.answered = 0
        self.dropped = self.rejected = 0  # from ~/frame_info
        self.node_latency_ms: list[float] = []
        self.propagated_latency_ms: list[float] = []  # the node's latency of propagated answers
        self.propagated = 0
        self.diag: dict[str, str] = {}
        self.max_buffer = 0
        self.t0 = time.perf_counter()
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node = client.node
        node.create_subscription(Image, "/sdcpc/labels", self._on_labels, reliable)
        node.create_subscription(frame_info_type, "/sdcpc/frame_info", self._on_info, reliable)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_labels(self, msg) -> None:
        now = time.perf_counter()
        key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        with self.lock:
            sent = self.sent_at.pop(key, None)
            self.answered += 1
            if sent is not None:
                self.latency.append((now - self.t0, (now - sent) * 1e3))

    def _on_info(self, msg) -> None:
        if hasattr(msg, "dropped_frames"):
            dropped, rejected, node_ms = msg.dropped_frames, msg.rejected_frames, msg.node_latency_ms
            propagated = getattr(msg, "propagated", False)
        else:  # std_msgs/String JSON
            d = json.loads(msg.data)
            dropped, rejected, node_ms = d["dropped_frames"], d["rejected_frames"], d["node_latency_ms"]
            propagated = d.get("propagated", False)
        with self.lock:
            self.dropped = max(self.dropped, int(dropped))
            self.rejected = max(self.rejected, int(rejected))
            if propagated:
                self.propagated += 1
                self.propagated_latency_ms.append(float(node_ms))
            else:
                self.node_latency_ms.append(float(node_ms))

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("sdcpc"):
                values = {kv.key: kv.value for kv in status.values}
                with self.lock:
                    self.diag = values
                    self.dropped = max(self.dropped, int(values.get("dropped frames", 0)))
                    self.rejected = max(self.rejected, int(values.get("rejected frames", 0)))
                    self.max_buffer = max(self.max_buffer, int(values.get("buffer length", 0)))

    def failed(self) -> int:
        with self.lock:
            return int(self.diag.get("failed frames", 0))


class VideoLoop:
    """RGB frames of a video file, decoded as they are sent, from the start again at its end."""

    def __init__(self, path: Path):
        import cv2

        self.cv2, self.path = cv2, path
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise SystemExit(f"soak: cannot open video {path}")

    def next(self) -> np.ndarray:
        ok, bgr = self.cap.read()
        if not ok:
            self.cap.release()
            self.cap = self.cv2.VideoCapture(str(self.path))
            ok, bgr = self.cap.read()
            if not ok:
                raise SystemExit(f"soak: {self.path} yields no frames")
        return self.cv2.cvtColor(bgr, self.cv2.COLOR_BGR2RGB)


def synthetic_frames(h: int, w: int, n: int = 8) -> list[np.ndarray]:
    """A bright square moving over a noisy gradient."""
    rng = np.random.default_rng(0)
    base = np.stack(np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h)), -1).astype(np.uint8)
    frames = []
    for t in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., :2] = base
        f[..., 2] = rng.integers(0, 60, (h, w))
        x = (t * w // n) % max(w - h // 4, 1)
        f[h // 3: h // 3 + h // 4, x: x + h // 4] = (250, 240, 30)
        frames.append(f)
    return frames


def sustained_rate(obs: Observer, samples: list[dict], warmup: float) -> float:
    """Frames per second the node answered in the second half of the warm-up when it was dropping
    (saturated); otherwise 1000 / median time a frame spent in the node (it was keeping up)."""
    half = [s for s in samples if s["t"] >= warmup / 2]
    if len(half) >= 2 and half[-1]["dropped"] > half[0]["dropped"]:
        return (half[-1]["answered"] - half[0]["answered"]) / max(half[-1]["t"] - half[0]["t"], 1e-3)
    with obs.lock:
        service = float(np.median(obs.node_latency_ms[-50:])) if obs.node_latency_ms else 33.0
    return 1000.0 / max(service, 1.0)


def backlog_trend(samples: list[dict]) -> float:
    """Least-squares growth of the backlog over the run, in frames (slope x duration)."""
    if len(samples) < 3:
        return 0.0
    t = np.array([s["t"] for s in samples])
    b = np.array([s["backlog"] for s in samples], dtype=float)
    if np.ptp(t) == 0:
        return 0.0
    slope = np.polyfit(t, b, 1)[0]
    return float(slope * np.ptp(t))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [s["t"] for s in samples]
    ax1.plot(t, [s["rss_mb"] for s in samples], label="node RSS (MB)")
    if any(s["gpu_mb"] is not None for s in samples):
        ax1.plot(t, [s["gpu_mb"] or 0 for s in samples], label="node GPU memory (MB)")
    ax1.axvline(report["config"]["warmup_s"], color="grey", ls="--", lw=0.8, label="end of warm-up")
    ax1.set_ylabel("MB")
    ax1.legend(loc="lower right")
    lat = report["latency_samples"]
    if lat:
        ax2.scatter([x for x, _ in lat], [y for _, y in lat], s=2, alpha=0.5,
                    label="publish -> ~/labels (ms)")
    ax2.plot(t, [s["backlog"] for s in samples], color="C3", label="backlog (frames)")
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("ms / frames")
    ax2.legend(loc="upper right")
    s = report["summary"]
    fig.suptitle(f"sdcpc soak: {report['config']['mode']} {s['input_rate_hz']:.1f} Hz in, "
                 f"{s['output_rate_hz']:.1f} Hz out, {s['dropped']} dropped, RSS growth "
                 f"{s['rss_growth_pct']:+.2f} %")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="stream duration (CI 60, on demand 3600)")
    ap.add_argument("--mode", choices=("camera", "overload"), default="camera",
                    help="camera: --rate Hz; overload: twice the rate the node sustained in the warm-up")
    ap.add_argument("--rate", type=float, default=30.0, help="camera mode frame rate (Hz)")
    ap.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="network input size (default: the image's own)")
    ap.add_argument("--checkpoint", default="", help="empty = the embedded default model")
    ap.add_argument("--tiny-checkpoint", action="store_true",
                    help="use a small random-weight checkpoint written to --out (for CI)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds excluded from the memory baseline (default: min(10, 20 %% of run))")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "soak")
    ap.add_argument("--domain", type=int, default=None, help="ROS domain (default: from the pid)")
    ap.add_argument("--video", type=Path, default=None,
                    help="publish this video's frames (looped, at --rate, stamps continuous) "
                         "instead of synthetic ones; --size is then the video's")
    ap.add_argument("--best-effort", action="store_true",
                    help="the camera-driver QoS (sensor data, best effort) on both sides instead "
                         "of reliable; the node's defaults")
    ap.add_argument("--max-time-gap", type=float, default=1.0, help="the node's max_time_gap (s)")
    ap.add_argument("--backend", default=None, help="the node's backend (default: the node's, auto)")
    ap.add_argument("--precision", default=None, help="the node's precision (default: the node's, fp32)")
    return ap.parse_args(argv)


def node_params(args, checkpoint: str) -> dict:
    params = {"device": args.device, "reliable_qos": "false" if args.best_effort else "true",
              "publish_color": "false", "diagnostics_period": "0.5",
              "max_time_gap": str(float(args.max_time_gap))}
    if checkpoint:
        params["checkpoint"] = checkpoint
    if args.input_size:
        params["input_size"] = f"[{args.input_size[0]},{args.input_size[1]}]"
    for name in ("backend", "precision"):
        if getattr(args, name, None):
            params[name] = getattr(args, name)
    return params


class Stream:
    """Publishes the synthetic frames with fresh stamps and samples the node every second."""

    def __init__(self, args, client, obs: Observer, proc, warmup: float):
        import psutil
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from sdcpc_ros.conversions import array_to_image

        self.args, self.client, self.obs, self.proc, self.warmup = args, client, obs, proc, warmup
        qos = (qos_profile_sensor_data if args.best_effort
               else QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.pub = client.node.create_publisher(Image, "/image", qos)
        self.video = VideoLoop(args.video) if args.video else None
        frames = [self.video.next()] if self.video else synthetic_frames(*args.size)
        args.size = tuple(frames[0].shape[:2])
        self.templates = [array_to_image(f, "rgb8") for f in frames]
        for m in self.templates:
            m.header.frame_id = "camera"
        self.node_ps = psutil.Process(proc.pid)
        self.samples: list[dict] = []
        self.sent = 0
        self.rate = args.rate

    def wait_for_node(self) -> None:
        self.client.wait_for(lambda: self.pub.get_subscription_count() > 0
                             and self.client.node.count_publishers("/sdcpc/labels") > 0
                             and self.client.node.count_publishers("/sdcpc/frame_info") > 0,
                             "the node to start", timeout=180, proc=self.proc)

    def send(self, stamp: float) -> None:
        if self.video:
            from sdcpc_ros.conversions import array_to_image

            msg = array_to_image(self.video.next(), "rgb8")
            msg.header.frame_id = "camera"
        else:
            msg = self.templates[self.sent % len(self.templates)]
        # whole nanoseconds first: rounding the fraction alone can give 1e9 (sec not carried)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(round(stamp * 1e9), 1_000_000_000)
        with self.obs.lock:
            self.obs.sent_at[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.perf_counter()
        self.pub.publish(msg)
        self.sent += 1

    def sample(self, elapsed: float) -> None:
        with self.obs.lock:
            answered, dropped = self.obs.answered, self.obs.dropped
        self.samples.append({"t": round(elapsed, 3), "rss_mb": self.node_ps.memory_info().rss / 2**20,
                             "gpu_mb": gpu_memory_mb(self.proc.pid), "sent": self.sent,
                             "answered": answered, "dropped": dropped,
                             "backlog": self.sent - answered - dropped,
                             "buffer_length": self.obs.max_buffer})

    def run(self) -> None:
        """Publish for ``--seconds`` (in overload mode at twice the rate sustained in the warm-up)."""
        from sdcpc_ros.node_process import node_output

        self.obs.t0 = t0 = time.perf_counter()
        next_send, next_sample, stamp = t0, t0, 1_000_000.0
        overload_set = self.args.mode == "camera"
        while True:
            now = time.perf_counter()
            elapsed = now - t0
            if elapsed >= self.args.seconds:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited ({self.proc.returncode}):\n{node_output(self.proc)[-3000:]}")
            if not overload_set and elapsed >= self.warmup:
                self.rate = min(2.0 * sustained_rate(self.obs, self.samples, self.warmup), 1000.0)
                overload_set = True
                print(f"overload: the node sustained {self.rate / 2:.1f} Hz in the warm-up; "
                      f"publishing at {self.rate:.1f} Hz")
            if now >= next_send:
                stamp += 1.0 / self.rate
                self.send(stamp)
                next_send += 1.0 / self.rate
                if next_send < now - 1.0:  # the publisher fell behind by a second: do not burst
                    next_send = now
            if now >= next_sample:
                self.sample(elapsed)
                next_sample += 1.0
            time.sleep(max(0.0, min(next_send, next_sample) - time.perf_counter()))

    def drain(self) -> None:
        """Wait for the last outputs and one more diagnostics message with the final counts."""
        drain_end = time.perf_counter() + 10.0
        while time.perf_counter() < drain_end:
            with self.obs.lock:
                accounted = self.obs.answered + self.obs.dropped + self.obs.rejected
            if accounted + self.obs.failed() >= self.sent:
                break
            time.sleep(0.1)
        time.sleep(1.2)  # > 2 diagnostics periods


def judge(obs: Observer, stream: Stream, proc, alive: bool, checkpoint: str, warmup: float) -> tuple[dict, dict]:
    """The pass criteria and the summary figures, from what was observed."""
    with obs.lock:
        answered, dropped, rejected = obs.answered, obs.dropped, obs.rejected
        latency = list(obs.latency)
        diag = dict(obs.diag)
        max_buffer = obs.max_buffer
    sent, samples, duration = stream.sent, stream.samples, stream.args.seconds
    failed = int(diag.get("failed frames", 0))
    in_flight = sent - answered - dropped - rejected - failed
    post = [s for s in samples if s["t"] >= warmup]
    rss_base = float(np.median([s["rss_mb"] for s in post[:5]])) if post else float("nan")
    rss_final = float(np.median([s["rss_mb"] for s in post[-5:]])) if post else float("nan")
    growth = (rss_final - rss_base) / rss_base if post else float("nan")
    buffer_limit = buffer_bound(checkpoint)
    trend = backlog_trend(post)
    backlog_limit = 2 + 2 * stream.rate
    max_backlog = max((s["backlog"] for s in post), default=0)
    criteria = {
        "memory_growth_below_5pct": {
            "pass": bool(post) and growth < MEMORY_GROWTH_LIMIT, "value_pct": 100 * growth,
            "limit_pct": 100 * MEMORY_GROWTH_LIMIT, "baseline_mb": rss_base, "final_mb": rss_final},
        "bounded_queue": {
            "pass": trend < BACKLOG_TREND_LIMIT and max_backlog <= backlog_limit
            and max_buffer <= buffer_limit,
            "backlog_trend_frames": trend, "trend_limit": BACKLOG_TREND_LIMIT,
            "max_backlog": max_backlog, "backlog_limit": backlog_limit,
            "max_buffer_length": max_buffer, "buffer_limit": buffer_limit},
        "every_frame_accounted": {
            "pass": 0 <= in_flight <= IN_FLIGHT_LIMIT, "sent": sent, "answered": answered,
            "dropped": dropped, "rejected": rejected, "failed": failed, "in_flight": in_flight,
            "in_flight_limit": IN_FLIGHT_LIMIT},
        "node_alive_and_clean_exit": {"pass": alive and proc.returncode == 0,
                                      "alive_at_end": alive, "exit_code": proc.returncode},
    }
    with obs.lock:
        propagated, propagated_ms = obs.propagated, list(obs.propagated_latency_ms)
    summary = {"sent": sent, "answered": answered, "propagated": propagated,
               "propagated_node_latency_ms": percentiles(propagated_ms),
               "network_rate_hz": float(diag.get("network rate (Hz)", 0.0)),
               "dropped": dropped, "rejected": rejected,
               "failed": failed, "in_flight": in_flight,
               "input_rate_hz": sent / duration, "output_rate_hz": answered / duration,
               "latency_ms": percentiles([ms for t, ms in latency if t >= warmup]),
               "rss_mb": {"baseline": rss_base, "final": rss_final,
                          "max": max((s["rss_mb"] for s in samples), default=None)},
               "rss_growth_pct": 100 * growth, "diagnostics_at_end": diag,
               "lost_before_node": int(diag.get("dropped before the node (queue, transport)", 0)),
               "buffer_resets": int(diag.get("buffer resets", 0)),
               "rss_first_vs_last_5min_mb": _first_vs_last(samples, 300.0)}
    return criteria, summary


def _first_vs_last(samples: list[dict], window: float) -> list[float] | None:
    """Median RSS over the first and the last ``window`` seconds (runs of at least twice that)."""
    if not samples or samples[-1]["t"] < 2 * window:
        return None
    end = samples[-1]["t"]
    first = [s["rss_mb"] for s in samples if s["t"] < window]
    last = [s["rss_mb"] for s in samples if s["t"] >= end - window]
    return [float(np.median(first)), float(np.median(last))]


def print_summary(report: dict, args, path: Path) -> None:
    s, c = report["summary"], report["criteria"]
    lat = s["latency_ms"]
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"soak {args.seconds:.0f} s, {args.mode}, {args.size[0]}x{args.size[1]} -> network "
          f"{args.input_size or 'native'}, {os.cpu_count()} CPUs, load average "
          f"{report['machine']['load_average_at_end'][0]:.2f}")
    print(f"  sent {s['sent']} ({s['input_rate_hz']:.1f} Hz), answered {s['answered']} "
          f"({s['output_rate_hz']:.1f} Hz; {s['propagated']} of them propagated, node latency p50/p95 "
          f"{fmt(s['propagated_node_latency_ms']['p50'])}/{fmt(s['propagated_node_latency_ms']['p95'])} ms), "
          f"dropped {s['dropped']}, rejected {s['rejected']}, "
          f"failed {s['failed']}, in flight {s['in_flight']}; of the dropped, lost before the node "
          f"{s['lost_before_node']}; buffer resets {s['buffer_resets']}")
    if s["rss_first_vs_last_5min_mb"]:
        first, last = s["rss_first_vs_last_5min_mb"]
        print(f"  node RSS median, first 5 min {first:.1f} MB, last 5 min {last:.1f} MB "
              f"({100 * (last - first) / first:+.2f} %)")
    print(f"  latency publish->labels after warm-up: p50 {fmt(lat['p50'])} ms, p95 {fmt(lat['p95'])} ms,"
          f" p99 {fmt(lat['p99'])} ms, max {fmt(lat['max'])} ms")
    print(f"  node RSS {s['rss_mb']['baseline']:.1f} MB after warm-up -> {s['rss_mb']['final']:.1f} MB "
          f"at the end ({s['rss_growth_pct']:+.2f} %)")
    for name, crit in c.items():
        detail = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in crit.items() if k != "pass"}
        print(f"  {'PASS' if crit['pass'] else 'FAIL'} {name}: {detail}")
    print(f"  wrote {path / 'soak.json'} and {path / 'soak.png'}")


def main(argv=None) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every stack
    args = parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(10.0, 0.2 * args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)

    from std_msgs.msg import String

    from sdcpc_core.checkpoints import save_tiny_checkpoint
    from sdcpc_ros.node import FrameInfo
    from sdcpc_ros.node_process import Client, domain_id_for, run_node, stop_node
    from sdcpc_ros.transport import use_default_profile

    print(use_default_profile())  # this process publishes the camera's images: large samples

    checkpoint = args.checkpoint
    if args.tiny_checkpoint:
        checkpoint = str(save_tiny_checkpoint(args.out / "tiny_random.pt"))
    domain = args.domain if args.domain is not None else domain_id_for("soak")
    started = time.perf_counter()
    proc = run_node(node_params(args, checkpoint), domain, args.out)
    client = Client(domain)
    obs = Observer(client, FrameInfo or String)
    stream = Stream(args, client, obs, proc, warmup)
    try:
        stream.wait_for_node()
        startup_s = time.perf_counter() - started  # process start -> its topics are up
        print(f"node started in {startup_s:.1f} s")
        client.spin_in_background()  # stopped and joined by client.close()
        stream.run()
        stream.drain()
        alive = proc.poll() is None
    finally:
        client.close()
        stop_node(proc)

    criteria, summary = judge(obs, stream, proc, alive, checkpoint, warmup)
    passed = all(c["pass"] for c in criteria.values())
    report = {
        "config": {"seconds": args.seconds, "mode": args.mode, "rate_hz": stream.rate,
                   "size": list(args.size), "input_size": args.input_size,
                   "checkpoint": checkpoint or "(embedded default)", "device": args.device,
                   "warmup_s": warmup, "qos": "best effort" if args.best_effort else "reliable",
                   "video": str(args.video) if args.video else None,
                   "max_time_gap": args.max_time_gap,
                   "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])},
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "gpu": shutil.which("nvidia-smi") is not None},
        "summary": {**summary, "startup_s": round(startup_s, 2)}, "criteria": criteria, "passed": passed,
        "samples": stream.samples,
        "latency_samples": [(round(t, 3), round(ms, 2)) for t, ms in obs.latency],
    }
    (args.out / "soak.json").write_text(json.dumps(report, indent=1))
    plot(report, args.out / "soak.png")
    print_summary(report, args, args.out)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
