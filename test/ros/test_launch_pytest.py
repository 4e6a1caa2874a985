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
import uuid

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

from ros_harness import (RELIABLE, TAG, WAIT_S, Client, answered_images, assert_labels_answer,
                         assert_no_process_left, domain_id_for, wait_until_active, write_params,
                         write_video)
from sensor_msgs.msg import Image


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
    assert_no_process_left(tag)


@pytest.fixture
def params_file(tmp_path):
    return write_params(tmp_path / "params.yaml")


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
    assert_labels_answer(pairs)
    yield
    assert_every_process_ended_cleanly(exits, expected=1)


@pytest.fixture
def video(tmp_path):
    return write_video(tmp_path / "clip.avi")


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


@pytest.mark.launch(fixture=lifecycle_launch)
def test_lifecycle_launch_brings_the_managed_node_to_active(launch_environment, exits):
    client = Client(launch_environment)
    try:
        wait_until_active(client)
        assert answered_images(client, "/test/image", count=2)  # active: it segments
    finally:
        client.close()
    yield
    assert_every_process_ended_cleanly(exits, expected=1)
