"""launch_pytest tests of the launch files; they need a full ROS 2 install (launch, launch_ros)
with this package built by colcon (params_file defaults to the installed config/sdcpc.yaml)."""

# ruff: noqa: E402, I001  (imports follow the skip; ruff takes ROS 'launch' for the launch/ folder)
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip(
    "launch_pytest", reason="launch_pytest is not installed (no PyPI wheel); runs on a full ROS 2 install")

import launch_pytest
import launch_ros.actions
from launch import LaunchDescription
from launch.actions import IncludeLaunchDescription, SetLaunchConfiguration
from launch_pytest.tools import process as process_tools

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def load(name: str) -> LaunchDescription:
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.fixture
def sdcpc_launch():
    return load("sdcpc.launch.py")


@pytest.fixture
def sdcpc_node(sdcpc_launch):
    return next(e for e in sdcpc_launch.entities if isinstance(e, launch_ros.actions.Node))


@launch_pytest.fixture
def launch_description(sdcpc_launch):
    return LaunchDescription([
        SetLaunchConfiguration("image_topic", "/test/image"),  # wins over the argument's default
        SetLaunchConfiguration("device", "cpu"),
        *sdcpc_launch.entities,
        launch_pytest.actions.ReadyToTest(),
    ])


@pytest.mark.launch(fixture=launch_description)
def test_node_starts_on_the_remapped_topic(sdcpc_node, launch_context):
    assert process_tools.wait_for_output_sync(
        launch_context, sdcpc_node, lambda out: "segmenting /test/image" in out, timeout=120)


def test_camera_launch_has_both_drivers_and_includes_the_node_launch():
    entities = load("camera.launch.py").entities
    drivers = [e for e in entities if isinstance(e, launch_ros.actions.Node)]
    assert len(drivers) == 2 and all(d.condition is not None for d in drivers)
    assert any(isinstance(e, IncludeLaunchDescription) for e in entities)
