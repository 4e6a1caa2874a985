"""The three launch files, started by the real `ros2 launch` command line as a user types it.

Each test runs `ros2 launch sdcpc_ros NAME key:=value ...` as a subprocess on a ROS domain of its
own, talks to what it started from a client in this process, then stops it as Ctrl-C in a terminal
does: SIGINT to the launch's process group (its own session, so that SIGINT is neither ignored, as
a non-interactive shell's background jobs have it, nor sent to pytest). `ros2 launch` must then exit
0 with every process it started reported "finished cleanly", and no process carrying the test's
environment tag may be left (psutil; one that is left is killed and the test fails), pass or fail.

Needs only launch, launch_ros, ros2launch and ros2cli, not launch_testing or launch_pytest: CI's
wheels folder has no launch_testing, so there test_launch_pytest.py skips and these tests are what
executes the launch files. Skips without ros2launch, unless SDCPC_REQUIRE_ROS2_CLI=1 (CI, when its
folder has the ros2launch wheel), which makes that an error.
"""

import os
import re
import signal
import subprocess
import uuid

import pytest
from ros_harness import (
    RELIABLE,
    ROS2,
    TAG,
    WAIT_S,
    Client,
    answered_images,
    assert_labels_answer,
    assert_no_process_left,
    domain_id_for,
    node_env,
    node_output,
    require_ros2_cli,
    wait_until_active,
    write_params,
    write_video,
)

require_ros2_cli("ros2launch")

from sensor_msgs.msg import Image  # noqa: E402

STOP_S = 60.0  # after SIGINT: the node's own exit (torch's teardown: seconds) within launch's 20 s
# How a process the launch started must end on Ctrl-C: 0. A terminal's Ctrl-C reaches the nodes
# twice, from the terminal and forwarded by launch; the second one, arriving during the teardown,
# ended them with -2 (5 of 6 launches) until their mains ignored SIGINT once stopping
# (sdcpc_ros.spinning.ignore_interrupts).
CTRL_C_EXITS = (0,)
ENDED = re.compile(r"\[(?:INFO|ERROR)\] \[([\w.-]+)\]: process has (?:finished cleanly \[pid \d+\]"
                   r"|died \[pid \d+, exit code (-?\d+))")


class Launch:
    """A running `ros2 launch`, its own process group, its output in a log file."""

    def __init__(self, name: str, arguments: dict, domain: int, tag: str, log_path):
        assert ROS2, "no ros2 command beside this Python or on PATH (bash scripts/setup.sh .venv --ros2-pip DIR)"
        self.domain = domain
        self.log = open(log_path, "w+")  # noqa: SIM115  (closed by the fixture)
        # launch's and the nodes' log files go beside it, not to ~/.ros/log
        env = dict(node_env(domain), ROS_LOG_DIR=str(log_path.parent / "ros_log"), **{TAG: tag})
        self.proc = subprocess.Popen(
            [ROS2, "launch", "sdcpc_ros", name, *(f"{k}:={v}" for k, v in arguments.items())],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.proc.log = self.log

    def alive(self) -> None:
        """Raise, with the launch's output, once it has exited."""
        if self.proc.poll() is not None:
            raise AssertionError(f"ros2 launch exited ({self.proc.returncode}) before the test "
                                 f"was done:\n{node_output(self.proc)[-4000:]}")

    def ctrl_c(self) -> tuple[int, str]:
        """SIGINT to the process group, as Ctrl-C; (exit status, output). A launch still running
        STOP_S later is killed with its group, and that is an error."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"ros2 launch still running {STOP_S:.0f} s after SIGINT "
                                     f"(killed):\n{node_output(self.proc)[-4000:]}") from None
        return self.proc.returncode, node_output(self.proc)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:  # the group is gone already
            pass

    def assert_ctrl_c_ends_it(self, processes: int) -> None:
        """Ctrl-C: `ros2 launch` exits 0, and each of its ``processes`` ended as CTRL_C_EXITS allow
        (launch reports every exit: "process has finished cleanly", "process has died")."""
        code, output = self.ctrl_c()
        assert code == 0, f"ros2 launch exited {code} on Ctrl-C:\n{output[-4000:]}"
        ended = {name: int(status or 0) for name, status in ENDED.findall(output)}
        assert len(ended) == processes, f"{processes} processes should have ended: {ended}\n{output[-4000:]}"
        assert set(ended.values()) <= set(CTRL_C_EXITS), f"{ended}\n{output[-4000:]}"


@pytest.fixture
def ros2_launch(request, tmp_path):
    """Start ``ros2 launch sdcpc_ros NAME key:=value ...`` (at most once a test). Afterwards, pass
    or fail, it is stopped and no process carrying this test's tag may be left."""
    tag = uuid.uuid4().hex
    launched = []

    def start(name: str, **arguments) -> Launch:
        launched.append(Launch(name, arguments, domain_id_for(request.node.name), tag,
                               tmp_path / "launch.log"))
        return launched[-1]

    yield start
    try:
        for launch in launched:
            launch.ctrl_c()
            launch.log.close()
    finally:
        assert_no_process_left(tag)


@pytest.fixture
def params_file(tmp_path):
    return write_params(tmp_path / "params.yaml")


def test_sdcpc_launch_answers_camera_images_on_the_remapped_topic_with_their_header(
        ros2_launch, params_file):
    launch = ros2_launch("sdcpc.launch.py", image_topic="/cam", device="cpu",
                         params_file=params_file)
    client = Client(launch.domain)
    try:
        pairs = answered_images(client, "/cam", alive=launch.alive)
    finally:
        client.close()
    assert_labels_answer(pairs)
    launch.assert_ctrl_c_ends_it(processes=1)


def test_camera_launch_with_a_video_file_brings_up_camera_and_node_and_labels_flow(
        ros2_launch, params_file, tmp_path):
    launch = ros2_launch("camera.launch.py", driver="sdcpc_camera",
                         source=write_video(tmp_path / "clip.avi"), device="cpu",
                         params_file=params_file)
    client = Client(launch.domain)
    labels = []
    client.node.create_subscription(Image, "/sdcpc/labels", labels.append, RELIABLE)
    try:
        client.wait_for(lambda: launch.alive() or len(labels) >= 3,
                        "3 labels of the video camera's frames", WAIT_S)
    finally:
        client.close()
    assert {m.header.frame_id for m in labels} == {"camera"}  # sdcpc-camera's frame_id
    assert {(m.height, m.width) for m in labels} == {(96, 128)}  # the video's size
    launch.assert_ctrl_c_ends_it(processes=2)


def test_lifecycle_launch_brings_the_managed_node_to_active_and_it_segments(
        ros2_launch, params_file):
    launch = ros2_launch("sdcpc_lifecycle.launch.py", image_topic="/cam",
                         params_file=params_file)  # manager:=launch, autostart:=true: defaults
    client = Client(launch.domain)
    try:
        wait_until_active(client, alive=launch.alive)
        assert_labels_answer(answered_images(client, "/cam", count=2, alive=launch.alive))
    finally:
        client.close()
    launch.assert_ctrl_c_ends_it(processes=1)
