"""Everything under test/ros/ needs rclpy (the PyPI ROS 2 wheels: ``pip install -e .[ros]``)."""

import pytest

pytest.importorskip("rclpy", reason="rclpy is not importable; install the 'ros' extra to run test/ros")
