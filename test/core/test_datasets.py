"""VSPW / Cityscapes readers on tiny fake folders, and the clip transforms."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from sdcpc_core.data.cityscapes import CityscapesSequenceClips
from sdcpc_core.data.clips import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipAugment,
    EvalTransform,
    reference_indices,
)
from sdcpc_core.data.vspw import VSPW_LABELS, VSPWClips, shift_vspw_labels

H, W = 12, 16


def _brightness(item, k):
    """Mean 0..255 value of frame k of an item (undoes the normalisation)."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return float((item["frames"][k] * std + mean).mean())


def _write_rgb(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((H, W, 3), value, np.uint8))


def _write_palette_png(path, raw):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(raw.astype(np.uint8), mode="P")
    im.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    im.save(path)


@pytest.fixture
def vspw_root(tmp_path):
    for name, length in (("v1", 5), ("v2", 2)):
        for t in range(length):
            _write_rgb(tmp_path / "data" / name / "origin" / f"{t:08d}.jpg", 20 + 40 * t)
            raw = np.full((H, W), t + 1, np.uint8)
            raw[0, :4] = (0, 1, 124, 255)
            _write_palette_png(tmp_path / "data" / name / "mask" / f"{t:08d}.png", raw)
    (tmp_path / "train.txt").write_text("v1\nv2\n")
    return tmp_path


def test_reference_indices_clamp():
    assert reference_indices(4, (-9, -6, -3), 5) == [0, 0, 1]
    assert reference_indices(1, (-1, 2, 9), 5) == [0, 3, 4]


def test_vspw_label_shift():
    raw = np.array([0, 1, 2, 124, 255, 200], np.uint8)
    np.testing.assert_array_equal(shift_vspw_labels(raw), [255, 0, 1, 123, 255, 199])
    assert VSPW_LABELS.num_classes == 124
    assert VSPW_LABELS.names[0] == "wall" and VSPW_LABELS.names[123] == "train"


def test_vspw_clips(vspw_root):
    ds = VSPWClips(vspw_root, "train", reference_offsets=(-9, -6, -3))
    assert len(ds) == 7
    item = ds[4]  # v1, frame 4: references clamp to frames 0, 0, 1
    assert item["video"] == "v1" and item["index"] == 4
    assert item["frames"].shape == (4, 3, H, W) and item["frames"].dtype == torch.float32
    values = [_brightness(item, k) for k in range(4)]
    assert values == pytest.approx([20, 20, 60, 180], abs=3)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (H, W)
    # palette PNG read as indices, then shifted: raw 5 -> 4; row 0: raw 0,1,124,255
    assert int(item["label"][5, 5]) == 4
    assert item["label"][0, :4].tolist() == [255, 0, 123, 255]
    assert item["ref_labels"].shape == (3, H, W)
    assert [int(r[5, 5]) for r in item["ref_labels"]] == [0, 0, 1]
    second = ds[6]  # v2, frame 1
    assert second["video"] == "v2" and second["index"] == 1
    assert [_brightness(second, k) for k in range(4)] == pytest.approx([20, 20, 20, 60], abs=3)


def test_vspw_missing_split(tmp_path):
    with pytest.raises(FileNotFoundError):
        VSPWClips(tmp_path, "val")


def test_cityscapes_sequence(tmp_path):
    city, seq = "aachen", "000000"
    seq_dir = tmp_path / "leftImg8bit_sequence" / "train" / city
    for f in range(10, 22):
        _write_rgb(seq_dir / f"{city}_{seq}_{f:06d}_leftImg8bit.png", 10 * (f - 10))
    label = np.full((H, W), 7, np.uint8)
    label[0, 0] = 255
    path = tmp_path / "gtFine" / "train" / city / f"{city}_{seq}_000019_gtFine_labelTrainIds.png"
    path.parent.mkdir(parents=True)
    cv2.imwrite(str(path), label)
    ds = CityscapesSequenceClips(tmp_path, "train", reference_offsets=(-12, -6, -3, 5))
    assert len(ds) == 1
    assert ds.reference_frames(city, seq, 19) == [10, 13, 16, 21]  # 7 -> 10, 24 -> 21
    item = ds[0]
    assert item["video"] == "aachen_000000" and item["index"] == 19
    assert item["frames"].shape == (5, 3, H, W)
    assert [_brightness(item, k) for k in range(5)] == pytest.approx([0, 30, 60, 110, 90],
                                                                      abs=1)
    assert "ref_labels" not in item
    assert int(item["label"][3, 3]) == 7 and int(item["label"][0, 0]) == 255


def _clip(n=4):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (20, 30), dtype=np.uint8)
    return [frame.copy() for _ in range(n)], [label.copy() for _ in range(n)]


def test_augment_same_parameters_for_every_frame():
    frames, labels = _clip()
    aug = ClipAugment(crop_size=(16, 24), flip_prob=0.5)
    for seed in range(6):
        out_f, out_l = aug(frames, labels, rng=np.random.default_rng(seed))
        assert all(f.shape == (16, 24, 3) and f.dtype == np.uint8 for f in out_f)
        assert all(lb.shape == (16, 24) for lb in out_l)
        for f, lb in zip(out_f[1:], out_l[1:]):
            np.testing.assert_array_equal(f, out_f[0])
            np.testing.assert_array_equal(lb, out_l[0])
        assert set(np.unique(out_l[0])) <= set(range(5)) | {255}  # nearest: no new ids


def test_augment_flip_applies_to_frames_and_labels():
    frames, labels = _clip(2)
    aug = ClipAugment(crop_size=(20, 30), scale_range=(1.0, 1.0), flip_prob=1.0,
                      photometric=False)
    out_f, out_l = aug(frames, labels, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out_f[0], frames[0][:, ::-1])
    np.testing.assert_array_equal(out_l[1], labels[1][:, ::-1])


def test_augment_pads_labels_with_ignore_and_keeps_missing_labels():
    frames, labels = _clip(3)
    labels[0] = None  # a reference without labels
    aug = ClipAugment(crop_size=(40, 50), scale_range=(1.0, 1.0), flip_prob=0.0,
                      photometric=False)
    out_f, out_l = aug(frames, labels, rng=np.random.default_rng(0))
    assert out_l[0] is None
    assert out_f[1].shape == (40, 50, 3) and (out_f[1][20:] == 0).all()
    assert (out_l[2][20:] == 255).all() and (out_l[2][:, 30:] == 255).all()
    np.testing.assert_array_equal(out_l[2][:20, :30], labels[2])


def test_augment_is_reproducible_and_varies():
    frames, labels = _clip(1)
    aug = ClipAugment(crop_size=16)
    a = aug(frames, labels, rng=np.random.default_rng(3))[0][0]
    b = aug(frames, labels, rng=np.random.default_rng(3))[0][0]
    c = aug(frames, labels, rng=np.random.default_rng(4))[0][0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_eval_transform_resizes_frames_not_labels(vspw_root):
    ds = VSPWClips(vspw_root, "train", reference_offsets=(-1,), transform=EvalTransform(24))
    item = ds[1]
    assert item["frames"].shape == (2, 3, 24, 32)
    assert item["label"].shape == (H, W)
    ds.transform = EvalTransform((6, 8), resize_labels=True)
    item = ds[1]
    assert item["frames"].shape == (2, 3, 6, 8) and item["label"].shape == (6, 8)
    assert item["ref_labels"].shape == (1, 6, 8)
