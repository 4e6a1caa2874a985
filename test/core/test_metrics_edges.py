"""Metrics (spec "Metrics"): the edges the main tests do not reach: empty inputs, ignored values,
video bookkeeping, errors. Written against the mutants that survived test_metrics.py
(scripts/mutation.sh metrics; docs/method.md)."""

import warnings

import numpy as np
import pytest

from sdcpc_core.metrics import LabelFlicker, SegmentationMetrics, VideoConsistency, VideoMetrics


def test_nothing_accumulated_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 or mean-of-empty on the way to NaN
        with np.errstate(all="raise"):
            seg = SegmentationMetrics(3).compute()
            assert np.isnan(seg["miou"]) and np.isnan(seg["pixel_acc"])
            assert all(np.isnan(v) for v in seg["per_class_iou"]) and len(seg["per_class_iou"]) == 3
            assert np.isnan(VideoConsistency(2).compute())
            assert np.isnan(LabelFlicker().compute())
            out = VideoMetrics(3, ns=(2,)).compute()
    assert out["num_videos"] == 0 and out["num_frames"] == 0 and out["mvc_windows"] == {"2": 0}


def test_one_pixel_and_ground_truth_outside_the_classes():
    seg = SegmentationMetrics(3)
    assert seg.ignore_index == 255 and seg.confusion.dtype == np.int64  # exact counts
    seg.update(np.array([[1, 0, 2]]), np.array([[1, 3, 255]], dtype=np.uint8))  # GT 3 = K and 255: ignored
    out = seg.compute()
    assert out["pixel_acc"] == 1.0 and out["miou"] == 1.0
    assert seg.confusion.sum() == 1
    seg.reset()
    assert seg.confusion.sum() == 0 and np.isnan(seg.compute()["miou"])


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="labels must be integers, got dtype float"):
        SegmentationMetrics(3).update(np.zeros((2, 2)), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match=r"prediction shape \(2, 2\) differs from ground truth \(2, 3\)"):
        SegmentationMetrics(3).update(np.zeros((2, 2), dtype=int), np.zeros((2, 3), dtype=int))
    with pytest.raises(ValueError, match="window length n must be >= 2, got 1"):
        VideoConsistency(1)


def test_consistency_ignore_index_excludes_the_window_start_ignore_pixels():
    # pixels: 0 consistent and stable; 1 GT ignore (255) throughout, prediction flips;
    # 2 GT changes (outside the region)
    gts = [np.array([[0, 255, 1]]), np.array([[0, 255, 2]]), np.array([[0, 255, 2]])]
    preds = [np.array([[0, 1, 1]]), np.array([[0, 2, 2]]), np.array([[0, 2, 2]])]
    plain, ignoring = VideoConsistency(2), VideoConsistency(2, ignore_index=255)
    for vc in (plain, ignoring):
        assert vc.last_score is None
        for p, g in zip(preds, gts):
            vc.update(p, g)
    assert plain.compute() == pytest.approx(0.5)  # the reference: pixel 1 counts, and flips
    assert ignoring.compute() == 1.0 and ignoring.last_score == 1.0


def test_consistency_video_bookkeeping():
    vc = VideoConsistency(2)
    same = np.zeros((1, 2), dtype=int)
    for _ in range(3):  # no start_video: the first video is named for its position
        vc.update(same, same)
    vc.end_video()
    for _ in range(3):  # again without start_video, after end_video
        vc.update(same, same)
    vc.start_video("named")
    for _ in range(3):
        vc.update(same, same)
    vc.start_video("next")  # starting a video closes the open one
    assert list(vc.per_video) == ["video_0", "video_1", "named"]
    empty = VideoConsistency(2)
    for g in range(4):  # GT changes every frame: every window's region is empty
        empty.update(np.zeros((1, 1), dtype=int), np.full((1, 1), g))
    assert empty.num_empty == 2 and empty.num_windows == 0 and np.isnan(empty.compute())


def test_flicker_from_a_fresh_or_restarted_counter():
    fl = LabelFlicker()
    fl.update(np.array([[0, 1]]))
    fl.update(np.array([[0, 2]]))
    assert fl.compute() == 0.5
    fl.start_video()
    fl.update(np.array([[5, 5]]))  # first frame of a new video: nothing to compare
    assert fl.compute() == 0.5
    fl.end_video()
    fl.update(np.array([[7, 7]]))  # after end_video too
    fl.update(np.array([[8, 9]]))
    assert fl.compute() == 3 / 4  # (1 + 2) changed of 2 + 2 compared


def test_video_metrics_counts_videos_and_frames():
    vm = VideoMetrics(3, ns=(2,))
    frame = np.zeros((2, 2), dtype=int)
    for _ in range(3):  # no start_video: one video opened implicitly, windows form
        vm.update(frame, frame)
    assert vm.compute()["num_videos"] == 1  # an open video counts
    vm.start_video("b")
    for _ in range(3):
        vm.update(frame, frame)
    vm.end_video()
    out = vm.compute()
    assert out["num_videos"] == 2 and out["num_frames"] == 6 and out["mvc_windows"] == {"2": 2}
    assert len(out["per_class_iou"]) == 3 and out["miou"] == 1.0
    assert list(vm.consistency[2].per_video) == ["video_0", "b"]
