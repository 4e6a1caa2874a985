"""Soak with real video and injected faults: a camera process into ``sdcpc_node``, for an hour.

    python benchmarks/soak_faults.py --seconds 3600 --out out/soak_faults_1h
    python benchmarks/soak_faults.py --seconds 180 --out out/soak_faults_short   # the same, faster

Three processes on a private ROS domain (localhost discovery): the node (``sdcpc_node``, by default
``backend:=openvino``, ``input_size:=[480,640]``, the node's best-effort camera QoS and
``max_time_gap`` 0.5 s), a camera (``sdcpc-camera`` = :mod:`sdcpc_ros.video_publisher` looping
``--video`` at ``--rate`` Hz, best effort, stamped with the wall clock) and this script, which
listens to ``~/labels`` and ``/diagnostics`` and injects, at 1/6 ... 5/6 of the run:

  1. the camera process killed (SIGKILL) and started again 2 s later (a new publisher: its
     sequence numbers and its stream start over; the node sees a gap);
  2. the camera paused for 5 s (SIGSTOP, SIGCONT);
  3. a burst of 120 malformed images (truncated data, unknown encoding, absurd sizes, step too
     small) from another publisher;
  4. a parameter change (``max_time_gap`` 0.5 -> 0.8 s, through ``set_parameters``);
  5. a ``~/reset`` call.

Every second it records the node's RSS (psutil), its counters (``/diagnostics``: received,
published, dropped, lost before the node, rejected, failed, in flight, buffer resets) and the
labels received; latency is ``~/labels`` arrival minus the image stamp (one host, one clock).
Checks (exit 1 when one fails): every image the node received is accounted for (received =
published + propagated + dropped + rejected + failed + in flight), every label the node published
(network and propagated answers) arrived here, the
malformed images were refused, the node ran to the end and exits 0 on SIGINT, and its RSS over the
last 10 minutes is within 2 % of the first 10 minutes after the warm-up (runs of 30 min or more;
the first and last sixth otherwise). Writes ``soak_faults.json``, ``soak_faults.png`` and a
markdown table (``soak_faults.md``) into ``--out``.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
RSS_LIMIT = 0.02
FAULTS = ("camera killed and restarted", "camera paused 5 s", "malformed burst",
          "parameter change", "~/reset call")
DIAG_KEYS = {"received": "received frames", "published": "published frames",
             "propagated": "propagated frames",
             "dropped": "dropped frames", "lost": "dropped before the node (queue, transport)",
             "rejected": "rejected frames", "failed": "failed frames", "in_flight": "in flight",
             "resets": "buffer resets", "buffer": "buffer length"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3600.0)
    ap.add_argument("--video", type=Path, default=VIDEO)
    ap.add_argument("--rate", type=float, default=30.0, help="camera frame rate (Hz)")
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--input-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--checkpoint", default="", help="empty = the embedded default model")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds left out of the RSS baseline (default: min(60, 5 %% of the run))")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "soak_faults")
    return ap.parse_args(argv)


class Listener:
    """Labels and diagnostics from the node, updated from the executor thread."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.lock = threading.Lock()
        self.labels = 0
        self.latency: list[tuple[float, float]] = []  # (monotonic, ms)
        self.diag: dict[str, int] = {}
        node.create_subscription(Image, "/sdcpc/labels", self._on_labels,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_labels(self, msg) -> None:
        now = time.time()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.labels += 1
            self.latency.append((time.monotonic(), (now - stamp) * 1e3))

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("sdcpc"):
                values = {kv.key: kv.value for kv in status.values}
                with self.lock:
                    self.diag = {k: int(values.get(v, 0)) for k, v in DIAG_KEYS.items()}

    def snapshot(self) -> tuple[int, dict]:
        with self.lock:
            return self.labels, dict(self.diag)


def malformed_images(n: int):
    """Images a broken driver might send: every one is the message's fault (refused)."""
    from sensor_msgs.msg import Image

    kinds = [dict(height=480, width=640, encoding="rgb8", step=1920, data=bytes(1000)),  # truncated
             dict(height=48, width=64, encoding="yuv-whatever", step=192, data=bytes(48 * 192)),
             dict(height=1_000_000, width=1_000_000, encoding="rgb8", step=3_000_000, data=b"x"),
             dict(height=48, width=64, encoding="rgb8", step=10, data=bytes(480)),  # step < width*3
             dict(height=0, width=0, encoding="rgb8", step=0, data=b"")]
    for i in range(n):
        msg = Image(**kinds[i % len(kinds)])
        msg.header.frame_id = "camera"
        t = time.time()
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t % 1) * 1e9)
        yield msg


