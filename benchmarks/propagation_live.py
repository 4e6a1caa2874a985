"""Real video into ``sdcpc_node`` with label propagation on and off, interleaved.

    python benchmarks/propagation_live.py --seconds 60 --rounds 2 --out out/propagation_live

Each round starts the node twice (``propagate:=true`` then ``false``, the order swapped every
other round, so both see a similar share of a shared CPU), each time with a camera process
(``sdcpc-camera`` = :mod:`sdcpc_ros.video_publisher`, ``--video`` looped at ``--rate`` Hz, best
effort, stamped with the wall clock, the project's Fast DDS profile) and the node's defaults except
``input_size``. After ``--warmup`` seconds it measures for ``--seconds``: frames received, answered
by the network, propagated, dropped (``/diagnostics`` counters), the network's rate (its steps per
second, published or not), and the latency of each answer kind: in the node (``~/frame_info``
``node_latency_ms``) and camera stamp to ``~/labels`` here (one host, one clock). After the camera
stops, every frame the node received must be accounted for (received = published + propagated +
dropped + refused + failed + in flight). Writes ``propagation_live.json`` and a markdown table
(``propagation_live.md``) into ``--out``; exit 1 if an accounting check fails.
"""

from __future__ import annotations

import argparse
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
COUNTERS = {"received": "received frames", "published": "published frames",
            "propagated": "propagated frames", "steps": "network steps", "dropped": "dropped frames",
            "rejected": "rejected frames", "failed": "failed frames", "in_flight": "in flight"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=VIDEO)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--input-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--seconds", type=float, default=60.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    ap.add_argument("--rounds", type=int, default=2, help="on/off pairs")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "propagation_live")
    args = ap.parse_args(argv)
    if not args.video.is_file():
        ap.error(f"--video {args.video}: no such file (Debian/Ubuntu: apt install opencv-doc)")
    return args


