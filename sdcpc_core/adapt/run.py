"""``sdcpc adapt``: read the sources, pseudo-label them, train the student, write checkpoint + report."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from sdcpc_core.adapt import method
from sdcpc_core.adapt.method import Recipe
from sdcpc_core.adapt.pseudo import (
    class_weights,
    make_pseudo_labels,
    shared_encoder_probabilities,
    teacher_probabilities,
)
from sdcpc_core.adapt.report import plot_history, source_measures, write_report
from sdcpc_core.adapt.sources import first_frame_size, read_source
from sdcpc_core.checkpoints import CheckpointError, load_checkpoint, read_file, resolve_checkpoint, save_checkpoint
from sdcpc_core.frames import FrameSourceError

SAVE_EVERY_S = 120.0  # a checkpoint at least this often while training (a crash loses less)


class AdaptError(ValueError):
    """A bad input to ``sdcpc adapt``; one line naming what is wrong and what to do."""


class AdaptInterrupted(Exception):
    """Ctrl-C; the message says what was kept."""


@dataclass
class AdaptOptions:
    teacher: str
    sources: list[str]
    output: str
    minutes: float | None = 12.0
    steps: int | None = None
    student: str | None = None
    image_topic: str | None = None
    input_size: tuple[int, int] | None = None
    every: int = 1
    max_frames: int = 3000
    reference_offsets: tuple[int, ...] = (-3, -2, -1)
    embed_dim: int = 64
    recipe: Recipe = field(default_factory=Recipe)
    resume: bool = False
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    report: bool = True
    progress: bool = True


def _log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def _check_classes(teacher_meta: dict, student_meta: dict, teacher: str, student: str) -> None:
    t, s = teacher_meta["labels"], student_meta["labels"]
    if tuple(t.names) != tuple(s.names):
        shown = lambda names: f"{len(names)} ({', '.join(list(names)[:4])}{', …' if len(names) > 4 else ''})"  # noqa: E731
        raise AdaptError(f"the teacher {teacher} has classes {shown(t.names)} but the student {student} "
                         f"has {shown(s.names)}; give a student made for the teacher's classes, or no "
                         "--student (it is then built from the teacher)")


def _working_size(opts: AdaptOptions, teacher_meta: dict, student_meta: dict | None) -> tuple[int, int]:
    for size in (opts.input_size, (student_meta or {}).get("input_size"), teacher_meta.get("input_size")):
        if size:
            return int(size[0]), int(size[1])
    return first_frame_size(opts.sources[0], opts.image_topic)


def _previous_state(opts: AdaptOptions) -> dict | None:
    """The training state of OUT.pt for --resume (checked against this run's inputs)."""
    if not opts.resume:
        return None
    out = Path(opts.output)
    if not out.is_file():
        raise AdaptError(f"--resume: {out} does not exist; run without --resume to start")
    training = read_file(out).get("training", {})
    state = training.get("adapt_state")
    if training.get("method") != "sdcpc adapt" or not state:
        raise AdaptError(f"--resume: {out} was not written by sdcpc adapt (no adapt state); "
                         "choose another -o or drop --resume")
    mine = {"teacher": str(opts.teacher), "sources": [str(s) for s in opts.sources],
            "recipe": opts.recipe.to_dict()}
    for key, value in mine.items():
        if training.get(key if key != "sources" else "source_paths") != value:
            raise AdaptError(f"--resume: {out} was adapted with another {key} "
                             f"({training.get(key if key != 'sources' else 'source_paths')!r}); resume with "
                             "the same teacher, sources and recipe, or start a new output")
    return training


def run_adapt(opts: AdaptOptions, prepared: dict | None = None) -> dict:
    """Run one adaptation; returns the checkpoint's ``training`` metadata (with ``checkpoint``).

    ``prepared``: a dict kept by the caller between runs on the same teacher and sources (the
    benchmark's recipe search): the encoder cache and the pseudo-labels are reused from it.
    """
    from sdcpc_core.train.trainer import init_distributed

    if (opts.minutes is None) == (opts.steps is None):
        raise AdaptError("give exactly one budget: --minutes M or --steps N")
    if (opts.minutes is not None and not opts.minutes > 0) or (opts.steps is not None and opts.steps < 1):
        raise AdaptError("the budget must be positive (--minutes > 0 or --steps >= 1)")
    if opts.every < 1 or opts.max_frames < 1:
        raise AdaptError("--every and --max-frames must be >= 1")
    out = Path(opts.output)
    if out.suffix not in (".pt", ".pth"):
        raise AdaptError(f"output {out} must be a .pt file (the adapted checkpoint; the report goes beside it)")
    if out.exists() and not opts.resume:
        raise AdaptError(f"{out} exists; choose another -o, delete it, or continue it with --resume")
    if opts.threads is not None:
        if opts.threads < 1:
            raise AdaptError("--threads must be >= 1")
        torch.set_num_threads(opts.threads)
    rank, world, device = init_distributed(opts.device)
    is_main = rank == 0
    log = _log if is_main else (lambda msg: None)

    # -- models -----------------------------------------------------------------------------
    # a Hub id, a Hugging Face directory or a published .pth works too (converted once, cached)
    teacher, teacher_meta = load_checkpoint(resolve_checkpoint(opts.teacher))
    student_meta = None
    if opts.student:
        student, student_meta = load_checkpoint(resolve_checkpoint(opts.student))
        _check_classes(teacher_meta, student_meta, opts.teacher, opts.student)
        if not student_meta["config"].temporal:
            raise AdaptError(f"the student {opts.student} is a per-frame model; give an SD-CPC "
                             "checkpoint, or no --student (it is then built from the teacher)")
        config = student_meta["config"]
    else:
        config = method.student_config(teacher_meta["config"], opts.reference_offsets, opts.embed_dim)
        student = method.student_from_teacher(teacher, config)
    labels = teacher_meta["labels"]
    mean = tuple((student_meta or teacher_meta)["mean"])
    std = tuple((student_meta or teacher_meta)["std"])
    teacher_mean, teacher_std = tuple(teacher_meta["mean"]), tuple(teacher_meta["std"])
    previous = _previous_state(opts)

    # -- sources ----------------------------------------------------------------------------
    size = _working_size(opts, teacher_meta, student_meta)
    need = max(-o for o in config.reference_offsets) + 1
    share = max(1, opts.max_frames // len(opts.sources))
    sources = []
    for path in opts.sources:
        try:
            src = read_source(path, size, opts.image_topic, opts.every, share)
        except FrameSourceError as e:
            raise AdaptError(str(e)) from None
        if len(src) < need:
            raise AdaptError(f"source {path} has {len(src)} frame(s){' after --every' if opts.every > 1 else ''}; "
                             f"the student's references {config.reference_offsets} need at least {need} "
                             "consecutive frames")
        for note in src.notes:
            log(f"note: {path}: {note}")
        sources.append(src)
    videos = [s.frames for s in sources]
    total = sum(len(v) for v in videos)
    log(f"sdcpc adapt: {len(sources)} source(s), {total} frames at {size[0]}x{size[1]}; teacher "
        f"{opts.teacher} ({'SD-CPC' if teacher_meta['config'].temporal else 'per-frame'}), student "
        f"SD-CPC-{config.variant.upper()} references {config.reference_offsets}")

    # -- the frozen encoder's cache and the pseudo-labels ---------------------------------------
    r = opts.recipe
    key = (str(opts.teacher), str(opts.student), tuple(map(str, opts.sources)), size, opts.every,
           opts.max_frames, r.flip)
    t0 = time.perf_counter()
    if prepared is not None and prepared.get("views_key") == key:
        views, teacher_probs = prepared["views"], prepared["teacher_probs"]
    else:
        bar = tqdm(total=total, unit="frame", desc="encoder cache", disable=not (is_main and opts.progress),
                   dynamic_ncols=True)
        views = method.cache_features(student, videos, mean, std, r.flip, progress=bar.update)
        bar.close()
        starts = np.cumsum([0] + [len(v) for v in videos[:-1]]).tolist()
        if (not teacher_meta["config"].temporal and (teacher_mean, teacher_std) == (mean, std)
                and method.same_encoder(teacher, student)):
            teacher_probs = [shared_encoder_probabilities(teacher, views, s, len(v))
                             for s, v in zip(starts, videos)]
        else:
            bar = tqdm(total=total, unit="frame", desc="teacher", disable=not (is_main and opts.progress),
                       dynamic_ncols=True)
            teacher_probs = []
            for frames in videos:
                teacher_probs.append(teacher_probabilities(teacher, frames, teacher_mean, teacher_std, r.flip))
                bar.update(len(frames))
            bar.close()
        if prepared is not None:
            prepared.update(views_key=key, views=views, teacher_probs=teacher_probs)
    cache_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pkey = key + (r.radius, r.align, r.threshold, r.balance, r.disagree)
    if prepared is not None and prepared.get("pseudo_key") == pkey:
        pseudo = prepared["pseudo"]
    else:
        bar = tqdm(total=total, unit="frame", desc="pseudo-labels", disable=not (is_main and opts.progress),
                   dynamic_ncols=True)
        pseudo = make_pseudo_labels(teacher_probs, videos, radius=r.radius, align=r.align,
                                    threshold=r.threshold, balance=r.balance, disagree=r.disagree,
                                    dynamic=tuple(labels.dynamic), progress=bar.update)
        bar.close()
        if prepared is not None:
            prepared.update(pseudo_key=pkey, pseudo=pseudo)
    pseudo_s = time.perf_counter() - t0
    if pseudo.coverage < 0.05:
        log(f"warning: the teacher reaches probability {r.threshold} on only {100 * pseudo.coverage:.1f} % "
            "of the pixels: little to learn from; lower the threshold (--set threshold=0.5) or check "
            "that the teacher fits this camera")
    log(f"encoder cache and teacher: {method.cached_bytes(views) / 2**20:.0f} MiB in {cache_s:.0f} s; "
        f"pseudo-labels: {pseudo_s:.0f} s, coverage {100 * pseudo.coverage:.1f} % (threshold {r.threshold})")

    # -- training ---------------------------------------------------------------------------
    optimizer = method.build_optimizer(student, r)
    criterion = method.make_criterion(config, r)
    weight = (class_weights(pseudo.labels, config.num_classes, r.class_weight).to(device)
              if r.class_weight > 0 else None)
    history = {"step": [], "loss": [], "coverage": []}
    step, elapsed = 0, 0.0
    if previous is not None:
        student.load_state_dict({k: v.float() if v.is_floating_point() else v
                                 for k, v in read_file(out)["state_dict"].items()})
        st = previous["adapt_state"]
        optimizer.load_state_dict(st["optimizer"])
        if criterion is not None and "criterion" in st:
            criterion.load_state_dict(st["criterion"])
        step, elapsed = int(previous["steps"]), float(st["elapsed_s"])
        history = {k: list(v) for k, v in previous.get("history", history).items()}
        log(f"resumed {out} at step {step} ({elapsed / 60:.1f} min trained)")
    student.to(device)
    if criterion is not None:
        criterion.to(device)
    step_module = method.CachedStudent(student)
    if world > 1:
        step_module = torch.nn.parallel.DistributedDataParallel(step_module)
    starts = np.cumsum([0] + [len(v) for v in videos[:-1]]).tolist()
    sampler = method.BatchSampler(views, pseudo, starts, [len(v) for v in videos], config.reference_offsets,
                                  r, np.random.default_rng([opts.seed, rank, step]))
    budget_s = opts.minutes * 60 if opts.minutes is not None else None
    params = [p for p in student.parameters() if p.requires_grad]

    def progress_now() -> float:
        return clock.elapsed / budget_s if budget_s else step / opts.steps

    def training_meta(interrupted: bool) -> dict:
        meta = {
            "method": "sdcpc adapt", "note": "self-trained on teacher pseudo-labels (docs/adapt.md)",
            "output": str(out), "teacher": str(opts.teacher), "student_init": str(opts.student or "teacher"),
            "source_paths": [str(s) for s in opts.sources],
            "sources": [{"path": s.path, "frames": len(s), "size": list(s.original_size)} for s in sources],
            "frames": total, "input_size": list(size), "every": opts.every,
            "minutes": clock.elapsed / 60, "budget": {"minutes": opts.minutes, "steps": opts.steps},
            "steps": step, "recipe": r.to_dict(), "pseudo_label_coverage": pseudo.coverage,
            "pseudo_label_s": pseudo_s, "cache_s": cache_s, "world_size": world,
            "interrupted": interrupted, "history": history,
            "adapt_state": {"optimizer": optimizer.state_dict(), "elapsed_s": clock.elapsed}}
        if criterion is not None:
            meta["adapt_state"]["criterion"] = criterion.state_dict()
        return meta

    def save(interrupted: bool = False) -> dict:
        meta = training_meta(interrupted)
        if is_main:
            save_checkpoint(out, student, config, labels, mean, std, training=meta, input_size=size)
        return meta

    clock = method.Clock(elapsed)
    if progress_now() >= 1.0:
        raise AdaptError(f"{out} has already trained its budget ({step} steps, {elapsed / 60:.1f} min); "
                         "raise --minutes / --steps to train on")
    total_units = int(budget_s) if budget_s else opts.steps
    bar = tqdm(total=total_units, initial=min(total_units, int(elapsed) if budget_s else step),
               unit="s" if budget_s else "step", desc="adapt", disable=not (is_main and opts.progress),
               dynamic_ncols=True)
    last_save = time.perf_counter()
    interrupted = False
    try:
        while True:
            done = progress_now() >= 1.0
            if world > 1:  # every rank stops at the same step
                flag = torch.tensor([float(done)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                done = bool(flag.item())
            if done:
                break
            factor = method.lr_factor(progress_now(), step, r.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            batch = sampler.draw()
            batch = {"target": [m.to(device) for m in batch["target"]],
                     "references": [[m.to(device) for m in ref] for ref in batch["references"]],
                     **{k: batch[k].to(device) for k in ("labels", "probs", "centre_probs") if k in batch}}
            method.set_train_mode(student, r)
            losses = method.compute_losses(step_module, batch, r, criterion, weight)
            if not math.isfinite(float(losses["loss"].detach())):
                raise FloatingPointError(f"the loss is {float(losses['loss'])} at step {step}; nothing "
                                         f"of this step was kept (last checkpoint: {out})")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            losses = {k: v.detach() for k, v in losses.items()}
            method.clip_grad(params, r.grad_clip)
            optimizer.step()
            step += 1
            history["step"].append(step)
            history["loss"].append(round(float(losses["loss"]), 5))
            history["coverage"].append(round(float(losses["coverage"]), 4))
            bar.set_postfix(step=step, loss=f"{float(losses['loss']):.3f}",
                            cov=f"{float(losses['coverage']):.2f}", refresh=False)
            bar.update(min(total_units, int(clock.elapsed) if budget_s else step) - bar.n)  # redraws at most 10/s
            if time.perf_counter() - last_save > SAVE_EVERY_S:
                save()
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if step == 0 and previous is None:
        if interrupted:
            raise AdaptInterrupted("before the first step; nothing was written")
        raise AdaptError("no training step fitted in the budget; raise --minutes or use --steps")
    meta = save(interrupted)
    if is_main:
        log(f"wrote {out}: {step} steps in {clock.elapsed / 60:.1f} min"
            f"{' (interrupted: Ctrl-C; continue with --resume)' if interrupted else ''}")
    if is_main and opts.report and not interrupted:
        report_files(out, meta, teacher, student, labels, videos, teacher_mean, teacher_std, mean, std)
    if interrupted:
        raise AdaptInterrupted(f"after {step} steps; {out} holds them (continue with --resume)")
    meta["checkpoint"], meta["rank"] = str(out), rank
    return meta


def report_files(out: Path, meta: dict, teacher, student, labels, videos, teacher_mean, teacher_std,
                 mean, std) -> dict:
    """OUT.md + OUT_loss.png; returns the source measures."""
    student.eval()
    if tuple(teacher_mean) == tuple(mean) and tuple(teacher_std) == tuple(std):
        measures = source_measures(teacher, student, labels, videos, mean, std,
                                   max_frames=max(25, 200 // len(videos)))
    else:
        measures = None
    plot = plot_history(meta["history"], out.with_name(out.stem + "_loss.png"))
    report = write_report(out.with_suffix(".md"), meta, measures, plot)
    if measures:
        _log(f"on the source: label flicker teacher {100 * measures['teacher_flicker']:.1f} % -> student "
             f"{100 * measures['student_flicker']:.1f} %, agreement {100 * measures['agreement']:.1f} %; "
             f"report {report}")
    return measures or {}


__all__ = ["AdaptError", "AdaptInterrupted", "AdaptOptions", "CheckpointError", "run_adapt"]
