"""Continuity is the camera's (judged on every input frame, not on the frames a busy consumer
segments); run-time setting changes; broken weights and non-finite outputs never give labels."""

import numpy as np
import pytest
import torch

from sdcpc_core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from sdcpc_core.classes import LabelSet
from sdcpc_core.engine import NonFiniteOutputError, StreamingSegmenter
from sdcpc_core.models import SDCPCConfig, build_model
from sdcpc_core.settings import SettingError

LABELS = LabelSet.from_names(["road", "building", "sky", "person", "car"], dynamic_names=("person",))


def engine(**kw):
    torch.manual_seed(0)
    cfg = SDCPCConfig(variant="b0", num_classes=5, embed_dim=32, reference_offsets=(-2, -1),
                      window=3)
    kw.setdefault("input_size", (64, 64))
    return StreamingSegmenter(build_model(cfg), LABELS, device="cpu", max_time_gap=0.5, **kw)


def frame(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_a_continuous_30hz_stream_segmented_at_3hz_never_resets():
    eng = engine()
    results = []
    for t in range(90):  # 3 s of a 30 Hz camera; the consumer segments every 10th frame
        number = eng.observe(100.0 + t / 30)
        if t % 10 == 0:
            results.append(eng.step(frame(t), stamp=100.0 + t / 30, frame_id="cam",
                                    input_number=number))
    # the gaps between segmented frames (0.33 s) are below 0.5 s here; make them larger:
    eng2 = engine()
    results2 = []
    for t in range(120):
        number = eng2.observe(100.0 + t / 30)
        if t % 30 == 0:  # 1 s between segmented frames, twice max_time_gap
            results2.append(eng2.step(frame(t), stamp=100.0 + t / 30, frame_id="cam",
                                      input_number=number))
    for res in results + results2:
        assert res.reset_reason is None
    assert [r.frames_aggregated for r in results2] == [0, 1, 2, 2]
    assert [r.frames_since_reset for r in results2] == [0, 30, 60, 90]
    # how old the references are: the oldest aggregated one, by the images' stamps
    assert results2[0].reference_age_s is None
    assert results2[1].reference_age_s == pytest.approx(1.0)
    assert results2[3].reference_age_s == pytest.approx(2.0)


def test_without_observe_the_gap_between_segmented_frames_still_resets():
    eng = engine()
    eng.step(frame(0), stamp=10.0, frame_id="cam")
    res = eng.step(frame(1), stamp=11.0, frame_id="cam")
    assert res.reset_reason == "gap of 1.000 s exceeds max_time_gap 0.5 s"


@pytest.mark.parametrize("stamps, reason", [
    ((10.0, 10.03, 10.9, 10.93), "gap of 0.870 s exceeds max_time_gap 0.5 s"),
    ((10.0, 10.03, 9.0, 9.03), "stamp went backwards by 1.030 s"),
])
def test_a_break_in_the_input_stream_resets_at_the_next_segmented_frame(stamps, reason):
    eng = engine()
    numbers = [eng.observe(t) for t in stamps[:2]]
    eng.step(frame(0), stamp=stamps[0], input_number=numbers[0])
    numbers += [eng.observe(t) for t in stamps[2:]]  # the frame after the break is skipped
    res = eng.step(frame(3), stamp=stamps[3], input_number=numbers[3])
    assert res.reset_reason == reason and res.frames_aggregated == 0
    assert res.frames_since_reset == 1


def test_a_break_observed_while_an_earlier_frame_is_segmented_waits_for_a_later_frame():
    eng = engine()
    first = eng.observe(10.0)
    second = eng.observe(10.03)
    eng.observe(20.0)  # a jump arrives while frame `second` is still to be segmented
    eng.step(frame(0), stamp=10.0, input_number=first)
    assert eng.step(frame(1), stamp=10.03, input_number=second).reset_reason is None
    late = eng.observe(20.03)
    assert eng.step(frame(2), stamp=20.03, input_number=late).reset_reason.startswith("gap of 9.970")


def test_size_and_frame_id_changes_between_segmented_frames_reset():
    eng = engine()
    eng.step(frame(0), stamp=1.0, frame_id="cam", input_number=eng.observe(1.0))
    res = eng.step(frame(1), stamp=1.03, frame_id="other", input_number=eng.observe(1.03))
    assert res.reset_reason == "frame_id changed from 'cam' to 'other'"
    big = np.zeros((64, 80, 3), np.uint8)
    res = eng.step(big, stamp=1.06, frame_id="other", input_number=eng.observe(1.06))
    assert res.reset_reason == "frame size changed from 64x48 to 80x64"


def test_reset_service_then_the_stream_continues():
    eng = engine()
    eng.step(frame(0), stamp=1.0, input_number=eng.observe(1.0))
    eng.reset("service")
    res = eng.step(frame(1), stamp=1.03, input_number=eng.observe(1.03))
    assert res.reset_reason == "service" and res.frames_aggregated == 0


def test_runtime_updates_apply_and_read_only_settings_are_refused():
    eng = engine()
    eng.update(max_time_gap=2.0, dynamic_classes=["car"])
    assert eng.max_time_gap == 2.0 and eng.labels.dynamic == (4,)
    eng.update(dynamic_classes=None)  # unset: the checkpoint's dynamic classes again
    assert eng.labels.dynamic == (3,)
    for change, words in [({"precision": "bf16"}, "cannot change while streaming"),
                          ({"max_time_gap": -1.0}, "allowed range"),
                          ({"dynamic_classes": ["dragon"]}, "dragon")]:
        with pytest.raises(SettingError, match=words):
            eng.check_update(**change)
        with pytest.raises(SettingError):
            eng.update(**change)
    assert eng.precision == "fp32" and eng.max_time_gap == 2.0


def test_non_finite_output_is_an_error_and_changes_no_state():
    eng = engine()
    eng.step(frame(0), stamp=1.0)
    saved = {k: v.clone() for k, v in eng.model.decode_head.state_dict().items()}
    with torch.no_grad():
        next(eng.model.decode_head.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match="NaN/inf logits"):
        eng.step(frame(1), stamp=1.03)
    assert (eng.frames_seen, eng.buffer_length) == (1, 1)
    eng.model.decode_head.load_state_dict(saved)
    res = eng.step(frame(2), stamp=1.06)
    assert res.reset_reason is None and res.frames_aggregated == 1


def test_checkpoints_with_nan_or_inf_weights_are_refused_naming_the_tensors(tmp_path):
    cfg = SDCPCConfig(variant="b0", num_classes=5, embed_dim=32, reference_offsets=(-1,), window=3)
    model = build_model(cfg)
    with torch.no_grad():
        model.decode_head.linear_pred.weight[0, 0] = float("nan")
        model.backbone.block1[0].attn.q.bias[1] = float("inf")
    path = save_checkpoint(tmp_path / "nan.pt", model, cfg, LABELS)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "2 weight tensor(s) hold NaN or inf" in message
    assert "decode_head.linear_pred.weight" in message and "backbone.block1.0.attn.q.bias" in message

    from sdcpc_core.cli import main

    assert main(["info", str(path)]) == 2
