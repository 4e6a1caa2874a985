"""Offline evaluation: every image of the bag through the same :class:`StreamingSegmenter` the node
uses (no drops; stamps and frame_id feed its reset rules; a reset starts a new video for mVC),
scored against the label topic; report.json, report.md and plots in the output folder."""

from __future__ import annotations

from sdcpc_core import bags
from sdcpc_core.bags import BagError, BagReader
from sdcpc_core.engine import continuity_break
from sdcpc_ros.evaluation.pairing import Pair, paired_frames, where
from sdcpc_ros.evaluation.scoring import (
    DEFAULT_MAX_TIME_GAP,
    Evaluation,
    checkpoint_labels,
    open_bag,
    sample_targets,
)


def evaluate_offline(bag_path, out_dir, *, checkpoint=None, baseline=None, segmenter=None,
                     baseline_segmenter=None, image_topic=bags.DEFAULT_IMAGE_TOPIC,
                     label_topic=bags.DEFAULT_LABEL_TOPIC, explicit_label_topic=False,
                     input_size=None, device="cpu", precision="fp32", backend="torch",
                     max_time_gap=DEFAULT_MAX_TIME_GAP, predict_gt=False, samples=4,
                     progress=None) -> dict:
    """Replay the bag through the engine (or, ``predict_gt``, score the label topic against itself)
    and write the report to ``out_dir``; returns the report dict (``status`` complete, partial or
    interrupted; ``errors`` says why). ``progress``: a progress bar on stderr (None: on a TTY)."""
    from tqdm import tqdm

    from sdcpc_core.data.synthetic import SYNTHETIC_LABELS
    from sdcpc_core.engine import StreamingSegmenter
    from sdcpc_ros.evaluation.report import write_report

    kwargs = {"device": device, "precision": precision, "backend": backend, "input_size": input_size,
              "max_time_gap": max_time_gap}
    models: dict = {}
    if predict_gt:
        labelset = checkpoint_labels(checkpoint) if checkpoint else SYNTHETIC_LABELS
    else:
        models["sdcpc"] = segmenter or StreamingSegmenter.from_checkpoint(checkpoint, **kwargs)
        if baseline or baseline_segmenter:
            models["baseline"] = baseline_segmenter or StreamingSegmenter.from_checkpoint(baseline, **kwargs)
        labelset = models["sdcpc"].labels
    settings = {"checkpoint": str(checkpoint or "embedded default") if not predict_gt else None,
                "baseline": str(baseline) if baseline else None, "image_topic": image_topic,
                "label_topic": label_topic, "input_size": list(input_size) if input_size else None,
                "device": device, "max_time_gap": max_time_gap,
                # what ran (auto resolved; runtime_note says why)
                # (a segmenter passed in may be a wrapper without them: the values asked for)
                "precision": getattr(models.get("sdcpc"), "precision", precision),
                "backend": getattr(models.get("sdcpc"), "backend", backend),
                "predict_gt": predict_gt}
    ev = Evaluation(str(bag_path), "offline", labelset, ["ground_truth"] if predict_gt else list(models),
                    settings)
    with BagReader(bag_path) as bag:  # an unopenable bag or a missing topic: error, no report
        label_topic = open_bag(bag, image_topic, label_topic, explicit_label_topic, ev)
        ev.sample_targets = sample_targets(ev.total, samples)
        try:
            previous = None  # (stamp, frame_id, size) of the last frame scored
            for pair in tqdm(paired_frames(bag, image_topic, label_topic, ev.problems), total=ev.total,
                             unit="frame", desc="evaluating", disable=None if progress is None else not progress):
                if pair.error:
                    ev.skip(pair, "unreadable", pair.error)
                elif predict_gt:
                    previous = _score_ground_truth(ev, pair, previous, max_time_gap)
                else:
                    previous = _segment(ev, pair, previous, models, where(bag, image_topic, pair.index,
                                                                          pair.stamp))
        except BagError as exc:
            ev.errors.append(str(exc))
            ev.status = "partial"
        except KeyboardInterrupt:
            ev.errors.append(f"interrupted (Ctrl-C) after {len(ev.frames)} frames of {bag_path}")
            ev.status = "interrupted"
    report = ev.report()
    write_report(out_dir, report, labelset, ev.samples)
    return report


def _score_ground_truth(ev: Evaluation, pair: Pair, previous, max_time_gap: float):
    """``predict_gt``: the label scored against itself; videos split by the engine's reset rules."""
    if pair.labels is None:
        ev.skip(pair, "unlabelled", pair.label_error or "no label with this stamp")
        return previous
    current = (pair.stamp_s, pair.frame_id, pair.size)
    reason = continuity_break(previous, current, max_time_gap)
    if previous is None or reason:
        ev.start_video(pair.index, reason)
    ev.add(pair, {"ground_truth": pair.labels}, {})
    return current


def _segment(ev: Evaluation, pair: Pair, previous, models: dict, where_: str):
    """Every model segments the frame; an engine reset of SD-CPC starts a new video. A frame the
    engine refuses is unreadable; a model that raises (e.g. out of memory) fails this frame only."""
    from sdcpc_core.engine import FrameError

    preds, latencies = {}, {}
    try:
        for name, seg in models.items():
            res = seg.step(pair.image, stamp=pair.stamp_s, frame_id=pair.frame_id or None)
            preds[name], latencies[name] = res.labels, res.latency_ms
            if name == "sdcpc" and (previous is None or res.reset_reason):
                ev.start_video(pair.index, res.reset_reason)
    except FrameError as exc:
        ev.skip(pair, "unreadable", f"{where_}: {exc}")
        return previous
    except (RuntimeError, MemoryError) as exc:  # the model failed (e.g. out of memory)
        for seg in models.values():
            seg.reset(f"segmentation failed on the previous frame: {type(exc).__name__}")
        ev.skip(pair, "failed", f"{where_}: {type(exc).__name__}: {exc}")
        return previous
    ev.add(pair, preds, latencies)
    return (pair.stamp_s, pair.frame_id, pair.size)
