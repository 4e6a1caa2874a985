"""Everything under test/ros/ needs rclpy (the PyPI ROS 2 wheels: ``pip install -e .[ros]``)."""

import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable; install the 'ros' extra to run test/ros")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small SD-CPC checkpoint with its initial (random) weights with named classes (person and car are dynamic)."""
    from ros_harness import CLASS_NAMES

    from sdcpc_core.checkpoints import save_tiny_checkpoint
    from sdcpc_core.classes import LabelSet

    labels = LabelSet.from_names(CLASS_NAMES, dynamic_names=("person", "car"))
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", labels)
