"""Synthetic labelled video: determinism, shapes, motion, per-frame corruption, clip dataset."""

import numpy as np
import pytest
import torch

from sdcpc_core.data.synthetic import (
    SYNTHETIC_LABELS,
    SyntheticClips,
    SyntheticOptions,
    SyntheticVideo,
    generate_video,
    iter_video,
)


def test_label_set():
    names = SYNTHETIC_LABELS.names
    assert 8 <= len(names) <= 10
    assert {names[i] for i in SYNTHETIC_LABELS.dynamic} == {"person", "car", "bicycle"}
    assert len({tuple(c) for c in SYNTHETIC_LABELS.palette}) == len(names)


def test_shapes_dtypes_and_determinism():
    frames, labels = generate_video(seed=3, length=6, height=48, width=80)
    assert frames.shape == (6, 48, 80, 3) and frames.dtype == np.uint8
    assert labels.shape == (6, 48, 80) and labels.dtype == np.uint8
    assert labels.max() < SYNTHETIC_LABELS.num_classes
    again, again_labels = generate_video(seed=3, length=6, height=48, width=80)
    np.testing.assert_array_equal(frames, again)
    np.testing.assert_array_equal(labels, again_labels)
    other, _ = generate_video(seed=4, length=6, height=48, width=80)
    assert not np.array_equal(frames, other)


def test_random_access_matches_iteration():
    video = SyntheticVideo(seed=1, length=5, height=32, width=32)
    lazy = list(iter_video(1, 5, 32, 32))
    frame, label = video.render(3)
    np.testing.assert_array_equal(frame, lazy[3][0])
    np.testing.assert_array_equal(label, lazy[3][1])
    with pytest.raises(IndexError):
        video.render(5)


def test_unknown_option_rejected():
    with pytest.raises(TypeError):
        generate_video(0, 2, 16, 16, no_such_option=1)


def test_static_scene_frames_differ_but_labels_do_not():
    # No camera motion, no objects: labels are constant, yet every frame is corrupted differently.
    frames, labels = generate_video(0, 4, 64, 64, pan_speed=0.0, camera_shake=0.0,
                                    objects_per_view=0.0)
    assert all(np.array_equal(labels[0], lb) for lb in labels[1:])
    diff = np.abs(frames[1:].astype(int) - frames[:-1].astype(int)).mean()
    assert diff > 5


def test_camera_and_objects_move_slowly():
    _frames, labels = generate_video(2, 12, 128, 128, objects_per_view=6.0)
    changed = (labels[1:] != labels[:-1]).mean(axis=(1, 2))
    assert changed.max() > 0  # something moves ...
    assert changed.mean() < 0.15  # ... but little between consecutive frames
    dynamic = SYNTHETIC_LABELS.dynamic_mask(labels)
    assert dynamic.any()


def test_marker_blinks_with_probability():
    always = SyntheticVideo(5, 3, 96, 96, SyntheticOptions(marker_prob=1.0, objects_per_view=6))
    never = SyntheticVideo(5, 3, 96, 96, SyntheticOptions(marker_prob=0.0, objects_per_view=6))
    f_always, lab = always.render(1)
    f_never, lab2 = never.render(1)
    np.testing.assert_array_equal(lab, lab2)  # markers never change the labels
    dyn = SYNTHETIC_LABELS.dynamic_mask(lab)
    assert (f_always != f_never)[dyn].any()
    assert not (f_always != f_never)[~dyn].any()


def test_clip_dataset_item():
    ds = SyntheticClips(num_videos=2, length=5, height=32, width=48, reference_offsets=(-3, -1),
                        seed=7)
    assert len(ds) == 10
    item = ds[6]  # video 1, frame 1 -> references clamp to frames 0 and 0
    assert item["frames"].shape == (3, 3, 32, 48) and item["frames"].dtype == torch.float32
    assert item["label"].shape == (32, 48) and item["label"].dtype == torch.int64
    assert item["ref_labels"].shape == (2, 32, 48)
    assert item["video"] == "synthetic_00001" and item["index"] == 1
    torch.testing.assert_close(item["frames"][0], item["frames"][1])  # both clamp to frame 0
    video = ds.video(1)
    _, label1 = video.render(1)
    np.testing.assert_array_equal(item["label"].numpy(), label1)
    frame0, _ = video.render(0)
    mean = torch.tensor(ds.mean)[:, None, None]
    std = torch.tensor(ds.std)[:, None, None]
    back = item["frames"][0] * std + mean
    torch.testing.assert_close(back, torch.from_numpy(frame0).permute(2, 0, 1).float(),
                               atol=1e-3, rtol=0)