class Run:
    def __init__(self, args):
        import psutil
        from rcl_interfaces.srv import SetParameters
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from std_srvs.srv import Trigger

        from sdcpc_ros.node_process import Client, domain_id_for, node_env, run_node

        self.args = args
        self.t0 = time.monotonic()  # the run's start; set again when the camera starts
        self.domain = domain_id_for("soak_faults")
        self.env = node_env(self.domain)
        params = {"backend": args.backend, "device": "cpu", "reliable_qos": "false",
                  "publish_color": "false", "diagnostics_period": "1.0", "max_time_gap": "0.5",
                  "input_size": f"[{args.input_size[0]},{args.input_size[1]}]"}
        if args.checkpoint:
            params["checkpoint"] = args.checkpoint
        self.proc = run_node(params, self.domain, args.out)
        self.node_ps = psutil.Process(self.proc.pid)
        self.client = Client(self.domain)
        node = self.client.node
        self.listener = Listener(node)
        self.bad_pub = node.create_publisher(Image, "/image", qos_profile_sensor_data)
        self.set_params = node.create_client(SetParameters, "/sdcpc/set_parameters")
        self.reset = node.create_client(Trigger, "/sdcpc/reset")
        self.camera = None
        self.camera_starts = 0
        self.events: list[dict] = []
        self.samples: list[dict] = []

    # -- processes ----------------------------------------------------------------------------
    def start_camera(self) -> None:
        self.camera_starts += 1
        log = open(self.args.out / f"camera_{self.camera_starts}.log", "w")  # noqa: SIM115
        self.camera = subprocess.Popen(
            [sys.executable, "-m", "sdcpc_ros.video_publisher", str(self.args.video), "--rate",
             str(self.args.rate), "--loop"], env=self.env, cwd=REPO, stdout=log,
            stderr=subprocess.STDOUT)

    def wait_for_node(self) -> None:
        node = self.client.node
        self.client.wait_for(lambda: node.count_publishers("/sdcpc/labels") > 0
                             and node.count_subscribers("/image") > 0,
                             "the node to start (an export on the fly takes minutes)",
                             timeout=1200, proc=self.proc)

    # -- faults -------------------------------------------------------------------------------
    def fault(self, index: int, t: float) -> str:
        if index == 0:
            self.camera.kill()
            self.camera.wait()
            time.sleep(2.0)
            self.start_camera()
            return "SIGKILL, new camera process 2 s later"
        if index == 1:
            self.camera.send_signal(signal.SIGSTOP)
            time.sleep(5.0)
            self.camera.send_signal(signal.SIGCONT)
            return "SIGSTOP, SIGCONT 5 s later"
        if index == 2:
            for msg in malformed_images(120):
                self.bad_pub.publish(msg)
                time.sleep(0.002)
            return "120 malformed images in about 0.3 s"
        if index == 3:
            from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
            from rcl_interfaces.srv import SetParameters

            value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=0.8)
            request = SetParameters.Request(parameters=[Parameter(name="max_time_gap", value=value)])
            result = self.call(self.set_params, request).results[0]
            return f"max_time_gap 0.5 -> 0.8: {'accepted' if result.successful else result.reason}"
        from std_srvs.srv import Trigger

        reply = self.call(self.reset, Trigger.Request())
        return f"~/reset: {reply.message}"

    def call(self, cli, request):
        if not cli.wait_for_service(timeout_sec=30.0):
            raise RuntimeError(f"{cli.srv_name} is not available")
        future = cli.call_async(request)
        deadline = time.monotonic() + 30.0
        while not future.done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no reply from {cli.srv_name} in 30 s")
            time.sleep(0.05)
        return future.result()

    # -- the run ------------------------------------------------------------------------------
    def sample(self, t: float) -> None:
        labels, diag = self.listener.snapshot()
        self.samples.append({"t": round(t, 2), "rss_mb": self.node_ps.memory_info().rss / 2**20,
                             "labels": labels, **diag})

    def run(self) -> bool:
        args = self.args
        fault_at = [args.seconds * (i + 1) / 6 for i in range(len(FAULTS))]
        done = 0
        t0 = time.monotonic()
        self.t0 = t0
        next_sample = t0
        while True:
            t = time.monotonic() - t0
            if t >= args.seconds:
                return True
            if self.proc.poll() is not None:
                self.events.append({"t": t, "event": f"node exited ({self.proc.returncode})"})
                return False
            if not self.client.context.ok():  # Ctrl-C: rclpy's handler shut the context down
                self.events.append({"t": round(t, 2), "event": "interrupted (SIGINT)"})
                print(f"[{t:7.1f} s] interrupted: stopping the camera and the node", flush=True)
                return False
            if self.camera.poll() is not None and done != 1:
                self.events.append({"t": t, "event": f"camera exited ({self.camera.returncode})"})
                self.start_camera()
            if done < len(FAULTS) and t >= fault_at[done]:
                detail = self.fault(done, t)
                self.events.append({"t": round(t, 2), "fault": FAULTS[done], "detail": detail})
                print(f"[{t:7.1f} s] fault {done + 1}: {FAULTS[done]} ({detail})", flush=True)
                done += 1
            if time.monotonic() >= next_sample:
                self.sample(time.monotonic() - t0)
                next_sample += 1.0
                if len(self.samples) % 300 == 0:
                    s = self.samples[-1]
                    print(f"[{s['t']:7.1f} s] labels {s['labels']}, received {s.get('received')}, "
                          f"dropped {s.get('dropped')}, rejected {s.get('rejected')}, resets "
                          f"{s.get('resets')}, RSS {s['rss_mb']:.1f} MB", flush=True)
            time.sleep(max(0.0, min(next_sample - time.monotonic(), 0.2)))

    def stop(self) -> None:
        from sdcpc_ros.node_process import stop_node

        if self.camera is not None and self.camera.poll() is None:
            self.camera.send_signal(signal.SIGINT)
            try:
                self.camera.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.camera.kill()
                self.camera.wait()
        time.sleep(4.0)  # the last frames through the node, then a diagnostics message
        self.sample(time.monotonic() - self.t0)
        self.alive = self.proc.poll() is None
        self.client.close()
        stop_node(self.proc)


