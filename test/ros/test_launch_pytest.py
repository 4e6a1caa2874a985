"""The launch files, started by the ROS 2 launch system as `ros2 launch sdcpc_ros NAME` starts them.

launch_pytest runs each test's launch description: the launch file is found through the ament index
(share/sdcpc_ros/launch: colcon's install, or scripts/register_ament.sh for the pip route), the node
is the installed executable, and a client in this process talks to it over DDS on a ROS domain of
the test's own. After each test the launch is shut down as Ctrl-C does; the node must exit by itself
with 0, and no process the test started may be left (checked by an environment tag with psutil,
pass or fail; one left is killed and the test errors).

Needs the launch packages (launch, launch_ros, launch_pytest: no PyPI wheels; `bash scripts/setup.sh
.venv --ros2-pip DIR`, docs/pip-route.md). Without them the module skips, unless
SDCPC_REQUIRE_LAUNCH=1 (CI, when it has the wheels), which makes that an error.
"""

# ruff: noqa: E402, I001  (imports follow the skip; ruff takes ROS 'launch' for the launch/ folder)
import os
import time
import uuid

import cv2
import numpy as np
import psutil
import pytest

try:
    import launch_pytest
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription, RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch.substitutions import PathJoinSubstitution
    from launch_ros.substitutions import FindPackageShare
except ImportError as exc:
    if os.environ.get("SDCPC_REQUIRE_LAUNCH") == "1":
        raise ImportError(f"SDCPC_REQUIRE_LAUNCH=1 but the ROS 2 launch system is missing: {exc}; "
                          "bash scripts/setup.sh .venv --ros2-pip DIR") from exc
    pytest.skip(f"the ROS 2 launch system is not installed ({exc}); PyPI has no wheels of it: "
                "bash scripts/setup.sh .venv --ros2-pip DIR (docs/pip-route.md; set-up leaves "
                "launch_pytest out when DIR has no launch_testing wheel)", allow_module_level=True)

from ros_harness import WAIT_S, Client, domain_id_for
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image

from sdcpc_ros.conversions import array_to_image

TAG = "SDCPC_LAUNCH_TEST"  # in the environment of every process a test starts
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Small and quick to start: torch loads the embedded model in seconds; a graph backend would
# export it for this input size first.
PARAMS = "sdcpc:\n  ros__parameters:\n    backend: torch\n    input_size: [64, 96]\n"


