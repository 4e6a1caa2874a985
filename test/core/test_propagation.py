"""Label propagation (sdcpc_core.propagation): labels carried along the measured motion, uncertain
motion lowers the confidence and follows the policy, bad input is refused with the sizes named."""

import numpy as np
import pytest

from sdcpc_core.data.synthetic import iter_video
from sdcpc_core.propagation import KeyFrame, LabelPropagator, grey_small


def textured_scene(h=120, w=160, seed=0):
    """A smooth random texture (flow needs texture) and labels: four blocks."""
    rng = np.random.default_rng(seed)
    import cv2

    noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    noise = cv2.normalize(noise, None, 0, 255, cv2.NORM_MINMAX)
    rgb = np.dstack([noise, np.roll(noise, 7, 1), np.roll(noise, 5, 0)]).astype(np.uint8)
    labels = np.zeros((h, w), np.uint8)
    labels[:, w // 2:] = 1
    labels[h // 2:, :] += 2
    return rgb, labels


def shifted(a, dx, dy):
    return np.roll(np.roll(a, dy, 0), dx, 1)


def interior(a, m=12):
    return a[m:-m, m:-m]


def test_labels_follow_a_translation_better_than_holding_them():
    rgb, labels = textured_scene()
    new_rgb, new_labels = shifted(rgb, 6, 3), shifted(labels, 6, 3)
    prop = LabelPropagator(uncertain="warp")
    out = prop.propagate(prop.key_frame(rgb, labels), new_rgb)
    carried = (interior(out.labels) == interior(new_labels)).mean()
    held = (interior(labels) == interior(new_labels)).mean()
    assert carried > 0.98 and held < 0.93, (carried, held)
    assert out.labels.dtype == labels.dtype and out.confidence.dtype == np.float32
    assert interior(out.confidence).mean() > 0.8 and out.elapsed_ms > 0


def test_the_same_image_keeps_the_labels_and_the_key_confidence():
    rgb, labels = textured_scene(seed=1)
    confidence = np.full(labels.shape, 0.6, np.float32)
    prop = LabelPropagator()
    out = prop.propagate(prop.key_frame(rgb, labels, confidence), rgb.copy())
    assert np.array_equal(out.labels, labels)
    assert out.uncertain_fraction < 0.01
    assert np.allclose(interior(out.confidence), 0.6, atol=0.05)


def test_a_brightness_change_is_not_taken_for_uncertain_motion():
    rgb, labels = textured_scene(seed=2)
    darker = (rgb * 0.7).astype(np.uint8)
    prop = LabelPropagator()
    out = prop.propagate(prop.key_frame(rgb, labels), darker)
    assert out.uncertain_fraction < 0.05
    assert (out.labels == labels).mean() > 0.99


@pytest.mark.parametrize("policy", ["warp", "hold", "ignore"])
def test_an_occluder_that_appears_is_uncertain_and_follows_the_policy(policy):
    rgb, labels = textured_scene(seed=3)
    new = rgb.copy()
    new[40:80, 20:60] = 255  # a flat white patch: nothing in the key frame looks like it
    prop = LabelPropagator(uncertain=policy, ignore_id=255)
    out = prop.propagate(prop.key_frame(rgb, labels), new)
    patch = (slice(48, 72), slice(28, 52))
    assert out.confidence[patch].mean() < 0.2 < out.confidence[100:, 100:].mean()
    assert 0.05 < out.uncertain_fraction < 0.25
    if policy == "hold":
        assert np.array_equal(out.labels[patch], labels[patch])
    elif policy == "ignore":
        assert (out.labels[patch] == 255).all()


def test_on_synthetic_video_propagation_beats_held_labels_three_frames_on():
    """The procedural world (moving objects, flicker, transient blotches): ground-truth labels of
    frame t carried to t+3 agree with t+3's ground truth more often than t's labels held."""
    frames = list(iter_video(1000, 21, 240, 320))
    prop = LabelPropagator()
    carried, held = [], []
    for t in range(0, 18, 3):
        (rgb0, gt0), (rgb3, gt3) = frames[t], frames[t + 3]
        out = prop.propagate(prop.key_frame(rgb0, gt0.astype(np.uint8)), rgb3)
        carried.append((out.labels == gt3).mean())
        held.append((gt0 == gt3).mean())
    assert np.mean(carried) > np.mean(held) + 0.01, (np.mean(carried), np.mean(held))  # 0.975, 0.954


@pytest.mark.parametrize("preset", ["fast", "medium"])
def test_a_motion_that_grows_frame_by_frame_is_followed_far_beyond_what_one_flow_finds(preset):
    """A scene panning 4 px right and 2 px down a frame, carried from one key frame to each of 12
    frames in turn: each flow starts from the last one to the same key (warm start), so the labels
    follow the 48 px the scene has moved; one flow from zero loses them (about 0.6 here)."""
    rgb, labels = textured_scene(240, 320, seed=3)
    prop = LabelPropagator(preset, uncertain="warp")
    key = prop.key_frame(rgb, labels)
    for k in range(1, 13):
        image, expected = shifted(rgb, 4 * k, 2 * k), shifted(labels, 4 * k, 2 * k)
        out = prop.propagate(key, image, confidence=False)
        margin = 12 + 4 * k  # away from the edges the roll wraps around
        assert (interior(out.labels, margin) == interior(expected, margin)).mean() > 0.99, k
    cold = LabelPropagator(preset, uncertain="warp").propagate(key, image, confidence=False)
    assert (interior(cold.labels, margin) == interior(expected, margin)).mean() < 0.9


def test_the_warm_start_is_only_taken_from_the_same_key_frame():
    """A new key frame starts from zero motion: the result is a fresh propagator's, exactly."""
    rgb, labels = textured_scene(240, 320, seed=3)
    prop = LabelPropagator()
    first = prop.key_frame(rgb, labels)
    for k in range(1, 6):
        prop.propagate(first, shifted(rgb, 4 * k, 2 * k))
    other_rgb, other_labels = textured_scene(240, 320, seed=4)
    second = prop.key_frame(other_rgb, other_labels)
    image = shifted(other_rgb, 5, 1)
    out = prop.propagate(second, image)
    fresh = LabelPropagator().propagate(LabelPropagator().key_frame(other_rgb, other_labels), image)
    assert np.array_equal(out.labels, fresh.labels) and np.array_equal(out.confidence, fresh.confidence)


def test_mismatched_sizes_and_bad_options_are_refused_with_what_is_wrong():
    rgb, labels = textured_scene()
    prop = LabelPropagator()
    key = prop.key_frame(rgb, labels)
    with pytest.raises(ValueError, match=r"frame \(60, 80\) and key frame \(120, 160\) differ"):
        prop.propagate(key, rgb[:60, :80])
    with pytest.raises(ValueError, match=r"labels \(60, 80\) and image \(120, 160\) differ"):
        KeyFrame.from_frame(rgb, labels[:60, :80])
    with pytest.raises(ValueError, match="uint8 RGB"):
        grey_small(rgb[..., 0])
    with pytest.raises(ValueError, match="preset 'slow' is not one of ultrafast, fast, medium"):
        LabelPropagator(preset="slow")
    with pytest.raises(ValueError, match="policy 'guess' is not one of warp, hold, ignore"):
        LabelPropagator(uncertain="guess")


def test_grey_small_downscales_keeps_aspect_and_never_enlarges():
    big = np.zeros((480, 640, 3), np.uint8)
    assert grey_small(big, 256).shape == (192, 256)
    assert grey_small(np.zeros((60, 80, 3), np.uint8), 256).shape == (60, 80)