def windows(samples: list[dict], latency: list[tuple[float, float]], t0: float, width: float) -> list[dict]:
    """Per ``width`` seconds: answered and dropped per second, rejected, resets, RSS, latency."""
    rows, start = [], 0.0
    end = samples[-1]["t"]
    while start < end:
        inside = [s for s in samples if start <= s["t"] < start + width and "received" in s]
        if len(inside) >= 2:
            a, b = inside[0], inside[-1]
            span = max(b["t"] - a["t"], 1e-6)
            lat = [ms for m, ms in latency if start <= m - t0 < start + width]
            rows.append({
                "from_min": start / 60, "to_min": min(start + width, end) / 60,
                "received_hz": (b["received"] - a["received"]) / span,
                "answered_hz": (b["labels"] - a["labels"]) / span,
                "dropped": b["dropped"] - a["dropped"], "lost": b["lost"] - a["lost"],
                "rejected": b["rejected"] - a["rejected"], "failed": b["failed"] - a["failed"],
                "resets": b["resets"] - a["resets"],
                "rss_mb": float(np.median([s["rss_mb"] for s in inside])),
                "latency_p50": float(np.percentile(lat, 50)) if lat else None,
                "latency_p95": float(np.percentile(lat, 95)) if lat else None})
        start += width
    return rows


