"""StreamingSegmenter: streaming == clip mode, buffer bounds, reset rules, outputs, errors."""

import numpy as np
import pytest
import torch

from sdcpc_core.classes import LabelSet
from sdcpc_core.data.clips import reference_indices
from sdcpc_core.engine import FrameError, StreamingSegmenter, resolve_device
from sdcpc_core.models import SDCPCConfig, build_model

LABELS = LabelSet.from_names(["road", "building", "sky", "person", "car"])


def engine(offsets=(-3, -2, -1), temporal=True, **kw):
    cfg = SDCPCConfig(variant="b0", num_classes=5, embed_dim=32, reference_offsets=offsets, window=3,
                      selection_ratio=0.5, temporal=temporal)
    model = build_model(cfg)
    if temporal:
        torch.nn.init.normal_(model.temporal_proj.weight, std=0.2)  # make references matter
    kw.setdefault("input_size", (64, 64))
    return StreamingSegmenter(model, LABELS, device="cpu", **kw)


def frames(n, h=48, w=80, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_reference_indices_clamp_to_oldest_available():
    assert reference_indices(0, (-9, -6, -3)) == [0, 0, 0]
    assert reference_indices(5, (-9, -6, -3)) == [0, 0, 2]
    assert reference_indices(12, (-9, -6, -3), first=10) == [10, 10, 10]
    assert reference_indices(20, (-9, -6, -3)) == [11, 14, 17]


def test_streaming_equals_clip_mode():
    eng = engine(offsets=(-4, -2, -1))
    clip = frames(7)
    streamed = [eng.step(f, return_confidence=True, return_probabilities=True) for f in clip]
    clipped = eng.segment_clip(clip, return_probabilities=True)  # labels by the boundary-only path
    for s, c in zip(streamed, clipped):
        assert c.confidence is None
        torch.testing.assert_close(s.probabilities, c.probabilities, atol=1e-4, rtol=0)
        best = s.probabilities.max(0)
        np.testing.assert_allclose(s.confidence, best.values.numpy(), atol=1e-6)
        assert np.array_equal(s.labels, best.indices.numpy())
        assert np.array_equal(s.labels, c.labels)
        assert s.frames_aggregated == c.frames_aggregated
    assert [r.frames_aggregated for r in streamed] == [0, 1, 2, 3, 3, 3, 3]


def test_buffer_keeps_only_what_future_targets_need():
    eng = engine(offsets=(-9, -6, -3))
    for i, f in enumerate(frames(15, 40, 40)):
        eng.step(f)
        assert eng.buffer_length == min(i + 1, 9)


def test_references_change_the_output():
    a, b = engine(), engine()
    b.model.load_state_dict(a.model.state_dict())
    clip = frames(4)
    other = frames(4, seed=1)
    ra = [a.step(f, return_probabilities=True) for f in clip]
    rb = [b.step(f, return_probabilities=True) for f in other[:3] + clip[3:]]
    assert not torch.allclose(ra[3].probabilities, rb[3].probabilities)


def test_outputs_at_input_resolution_with_dynamic_mask():
    eng = engine()
    assert eng.step(frames(1, 37, 53)[0]).confidence is None  # only when asked for
    res = eng.step(frames(1, 37, 53)[0], return_confidence=True)
    assert res.labels.shape == (37, 53) and res.labels.dtype == np.uint8
    assert res.confidence.dtype == np.float32 and res.confidence.shape == (37, 53)
    assert ((res.confidence > 0.2 - 1e-6) & (res.confidence <= 1 + 1e-6)).all()  # max of 5 probs
    assert np.array_equal(res.dynamic_mask, np.isin(res.labels, [3, 4]))
    assert res.latency_ms > 0


def test_dynamic_classes_override():
    eng = engine(dynamic_classes=["sky"])
    assert eng.labels.dynamic == (2,)
    with pytest.raises(ValueError, match="unknown class names"):
        engine(dynamic_classes=["unicorn"])


@pytest.mark.parametrize("first, second, reason", [
    (dict(stamp=1.0), dict(stamp=0.5), "stamp went backwards"),
    (dict(stamp=1.0), dict(stamp=3.0), "exceeds max_time_gap"),
    (dict(stamp=1.0, frame_id="cam"), dict(stamp=1.1, frame_id="other"), "frame_id changed"),
])
def test_reset_rules(first, second, reason):
    eng = engine(max_time_gap=1.0)
    f = frames(1)[0]
    eng.step(f, **first)
    eng.step(f, stamp=first["stamp"] + 0.05, frame_id=first.get("frame_id"))
    res = eng.step(f, **second)
    assert reason in res.reset_reason
    assert res.frames_aggregated == 0 and eng.buffer_length == 1
    assert eng.step(f, stamp=second["stamp"] + 0.05, frame_id=second.get("frame_id")).reset_reason is None


def test_size_change_and_manual_reset():
    eng = engine()
    eng.step(frames(1, 40, 40)[0])
    res = eng.step(frames(1, 50, 40)[0])
    assert "size changed from 40x40 to 40x50" in res.reset_reason
    eng.reset("relocalised")
    assert eng.buffer_length == 0
    assert eng.step(frames(1, 50, 40)[0]).reset_reason == "relocalised"


def test_baseline_engine_ignores_references():
    eng = engine(temporal=False)
    assert eng.reference_offsets == ()
    r = [eng.step(f) for f in frames(3)]
    assert all(x.frames_aggregated == 0 for x in r) and eng.buffer_length == 0


def test_bf16_close_to_fp32():
    a = engine()
    b = StreamingSegmenter(a.model, LABELS, device="cpu", input_size=(64, 64), precision="bf16")
    clip = frames(3)
    pa = [a.step(f, return_probabilities=True).probabilities for f in clip]
    pb = [b.step(f, return_probabilities=True).probabilities for f in clip]
    assert max((x - y).abs().max().item() for x, y in zip(pa, pb)) < 0.1


def test_channels_last_gives_the_same_stream():
    a = engine()
    model = build_model(a.model.config).eval()
    model.load_state_dict(a.model.state_dict())
    b = StreamingSegmenter(model, LABELS, device="cpu", input_size=(64, 64), channels_last=True)
    for f in frames(4):
        ra, rb = a.step(f, return_probabilities=True), b.step(f, return_probabilities=True)
        torch.testing.assert_close(ra.probabilities, rb.probabilities, atol=1e-4, rtol=0)
        assert ra.frames_aggregated == rb.frames_aggregated


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 4), np.uint8)])
def test_bad_frames_raise_and_keep_state(bad):
    eng = engine()
    eng.step(frames(1)[0])
    with pytest.raises(FrameError, match=r"expected an \(H, W, 3\) uint8"):
        eng.step(bad)
    assert eng.buffer_length == 1 and eng.frames_seen == 1


@pytest.mark.parametrize("kw, message", [
    (dict(precision="fp8"), "precision"), (dict(input_size=(8, 8)), "input_size"),
    (dict(reference_offsets=(1,)), "negative offsets"), (dict(max_time_gap=0), "max_time_gap")])
def test_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        engine(**kw)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not one of|not supported"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
