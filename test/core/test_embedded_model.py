"""The shipped default models load by default and segment the synthetic world better than chance."""

import numpy as np

from sdcpc_core.checkpoints import BASELINE_CHECKPOINT, DEFAULT_CHECKPOINT, load_checkpoint
from sdcpc_core.data.synthetic import SYNTHETIC_LABELS, generate_video
from sdcpc_core.engine import StreamingSegmenter
from sdcpc_core.metrics import SegmentationMetrics


def test_default_checkpoint_is_sdcpc_and_small():
    model, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    assert meta["config"].temporal and meta["config"].variant == "b0"
    assert meta["labels"] == SYNTHETIC_LABELS
    assert meta["input_size"] == [144, 192]
    assert DEFAULT_CHECKPOINT.stat().st_size < 20e6 and BASELINE_CHECKPOINT.stat().st_size < 20e6
    _, base = load_checkpoint(BASELINE_CHECKPOINT)
    assert not base["config"].temporal and base["labels"] == SYNTHETIC_LABELS


def test_engine_defaults_to_embedded_model_and_segments_unseen_video():
    engine = StreamingSegmenter.from_checkpoint(None, device="cpu")
    assert engine.input_size == (144, 192) and engine.reference_offsets == (-3, -2, -1)
    frames, labels = generate_video(seed=777, length=6, height=144, width=192)
    metrics = SegmentationMetrics(SYNTHETIC_LABELS.num_classes)
    for frame, gt in zip(frames, labels):
        res = engine.step(frame)
        metrics.update(res.labels, gt)
    scores = metrics.compute()
    assert scores["pixel_acc"] > 0.75 and scores["miou"] > 0.4  # chance is ~0.11
    assert res.frames_aggregated == 3 and np.array_equal(res.dynamic_mask, np.isin(res.labels, [6, 7, 8]))
