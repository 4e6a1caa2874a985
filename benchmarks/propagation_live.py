"""Real video into ``sdcpc_node``, label propagation switched on and off at run time, interleaved.

    python benchmarks/propagation_live.py --windows 8 --window-seconds 20 --out out/propagation_live

One node (the node's defaults except ``input_size``) and one camera process (``sdcpc-camera`` =
:mod:`sdcpc_ros.video_publisher`, ``--video`` looped at ``--rate`` Hz, best effort, stamped with
the wall clock, the project's Fast DDS profile). After ``--warmup`` seconds, ``propagate`` is set
on and off through ``set_parameters`` in the order on, off, off, on, on, off, ... (a slow drift of
a shared CPU's load falls on both alike); each window is measured after ``--settle`` seconds:
frames received, answered by the network, propagated, dropped (``/diagnostics`` counters), the
network's rate (its steps per second, published or not), the propagation thread's CPU time, and
the latency of each answer kind: in the node (``~/frame_info`` ``node_latency_ms``) and camera
stamp to ``~/labels`` here (one host, one clock). After the camera stops, every frame the node
received must be accounted for (received = published + propagated + dropped + refused + failed +
in flight). Writes ``propagation_live.json`` and a markdown table (``propagation_live.md``) into
``--out``; exit 1 if the accounting check fails.
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

from sdcpc_core.propagation import PRESETS as FLOW_PRESETS

REPO = Path(__file__).resolve().parents[1]
VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
COUNTERS = {"received": "received frames", "published": "published frames",
            "propagated": "propagated frames", "steps": "network steps", "dropped": "dropped frames",
            "rejected": "rejected frames", "failed": "failed frames", "in_flight": "in flight",
            "cpu_s": "propagation CPU (s)"}
ORDER = (True, False, False, True)  # on, off, off, on, repeated


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=VIDEO)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--input-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--windows", type=int, default=8, help="measured windows, half of them on")
    ap.add_argument("--window-seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after a switch not measured")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before the first window")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "propagation_live")
    ap.add_argument("--flow", choices=tuple(FLOW_PRESETS), default=None,
                    help="the node's propagation_flow (default: the node's)")
    args = ap.parse_args(argv)
    if not args.video.is_file():
        ap.error(f"--video {args.video}: no such file (Debian/Ubuntu: apt install opencv-doc)")
    if args.windows < 2:
        ap.error("--windows: at least 2 (one on, one off)")
    return args


class Listener:
    """Counters from /diagnostics; answer kinds and latencies from ~/frame_info and ~/labels,
    collected per window."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from sdcpc_ros.node import FrameInfo

        if FrameInfo is None:
            raise RuntimeError("sdcpc_interfaces is not built: scripts/build_interfaces.sh .venv")
        self.lock = threading.Lock()
        self.counters: dict[str, float] = {}
        self.window = None  # {"kind": {stamp: propagated}, "node_ms": ..., "arrival_ms": ...}
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
                    self.counters = {k: float(values.get(v, 0)) for k, v in COUNTERS.items()}

    def _on_info(self, msg) -> None:
        with self.lock:
            if self.window is not None:
                self.window["kind"][self._stamp(msg.header)] = bool(msg.propagated)
                self.window["node_ms"][bool(msg.propagated)].append(float(msg.node_latency_ms))

    def _on_labels(self, msg) -> None:
        now_ns = time.time_ns()
        with self.lock:
            if self.window is not None:
                stamp = self._stamp(msg.header)
                self.window["arrival_ms"][stamp] = (now_ns - stamp) / 1e6

    def snapshot(self) -> dict:
        """The counters of the next diagnostics message (so that a window starts on one)."""
        with self.lock:
            before = dict(self.counters)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            with self.lock:
                if self.counters != before:
                    return dict(self.counters)
            time.sleep(0.02)
        return before

    def start_window(self) -> None:
        with self.lock:
            self.window = {"kind": {}, "node_ms": {True: [], False: []}, "arrival_ms": {}}

    def end_window(self) -> dict:
        with self.lock:
            window, self.window = self.window, None
        return window


def pct(values) -> dict:
    if not values:
        return {"p50": None, "p95": None, "count": 0}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "count": int(a.size)}


def set_propagate(client, on: bool) -> None:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    cli = client.node.create_client(SetParameters, "/sdcpc/set_parameters")
    if not cli.wait_for_service(timeout_sec=30.0):
        raise RuntimeError("/sdcpc/set_parameters is not available")
    value = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=on)
    future = cli.call_async(SetParameters.Request(parameters=[Parameter(name="propagate", value=value)]))
    deadline = time.monotonic() + 30.0
    while not future.done():
        if time.monotonic() > deadline:
            raise RuntimeError("no reply from /sdcpc/set_parameters in 30 s")
        time.sleep(0.05)
    result = future.result().results[0]
    if not result.successful:
        raise RuntimeError(f"propagate:={on} refused: {result.reason}")
    client.node.destroy_client(cli)


def measure(args, listener, client) -> list[dict]:
    windows = []
    for w in range(args.windows):
        on = ORDER[w % len(ORDER)]
        set_propagate(client, on)
        time.sleep(args.settle)
        load = os.getloadavg()[0]
        start, t0 = listener.snapshot(), time.monotonic()
        listener.start_window()
        time.sleep(args.window_seconds)
        end, t1 = listener.snapshot(), time.monotonic()
        windows.append(window_figures(on, start, end, t1 - t0, listener.end_window(), load))
        x = windows[-1]
        print(f"window {w + 1}/{args.windows}: propagate {'on' if on else 'off'}, answered "
              f"{100 * (x['answered_fraction'] or 0):.1f} %, network {x['network_rate_hz']:.2f} Hz, "
              f"propagation CPU {x['propagation_cpu_pct']:.1f} %, load {load:.1f}", flush=True)
    return windows


