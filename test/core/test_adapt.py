"""sdcpc adapt: the interface, its bad inputs, the pieces of the method, and a short end-to-end run
with a tiny model (seconds)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sdcpc_core.adapt import method, pseudo
from sdcpc_core.adapt.method import Recipe
from sdcpc_core.adapt.sources import read_source
from sdcpc_core.checkpoints import load_checkpoint, save_tiny_checkpoint
from sdcpc_core.classes import LabelSet
from sdcpc_core.cli import main
from sdcpc_core.data.synthetic import generate_video
from sdcpc_core.frames import FrameSourceError

SIZE = ["--input-size", "64", "64", "--set", "threshold=0"]  # a random tiny teacher is never sure


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("teacher") / "teacher.pt", temporal=False)


def write_folder(folder, frames):
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    frames, _ = generate_video(seed=3, length=8, height=64, width=64)
    return write_folder(tmp_path_factory.mktemp("source") / "video", frames)


def run(args, capsys=None):
    code = main(["adapt", *map(str, args)])
    return code, (capsys.readouterr() if capsys else None)


# -- end to end -----------------------------------------------------------------------------------

def test_adapt_end_to_end_writes_an_sdcpc_checkpoint_with_provenance_and_a_report(teacher, source, tmp_path,
                                                                                  capsys):
    out = tmp_path / "adapted.pt"
    code, io = run([teacher, source, "-o", out, "--steps", "3", "--set", "batch_size=2",
                    "--reference-offsets", "-2", "-1", *SIZE], capsys)
    assert code == 0, io.err
    model, meta = load_checkpoint(out)
    assert meta["config"].temporal and meta["config"].reference_offsets == (-2, -1)
    t = meta["training"]
    assert t["method"] == "sdcpc adapt" and t["teacher"] == str(teacher) and t["steps"] == 3
    assert t["frames"] == 8 and t["sources"][0]["path"] == str(source) and t["minutes"] > 0
    assert 0 < t["pseudo_label_coverage"] <= 1 and len(t["history"]["loss"]) == 3
    assert meta["input_size"] == [64, 64]
    report = out.with_suffix(".md").read_text()
    assert "label flicker" in report and "teacher" in report and "coverage" in report
    assert out.with_name("adapted_loss.png").stat().st_size > 1000
    # the encoder never learns: it is the teacher's, bit for bit
    teacher_model, _ = load_checkpoint(teacher)
    assert method.same_encoder(model, teacher_model)
    assert not torch.equal(model.temporal_proj.weight, torch.zeros_like(model.temporal_proj.weight))
    # the engine takes it as it is
    from sdcpc_core.engine import StreamingSegmenter

    engine = StreamingSegmenter.from_checkpoint(out)
    assert engine.step(np.zeros((64, 64, 3), np.uint8)).labels.shape == (64, 64)


def test_resume_continues_to_the_budget_and_refuses_other_inputs(teacher, source, tmp_path, capsys):
    out = tmp_path / "a.pt"
    common = ["-o", out, "--set", "batch_size=2", "--no-report", *SIZE]
    assert run([teacher, source, *common, "--steps", "2"])[0] == 0
    code, io = run([teacher, source, *common, "--steps", "2"], capsys)
    assert code == 2 and "exists" in io.err and "--resume" in io.err
    assert run([teacher, source, *common, "--steps", "4", "--resume"])[0] == 0
    _, meta = load_checkpoint(out)
    assert meta["training"]["steps"] == 4 and meta["training"]["history"]["step"] == [1, 2, 3, 4]
    code, io = run([teacher, source, *common, "--steps", "6", "--resume", "--set", "threshold=0.5"], capsys)
    assert code == 2 and "another recipe" in io.err
    code, io = run([teacher, source, *common, "--steps", "4", "--resume"], capsys)
    assert code == 2 and "already trained its budget" in io.err


def test_ctrl_c_keeps_a_usable_checkpoint(teacher, source, tmp_path, monkeypatch, capsys):
    real, calls = method.compute_losses, []

    def interrupted_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(method, "compute_losses", interrupted_on_third)
    out = tmp_path / "c.pt"
    code, io = run([teacher, source, "-o", out, "--steps", "10", "--set", "batch_size=2", *SIZE], capsys)
    assert code == 130 and "after 2 steps" in io.err and "--resume" in io.err
    model, meta = load_checkpoint(out)
    assert meta["training"]["steps"] == 2 and meta["training"]["interrupted"] is True
    assert not out.with_suffix(".pt.tmp").exists()


# -- bad inputs: one line each, nothing written -------------------------------------------------------

def _refused(args, tmp_path, capsys, *words, while_caching=False):
    """Refused in one line, nothing written; ``while_caching``: found while decoding the frames
    (after the plan's lines), the cache begun is removed."""
    out = tmp_path / "never.pt"
    code, io = run([*args, "-o", out, "--steps", "1", *SIZE], capsys)
    assert code == 2, io.err
    line = io.err.strip()
    if while_caching:
        line = line.splitlines()[-1]
    assert line.startswith("error: ") and "\n" not in line, line
    for w in words:
        assert w in line, line
    assert not list(tmp_path.glob("never*")), "nothing may be written"
    return line


def test_empty_source_is_refused(teacher, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused([teacher, empty], tmp_path, capsys, str(empty), "no images")


def test_unreadable_source_is_refused(teacher, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    _refused([teacher, bad], tmp_path, capsys, str(bad))
    _refused([teacher, tmp_path / "missing.mp4"], tmp_path, capsys, "does not exist")


def test_mixed_frame_sizes_are_refused(teacher, tmp_path, capsys):
    frames, _ = generate_video(seed=1, length=6, height=64, width=64)
    folder = write_folder(tmp_path / "mixed", frames)
    cv2.imwrite(str(folder / "0003.png"), np.zeros((48, 64, 3), np.uint8))
    _refused([teacher, folder], tmp_path, capsys, "frame 3", "64x48", "64x64", while_caching=True)


def test_teacher_student_class_mismatch_is_refused(teacher, source, tmp_path, capsys):
    other = save_tiny_checkpoint(tmp_path / "other_student.pt", LabelSet.from_names(["a", "b", "c"]))
    line = _refused([teacher, source, "--student", other], tmp_path, capsys, "9 (road", "3 (a")
    assert "--student" in line


def test_source_too_short_for_the_reference_offsets_is_refused(teacher, tmp_path, capsys):
    frames, _ = generate_video(seed=1, length=3, height=64, width=64)
    folder = write_folder(tmp_path / "short", frames)
    _refused([teacher, folder], tmp_path, capsys, "3 frame(s)", "(-3, -2, -1)", "at least 4")


def test_bad_recipe_override_is_refused(teacher, source, tmp_path, capsys):
    _refused([teacher, source, "--set", "radius=two"], tmp_path, capsys, "radius", "int")
    _refused([teacher, source, "--set", "nonsense=1"], tmp_path, capsys, "KEY=VALUE")


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    text = capsys.readouterr().out
    for option in ("--minutes", "--steps", "--student", "--image-topic", "--resume", "--set", "SOURCE"):
        assert option in text


# -- the pieces ---------------------------------------------------------------------------------------

def test_cached_encoder_path_equals_the_models_encode():
    from sdcpc_core.models import SDCPCConfig, build_model

    model = build_model(SDCPCConfig(num_classes=5, embed_dim=16, decoder_dim=16, reference_offsets=(-1,),
                                    window=3)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        direct = model.encode(x)
        cached = method.encode_features(model, model.backbone(x))
    for a, b in zip(direct, cached):
        if isinstance(a, tuple):
            assert all(torch.equal(u, v) for u, v in zip(a, b))
        elif a is not None:
            assert torch.allclose(a, b)


def test_student_built_from_a_per_frame_teacher_computes_the_teacher(teacher):
    t_model, meta = load_checkpoint(teacher)
    config = method.student_config(meta["config"], (-2, -1), 16)
    student = method.student_from_teacher(t_model, config).eval()
    x = torch.randn(3, 3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(student(x)["logits"], t_model(x)["logits"], atol=1e-5)


def test_temporal_ensemble_with_flow_follows_a_moving_scene():
    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.standard_normal((8, 16)).astype(np.float32), (128, 64), interpolation=cv2.INTER_CUBIC)
    detail = cv2.GaussianBlur(rng.standard_normal((64, 128)).astype(np.float32), (0, 0), 1.0)
    gray = np.clip(128 + 50 * smooth + 25 * detail, 0, 255).astype(np.uint8)
    texture = np.repeat(gray[..., None], 3, axis=2)
    frames = np.stack([texture[:, 4 * t: 4 * t + 64] for t in range(9)])  # pans 4 px (one cell) a frame
    k = 3
    truth = np.digitize(smooth, np.quantile(smooth, [1 / 3, 2 / 3]))  # 3 classes, large regions
    cells = np.stack([cv2.resize(truth[:, 4 * t: 4 * t + 64].astype(np.uint8), (16, 16),
                                 interpolation=cv2.INTER_NEAREST) for t in range(9)])
    probs = torch.nn.functional.one_hot(torch.from_numpy(cells).long(), k).permute(0, 3, 1, 2).float()
    aligned = pseudo.temporal_ensemble(probs, frames, 2, align=True)
    plain = pseudo.temporal_ensemble(probs, frames, 2, align=False)
    inner = slice(2, 7), slice(None), slice(2, 14), slice(2, 14)  # away from the borders
    err_aligned = (aligned - probs)[inner].abs().mean()
    err_plain = (plain - probs)[inner].abs().mean()
    assert err_plain > 0.05 and err_aligned < 0.5 * err_plain
    assert torch.equal(pseudo.temporal_ensemble(probs, frames, 0, align=True), probs)


def test_recipe_overrides_are_typed():
    r = Recipe().with_overrides(["radius=5", "align=false", "threshold=0.5", "target=soft"])
    assert (r.radius, r.align, r.threshold, r.target) == (5, False, 0.5, "soft")
    with pytest.raises(ValueError, match="threshold"):
        Recipe().with_overrides(["threshold=1.5"])
    with pytest.raises(ValueError, match="disagree"):
        Recipe().with_overrides(["disagree=sometimes"])


def _write_bag(path, frames, encoding):
    """Frames as sensor_msgs/Image (rgb8, bgr8) on /cam/image, or as PNG CompressedImage
    (``encoding="png"``) on /cam/compressed, beside a String topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    msgtype = "sensor_msgs/msg/CompressedImage" if encoding == "png" else "sensor_msgs/msg/Image"
    topic = "/cam/compressed" if encoding == "png" else "/cam/image"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(topic, msgtype, typestore=store)
        writer.add_connection("/other", "std_msgs/msg/String", typestore=store)
        for i, f in enumerate(frames):
            header = types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=1 + i, nanosec=0), frame_id="cam")
            bgr = np.ascontiguousarray(f[..., ::-1])
            if encoding == "png":
                msg = types[msgtype](header=header, format="png",
                                     data=cv2.imencode(".png", bgr)[1].reshape(-1))
            else:
                data = np.ascontiguousarray(f) if encoding == "rgb8" else bgr
                msg = types[msgtype](header=header, height=f.shape[0], width=f.shape[1],
                                     encoding=encoding, is_bigendian=0, step=f.shape[1] * 3,
                                     data=data.reshape(-1))
            writer.write(conn, (1 + i) * 10**9, store.serialize_cdr(msg, msgtype))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_bag_source_reads_the_image_topic_in_order(tmp_path, encoding):
    frames, _ = generate_video(seed=2, length=5, height=32, width=48)
    bag = tmp_path / "bag"
    _write_bag(bag, frames, encoding)
    src = read_source(bag, (32, 48))
    assert np.array_equal(src.frames, frames)
    assert read_source(bag, (32, 48), image_topic="/cam/image", every=2).frames.shape[0] == 3
    with pytest.raises(FrameSourceError, match="no image topic '/nope'"):
        read_source(bag, (32, 48), image_topic="/nope")


def test_class_balanced_thresholds_keep_the_most_confident_share_of_a_rare_class():
    conf = torch.cat([torch.full((900,), 0.95), torch.linspace(0.3, 0.6, 100)])
    arg = torch.cat([torch.zeros(900, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    plain = pseudo.class_thresholds(conf, arg, 3, 0.7, 0.0)
    assert plain.tolist() == pytest.approx([0.7, 0.7, 0.7])
    balanced = pseudo.class_thresholds(conf, arg, 3, 0.7, 0.2)
    kept = conf >= balanced[arg]
    assert kept[:900].all() and 18 <= int(kept[900:].sum()) <= 22  # the top 20 % of class 1
    assert balanced[2] == pytest.approx(0.7)  # a class never predicted keeps the plain threshold


def _moving_person_probs():
    """3 classes on 1x8 pixels, 5 frames: background 0 everywhere, a 'person' (class 2) one pixel
    wide moving a pixel a frame; frame 2 also has a transient error (class 1) at pixel 7."""
    labels = torch.zeros(5, 1, 8, dtype=torch.long)
    for t in range(5):
        labels[t, 0, t + 1] = 2
    labels[2, 0, 7] = 1
    return torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 0.8 + 0.2 / 3


@pytest.mark.parametrize("disagree, person, transient", [
    ("ensemble", 0, 0),              # the average smears the person into the background, fixes the error
    ("centre", 2, 1),                # the frame's own label everywhere
    ("ignore", 255, 255),            # neither is taught
    ("dynamic", 2, 0),               # the person kept (a dynamic class), the static error fixed
])
def test_pseudo_labels_where_the_ensemble_disagrees_with_the_frame(disagree, person, transient):
    probs = _moving_person_probs()
    frames = np.zeros((5, 4, 32, 3), np.uint8)
    out = pseudo.make_pseudo_labels([probs], [frames], radius=2, align=False, threshold=0.0,
                                    disagree=disagree, dynamic=(2,))
    assert int(out.labels[2, 0, 3]) == person and int(out.labels[2, 0, 7]) == transient
    assert int(out.labels[2, 0, 0]) == 0  # agreeing pixels keep the (shared) label in every mode
    assert torch.equal(out.centre_probs.float(), probs.half().float())
    with pytest.raises(ValueError, match="disagree"):
        pseudo.make_pseudo_labels([probs], [frames], radius=2, align=False, threshold=0.0, disagree="x")


def test_class_weights_favour_rare_classes_and_keep_the_mean_loss_scale():
    labels = torch.tensor([0] * 90 + [1] * 10 + [255] * 50, dtype=torch.uint8)
    assert pseudo.class_weights(labels, 3, 0.0).tolist() == [1.0, 1.0, 1.0]
    w = pseudo.class_weights(labels, 3, 0.5)
    assert w[1] / w[0] == pytest.approx(3.0, rel=1e-4)  # (0.9 / 0.1) ** 0.5
    assert float(w[0] * 0.9 + w[1] * 0.1) == pytest.approx(1.0, rel=1e-5)
    assert w[2] == pytest.approx(w[1])  # unseen: the largest weight seen


def test_adapt_end_to_end_with_distillation_and_class_weights(teacher, source, tmp_path, capsys):
    out = tmp_path / "distil.pt"
    code, io = run([teacher, source, "-o", out, "--steps", "2", "--no-report", "--set", "batch_size=2",
                    "--set", "disagree=dynamic", "--set", "distil_weight=0.5", "--set", "class_weight=0.5",
                    "--reference-offsets", "-2", "-1", *SIZE], capsys)
    assert code == 0, io.err
    recipe = load_checkpoint(out)[1]["training"]["recipe"]
    assert (recipe["disagree"], recipe["distil_weight"], recipe["class_weight"]) == ("dynamic", 0.5, 0.5)


def test_adapt_under_torchrun_two_cpu_processes(teacher, source, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    out = tmp_path / "ddp.pt"
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "sdcpc_core.cli", "adapt", str(teacher),
                           str(source), "-o", str(out), "--steps", "3", "--no-report", "--threads", "1",
                           "--set", "batch_size=2", *SIZE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    _, meta = load_checkpoint(out)
    assert meta["training"]["world_size"] == 2 and meta["training"]["steps"] == 3


def test_a_truncated_bag_gives_its_frames_up_to_the_damage_with_a_note(tmp_path):
    """A recording whose recorder died (MCAP without footer) is read as far as it goes, as
    sdcpc-eval reads it, and the source says so."""
    frames, _ = generate_video(seed=3, length=30, height=32, width=48)
    bag = tmp_path / "bag"
    _write_bag(bag, frames, "rgb8")
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])
    src = read_source(bag, (32, 48))
    assert 5 < len(src) < 30
    assert np.array_equal(src.frames, frames[: len(src)])
    assert any("damaged" in note for note in src.notes)


def test_a_compressed_image_topic_is_decoded(tmp_path):
    frames, _ = generate_video(seed=4, length=3, height=32, width=48)
    _write_bag(tmp_path / "bag", frames, "png")
    assert np.array_equal(read_source(tmp_path / "bag", (32, 48)).frames, frames)


# -- bounded memory: compact records on disk, clips over the whole recording, resume, refusal ---------

def test_a_cached_record_does_not_grow_with_the_class_count_beyond_topk():
    from sdcpc_core.adapt import store

    shapes = [(32, 60, 80), (64, 30, 40), (160, 15, 20), (256, 8, 10)]
    sizes = {k: store.record_bytes(store.record_fields(shapes, 2, k, (60, 80), 4, True, False)) for k in (19, 150)}
    assert sizes[19] == sizes[150]  # 4 ids + 4 quantised probabilities a pixel, whatever K
    dense_fp16 = 150 * 60 * 80 * 2
    maps = 2 * sum(c * h * w * 2 for c, h, w in shapes)
    assert sizes[150] - maps < dense_fp16 / 5
    # top-k read back: the kept classes within a quantisation step, the rest spread evenly
    probs = torch.softmax(3 * torch.randn(2, 150, 6, 8), 1)
    ids, q = store.topk_encode(probs, 4)
    dense = store.topk_decode(ids, q, 150)
    kept = probs.topk(4, dim=1)
    assert torch.allclose(dense.gather(1, kept.indices), kept.values, atol=0.5 / 255 + 1e-6)
    assert torch.allclose(dense.sum(1), torch.ones(2, 6, 8), atol=4 / 255)
    clear = kept.values[:, 0] - kept.values[:, 1] > 1 / 255  # not a tie after quantisation
    assert torch.equal(dense.argmax(1)[clear], probs.argmax(1)[clear]) and clear.float().mean() > 0.5


def test_clips_are_spread_over_the_whole_recording_in_proportion_to_each_source():
    from sdcpc_core.adapt.plan import plan_segments

    segs = plan_segments([18000], max_frames=2000, segment=28, need=4)
    starts = np.array([s.start for s in segs])
    assert sum(s.length for s in segs) <= 2000 and len(segs) == 2000 // 28
    assert starts[0] < 18000 / len(segs) and starts[-1] + segs[-1].length > 18000 - 18000 / len(segs)
    gaps = np.diff(starts)
    assert gaps.min() > 0.9 * gaps.mean() and gaps.max() < 1.1 * gaps.mean()  # evenly, not the first N
    two = plan_segments([9000, 3000], max_frames=1200, segment=32, need=4)
    per_source = [sum(s.length for s in two if s.source == i) for i in (0, 1)]
    assert per_source[0] == pytest.approx(3 * per_source[1], rel=0.15)
    # a recording within the budget is used whole, cut into segments no longer than allowed
    whole = plan_segments([150, 150], max_frames=2000, segment=64, need=4)
    assert [s.length for s in whole if s.source == 0] == [50, 50, 50] and sum(s.length for s in whole) == 300


def _write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, frames.shape[2:0:-1])
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.mark.parametrize("kind", ["video", "bag", "folder"])
def test_only_the_planned_frames_are_decoded_in_segment_order(tmp_path, kind):
    from sdcpc_core.adapt.plan import Segment, count_frames, iter_segments

    frames, _ = generate_video(seed=5, length=20, height=32, width=48)
    if kind == "video":
        source = _write_video(tmp_path / "v.avi", frames)
        frames = np.stack(list(read_source(source, (32, 48)).frames))  # as decoded (lossy)
    elif kind == "bag":
        source = tmp_path / "bag"
        _write_bag(source, frames, "rgb8")
    else:
        source = write_folder(tmp_path / "f", frames)
    assert count_frames(source) == 20
    segments = [Segment(0, 1, 3), Segment(0, 7, 2)]  # with --every 2: raw frames 2, 4, 6 and 14, 16
    out = dict(iter_segments([str(source)], segments, (32, 48), 2))
    assert np.array_equal(out[0], frames[[2, 4, 6]]) and np.array_equal(out[1], frames[[14, 16]])
    assert list(dict(iter_segments([str(source)], segments, (32, 48), 2, skip={0}))) == [1]


def _two_sources(tmp_path):
    a, _ = generate_video(seed=6, length=8, height=64, width=64)
    b, _ = generate_video(seed=7, length=8, height=64, width=64)
    return write_folder(tmp_path / "a", a), write_folder(tmp_path / "b", b)


def test_an_interrupted_cache_is_resumed_without_redoing_finished_segments(teacher, tmp_path, monkeypatch,
                                                                          capsys):
    from sdcpc_core.adapt import cache, store

    a, b = _two_sources(tmp_path)
    real, calls = cache.segment_columns, []

    def interrupted_on_second(*args, **kwargs):
        calls.append(len(args[3]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "segment_columns", interrupted_on_second)
    out = tmp_path / "r.pt"
    common = [teacher, a, b, "-o", out, "--steps", "2", "--no-report", "--set", "batch_size=2", *SIZE]
    code, io = run(common, capsys)
    assert code == 130 and "while caching: 1 of 2 segments" in io.err and "--resume" in io.err
    folder = tmp_path / "r.adapt-cache"
    assert list(store.finished_segments(folder)) == [0] and not out.exists()
    first = store.segment_path(folder, 0).stat()
    calls.clear()
    code, io = run([*common, "--resume", "--keep-cache"], capsys)
    assert code == 0, io.err
    assert calls == [8], "only the unfinished segment is computed again"
    again = store.segment_path(folder, 0).stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert load_checkpoint(out)[1]["training"]["frames"] == 16


def test_the_cache_is_removed_after_a_finished_run_unless_kept(teacher, source, tmp_path):
    common = [teacher, source, "--steps", "1", "--no-report", "--set", "batch_size=2", *SIZE]
    assert run([*common, "-o", tmp_path / "gone.pt"])[0] == 0
    assert not (tmp_path / "gone.adapt-cache").exists()
    assert run([*common, "-o", tmp_path / "kept.pt", "--cache-dir", tmp_path / "c", "--keep-cache"])[0] == 0
    assert list((tmp_path / "c").glob("seg_*.bin"))


def test_a_run_that_would_not_fit_is_refused_up_front(teacher, source, tmp_path, capsys, monkeypatch):
    from sdcpc_core.adapt import budget

    line = _refused([teacher, source, "--memory-limit", "0.05"], tmp_path, capsys, "memory", "--input-size",
                    "but 0.05 GiB is available")
    assert "9 classes at 64x64" in line
    monkeypatch.setattr(budget, "free_disk", lambda folder: 2**20)
    _refused([teacher, source], tmp_path, capsys, "--max-frames", "--cache-dir", "free")


def test_the_memory_estimate_grows_with_size_and_classes_not_with_the_recording():
    from sdcpc_core.adapt import budget

    def est(size, k, frames):
        out_hw = (size[0] // 4, size[1] // 4)
        maps = 2 * 2 * (32 * out_hw[0] * out_hw[1] + 64 * out_hw[0] * out_hw[1] // 4
                        + 160 * out_hw[0] * out_hw[1] // 16 + 256 * out_hw[0] * out_hw[1] // 64)
        return budget.estimate(0, size, out_hw, k, maps, 1000, frames, 8, 3, 4)

    small = est((240, 320), 150, 1000)
    assert est((240, 320), 150, 100_000).memory == small.memory  # disk grows, memory does not
    assert est((240, 320), 150, 100_000).disk == 100 * small.disk
    assert est((480, 640), 150, 1000).memory > small.memory
    # more classes: shorter segments while caching (their probabilities are what a segment holds)
    assert est((240, 320), 150, 1000).segment < est((240, 320), 19, 1000).segment
