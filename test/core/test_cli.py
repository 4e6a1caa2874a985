"""The `sdcpc` command line, in process: convert, info, palette, segment (folder and video), demo."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sdcpc_core.checkpoints import load_checkpoint, save_checkpoint
from sdcpc_core.classes import LabelSet
from sdcpc_core.cli import main
from sdcpc_core.data.synthetic import SYNTHETIC_LABELS, generate_video
from sdcpc_core.models import SDCPCConfig, build_model

PUBLISHED = json.load(open(Path(__file__).resolve().parents[1] / "data" / "segformer_state_dict_keys.json"))


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    cfg = SDCPCConfig(variant="b0", num_classes=9, embed_dim=16, reference_offsets=(-2, -1), window=3)
    return save_checkpoint(tmp_path / "tiny.pt", build_model(cfg), cfg, SYNTHETIC_LABELS, input_size=(64, 64))


@pytest.fixture()
def clip(tmp_path):
    frames, _ = generate_video(seed=1, length=4, height=48, width=64)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return folder, frames


def test_segment_folder_writes_one_png_per_frame(tmp_path, tiny_checkpoint, clip, capsys):
    folder, frames = clip
    out = tmp_path / "out"
    assert main(["segment", str(folder), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                 "--device", "cpu", "--style", "side"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4
    img = cv2.imread(str(pngs[0]))
    assert img.shape == (48, 128, 3)  # input | labels side by side, at input resolution
    assert "wrote 4 frames" in capsys.readouterr().out


def test_segment_video_to_mp4(tmp_path, tiny_checkpoint, clip):
    _, frames = clip
    video = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out.mp4"
    assert main(["segment", str(video), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                 "--style", "color", "--device", "cpu"]) == 0
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    cap.release()


def test_info_and_palette(tmp_path, tiny_checkpoint, capsys):
    assert main(["info", str(tiny_checkpoint)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == list(SYNTHETIC_LABELS.names) and info["config"]["embed_dim"] == 16
    assert set(info["dynamic_classes"]) == {"person", "car", "bicycle"}
    csv_path = tmp_path / "palette.csv"
    assert main(["palette", str(tiny_checkpoint), "-o", str(csv_path)]) == 0
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "id,name,red,green,blue,dynamic" and len(rows) == 10
    assert rows[7].startswith("6,person,") and rows[7].endswith(",1")


def test_convert_published_segformer_and_half(tmp_path, capsys):
    state = {k: (torch.rand(v) + 0.5 if k.endswith("running_var") else 0.02 * torch.randn(v)) if v
             else torch.tensor(0) for k, v in PUBLISHED["b0"].items()}
    src = tmp_path / "segformer.b0.city.pth"
    torch.save({"state_dict": state, "meta": {}}, src)
    out = tmp_path / "city.pt"
    assert main(["convert", str(src), "-o", str(out), "--half", "--input-size", "256", "512"]) == 0
    model, meta = load_checkpoint(out)
    assert meta["config"].num_classes == 19 and meta["config"].temporal
    assert meta["labels"].names[0] == "road" and meta["input_size"] == [256, 512]
    torch.testing.assert_close(model.decode_head.linear_pred.weight,
                               state["decode_head.linear_pred.weight"].half().float())


def test_convert_encoder_only_needs_class_count(tmp_path, capsys):
    state = {k[len("backbone."):]: torch.zeros(v) for k, v in PUBLISHED["b0"].items() if k.startswith("backbone.")}
    src = tmp_path / "mit_b0.pth"
    torch.save(state, src)
    assert main(["convert", str(src), "-o", str(tmp_path / "x.pt")]) == 2
    assert "num_classes" in capsys.readouterr().err
    names = tmp_path / "names.txt"
    names.write_text("floor\nwall\nperson\n")
    assert main(["convert", str(src), "-o", str(tmp_path / "x.pt"), "--class-names", str(names),
                 "--per-frame"]) == 0
    _, meta = load_checkpoint(tmp_path / "x.pt")
    assert meta["labels"] == LabelSet.from_names(["floor", "wall", "person"])
    assert not meta["config"].temporal


def test_errors_exit_nonzero_with_message(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--checkpoint", str(bad)]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not exist"):
        main(["segment", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o"),
              "--checkpoint", str(tiny_checkpoint)])


def test_demo_scores_against_ground_truth(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--frames", "3", "--checkpoint", str(tiny_checkpoint),
                 "--device", "cpu"]) == 0
    assert len(list(out.glob("*.png"))) == 3
    assert "mIoU" in capsys.readouterr().out
    strip = cv2.cvtColor(cv2.imread(str(out / "000000.png")), cv2.COLOR_BGR2RGB)
    assert strip.shape == (64, 192, 3)
    frames, gt = generate_video(seed=2024, length=3, height=64, width=64)  # the demo's default clip
    np.testing.assert_array_equal(strip[:, :64], frames[0])  # input | prediction | ground truth
    np.testing.assert_array_equal(strip[:, 128:], SYNTHETIC_LABELS.colorize(gt[0]))
    palette = {tuple(c) for c in SYNTHETIC_LABELS.colorize(np.arange(9)[None]).reshape(-1, 3)}
    assert {tuple(c) for c in strip[:, 64:128].reshape(-1, 3)} <= palette


def _write_avi(path, frames, fps=5):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, frames[0].shape[1::-1])
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_segment_mp4_takes_the_source_video_frame_rate(tmp_path, tiny_checkpoint, clip):
    video = _write_avi(tmp_path / "in.avi", clip[1], fps=7)
    for extra, expected in (([], 7.0), (["--fps", "12"], 12.0)):
        out = tmp_path / f"out{len(extra)}.mp4"
        assert main(["segment", str(video), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                     "--style", "color", "--device", "cpu", *extra]) == 0
        cap = cv2.VideoCapture(str(out))
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(expected)
        cap.release()


def test_segment_reports_a_truncated_video(tmp_path, tiny_checkpoint, capsys):
    frames, _ = generate_video(seed=2, length=12, height=48, width=64)
    video = _write_avi(tmp_path / "in.avi", frames)
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    assert main(["segment", str(video), "-o", str(tmp_path / "out"), "--checkpoint",
                 str(tiny_checkpoint), "--device", "cpu"]) == 0
    written = len(list((tmp_path / "out").glob("*.png")))
    assert 0 < written < 12
    err = capsys.readouterr().err
    assert f"ended after {written} of the 12 frames its container announces" in err


def test_ctrl_c_ends_segment_demo_and_convert_with_one_line(tmp_path, tiny_checkpoint, clip, capsys,
                                                            monkeypatch):
    from sdcpc_core import checkpoints
    from sdcpc_core.engine import StreamingSegmenter

    step = StreamingSegmenter.step
    calls = []

    def interrupted_third_frame(self, *args, **kwargs):
        calls.append(1)
        if len(calls) % 3 == 0:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(StreamingSegmenter, "step", interrupted_third_frame)
    out = tmp_path / "seg"
    assert main(["segment", str(clip[0]), "-o", str(out), "--checkpoint", str(tiny_checkpoint),
                 "--device", "cpu"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(list(out.glob("*.png"))) == 2  # what was written is kept
    assert err[-1] == f"sdcpc segment: interrupted (Ctrl-C) after 2 frames; they are in {out}"
    assert "Traceback" not in "\n".join(err)
    assert main(["demo", "-o", str(tmp_path / "demo"), "--frames", "5", "--checkpoint",
                 str(tiny_checkpoint), "--device", "cpu"]) == 130
    assert len(list((tmp_path / "demo").glob("*.png"))) == 2
    assert "sdcpc demo: interrupted (Ctrl-C) after 2 frames" in capsys.readouterr().err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "convert_checkpoint", interrupted)
    assert main(["convert", str(tiny_checkpoint), "-o", str(tmp_path / "c.pt")]) == 130
    assert capsys.readouterr().err.strip() == "sdcpc convert: interrupted (Ctrl-C)"


def test_ctrl_c_during_train_is_one_line(monkeypatch, capsys):
    import sdcpc_core.train

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sdcpc_core.train, "run_training", interrupted)
    assert main(["train", "synthetic_b0"]) == 130
    assert capsys.readouterr().err.strip() == "sdcpc train: interrupted (Ctrl-C)"
