"""rosbag2 writing/reading through rosbags (no rclpy needed): converters, stamps, salvage."""

import cv2
import numpy as np
import pytest

from sdcpc_core import bags
from sdcpc_core.bags import BagError, BagReader
from sdcpc_core.data.synthetic import generate_video
from sdcpc_ros.conversions import labels_to_array

IMG, LBL = bags.DEFAULT_IMAGE_TOPIC, bags.DEFAULT_LABEL_TOPIC


def read_all(path, topics=(IMG, LBL)):
    with BagReader(path) as bag:
        out = {t: [] for t in topics}
        for m in bag.messages(topics):
            out[m.topic].append((m, bag.decode(m)))
        return bag, out


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_synthetic_round_trip_pixels_stamps_and_video_gap(tmp_path, storage):
    summary = bags.write_bag(tmp_path / "b", bags.synthetic_frames(2, 3, 24, 32, seed=5), fps=4,
                             storage=storage, frame_id="cam", start_stamp=100.0, video_gap=7.0,
                             progress=False)
    assert (summary.frames, summary.labelled, summary.videos) == (6, 6, ["synthetic_5", "synthetic_6"])
    bag, msgs = read_all(tmp_path / "b")
    assert bag.topics[IMG].count == 6 and bag.topics[LBL].count == 6
    frames = np.concatenate([generate_video(5, 3, 24, 32)[0], generate_video(6, 3, 24, 32)[0]])
    labels = np.concatenate([generate_video(5, 3, 24, 32)[1], generate_video(6, 3, 24, 32)[1]])
    from sdcpc_ros.conversions import image_to_array
    stamps = []
    for i, ((m, img), (_, lbl)) in enumerate(zip(msgs[IMG], msgs[LBL])):
        assert img.encoding == "rgb8" and lbl.encoding == "mono8"
        assert img.header.frame_id == lbl.header.frame_id == "cam"
        assert bags.stamp_to_ns(img.header.stamp) == bags.stamp_to_ns(lbl.header.stamp) == m.log_time
        np.testing.assert_array_equal(image_to_array(img), frames[i])
        np.testing.assert_array_equal(labels_to_array(lbl), labels[i])
        stamps.append(m.log_time)
    assert np.diff(stamps).tolist() == [250_000_000, 250_000_000, 7_000_000_000, 250_000_000, 250_000_000]
    assert stamps[0] == 100_000_000_000


def test_labels_to_array_handles_padding_mono16_and_refuses_colour():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4) * 300
    rows = np.zeros((3, 10), np.uint8)  # step 10 = 8 bytes of pixels + 2 padding
    rows[:, :8] = a.astype("<u2").view(np.uint8).reshape(3, 8)
    msg = bags.image_message(a, 1, "f")
    msg.step, msg.data = 10, rows.reshape(-1)
    np.testing.assert_array_equal(labels_to_array(msg), a)
    with pytest.raises(ValueError, match="rgb8"):
        labels_to_array(bags.image_message(np.zeros((2, 2, 3), np.uint8), 1, "f"))


def test_vspw_layout_is_shifted_and_videos_are_separate(tmp_path):
    for video in ("v1", "v2"):
        (tmp_path / "data" / video / "origin").mkdir(parents=True)
        (tmp_path / "data" / video / "mask").mkdir()
        for t in range(2):
            cv2.imwrite(str(tmp_path / "data" / video / "origin" / f"{t:05d}.jpg"),
                        np.full((8, 10, 3), 100, np.uint8))
            raw = np.array([[0, 1, 2, 255] * 2 + [3, 3]] * 8, np.uint8)
            cv2.imwrite(str(tmp_path / "data" / video / "mask" / f"{t:05d}.png"), raw)
    (tmp_path / "val.txt").write_text("v2\nv1\n")
    summary = bags.write_bag(tmp_path / "b", bags.vspw_frames(tmp_path), progress=False)
    assert summary.videos == ["v2", "v1"] and summary.labelled == 4
    _, msgs = read_all(tmp_path / "b")
    lbl = labels_to_array(msgs[LBL][0][1])
    assert lbl[0].tolist() == [255, 0, 1, 255] * 2 + [2, 2]


def test_cityscapes_sequences_runs_are_videos_and_labels_are_sparse(tmp_path):
    city = tmp_path / "leftImg8bit_sequence" / "val" / "ulm"
    gt = tmp_path / "gtFine" / "val" / "ulm"
    city.mkdir(parents=True)
    gt.mkdir(parents=True)
    for seq, frames in (("000000", range(17, 20)), ("000001", range(3, 5))):
        for f in frames:
            cv2.imwrite(str(city / f"ulm_{seq}_{f:06d}_leftImg8bit.png"), np.zeros((6, 8, 3), np.uint8))
    cv2.imwrite(str(gt / "ulm_000000_000019_gtFine_labelTrainIds.png"), np.full((6, 8), 7, np.uint8))
    summary = bags.write_bag(tmp_path / "b", bags.cityscapes_frames(tmp_path), fps=17, progress=False)
    assert summary.frames == 5 and summary.labelled == 1 and len(summary.videos) == 2
    _, msgs = read_all(tmp_path / "b")
    assert msgs[LBL][0][0].log_time == msgs[IMG][2][0].log_time  # the label belongs to frame 19
    assert (labels_to_array(msgs[LBL][0][1]) == 7).all()


