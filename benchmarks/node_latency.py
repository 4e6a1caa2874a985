"""Node overhead: publish -> ~/labels received, against the bare engine on the same frames.

    python benchmarks/node_latency.py [--checkpoint PATH] [--frames 30] [--size 480 640]
                                      [--backend torch|onnxruntime|openvino] [--precision fp32|bf16]

Starts ``python -m sdcpc_ros.node`` on a private ROS domain (localhost), publishes rgb8 frames one
at a time (waiting for each result, so nothing is dropped) and reports per frame:
end-to-end latency, the engine's own time as reported on ~/frame_info, and their difference
(conversion, hand-over, encoding, DDS both ways). The bare engine's time on the same frames is
printed for reference. Target: overhead <= 3 ms per frame at 640x480.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="", help="empty = the embedded default model")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="network input size (default: the image's own)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads, node and engine alike")
    ap.add_argument("--backend", default="torch", help="engine backend, node and bare engine alike")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--domain", type=int, default=77)
    args = ap.parse_args()

    os.environ.update(ROS_DOMAIN_ID=str(args.domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                      OMP_NUM_THREADS=str(args.threads))
    import rclpy
    import torch
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from sdcpc_core.engine import StreamingSegmenter
    from sdcpc_ros.conversions import array_to_image
    from sdcpc_ros.node import FrameInfo

    torch.set_num_threads(args.threads)
    h, w = args.size
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.frames + 3)]

    engine = StreamingSegmenter.from_checkpoint(args.checkpoint or None, device="cpu", backend=args.backend,
                                                precision=args.precision, input_size=args.input_size)
    bare = []
    for i, f in enumerate(frames):
        t0 = time.perf_counter()
        engine.step(f, stamp=1.0 + i * 0.03, frame_id="cam")
        bare.append((time.perf_counter() - t0) * 1e3)

    cmd = [sys.executable, "-m", "sdcpc_ros.node", "--ros-args", "-p", "device:=cpu",
           "-p", "reliable_qos:=true", "-p", "publish_color:=false", "-p", f"backend:={args.backend}",
           "-p", f"precision:={args.precision}"]
    if args.checkpoint:
        cmd += ["-p", f"checkpoint:={args.checkpoint}"]
    if args.input_size:
        cmd += ["-p", f"input_size:=[{args.input_size[0]},{args.input_size[1]}]"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    rclpy.init()
    node = rclpy.create_node("sdcpc_latency_bench")
    reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    received, infos = {}, {}
    node.create_subscription(Image, "/sdcpc/labels",
                             lambda m: received.setdefault(m.header.stamp.nanosec, time.perf_counter()),
                             reliable)
    if FrameInfo is not None:
        node.create_subscription(FrameInfo, "/sdcpc/frame_info",
                                 lambda m: infos.setdefault(m.header.stamp.nanosec,
                                                                   (m.inference_ms, m.node_latency_ms)),
                                 reliable)
    pub = node.create_publisher(Image, "/image", reliable)
    try:
        deadline = time.monotonic() + 300  # a non-torch backend exports the checkpoint first
        while not (pub.get_subscription_count() and node.count_subscribers("/sdcpc/labels")
                   and node.count_publishers("/sdcpc/labels")):
            if proc.poll() is not None or time.monotonic() > deadline:
                print("the node did not start", file=sys.stderr)
                return 1
            rclpy.spin_once(node, timeout_sec=0.05)
        sent = {}
        for i, f in enumerate(frames):
            msg = array_to_image(f, "rgb8")
            msg.header.frame_id = "cam"
            msg.header.stamp.sec, msg.header.stamp.nanosec = 1, i * 30_000_000
            sent[msg.header.stamp.nanosec] = time.perf_counter()
            pub.publish(msg)
            key = msg.header.stamp.nanosec
            while key not in received or (FrameInfo is not None and key not in infos):
                rclpy.spin_once(node, timeout_sec=0.05)
                if proc.poll() is not None:
                    return 1
    finally:
        node.destroy_node()
        rclpy.shutdown()
        proc.send_signal(2)
        proc.wait(timeout=30)

    keys = sorted(sent)[3:]  # the first frames warm up allocators and the stream buffer
    e2e = [(received[k] - sent[k]) * 1e3 for k in keys]
    engine_ms = statistics.median(bare[3:])
    print(f"frames {len(keys)} at {w}x{h}, network input {args.input_size or 'native'}, "
          f"{args.threads} thread(s)")
    print(f"bare engine            median {engine_ms:7.2f} ms")
    print(f"node publish->labels   median {statistics.median(e2e):7.2f} ms")
    print(f"overhead vs bare engine median {statistics.median(e2e) - engine_ms:6.2f} ms")
    if infos:
        per_frame = [(received[k] - sent[k]) * 1e3 - infos[k][0] for k in keys]
        inside = [infos[k][1] - infos[k][0] for k in keys]
        print(f"overhead per frame (e2e - engine time in the node): median "
              f"{statistics.median(per_frame):.2f} ms, p95 {np.percentile(per_frame, 95):.2f} ms "
              f"(target <= 3 ms)")
        print(f"  of which inside the node (receipt -> published, minus engine): median "
              f"{statistics.median(inside):.2f} ms; the rest is DDS transport both ways")
    return 0


if __name__ == "__main__":
    sys.exit(main())
