"""sdcpc_ros.video_publisher: frame sources and refusals (the DDS side is in test_transport_dds)."""

import ast
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdcpc_ros.video_publisher import FrameSource, main

REPO = Path(__file__).resolve().parents[2]


def test_synthetic_frames_have_the_size_asked_for_and_change():
    source = FrameSource("synthetic:80x60")
    a, b = source.read(), source.read()
    assert a.shape == (60, 80, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b)


def test_a_video_file_is_read_as_rgb_resized_and_looped(tmp_path):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for value in (0, 250):  # a black frame, then a blue one (BGR in the file)
        writer.write(np.full((48, 64, 3), (value, 0, 0), np.uint8))
    writer.release()
    source = FrameSource(path, loop=True, size=(24, 32))
    assert source.fps == pytest.approx(10.0)
    frames = [source.read() for _ in range(3)]
    assert all(f.shape == (24, 32, 3) for f in frames)
    assert frames[1][..., 2].mean() > 200 and frames[1][..., 0].mean() < 30  # blue is channel 2
    assert frames[2][..., 2].mean() < 30  # looped back to the black frame
    source.close()
    once = FrameSource(path)
    assert once.read() is not None and once.read() is not None and once.read() is None


@pytest.mark.parametrize("source, match", [("synthetic:0x10", "must be in"),
                                           ("/no/such/video.avi", "cannot open")])
def test_bad_sources_are_refused_with_what_to_give(source, match):
    with pytest.raises(ValueError, match=match):
        FrameSource(source)


def test_the_tool_exits_2_on_a_bad_source_without_starting_ros(capsys):
    assert main(["/no/such/video.avi"]) == 2
    assert "camera index" in capsys.readouterr().err


def test_camera_launch_starts_both_drivers_with_the_profile_environment():
    tree = ast.parse((REPO / "launch" / "camera.launch.py").read_text())
    drivers = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
               and getattr(n.func, "id", None) == "Node"]
    assert len(drivers) == 2
    for call in drivers:
        env = {k.arg: ast.unparse(k.value) for k in call.keywords}.get("additional_env")
        assert env == "driver_env"
    assert "choose_profile()" in ast.unparse(tree)
