"""Helpers for the end-to-end tests: the node process and client (:mod:`sdcpc_ros.node_process`),
the class names of the tests' tiny checkpoint, and what the launch tests share (the `ros2` command,
images sent as a camera sends them, a video file, the environment tag that finds every process a
test started)."""

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from sdcpc_ros.conversions import array_to_image
from sdcpc_ros.node_process import (  # noqa: F401  (re-exported for the tests)
    REPO,
    WAIT_S,
    Client,
    domain_id_for,
    node_env,
    node_output,
    run_node,
    stop_node,
)

CLASS_NAMES = ("road", "person", "car", "sky", "building")

ROS2 = shutil.which("ros2", path=str(Path(sys.executable).parent)) or shutil.which("ros2")
TAG = "SDCPC_LAUNCH_TEST"  # in the environment of every process a launch test starts
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Small and quick to start: torch loads the embedded model in seconds; a graph backend would
# export it for this input size first.
PARAMS = "sdcpc:\n  ros__parameters:\n    backend: torch\n    input_size: [64, 96]\n"


def require_ros2_cli(module: str) -> None:
    """Skip the calling test module when ``module`` (a package of the ros2 command line) is not
    installed, unless SDCPC_REQUIRE_ROS2_CLI=1 (CI, when its wheels folder has them): then an error."""
    if importlib.util.find_spec(module) is not None:
        return
    if os.environ.get("SDCPC_REQUIRE_ROS2_CLI") == "1":
        raise ImportError(f"SDCPC_REQUIRE_ROS2_CLI=1 but {module} (the ros2 command line) is not "
                          "installed: bash scripts/setup.sh .venv --ros2-pip DIR")
    pytest.skip(f"{module} is not installed (the ros2 command line has no PyPI wheels): bash "
                "scripts/setup.sh .venv --ros2-pip DIR (docs/pip-route.md)", allow_module_level=True)


def tagged_processes(tag: str) -> list:
    """Every live process (but this one) whose environment has TAG=tag."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if (proc.pid != os.getpid() and proc.info["status"] != psutil.STATUS_ZOMBIE
                    and proc.environ().get(TAG) == tag):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def assert_no_process_left(tag: str) -> None:
    """Kill every process still carrying ``tag`` and fail, naming them, if there was any."""
    left = tagged_processes(tag)
    for proc in left:
        proc.kill()
    psutil.wait_procs(left, timeout=10)
    assert not left, "processes left after the launch shut down (killed now): " + "; ".join(
        f"{p.pid} {p.info['cmdline']}" for p in left)


def write_params(path: Path) -> str:
    path.write_text(PARAMS)
    return str(path)


def write_video(path: Path) -> str:
    """A short video file (MJPG in AVI, 128x96, 20 frames at 10 Hz; written here:
    /usr/share/doc/opencv-doc is not everywhere)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for k in range(20):
        frame = np.zeros((96, 128, 3), np.uint8)
        frame[:, : 6 * k + 8] = (40, 160, 40)
        writer.write(frame)
    writer.release()
    assert path.stat().st_size > 0
    return str(path)


def image(stamp_ns: int, frame_id: str = "test_camera") -> Image:
    rng = np.random.default_rng(stamp_ns % 1000)
    msg = array_to_image(rng.integers(0, 256, (72, 104, 3), dtype=np.uint8), "rgb8")
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def answered_images(client: Client, topic: str, count: int = 3,
                    alive=lambda: None) -> list[tuple[Image, Image]]:
    """Publish images on ``topic`` as a camera does (best effort) every 0.2 s until ``count`` of
    them came back as ~/labels; (image, labels) pairs, matched by stamp. ``alive`` is called at
    every turn and raises once what serves them has exited."""
    labels = []
    client.node.create_subscription(Image, "/sdcpc/labels", labels.append, RELIABLE)
    pub = client.node.create_publisher(Image, topic, qos_profile_sensor_data)
    sent, next_at = {}, 0.0

    def answered():
        nonlocal next_at
        alive()
        if time.monotonic() >= next_at:
            msg = image(time.time_ns())
            sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            pub.publish(msg)
            next_at = time.monotonic() + 0.2
        return len(labels) >= count

    client.wait_for(answered, f"{count} labels on /sdcpc/labels for images on {topic}", WAIT_S)
    return [(sent.get((m.header.stamp.sec, m.header.stamp.nanosec)), m) for m in labels]


def assert_labels_answer(pairs: list[tuple[Image, Image]]) -> None:
    """Each labels message carries the header (stamp and frame_id) and size of an image sent."""
    for sent, labels in pairs:
        assert sent is not None, "labels with a stamp that no published image had"
        assert labels.header.frame_id == sent.header.frame_id == "test_camera"
        assert (labels.height, labels.width, labels.encoding) == (sent.height, sent.width, "mono8")


def lifecycle_state(client: Client, alive=lambda: None) -> str:
    """The label of /sdcpc's current lifecycle state, from its get_state service."""
    from lifecycle_msgs.srv import GetState

    get_state = client.node.create_client(GetState, "/sdcpc/get_state")
    client.wait_for(lambda: alive() or get_state.service_is_ready(), "/sdcpc/get_state", WAIT_S)
    future = get_state.call_async(GetState.Request())
    client.wait_for(future.done, "an answer of /sdcpc/get_state", 10)
    client.node.destroy_client(get_state)
    return future.result().current_state.label


def wait_until_active(client: Client, alive=lambda: None) -> None:
    deadline = time.monotonic() + WAIT_S
    while (state := lifecycle_state(client, alive)) != "active" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert state == "active", f"/sdcpc is {state}, not active, {WAIT_S:.0f} s after the launch"