def test_image_folder_with_labels_and_missing_topic_lists_topics(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    for t in range(3):
        cv2.imwrite(str(tmp_path / "img" / f"f{t}.png"), np.full((4, 5, 3), t, np.uint8))
    cv2.imwrite(str(tmp_path / "lbl" / "f1.png"), np.ones((4, 5), np.uint8))
    bags.write_bag(tmp_path / "b", bags.image_folder_frames(tmp_path / "img", tmp_path / "lbl"),
                   image_topic="/cam/rgb", label_topic="/cam/gt", progress=False)
    with BagReader(tmp_path / "b") as bag:
        assert bag.topics["/cam/gt"].count == 1
        with pytest.raises(BagError) as err:
            bag.require("/camera/image_raw")
    text = str(err.value)
    assert str(tmp_path / "b") in text and "/cam/rgb" in text and "/cam/gt" in text


def test_write_refuses_existing_output(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(BagError, match="exists"):
        bags.write_bag(tmp_path / "b", [], progress=False)


def test_truncated_mcap_is_salvaged_up_to_the_damage(tmp_path):
    bags.write_bag(tmp_path / "b", bags.synthetic_frames(1, 30, 96, 128), progress=False)
    mcap = tmp_path / "b" / "b.mcap"
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])
    bag, msgs = read_all(tmp_path / "b")
    assert "damaged" in bag.damage and str(tmp_path / "b") in bag.damage
    assert bag.topics[IMG].count == 30  # from metadata.yaml: what should have been there
    n = len(msgs[IMG])
    assert 5 < n < 30
    stamps = [bags.stamp_to_ns(m.header.stamp) for _, m in msgs[IMG]]
    assert stamps == sorted(stamps) and stamps[0] == int(bags.DEFAULT_START_STAMP * 1e9)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.mcap"
    path.write_bytes(b"not a bag at all" * 10)
    with pytest.raises(BagError, match="x.mcap"):
        BagReader(path).__enter__()
    with pytest.raises(BagError, match="does not exist"):
        BagReader(tmp_path / "missing").__enter__()


def test_labels_out_of_range_are_refused_not_narrowed(tmp_path):
    from sdcpc_ros.conversions import ImageConversionError

    with pytest.raises(ImageConversionError, match=r"\[-1, 70000\]"):
        bags.image_message(np.array([[70000, -1]]), 1, "f")
    assert bags.image_message(np.array([[65535, 0]]), 1, "f").encoding == "mono16"
    frames = [bags.SourceFrame("v", np.zeros((1, 2, 3), np.uint8), np.array([[70000, -1]]))]
    with pytest.raises(ImageConversionError):
        bags.write_bag(tmp_path / "b", frames, progress=False)
    assert not (tmp_path / "b").exists()


def test_failed_convert_leaves_no_stub_and_a_retry_works(tmp_path, capsys):
    from sdcpc_ros.evaluation import cli

    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    for t in range(3):
        cv2.imwrite(str(tmp_path / "img" / f"f{t}.png"), np.full((4, 5, 3), t, np.uint8))
    cv2.imwrite(str(tmp_path / "lbl" / "f1.png"), np.ones((3, 5), np.uint8))  # wrong size
    args = ["convert", "images", str(tmp_path / "img"), str(tmp_path / "b"), "--labels", str(tmp_path / "lbl")]
    assert cli.main(args) == 2
    assert "differ from the image" in capsys.readouterr().err and not (tmp_path / "b").exists()
    cv2.imwrite(str(tmp_path / "lbl" / "f1.png"), np.ones((4, 5), np.uint8))
    assert cli.main(args) == 0
    _, msgs = read_all(tmp_path / "b")
    assert len(msgs[IMG]) == 3 and len(msgs[LBL]) == 1


def test_ctrl_c_during_convert_keeps_a_readable_bag(tmp_path, capsys, monkeypatch):
    from sdcpc_ros.evaluation import cli

    def interrupted_after_four(*args, **kwargs):
        frames = bags.sources.synthetic_frames(*args, **kwargs)
        for _ in range(4):
            yield next(frames)
        raise KeyboardInterrupt

    monkeypatch.setattr(bags, "synthetic_frames", interrupted_after_four)
    code = cli.main(["convert", "synthetic", str(tmp_path / "b"), "--videos", "1", "--length", "10",
                     "--size", "16", "20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and err[0].startswith("sdcpc-eval convert: interrupted (Ctrl-C)")
    bag, msgs = read_all(tmp_path / "b")
    assert bag.topics[IMG].count == 4 and len(msgs[IMG]) == 4 and bag.damage is None


def test_convert_reports_a_truncated_video(tmp_path, capsys):
    from sdcpc_ros.evaluation import cli

    frames, _ = generate_video(2, 12, 24, 32)
    video = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    assert cli.main(["convert", "video", str(video), str(tmp_path / "b")]) == 0
    _, msgs = read_all(tmp_path / "b", (IMG,))
    n = len(msgs[IMG])
    assert 0 < n < 12
    assert f"ended after {n} of the 12 frames its container announces" in capsys.readouterr().err


def test_vspw_without_split_file_names_it(tmp_path):
    (tmp_path / "data" / "v1" / "origin").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="val.txt"):
        next(bags.vspw_frames(tmp_path))