@pytest.fixture(autouse=True)
def launch_environment(request, monkeypatch):
    """A ROS domain of the test's own; after the test (and the launch's shutdown), no process
    carrying this test's tag may be left: any that is, is killed and the test errors."""
    tag = uuid.uuid4().hex
    domain = domain_id_for(request.node.name)
    for name, value in {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", TAG: tag}.items():
        monkeypatch.setenv(name, value)
    yield domain
    left = tagged_processes(tag)
    for proc in left:
        proc.kill()
    psutil.wait_procs(left, timeout=10)
    assert not left, "processes left after the launch shut down (killed now): " + "; ".join(
        f"{p.pid} {p.info['cmdline']}" for p in left)


def tagged_processes(tag: str) -> list:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if (proc.pid != os.getpid() and proc.info["status"] != psutil.STATUS_ZOMBIE
                    and proc.environ().get(TAG) == tag):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    return str(path)


@pytest.fixture
def exits():
    """(process name, return code) of every process of the launch that ended."""
    return []


def installed(name: str, exits: list, **arguments) -> LaunchDescription:
    """``ros2 launch sdcpc_ros NAME key:=value ...``, with every process exit recorded."""
    source = PythonLaunchDescriptionSource(
        PathJoinSubstitution([FindPackageShare("sdcpc_ros"), "launch", name]))
    return LaunchDescription([
        RegisterEventHandler(OnProcessExit(
            on_exit=lambda event, _: exits.append((event.action.name, event.returncode)))),
        IncludeLaunchDescription(source, launch_arguments=arguments.items()),
        launch_pytest.actions.ReadyToTest(),
    ])


def assert_every_process_ended_cleanly(exits: list, expected: int) -> None:
    assert len(exits) == expected and all(code == 0 for _, code in exits), exits


def image(stamp_ns: int, frame_id: str = "test_camera") -> Image:
    rng = np.random.default_rng(stamp_ns % 1000)
    msg = array_to_image(rng.integers(0, 256, (72, 104, 3), dtype=np.uint8), "rgb8")
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def answered_images(client: Client, topic: str, count: int = 3) -> list[tuple[Image, Image]]:
    """Publish images on ``topic`` as a camera does (best effort) every 0.2 s until ``count`` of
    them came back as ~/labels; (image, labels) pairs, matched by stamp."""
    labels = []
    client.node.create_subscription(Image, "/sdcpc/labels", labels.append, RELIABLE)
    pub = client.node.create_publisher(Image, topic, qos_profile_sensor_data)
    sent, next_at = {}, 0.0

    def answered():
        nonlocal next_at
        if time.monotonic() >= next_at:
            msg = image(time.time_ns())
            sent[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            pub.publish(msg)
            next_at = time.monotonic() + 0.2
        return len(labels) >= count

    client.wait_for(answered, f"{count} labels on /sdcpc/labels for images on {topic}", WAIT_S)
    return [(sent.get((m.header.stamp.sec, m.header.stamp.nanosec)), m) for m in labels]


@launch_pytest.fixture
def node_launch(params_file, exits):
    return installed("sdcpc.launch.py", exits, image_topic="/test/image", device="cpu",
                     params_file=params_file)


@pytest.mark.launch(fixture=node_launch)
def test_node_answers_images_on_the_remapped_topic_with_their_header(launch_environment, exits):
    client = Client(launch_environment)
    try:
        pairs = answered_images(client, "/test/image")
    finally:
        client.close()
    for sent, labels in pairs:
        assert sent is not None, "labels with a stamp that no published image had"
        assert labels.header.frame_id == sent.header.frame_id == "test_camera"
        assert (labels.height, labels.width, labels.encoding) == (sent.height, sent.width, "mono8")
    yield
    assert_every_process_ended_cleanly(exits, expected=1)


@pytest.fixture
def video(tmp_path):
    """A short video file (MJPG in AVI, written here: /usr/share/doc/opencv-doc is not everywhere)."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
    for k in range(20):
        frame = np.zeros((96, 128, 3), np.uint8)
        frame[:, : 6 * k + 8] = (40, 160, 40)
        writer.write(frame)
    writer.release()
    assert path.stat().st_size > 0
    return str(path)


@launch_pytest.fixture
def camera_launch(params_file, exits, video):
    return installed("camera.launch.py", exits, driver="sdcpc_camera", source=video, device="cpu",
                     params_file=params_file)


@pytest.mark.launch(fixture=camera_launch)
def test_video_camera_and_node_come_up_together_and_labels_flow(launch_environment, exits):
    client = Client(launch_environment)
    labels = []
    client.node.create_subscription(Image, "/sdcpc/labels", labels.append, RELIABLE)
    try:
        client.wait_for(lambda: len(labels) >= 3, "3 labels of the video camera's frames", WAIT_S)
    finally:
        client.close()
    assert {m.header.frame_id for m in labels} == {"camera"}  # sdcpc-camera's frame_id
    assert {(m.height, m.width) for m in labels} == {(96, 128)}  # the video's size
    yield
    assert_every_process_ended_cleanly(exits, expected=2)


@launch_pytest.fixture
def lifecycle_launch(params_file, exits):
    return installed("sdcpc_lifecycle.launch.py", exits, image_topic="/test/image",
                     params_file=params_file)


def lifecycle_state(client: Client) -> str:
    from lifecycle_msgs.srv import GetState

    get_state = client.node.create_client(GetState, "/sdcpc/get_state")
    client.wait_for(get_state.service_is_ready, "/sdcpc/get_state", WAIT_S)
    future = get_state.call_async(GetState.Request())
    client.wait_for(future.done, "an answer of /sdcpc/get_state", 10)
    client.node.destroy_client(get_state)
    return future.result().current_state.label


@pytest.mark.launch(fixture=lifecycle_launch)
def test_lifecycle_launch_brings_the_managed_node_to_active(launch_environment, exits):
    client = Client(launch_environment)
    try:
        deadline = time.monotonic() + WAIT_S
        while (state := lifecycle_state(client)) != "active" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert state == "active"
        assert answered_images(client, "/test/image", count=2)  # active: it segments
    finally:
        client.close()
    yield
    assert_every_process_ended_cleanly(exits, expected=1)