class Listener:
    """Counters from /diagnostics, answer kinds and latencies from ~/frame_info and ~/labels."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from sdcpc_ros.node import FrameInfo

        if FrameInfo is None:
            raise RuntimeError("sdcpc_interfaces is not built: scripts/build_interfaces.sh .venv")
        self.lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.recording = False
        self.kind: dict[int, bool] = {}  # stamp -> propagated
        self.node_ms = {True: [], False: []}
        self.arrival_ms: dict[int, float] = {}  # stamp -> labels arrival minus stamp
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        node.create_subscription(FrameInfo, "/sdcpc/frame_info", self._on_info, reliable)
        node.create_subscription(Image, "/sdcpc/labels", self._on_labels, reliable)

    @staticmethod
    def _stamp(header) -> int:
        return header.stamp.sec * 10**9 + header.stamp.nanosec

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("sdcpc"):
                values = {kv.key: kv.value for kv in status.values}
                with self.lock:
                    self.counters = {k: int(values.get(v, 0)) for k, v in COUNTERS.items()}

    def _on_info(self, msg) -> None:
        with self.lock:
            if self.recording:
                self.kind[self._stamp(msg.header)] = bool(msg.propagated)
                self.node_ms[bool(msg.propagated)].append(float(msg.node_latency_ms))

    def _on_labels(self, msg) -> None:
        now_ns = time.time_ns()
        with self.lock:
            if self.recording:
                stamp = self._stamp(msg.header)
                self.arrival_ms[stamp] = (now_ns - stamp) / 1e6

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.counters)

    def record(self, on: bool) -> None:
        with self.lock:
            self.recording = on


def pct(values) -> dict:
    if not values:
        return {"p50": None, "p95": None, "count": 0}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "count": int(a.size)}


def run_once(args, propagate: bool, index: int) -> dict:
    """One node + camera run; the measured figures and the accounting check."""
    from sdcpc_ros.node_process import Client, domain_id_for, node_env, run_node, stop_node

    domain = domain_id_for(f"propagation_live_{index}")
    params = {"input_size": f"[{args.input_size[0]},{args.input_size[1]}]",
              "propagate": "true" if propagate else "false"}
    proc = run_node(params, domain, args.out)
    client = Client(domain)
    listener = Listener(client.node)
    camera = None
    try:
        client.wait_for(lambda: client.node.count_publishers("/sdcpc/labels") > 0
                        and client.node.count_subscribers("/image") > 0,
                        "the node to start", timeout=600, proc=proc)
        client.spin_in_background()  # stopped and joined by client.close()
        log = open(args.out / f"camera_{index}.log", "w")  # noqa: SIM115
        camera = subprocess.Popen([sys.executable, "-m", "sdcpc_ros.video_publisher", str(args.video),
                                   "--rate", str(args.rate), "--loop", "--topic", "/image"],
                                  env=node_env(domain), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(args.warmup)
        load_start = os.getloadavg()
        start, t_start = listener.snapshot(), time.monotonic()
        listener.record(True)
        time.sleep(args.seconds)
        listener.record(False)
        end, t_end = listener.snapshot(), time.monotonic()
        load_end = os.getloadavg()
        camera.send_signal(signal.SIGINT)
        camera.wait(timeout=20)
        time.sleep(3.0)  # the last frames through the node, then a diagnostics message
        final = listener.snapshot()
    finally:
        if camera is not None and camera.poll() is None:
            camera.kill()
        client.close()
        stop_node(proc)
    return summarise(propagate, start, end, final, t_end - t_start, listener, (load_start, load_end))


def summarise(propagate, start, end, final, seconds, listener, loads) -> dict:
    d = {k: end.get(k, 0) - start.get(k, 0) for k in COUNTERS if k != "in_flight"}
    answered = d["published"] + d["propagated"]
    accounted = (final.get("published", 0) + final.get("propagated", 0) + final.get("dropped", 0)
                 + final.get("rejected", 0) + final.get("failed", 0) + final.get("in_flight", 0))
    arrival = {True: [], False: []}
    for stamp, ms in listener.arrival_ms.items():
        if stamp in listener.kind:
            arrival[listener.kind[stamp]].append(ms)
    return {"propagate": propagate, "seconds": seconds, "load_average": [loads[0][0], loads[1][0]],
            "window": d, "received_hz": d["received"] / seconds,
            "answered_fraction": answered / d["received"] if d["received"] else None,
            "network_rate_hz": d["steps"] / seconds, "answered_hz": answered / seconds,
            "propagated_node_ms": pct(listener.node_ms[True]),
            "network_node_ms": pct(listener.node_ms[False]),
            "propagated_stamp_to_labels_ms": pct(arrival[True]),
            "network_stamp_to_labels_ms": pct(arrival[False]),
            "final": final, "accounted": final.get("received", 0) == accounted}


def markdown(runs: list[dict]) -> str:
    def f(v, digits=1):
        return "–" if v is None else f"{v:.{digits}f}"

    lines = ["| run | propagate | load (1 min) | received (Hz) | answered | network rate (Hz) | "
             "propagated: node latency p50 / p95 (ms) | propagated: stamp to labels p50 / p95 (ms) | "
             "network: node latency p50 / p95 (ms) | every frame accounted |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs):
        lines.append(
            f"| {i + 1} | {'on' if r['propagate'] else 'off'} | {r['load_average'][0]:.1f}–"
            f"{r['load_average'][1]:.1f} | {r['received_hz']:.1f} | {100 * (r['answered_fraction'] or 0):.1f} % | "
            f"{r['network_rate_hz']:.2f} | {f(r['propagated_node_ms']['p50'])} / {f(r['propagated_node_ms']['p95'])} | "
            f"{f(r['propagated_stamp_to_labels_ms']['p50'])} / {f(r['propagated_stamp_to_labels_ms']['p95'])} | "
            f"{f(r['network_node_ms']['p50'])} / {f(r['network_node_ms']['p95'])} | "
            f"{'yes' if r['accounted'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpu import cpu_line

    runs = []
    for r in range(args.rounds):
        for propagate in ((True, False) if r % 2 == 0 else (False, True)):
            print(f"round {r + 1}: propagate {'on' if propagate else 'off'} ...", flush=True)
            runs.append(run_once(args, propagate, len(runs)))
            x = runs[-1]
            print(f"  answered {100 * (x['answered_fraction'] or 0):.1f} %, network {x['network_rate_hz']:.2f} Hz, "
                  f"propagated node latency p50/p95 {x['propagated_node_ms']['p50']}/"
                  f"{x['propagated_node_ms']['p95']} ms, load {x['load_average']}", flush=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_line(),
              "cpus": os.cpu_count(), "python": platform.python_version(), "runs": runs}
    (args.out / "propagation_live.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "propagation_live.md").write_text(markdown(runs))
    print(markdown(runs))
    return 0 if all(r["accounted"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
