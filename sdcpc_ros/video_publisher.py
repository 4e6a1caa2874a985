"""Publish a video file, a V4L2 camera or synthetic frames as ``sensor_msgs/Image`` (rgb8).

    sdcpc-camera VIDEO.avi --rate 10 --loop          # or: python -m sdcpc_ros.video_publisher
    sdcpc-camera 0                                   # /dev/video0, at the camera's rate
    sdcpc-camera synthetic:768x576 --rate 30 --frames 300

For the pip route, where there is no ``ros2`` command and no camera driver package: it publishes
with the sensor-data QoS a camera driver uses (best effort, keep last 5; ``--reliable`` for
reliable) and applies the large-image Fast DDS profile to itself first, as a camera driver
process must (docs/transport.md).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import cv2
import numpy as np

from sdcpc_ros.transport import use_default_profile

SYNTHETIC = re.compile(r"^synthetic:(\d+)x(\d+)$")


class FrameSource:
    """Frames as (H, W, 3) rgb8 arrays from a video file, a camera index or ``synthetic:WxH``."""

    def __init__(self, source: str, loop: bool = False, size: tuple[int, int] | None = None):
        self.loop, self.size, self.fps = loop, size, None
        self._capture, self._index = None, 0
        match = SYNTHETIC.match(source)
        if match:
            w, h = int(match[1]), int(match[2])
            if not (0 < w <= 8192 and 0 < h <= 8192):
                raise ValueError(f"synthetic size {w}x{h}: width and height must be in [1, 8192]")
            self._synthetic = (h, w)
            return
        self._synthetic = None
        self._capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
        if not self._capture.isOpened():
            raise ValueError(f"cannot open {source!r}: give a video file, a camera index such as 0 "
                             "(/dev/video0) or synthetic:WIDTHxHEIGHT")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else None

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end of a video that is not looped."""
        if self._synthetic is not None:
            h, w = self._synthetic
            # a moving gradient: cheap, and consecutive frames differ
            x = (np.arange(w, dtype=np.uint16) + 4 * self._index) % 256
            y = np.arange(h, dtype=np.uint16)[:, None] % 256
            frame = np.stack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)),
                              (x + y) % 256], axis=-1).astype(np.uint8)
            self._index += 1
        else:
            ok, bgr = self._capture.read()
            if not ok and self.loop:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self._capture.read()
            if not ok:
                return None
            frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self.size is not None and frame.shape[:2] != self.size:
            frame = cv2.resize(frame, self.size[::-1], interpolation=cv2.INTER_AREA)
        return frame

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()


def image_qos(reliable: bool):
    """The camera-driver QoS (sensor data: best effort, keep last 5) or its reliable variant."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if reliable:
        return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    return qos_profile_sensor_data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="video file, camera index (0 = /dev/video0) or synthetic:WxH")
    ap.add_argument("--topic", default="image",
                    help="default: image, the topic sdcpc_node subscribes to by default")
    ap.add_argument("--frame-id", default="camera")
    ap.add_argument("--rate", type=float, default=None,
                    help="frames per second (default: the video's, 30 for synthetic frames; a "
                         "camera is read as fast as it delivers)")
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="resize frames to this size")
    ap.add_argument("--frames", type=int, default=0, help="stop after this many (0 = no limit)")
    ap.add_argument("--loop", action="store_true", help="restart a video file at its end")
    ap.add_argument("--reliable", action="store_true", help="reliable QoS instead of sensor data")
    ap.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                    help="start once N subscribers are matched (e.g. 1: the node is up, so the "
                         "start of a video is not published to nobody)")
    args = ap.parse_args(argv)
    if args.rate is not None and not 0 < args.rate <= 1000:
        ap.error(f"--rate {args.rate}: must be in (0, 1000] frames per second")

    try:
        source = FrameSource(args.source, loop=args.loop,
                             size=tuple(args.size) if args.size else None)
    except ValueError as exc:
        print(f"sdcpc video_publisher: {exc}", file=sys.stderr)
        return 2
    camera = args.source.isdigit()
    rate = args.rate or (None if camera else source.fps or 30.0)

    note = use_default_profile()  # before rclpy.init: Fast DDS reads it then
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from sensor_msgs.msg import Image

    from sdcpc_ros.conversions import array_to_image
    from sdcpc_ros.spinning import handle_interrupts, ignore_interrupts

    handle_interrupts()  # before rclpy.init, whose handler chains to it
    rclpy.init()
    node = rclpy.create_node("video_publisher")
    node.get_logger().info(note)
    pub = node.create_publisher(Image, args.topic, image_qos(args.reliable))
    node.get_logger().info(f"publishing {args.source} on {pub.topic_name} at "
                           f"{f'{rate:g} Hz' if rate else 'the camera rate'}")
    sent = 0
    try:
        if args.wait_subscribers:
            node.get_logger().info(f"waiting for {args.wait_subscribers} subscriber(s)")
            while rclpy.ok() and pub.get_subscription_count() < args.wait_subscribers:
                time.sleep(0.05)
            time.sleep(0.5)  # the match is known here a moment before the other side has it
        start = time.monotonic()
        while rclpy.ok() and (not args.frames or sent < args.frames):
            frame = source.read()
            if frame is None:
                break
            msg = array_to_image(frame, "rgb8")
            msg.header.frame_id = args.frame_id
            msg.header.stamp = node.get_clock().now().to_msg()
            try:
                pub.publish(msg)
            except Exception:  # rclpy's RCLError, when a signal shut the context down meanwhile
                if rclpy.ok():
                    raise
                break
            sent += 1
            if rate:
                time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_interrupts()  # a second Ctrl-C must not kill the teardown
        source.close()
        node.destroy_node()
        rclpy.try_shutdown()
        ignore_interrupts()
    # after shutdown, not through the logger: a signal shuts the context down from rclpy's own
    # handler at any moment, and the logger's rosout publisher then fails with an error
    print(f"[video_publisher] published {sent} frames", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
