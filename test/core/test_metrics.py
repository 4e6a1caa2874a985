"""Metrics against hand-computed tiny cases."""

import json
import math

import numpy as np
import pytest

from sdcpc_core.metrics import (
    LabelFlicker,
    SegmentationMetrics,
    VideoConsistency,
    VideoMetrics,
    nan_to_none,
)


def test_miou_hand_computed_with_ignore_and_absent_class():
    gt = np.array([[0, 0, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 2]], dtype=np.uint8)
    m = SegmentationMetrics(num_classes=3)
    m.update(pred, gt)
    r = m.compute()
    # class 0: tp 1, gt 2, pred 1 -> 1/2; class 1: tp 1, gt 1, pred 2 -> 1/2; class 2 absent from GT
    assert r["per_class_iou"][:2] == [0.5, 0.5]
    assert math.isnan(r["per_class_iou"][2])
    assert r["miou"] == 0.5
    assert r["pixel_acc"] == pytest.approx(2 / 3)


def test_miou_predicted_but_absent_class_lowers_others_only():
    gt = np.zeros((2, 2), np.int64)
    pred = np.array([[0, 0], [0, 2]])
    m = SegmentationMetrics(3)
    m.update(pred, gt)
    r = m.compute()
    assert r["miou"] == pytest.approx(0.75)  # only class 0 counts: 3 / 4


def test_miou_accumulates_one_matrix_not_mean_of_frames():
    m = SegmentationMetrics(2)
    m.update(np.array([[0, 0, 0, 0]], np.uint16), np.array([[0, 0, 0, 0]], np.uint16))
    m.update(np.array([[0]], np.uint16), np.array([[1]], np.uint16))
    r = m.compute()
    # class 0: tp 4, pred 5 -> 0.8; class 1: tp 0 -> 0
    assert r["per_class_iou"] == pytest.approx([0.8, 0.0])
    assert r["miou"] == pytest.approx(0.4)


def test_out_of_range_prediction_counts_as_wrong():
    m = SegmentationMetrics(2)
    m.update(np.array([[7, 1]]), np.array([[1, 1]]))
    assert m.compute()["per_class_iou"][1] == pytest.approx(0.5)


def test_float_labels_rejected():
    with pytest.raises(TypeError):
        SegmentationMetrics(2).update(np.zeros((2, 2)), np.zeros((2, 2), np.uint8))


def _feed(vc, preds, gts, name=None):
    vc.start_video(name)
    for p, g in zip(preds, gts):
        vc.update(np.asarray(p), np.asarray(g))
    vc.end_video()


def test_mvc_window_count_stops_one_early_and_short_videos_skipped():
    vc = VideoConsistency(2)
    z = [np.zeros((1, 2), np.uint8)] * 5
    _feed(vc, z, z)  # L=5, n=2: starts 0..2 -> 3 windows
    assert vc.num_windows == 3
    _feed(vc, z[:2], z[:2])  # L=2 <= n: skipped
    assert vc.num_windows == 3
    _feed(vc, z[:3], z[:3])  # L=3: one window
    assert vc.num_windows == 4
    assert vc.compute() == 1.0


def test_mvc_hand_computed_last_window_dropped():
    # n=2, L=4 -> windows start 0 and 1 only (window 2 is dropped although its score would be 0).
    gt = [[[0, 0, 1, 1]]] * 4
    pred = [[[0, 0, 1, 1]], [[0, 1, 1, 1]], [[0, 1, 1, 1]], [[1, 0, 0, 0]]]
    vc = VideoConsistency(2)
    _feed(vc, pred, gt)
    assert vc.num_windows == 2
    assert vc.compute() == pytest.approx((0.75 + 1.0) / 2)


def test_mvc_last_score_is_the_window_each_update_closed():
    gt = [[[0, 0, 1, 1]]] * 4
    pred = [[[0, 0, 1, 1]], [[0, 1, 1, 1]], [[0, 1, 1, 1]], [[1, 0, 0, 0]]]
    vc = VideoConsistency(2)
    closed = []
    for p, g in zip(pred, gt):
        vc.update(np.asarray(p), np.asarray(g))
        closed.append(vc.last_score)
    assert closed == [None, None, 0.75, 1.0]  # window 0 closes when frame 2 arrives


def test_mvc_region_uses_all_frames_of_window():
    # n=3, L=4 -> one window (start 0) over frames 0,1,2.
    gt = [[[0, 0, 1, 1]], [[0, 1, 1, 1]], [[0, 0, 1, 2]], [[5, 5, 5, 5]]]
    pred = [[[0, 0, 1, 1]], [[1, 0, 1, 1]], [[0, 0, 1, 1]], [[0, 0, 0, 0]]]
    vc = VideoConsistency(3)
    _feed(vc, pred, gt)
    # region: pixels 0 and 2; pred constant at pixel 2 only -> 1/2
    assert vc.compute() == pytest.approx(0.5)


def test_mvc_pooled_mean_differs_from_mean_of_video_means():
    vc = VideoConsistency(2)
    same = [[[0, 0]]] * 5
    # video A: L=5 -> 3 windows of score 1
    _feed(vc, same, same, "a")
    # video B: L=4 -> 2 windows; pred changes everywhere between frames 0 and 1 -> scores 0, 1
    _feed(vc, [[[0, 0]], [[1, 1]], [[1, 1]], [[1, 1]]], [[[0, 0]]] * 4, "b")
    assert vc.num_windows == 5
    assert vc.compute() == pytest.approx(4 / 5)
    assert np.mean(list(vc.per_video.values())) == pytest.approx((1 + 0.5) / 2)


def test_mvc_empty_region_window_is_left_out():
    vc = VideoConsistency(2)
    gt = [[[0, 1]], [[1, 0]], [[1, 0]], [[9, 9]]]  # window 0 has an empty region
    _feed(vc, [[[0, 0]]] * 4, gt)
    assert vc.num_empty == 1 and vc.num_windows == 1
    assert vc.compute() == 1.0


def test_mvc_nan_without_windows():
    assert math.isnan(VideoConsistency(8).compute())


def test_flicker():
    f = LabelFlicker()
    f.start_video()
    for p in ([[0, 0, 0, 0]], [[0, 1, 0, 0]], [[0, 1, 0, 0]]):
        f.update(np.array(p, np.uint8))
    f.end_video()
    f.start_video()  # a new video: no pair across the boundary
    for p in ([[3, 3, 3, 3]], [[3, 3, 3, 2]]):
        f.update(np.array(p, np.uint8))
    f.end_video()
    assert f.compute() == pytest.approx(2 / 12)


def test_video_metrics_bundle_is_json_ready():
    vm = VideoMetrics(num_classes=2, ns=(2, 3))
    gt = np.array([[0, 1]], np.uint8)
    vm.start_video("v")
    for p in ([[0, 1]], [[0, 1]], [[0, 0]], [[0, 0]]):
        vm.update(np.array(p, np.int64), gt)
    vm.update(np.array([[1, 1]]))  # no GT: flicker only
    vm.end_video()
    r = vm.compute()
    assert r["num_frames"] == 5 and r["num_videos"] == 1
    assert r["mvc_windows"] == {"2": 2, "3": 1}
    assert r["mvc2"] == pytest.approx(0.75)  # windows (0,1): 1; (1,2): 1/2
    assert r["mvc3"] == pytest.approx(0.5)
    assert r["flicker"] == pytest.approx(3 / 8)
    assert r["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    json.dumps(nan_to_none(r), allow_nan=False)
    assert nan_to_none({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}