def window_figures(on, start, end, seconds, window, load) -> dict:
    d = {k: end.get(k, 0) - start.get(k, 0) for k in COUNTERS if k != "in_flight"}
    answered = d["published"] + d["propagated"]
    arrival = {True: [], False: []}
    for stamp, ms in window["arrival_ms"].items():
        if stamp in window["kind"]:
            arrival[window["kind"][stamp]].append(ms)
    return {"propagate": on, "seconds": seconds, "load_average": load, "counts": d,
            "answered_fraction": answered / d["received"] if d["received"] else None,
            "received_hz": d["received"] / seconds, "network_rate_hz": d["steps"] / seconds,
            "propagation_cpu_pct": 100 * d["cpu_s"] / seconds,
            "node_ms": window["node_ms"], "arrival_ms": arrival}


def pooled(windows: list[dict], on: bool) -> dict:
    ws = [w for w in windows if w["propagate"] == on]
    total = {k: sum(w["counts"][k] for w in ws) for k in ws[0]["counts"]}
    seconds = sum(w["seconds"] for w in ws)
    return {"windows": len(ws), "seconds": seconds, "counts": total,
            "answered_fraction": (total["published"] + total["propagated"]) / total["received"],
            "network_rate_hz": total["steps"] / seconds,
            "network_rate_per_window_hz": [w["network_rate_hz"] for w in ws],
            "propagation_cpu_pct": 100 * total["cpu_s"] / seconds,
            "load_average": [w["load_average"] for w in ws],
            "propagated_node_ms": pct([x for w in ws for x in w["node_ms"][True]]),
            "network_node_ms": pct([x for w in ws for x in w["node_ms"][False]]),
            "propagated_stamp_to_labels_ms": pct([x for w in ws for x in w["arrival_ms"][True]]),
            "network_stamp_to_labels_ms": pct([x for w in ws for x in w["arrival_ms"][False]])}


def run(args) -> dict:
    from sdcpc_ros.node_process import Client, domain_id_for, node_env, run_node, stop_node

    domain = domain_id_for("propagation_live")
    params = {"input_size": f"[{args.input_size[0]},{args.input_size[1]}]"}
    if args.flow:
        params["propagation_flow"] = args.flow
    proc = run_node(params, domain, args.out)
    client = Client(domain)
    listener = Listener(client.node)
    camera = None
    try:
        client.wait_for(lambda: client.node.count_publishers("/sdcpc/labels") > 0
                        and client.node.count_subscribers("/image") > 0,
                        "the node to start", timeout=900, proc=proc)
        client.spin_in_background()  # stopped and joined by client.close()
        log = open(args.out / "camera.log", "w")  # noqa: SIM115
        camera = subprocess.Popen([sys.executable, "-m", "sdcpc_ros.video_publisher", str(args.video),
                                   "--rate", str(args.rate), "--loop", "--topic", "/image"],
                                  env=node_env(domain), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(args.warmup)
        windows = measure(args, listener, client)
        camera.send_signal(signal.SIGINT)
        camera.wait(timeout=20)
        time.sleep(3.0)  # the last frames through the node, then a diagnostics message
        final = listener.snapshot()
    finally:
        if camera is not None and camera.poll() is None:
            camera.kill()
        client.close()
        stop_node(proc)
    accounted = sum(final.get(k, 0) for k in ("published", "propagated", "dropped", "rejected",
                                              "failed", "in_flight"))
    return {"windows": windows, "on": pooled(windows, True), "off": pooled(windows, False),
            "final": final, "accounted": final.get("received", 0) == accounted}


def markdown(report: dict) -> str:
    def f(v, digits=1):
        return "–" if v is None else f"{v:.{digits}f}"

    on, off = report["on"], report["off"]
    change = 100 * (on["network_rate_hz"] - off["network_rate_hz"]) / off["network_rate_hz"]
    lines = ["| propagate | windows (s) | load (1 min) | answered | network rate (Hz) | propagation CPU "
             "(% of a core) | propagated: node latency p50 / p95 (ms) | propagated: stamp to labels "
             "p50 / p95 (ms) | network: node latency p50 / p95 (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in (("on", on), ("off", off)):
        lines.append(
            f"| {name} | {r['windows']} ({r['seconds']:.0f}) | {min(r['load_average']):.1f}–"
            f"{max(r['load_average']):.1f} | {100 * r['answered_fraction']:.1f} % | "
            f"{r['network_rate_hz']:.2f} ({', '.join(f'{x:.2f}' for x in r['network_rate_per_window_hz'])}) | "
            f"{r['propagation_cpu_pct']:.1f} | {f(r['propagated_node_ms']['p50'])} / "
            f"{f(r['propagated_node_ms']['p95'])} | {f(r['propagated_stamp_to_labels_ms']['p50'])} / "
            f"{f(r['propagated_stamp_to_labels_ms']['p95'])} | {f(r['network_node_ms']['p50'])} / "
            f"{f(r['network_node_ms']['p95'])} |")
    lines += ["", f"Network rate with propagation {change:+.1f} % against without; every frame "
              f"accounted after the camera stopped: {'yes' if report['accounted'] else 'NO'} "
              f"(received {report['final'].get('received', 0):.0f})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cpu import cpu_line

    report = {"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_line(),
              "cpus": os.cpu_count(), "python": platform.python_version(), **run(args)}
    (args.out / "propagation_live.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / "propagation_live.md").write_text(f"{report['cpu']}\n\n{text}")
    print(report["cpu"])
    print(text)
    return 0 if report["accounted"] else 1


if __name__ == "__main__":
    sys.exit(main())
