"""Building the on-disk cache, one segment at a time: decode, encode (both views), teacher,
pseudo-labels, compact records (``store.py``). Memory holds one segment, whatever the recording's
length; the time is linear in the frames cached (a progress bar with an ETA shows it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sdcpc_core.adapt import store
from sdcpc_core.adapt.plan import Segment, iter_segments
from sdcpc_core.adapt.pseudo import (
    make_pseudo_labels,
    normalise,
    shared_encoder_probabilities,
    teacher_probabilities,
)
from sdcpc_core.classes import IGNORE_INDEX

REPORT_FRAMES = 200  # frames kept for the report (teacher vs student flicker on the source)


@dataclass
class CacheJob:
    """What the cache is built from."""

    folder: Path
    sources: list[str]
    segments: list[Segment]
    size: tuple[int, int]
    every: int
    image_topic: str | None
    fields: list
    num_classes: int
    mean: tuple
    std: tuple
    teacher_mean: tuple
    teacher_std: tuple
    shared_encoder: bool  # the teacher's probabilities come from the cached maps (its encoder is the student's)
    dynamic: tuple[int, ...]
    report_segments: frozenset
    need: int  # frames a target's references take: a shorter segment (the source ended) is dropped


@torch.no_grad()
def encode_segment(student, frames: np.ndarray, mean, std, views: int, batch: int = 16) -> list[list[torch.Tensor]]:
    """The frozen encoder's 4 maps of a segment, fp16, per view (the second one mirrored)."""
    student.backbone.eval()
    out = [[[] for _ in range(4)] for _ in range(views)]
    for start in range(0, len(frames), batch):
        x = normalise(frames[start:start + batch], mean, std)
        for v in range(views):
            for level, m in zip(out[v], student.backbone(x.flip(-1) if v else x)):
                level.append(m.half())
    return [[torch.cat(level) for level in view] for view in out]


def segment_columns(job: CacheJob, student, teacher, frames: np.ndarray, recipe) -> tuple[dict, np.ndarray]:
    """One segment's record columns and its label histogram (K classes + ignored)."""
    views = 2 if recipe.flip else 1
    maps = encode_segment(student, frames, job.mean, job.std, views)
    if job.shared_encoder:
        probs = shared_encoder_probabilities(teacher, maps, 0, len(frames))
    else:
        probs = teacher_probabilities(teacher, frames, job.teacher_mean, job.teacher_std, recipe.flip)
    pseudo = make_pseudo_labels([probs], [frames], radius=recipe.radius, align=recipe.align,
                                threshold=recipe.threshold, balance=recipe.balance,
                                disagree=recipe.disagree, dynamic=job.dynamic)
    del probs
    columns = {f"v{v}m{level}": maps[v][level].numpy() for v in range(views) for level in range(4)}
    columns["labels"] = pseudo.labels.numpy()
    columns["teacher_labels"] = pseudo.teacher_labels.numpy()
    names = {f.name for f in job.fields}
    for which, probs in (("centre", pseudo.centre_probs), ("ensemble", pseudo.probs)):
        if f"{which}_ids" in names:
            k = next(f for f in job.fields if f.name == f"{which}_p").shape[0]
            ids, q = store.topk_encode(probs, k)
            columns[f"{which}_ids"], columns[f"{which}_p"] = ids.numpy(), q.numpy()
    labels = pseudo.labels.long().flatten()
    hist = torch.bincount(torch.where(labels == IGNORE_INDEX, job.num_classes, labels),
                          minlength=job.num_classes + 1)[: job.num_classes + 1]
    return columns, hist.numpy()


def build_cache(job: CacheJob, student, teacher, recipe, progress: bool = True, log=print) -> None:
    """Cache every segment not cached yet; a segment the source ends before is dropped (said)."""
    done = store.finished_segments(job.folder)
    todo = [i for i in range(len(job.segments)) if i not in done]
    if done:
        log(f"cache: {len(done)} of {len(job.segments)} segments already in {job.folder} (reused)")
    if not todo:
        return
    bar = tqdm(total=sum(job.segments[i].length for i in todo), unit="frame", desc="cache (encoder, "
               "teacher, pseudo-labels)", disable=not progress, dynamic_ncols=True)
    seen = set()
    try:
        for number, frames in iter_segments(job.sources, job.segments, job.size, job.every, job.image_topic,
                                            skip=frozenset(done)):
            seen.add(number)
            if len(frames) >= job.need:
                columns, hist = segment_columns(job, student, teacher, frames, recipe)
                if number in job.report_segments:
                    np.save(job.folder / f"report_{number:05d}.npy", frames[:report_clip(len(job.report_segments))])
                store.write_segment(job.folder, number, job.fields, columns, hist)
            bar.update(job.segments[number].length)
    finally:
        bar.close()
    missing = [i for i in todo if i not in seen or not store.segment_path(job.folder, i).is_file()]
    if missing:
        log(f"note: {len(missing)} planned segment(s) were not in the sources (a container announced "
            "more frames than it holds); trained on the rest")


def choose_report_segments(segments: list[Segment], frames: int = REPORT_FRAMES) -> frozenset:
    """Up to ``frames // 25`` segments spread over the recording, whose first frames (``report_clip``
    each, ``frames`` in all) the report measures."""
    if not segments:
        return frozenset()
    count = max(1, min(len(segments), frames // 25))
    return frozenset(np.linspace(0, len(segments) - 1, count).round().astype(int).tolist())


def report_clip(segments: int, frames: int = REPORT_FRAMES) -> int:
    """Frames the report takes from each of its ``segments``."""
    return max(25, frames // max(1, segments))