def markdown(report: dict) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
    lines = ["| minutes | received (Hz) | answered (Hz) | dropped | lost | refused | failed | "
             "buffer resets | node RSS (MB) | latency p50 / p95 (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for w in report["windows"]:
        lines.append(f"| {w['from_min']:.0f}–{w['to_min']:.0f} | {w['received_hz']:.1f} | "
                     f"{w['answered_hz']:.1f} | {w['dropped']} | {w['lost']} | {w['rejected']} | "
                     f"{w['failed']} | {w['resets']} | {w['rss_mb']:.1f} | "
                     f"{fmt(w['latency_p50'])} / {fmt(w['latency_p95'])} |")
    lines.append("")
    lines.append("| minute | fault | what happened |")
    lines.append("|---|---|---|")
    for e in report["events"]:
        lines.append(f"| {e['t'] / 60:.1f} | {e.get('fault', e.get('event'))} | {e.get('detail', '')} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = [x for x in report["samples"] if "received" in x]
    t = np.array([x["t"] for x in s]) / 60
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    ax1.plot(t, [x["rss_mb"] for x in s], lw=1, label="node RSS (MB)")
    ax1.set_ylabel("MB")
    lat = report["latency"]
    if lat:
        ax2.scatter([m / 60 for m, _ in lat], [ms for _, ms in lat], s=1, alpha=0.3,
                    label="image stamp -> ~/labels here (ms)")
    ax2.set_ylabel("ms")
    ax2.set_yscale("log")
    dt = np.maximum(np.diff(t * 60), 1e-6)
    for key, label in (("received", "received by the node"), ("labels", "answered"),
                       ("dropped", "dropped (latest frame wins + lost)")):
        rate = np.diff([x[key] for x in s]) / dt
        k = min(10, len(rate))
        mean = np.convolve(rate, np.ones(k) / k, mode="valid")  # no edge effects at the ends
        ax3.plot(t[1:][k // 2:k // 2 + len(mean)], mean, lw=1, label=f"{label} (Hz, 10 s mean)")
    ax3.set_ylabel("frames / s")
    ax3.set_xlabel("minutes")
    for ax in (ax1, ax2, ax3):
        for e in report["events"]:
            if "fault" in e:
                ax.axvline(e["t"] / 60, color="grey", ls="--", lw=0.8)
        ax.legend(loc="upper right", fontsize=8)
    for e in report["events"]:
        if "fault" in e:
            ax1.annotate(e["fault"], (e["t"] / 60, ax1.get_ylim()[0]), rotation=90, fontsize=7,
                         va="bottom", ha="right", color="grey")
    c = report["summary"]
    fig.suptitle(f"sdcpc_node, {report['config']['video_name']} at {report['config']['rate_hz']:g} Hz "
                 f"best effort -> {report['config']['backend']} {report['config']['input_size']}: "
                 f"{c['answered']} answered, {c['dropped']} dropped, {c['rejected']} refused, "
                 f"{c['failed']} failed; RSS {c['rss_change_pct']:+.2f} %", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def judge(run: Run, warmup: float) -> tuple[dict, dict]:
    samples = [s for s in run.samples if "received" in s]
    final = samples[-1]
    answered = final["published"] + final["propagated"]  # by the network, by propagation
    accounted = answered + final["dropped"] + final["rejected"] + final["failed"]
    duration = run.args.seconds
    window = 600.0 if duration >= 1800 else duration / 6
    first = [s["rss_mb"] for s in samples if warmup <= s["t"] < warmup + window]
    last = [s["rss_mb"] for s in samples if s["t"] >= samples[-1]["t"] - window]
    rss_first, rss_last = float(np.median(first)), float(np.median(last))
    change = (rss_last - rss_first) / rss_first
    lat = [ms for m, ms in run.listener.latency if m - run.t0 >= warmup]
    summary = {"received": final["received"], "answered": final["labels"],
               "published": final["published"], "propagated": final["propagated"],
               "dropped": final["dropped"], "lost": final["lost"],
               "rejected": final["rejected"], "failed": final["failed"],
               "in_flight": final["in_flight"], "buffer_resets": final["resets"],
               "rss_first_window_mb": rss_first, "rss_last_window_mb": rss_last,
               "rss_window_s": window, "rss_change_pct": 100 * change,
               "latency_ms": {q: float(np.percentile(lat, p)) for q, p in
                              (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))} if lat else None}
    criteria = {
        "every_received_frame_accounted": {
            "pass": final["received"] == accounted + final["in_flight"] and final["in_flight"] <= 4,
            "received": final["received"], "accounted": accounted, "in_flight": final["in_flight"]},
        "every_published_label_arrived": {"pass": final["labels"] == answered,
                                          "published": final["published"],
                                          "propagated": final["propagated"], "arrived": final["labels"]},
        "malformed_images_refused": {"pass": final["rejected"] > 0 and final["failed"] == 0,
                                     "rejected": final["rejected"], "failed": final["failed"]},
        "node_alive_and_clean_exit": {"pass": run.alive and run.proc.returncode == 0,
                                      "exit_code": run.proc.returncode},
        "rss_flat_within_2pct": {"pass": abs(change) <= RSS_LIMIT, "change_pct": 100 * change,
                                 "first_mb": rss_first, "last_mb": rss_last, "window_s": window},
        "all_faults_injected": {"pass": sum("fault" in e for e in run.events) == len(FAULTS)},
    }
    return criteria, summary


def main(argv=None) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    args = parse_args(argv)
    if not args.video.is_file():
        print(f"soak_faults: no video at {args.video}: install opencv-doc (apt) or give --video",
              file=sys.stderr)
        return 2
    warmup = args.warmup if args.warmup is not None else min(60.0, 0.05 * args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    from sdcpc_ros.transport import use_default_profile

    print(use_default_profile(), flush=True)  # this process publishes the malformed images
    # SIGTERM as well as Ctrl-C ends the run through `finally`, so the node and camera stop too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = Run(args)
    finished = False
    try:
        run.wait_for_node()
        print("node up; starting the camera", flush=True)
        run.client.spin_in_background()  # stopped and joined by client.close()
        run.start_camera()
        finished = run.run()
    except KeyboardInterrupt:  # Ctrl-C: stop both processes and report what ran
        run.events.append({"t": round(time.monotonic() - run.t0, 2), "event": "interrupted (Ctrl-C)"})
    finally:
        run.stop()
    criteria, summary = judge(run, warmup)
    criteria["ran_to_the_end"] = {"pass": finished}
    passed = all(c["pass"] for c in criteria.values())
    report = {
        "config": {"seconds": args.seconds, "video": str(args.video), "video_name": args.video.name,
                   "rate_hz": args.rate, "backend": args.backend, "input_size": list(args.input_size),
                   "checkpoint": args.checkpoint or "(embedded default)", "warmup_s": warmup,
                   "qos": "best effort (sensor data)", "max_time_gap": 0.5},
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
                    "platform": platform.platform(), "python": platform.python_version()},
        "summary": summary, "criteria": criteria, "passed": passed, "events": run.events,
        "samples": run.samples,
        "latency": [(round(m - run.t0, 2), round(ms, 1)) for m, ms in run.listener.latency],
    }
    report["windows"] = windows(run.samples, run.listener.latency, run.t0,
                                300.0 if args.seconds >= 1800 else max(args.seconds / 6, 10.0))
    (args.out / "soak_faults.json").write_text(json.dumps(report, indent=1))
    (args.out / "soak_faults.md").write_text(markdown(report))
    plot(report, args.out / "soak_faults.png")
    print(markdown(report))
    print(json.dumps(summary, indent=1))
    for name, c in criteria.items():
        print(f"  {'PASS' if c['pass'] else 'FAIL'} {name}: "
              f"{ {k: v for k, v in c.items() if k != 'pass'} }")
    print(f"wrote {args.out}/soak_faults.json, .md, .png")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
