"""Do camera images reach the node? Frames answered and accounted for, before and after the fix.

    python benchmarks/transport.py                       # the full table (a few minutes)
    python benchmarks/transport.py --seconds 5 --sizes 576x768 --rates 5 --qos best_effort

A publisher process (the client, this script with ``--role client``) sends rgb8 frames of each
size at each rate to ``sdcpc_node`` (its own process, on a private localhost ROS domain through
``test/ros/ros_harness.py``) with the camera-driver QoS (best effort, keep last 5) or reliable,
and receives ``~/labels`` (matched by stamp) and ``/diagnostics``. Frames come from a real video
(``--video``, default OpenCV's vtest.avi, 768x576, resized per cell) or are synthetic.

BEFORE: both processes at Fast DDS's defaults (``SDCPC_FASTDDS_PROFILE=off``). AFTER: both with
``config/fastdds_large_images.xml``, as ``sdcpc_node`` and ``sdcpc_ros.video_publisher`` apply it.
NODE_ONLY (``--profiles node_only``): the node has it, the publisher not (a camera driver started
without it).

Per cell: published frames; answered (a ``~/labels`` message with the frame's stamp); and the
node's own counts over the cell (differences of its /diagnostics totals): dropped (replaced by a
newer frame before the worker took it, or lost before the node: a gap in the publisher's sequence
numbers), of which lost before the node, refused and failed. accounted = answered + dropped +
refused + failed. Each cell ends with a small flush frame (320x240, never lost) so that frames
lost at the end of the cell show up as a sequence gap in that cell.

The cells use a tiny random-weight model (``--input-size`` 64x80) so that the node keeps up and
what is measured is the transport; the 768x576 5 Hz best-effort cell is also run with the
embedded default model (``--embedded``), the user's default set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]  # this checkout's packages, also when another one is installed

VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
DIAG_KEYS = {"dropped": "dropped frames", "lost": "dropped before the node (queue, transport)",
             "refused": "rejected frames", "failed": "failed frames"}
FLUSH_SIZE = (240, 320)
WAIT_S = 240.0
PROFILES = ("before", "after", "node_only")


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


# -- client: publisher + listener, one process per node ---------------------------------------
class Listener:
    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.labels: set[tuple[int, int]] = set()
        self.diag: dict[str, int] = {}
        self.diag_count = 0
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(Image, "/sdcpc/labels", self._on_labels, reliable)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_labels(self, msg):
        self.labels.add((msg.header.stamp.sec, msg.header.stamp.nanosec))

    def _on_diag(self, msg):
        for status in msg.status:
            for kv in status.values:
                for name, key in DIAG_KEYS.items():
                    if kv.key == key:
                        self.diag[name] = int(kv.value)
        self.diag_count += 1


def load_frames(video: Path | None, size: tuple[int, int], count: int = 10):
    from sdcpc_ros.video_publisher import FrameSource

    source = FrameSource(str(video) if video else f"synthetic:{size[1]}x{size[0]}", loop=True,
                         size=size)
    frames = [source.read() for _ in range(count)]
    source.close()
    return frames


def run_client(args) -> int:
    if args.profile == "after":
        from sdcpc_ros.transport import use_default_profile

        print(json.dumps({"note": use_default_profile()}), flush=True)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from sdcpc_ros.conversions import array_to_image
    from sdcpc_ros.video_publisher import image_qos

    rclpy.init()
    node = rclpy.create_node("transport_bench")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    from sensor_msgs.msg import Image

    pub = node.create_publisher(Image, "/image", image_qos(args.qos == "reliable"))
    listen = Listener(node)

    def spin_until(condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.02)
        return condition()

    def message(frame, stamp):
        msg = array_to_image(frame, "rgb8")
        msg.header.frame_id = "camera"
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        return msg

    def fresh_diagnostics():
        seen = listen.diag_count
        spin_until(lambda: listen.diag_count >= seen + 2, 10.0)
        return dict(listen.diag)

    video = Path(args.video) if args.video else None
    flush_frame = load_frames(video, FLUSH_SIZE, 1)[0]
    ok = spin_until(lambda: pub.get_subscription_count() > 0
                    and node.count_publishers("/sdcpc/labels") > 0 and listen.diag_count > 0,
                    WAIT_S)
    if not ok:
        print(json.dumps({"error": "the node did not come up"}), flush=True)
        return 1
    # warm-up (model, allocators): small frames, each answered before the next
    for i in range(3):
        stamp = (10, i * 100_000_000)
        pub.publish(message(flush_frame, stamp))
        spin_until(lambda s=stamp: s in listen.labels, 60.0)

    for cell, (size, rate) in enumerate((s, r) for s in args.sizes for r in args.rates):
        frames = [message(f, (0, 0)) for f in load_frames(video, size)]
        before = fresh_diagnostics()
        base = 1000 * (cell + 1)
        sent = []
        start = time.monotonic()
        n = max(1, round(args.seconds * rate))
        for i in range(n):
            spin_until(lambda i=i: False, max(0.0, start + i / rate - time.monotonic()))
            msg = frames[i % len(frames)]
            offset = i / rate
            seconds, nanoseconds = divmod(round(offset * 1e9), 1_000_000_000)
            msg.header.stamp.sec, msg.header.stamp.nanosec = base + seconds, nanoseconds
            pub.publish(msg)
            sent.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
        elapsed = time.monotonic() - start
        flush = (base + 900, 0)
        pub.publish(message(flush_frame, flush))
        spin_until(lambda f=flush: f in listen.labels, 30.0)
        spin_until(lambda: False, 0.5)
        after = fresh_diagnostics()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in DIAG_KEYS}
        answered = sum(1 for s in sent if s in listen.labels)
        row = {"profile": args.profile, "qos": args.qos, "model": args.model,
               "size": f"{size[1]}x{size[0]}", "rate": rate, "published": n,
               "publish_hz": round(n / max(elapsed, 1e-6), 1), "answered": answered, **delta,
               "flushed": flush in listen.labels}
        row["accounted"] = answered + delta["dropped"] + delta["refused"] + delta["failed"]
        print(json.dumps(row), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


# -- orchestrator -----------------------------------------------------------------------------
def run_config(args, profile, qos, model, sizes, rates, domain, out: Path) -> list[dict]:
    from sdcpc_ros.node_process import node_output, run_node, stop_node

    params = {"device": "cpu", "publish_color": "false", "diagnostics_period": "0.5",
              "reliable_qos": "true" if qos == "reliable" else "false"}
    if model == "tiny":
        params["checkpoint"] = str(args.tiny_path)
        params["input_size"] = "[64,80]"
    saved = dict(os.environ)
    try:
        if profile == "before":
            os.environ["SDCPC_FASTDDS_PROFILE"] = "off"
        proc = run_node(params, domain, out)
        if profile == "node_only":
            os.environ["SDCPC_FASTDDS_PROFILE"] = "off"  # the publisher's only
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    cmd = [sys.executable, __file__, "--role", "client", "--profile", profile, "--qos", qos,
           "--model", model, "--seconds", str(args.seconds),
           "--sizes", *[f"{h}x{w}" for h, w in sizes], "--rates", *[str(r) for r in rates]]
    if args.video:
        cmd += ["--video", args.video]
    rows = []
    try:
        client = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                                timeout=WAIT_S + 120 + len(sizes) * len(rates) * (args.seconds + 60))
        for line in client.stdout.splitlines():
            if line.startswith("{"):
                item = json.loads(line)
                if "size" in item:
                    rows.append(item)
                else:
                    print(f"  [{profile}/{qos}/{model}] {item}", file=sys.stderr)
        if client.returncode:
            print(f"client failed ({client.returncode}):\n{client.stderr[-3000:]}\n"
                  f"node:\n{node_output(proc)[-3000:]}", file=sys.stderr)
        log = node_output(proc)
        for line in log.splitlines():
            if "Fast DDS" in line:
                print(f"  [{profile}/{qos}/{model}] node: {line.strip()}", file=sys.stderr)
    finally:
        stop_node(proc)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| profile | QoS | model | image | Hz | published | answered | dropped (of which lost "
            "before node) | refused+failed | accounted |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        def pct(v, n=r["published"]):
            return f"{v} ({100 * v / n:.0f} %)"

        lines.append(
            f"| {r['profile']} | {r['qos'].replace('_', ' ')} | {r['model']} | {r['size']} | "
            f"{r['rate']:g} | {r['published']} | {pct(r['answered'])} | {r['dropped']} "
            f"({r['lost']}) | {r['refused'] + r['failed']} | {pct(r['accounted'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=("orchestrate", "client"), default="orchestrate",
                    help=argparse.SUPPRESS)
    ap.add_argument("--profile", choices=PROFILES, default="after", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=10.0, help="publishing time per cell")
    ap.add_argument("--sizes", nargs="+", default=["480x640", "576x768", "720x1280", "1080x1920"],
                    help="HxW image sizes")
    ap.add_argument("--rates", nargs="+", type=float, default=[5.0, 30.0])
    ap.add_argument("--qos", nargs="+", default=["best_effort", "reliable"],
                    choices=("best_effort", "reliable"))
    ap.add_argument("--profiles", nargs="+", default=["before", "after"], choices=PROFILES,
                    help="node_only: the node applies the profile, the publisher does not")
    ap.add_argument("--video", default=str(VIDEO) if VIDEO.is_file() else "",
                    help="video file for real frames (default: OpenCV's vtest.avi when "
                         "installed); empty = synthetic frames")
    ap.add_argument("--no-embedded", dest="embedded", action="store_false",
                    help="skip the 768x576 5 Hz best-effort cell with the embedded model")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "transport")
    ap.add_argument("--domain", type=int, default=None)
    args = ap.parse_args(argv)
    if args.role == "client":
        args.sizes = [parse_size(s) for s in args.sizes]
        args.qos = args.qos[0]
        return run_client(args)

    from sdcpc_core.checkpoints import save_tiny_checkpoint
    from sdcpc_ros.node_process import domain_id_for

    args.out.mkdir(parents=True, exist_ok=True)
    args.tiny_path = save_tiny_checkpoint(args.out / "tiny_random.pt")
    sizes = [parse_size(s) for s in args.sizes]
    domain = args.domain if args.domain is not None else domain_id_for("transport")
    print(f"frames: {args.video or 'synthetic'}; {args.seconds:g} s per cell; domain {domain}",
          file=sys.stderr)
    rows = []
    for profile in args.profiles:
        for qos in args.qos:
            rows += run_config(args, profile, qos, "tiny", sizes, args.rates, domain, args.out)
            print(table(rows[-1:]).splitlines()[-1] if rows else "(no rows)", file=sys.stderr)
        if args.embedded and "best_effort" in args.qos:
            rows += run_config(args, profile, "best_effort", "embedded", [(576, 768)], [5.0],
                               domain, args.out)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
