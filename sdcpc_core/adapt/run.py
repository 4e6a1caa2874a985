"""``sdcpc adapt``: read the sources, pseudo-label them, train the student, write checkpoint + report."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from sdcpc_core.adapt import budget, method, store
from sdcpc_core.adapt.cache import CacheJob, build_cache, choose_report_segments
from sdcpc_core.adapt.method import Recipe
from sdcpc_core.adapt.plan import count_frames, plan_segments
from sdcpc_core.adapt.pseudo import class_weights_from_counts
from sdcpc_core.adapt.report import plot_history, source_measures, write_report
from sdcpc_core.adapt.sources import first_frame_size
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
    max_frames: int = 2000     # frames cached (disk, caching time), spread over the whole recording
    reference_offsets: tuple[int, ...] = (-3, -2, -1)
    embed_dim: int = 64
    recipe: Recipe = field(default_factory=Recipe)
    resume: bool = False
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    report: bool = True
    progress: bool = True
    cache_dir: str | None = None  # default: OUT.adapt-cache beside the checkpoint
    keep_cache: bool = False
    memory_limit: int | None = None  # bytes the run may take (default: the machine's available memory)


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


def cache_folder(opts: AdaptOptions) -> Path:
    out = Path(opts.output)
    return Path(opts.cache_dir) if opts.cache_dir else out.with_name(out.stem + ".adapt-cache")


def _previous_state(opts: AdaptOptions) -> dict | None:
    """The training state of OUT.pt for --resume (checked against this run's inputs)."""
    if not opts.resume:
        return None
    out = Path(opts.output)
    if not out.is_file():
        if (cache_folder(opts) / store.PLAN).is_file():
            return None  # interrupted while caching: the cache is reused, training starts
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


def _check_options(opts: AdaptOptions) -> Path:
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
    return out


def _load_models(opts: AdaptOptions) -> dict:
    """Teacher, student, the student's config, labels and normalisation."""
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
    mean = tuple((student_meta or teacher_meta)["mean"])
    std = tuple((student_meta or teacher_meta)["std"])
    teacher_mean, teacher_std = tuple(teacher_meta["mean"]), tuple(teacher_meta["std"])
    shared = (not teacher_meta["config"].temporal and (teacher_mean, teacher_std) == (mean, std)
              and method.same_encoder(teacher, student))
    return dict(teacher=teacher, teacher_meta=teacher_meta, student=student, student_meta=student_meta,
                config=config, labels=teacher_meta["labels"], mean=mean, std=std, teacher_mean=teacher_mean,
                teacher_std=teacher_std, shared=shared)


def _identity(path) -> list:
    """What makes a file's cache stale: its real path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


@torch.no_grad()
def _map_shapes(student, size) -> list[tuple[int, ...]]:
    student.backbone.eval()
    return [tuple(m.shape[1:]) for m in student.backbone(torch.zeros(1, 3, *size))]


def _plan(opts: AdaptOptions, m: dict, log) -> dict:
    """Count the sources, plan the segments, lay out the records, estimate memory and disk, and
    refuse (one line, nothing written) what will not fit."""
    config, r = m["config"], opts.recipe
    size = _working_size(opts, m["teacher_meta"], m["student_meta"])
    need = max(-o for o in config.reference_offsets) + 1
    try:
        counts = [count_frames(p, opts.image_topic) for p in opts.sources]
        recorded = [first_frame_size(p, opts.image_topic) for p in opts.sources]
    except FrameSourceError as e:
        raise AdaptError(str(e)) from None
    lengths = [-(-n // opts.every) for n in counts]
    for path, n in zip(opts.sources, lengths):
        if n < need:
            raise AdaptError(f"source {path} has {n} frame(s){' after --every' if opts.every > 1 else ''}; "
                             f"the student's references {config.reference_offsets} need at least {need} "
                             "consecutive frames")
    shapes = _map_shapes(m["student"], size)
    out_hw = shapes[0][1:]
    views = 2 if r.flip else 1
    fields = store.record_fields(shapes, views, config.num_classes, out_hw, r.topk, r.distil_weight > 0,
                                 r.target == "soft")
    maps_bytes = sum(f.nbytes for f in fields if f.name.startswith("v"))
    seg_len = budget.segment_length(size[0] * size[1] * 3, maps_bytes, config.num_classes,
                                    out_hw[0] * out_hw[1], need)
    segments = plan_segments(lengths, opts.max_frames, seg_len, need)
    frames = sum(s.length for s in segments)
    record = store.record_bytes(fields)
    est = budget.estimate(budget.current_rss(), size, out_hw, config.num_classes, maps_bytes,
                          record, frames, r.batch_size, len(config.reference_offsets), need)
    folder = cache_folder(opts)
    key = {"teacher": _identity(m["teacher_path"]), "student": opts.student and _identity(m["student_path"]),
           "sources": [_identity(p) for p in opts.sources], "image_topic": opts.image_topic, "size": list(size),
           "every": opts.every, "segments": [list(s.__dict__.values()) for s in segments],
           "fields": [[f.name, f.dtype, list(f.shape)] for f in fields],
           "pseudo": [r.radius, r.align, r.flip, r.threshold, r.balance, r.disagree, r.topk],
           "normalise": [m["mean"], m["std"], m["teacher_mean"], m["teacher_std"]]}
    key = json.loads(json.dumps(key))  # as the plan file holds it (lists, not tuples)
    cached = _cached_bytes(folder, key)
    limit = opts.memory_limit if opts.memory_limit is not None else budget.available_memory()
    line = budget.refusal(est, limit, budget.free_disk(folder.parent), cached, size, config.num_classes,
                          frames, folder)
    if line:
        raise AdaptError(line)
    total = sum(counts)
    log(f"sdcpc adapt: {len(opts.sources)} source(s), {total} frames recorded; {frames} frames at "
        f"{size[0]}x{size[1]} in {len(segments)} segment(s) "
        f"({'clips spread over the whole recording' if frames < sum(lengths) else 'every frame'}); "
        f"teacher {opts.teacher} ({'SD-CPC' if m['teacher_meta']['config'].temporal else 'per-frame'}, "
        f"{config.num_classes} classes), student SD-CPC-{config.variant.upper()} references {config.reference_offsets}")
    log(f"memory: about {budget.gib(est.memory)} (limit {budget.gib(limit)}); disk: {budget.gib(est.disk)} "
        f"of cache in {folder} ({budget.gib(cached)} there already; "
        f"{'kept' if opts.keep_cache else 'removed at the end, --keep-cache keeps it'})")
    return dict(size=size, need=need, counts=counts, recorded=recorded, segments=segments, fields=fields,
                folder=folder, key=key, views=views, estimate=est)


def _cached_bytes(folder: Path, key: dict) -> int:
    """Bytes of finished segments of a cache for this very key (0 for none or another key)."""
    try:
        if json.loads((folder / store.PLAN).read_text()).get("key") != key:
            return 0
    except (OSError, ValueError):
        return 0
    return sum(store.segment_path(folder, n).stat().st_size for n in store.finished_segments(folder))


def _prepare_cache(opts: AdaptOptions, m: dict, plan: dict, rank: int, world: int, log) -> store.FrameStore:
    """Build (rank 0) or reuse the cache; the FrameStore on it."""
    folder = plan["folder"]
    if rank == 0:
        store.open_plan(folder, plan["key"])
        job = CacheJob(folder, list(map(str, opts.sources)), plan["segments"], plan["size"], opts.every,
                       opts.image_topic, plan["fields"], m["config"].num_classes, m["mean"], m["std"],
                       m["teacher_mean"], m["teacher_std"], m["shared"], tuple(m["labels"].dynamic),
                       choose_report_segments(plan["segments"]), plan["need"])
        try:
            build_cache(job, m["student"], m["teacher"], opts.recipe, opts.progress, log)
        except FrameSourceError as e:  # found while decoding (mixed sizes, a damaged file): a bad input
            store.clear(folder)
            raise AdaptError(str(e)) from None
        except KeyboardInterrupt:
            done = len(store.finished_segments(folder))
            raise AdaptInterrupted(f"while caching: {done} of {len(plan['segments'])} segments are cached in "
                                   f"{folder}; run the same command with --resume to continue from there") from None
    if world > 1:
        dist.barrier()
    done = store.finished_segments(folder)
    if not done:
        raise AdaptError("no segment of the sources could be cached (they hold fewer frames than announced)")
    return store.FrameStore(folder, plan["fields"], [(n, d["frames"]) for n, d in done.items()],
                            m["config"].num_classes)


def _label_statistics(folder: Path, k: int) -> np.ndarray:
    """(K + 1,) pseudo-label pixel counts of the cached segments (the last: ignored pixels)."""
    hist = np.zeros(k + 1, np.int64)
    for sidecar in store.finished_segments(folder).values():
        hist += np.asarray(sidecar["histogram"], np.int64)
    return hist


def run_adapt(opts: AdaptOptions) -> dict:
    """Run one adaptation; returns the checkpoint's ``training`` metadata (with ``checkpoint``)."""
    from sdcpc_core.train.trainer import init_distributed

    out = _check_options(opts)
    rank, world, device = init_distributed(opts.device)
    is_main = rank == 0
    log = _log if is_main else (lambda msg: None)
    m = _load_models(opts)
    m["teacher_path"] = _checkpoint_file(opts.teacher)
    m["student_path"] = _checkpoint_file(opts.student) if opts.student else None
    previous = _previous_state(opts)
    plan = _plan(opts, m, log)
    t0, cpu0 = time.perf_counter(), time.process_time()
    frames = _prepare_cache(opts, m, plan, rank, world, log)
    cache_s, cache_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    hist = _label_statistics(plan["folder"], m["config"].num_classes)
    coverage = float(hist[:-1].sum() / max(1, hist.sum()))
    cache_gib = frames.size * len(frames) / 2**30
    log(f"cache: {len(frames)} frames, {cache_gib:.2f} GiB in {cache_s:.0f} s ({cache_cpu_s:.0f} s of CPU); "
        "pseudo-label coverage "
        f"{100 * coverage:.1f} % (threshold {opts.recipe.threshold})")
    if coverage < 0.05:
        log(f"warning: the teacher reaches probability {opts.recipe.threshold} on only {100 * coverage:.1f} % "
            "of the pixels: little to learn from; lower the threshold (--set threshold=0.5) or check "
            "that the teacher fits this camera")
    info = {"sources": [{"path": str(p), "frames": sum(s.length for s in plan["segments"] if s.source == i),
                         "recorded_frames": n, "size": list(sz)}
                        for i, (p, n, sz) in enumerate(zip(opts.sources, plan["counts"], plan["recorded"]))],
            "frames": len(frames), "input_size": list(plan["size"]), "pseudo_label_coverage": coverage,
            "cache_s": cache_s, "cache_cpu_s": cache_cpu_s, "cache_gib": cache_gib, "segments": len(frames.lengths)}
    try:
        meta = _train(opts, m, frames, hist, info, previous, plan["views"], rank, world, device, log)
    finally:
        frames.close()
    if is_main and opts.report and not meta["interrupted"]:
        t0, cpu0 = time.perf_counter(), time.process_time()
        report_files(out, meta, m["teacher"], m["student"], m["labels"], _report_videos(plan["folder"]),
                     m["teacher_mean"], m["teacher_std"], m["mean"], m["std"])
        log(f"report: {time.perf_counter() - t0:.0f} s ({time.process_time() - cpu0:.0f} s of CPU)")
    if meta["interrupted"]:
        raise AdaptInterrupted(f"after {meta['steps']} steps; {out} holds them (continue with --resume; "
                               f"the cache in {plan['folder']} is kept for it)")
    if is_main and not opts.keep_cache:
        store.clear(plan["folder"])
    meta["checkpoint"], meta["rank"] = str(out), rank
    return meta


def _checkpoint_file(checkpoint: str) -> Path:
    """The file or folder a checkpoint argument names (its identity keys the cache)."""
    path = Path(checkpoint)
    return path if path.exists() else Path(resolve_checkpoint(checkpoint))


def _report_videos(folder: Path) -> list[np.ndarray]:
    return [np.load(p) for p in sorted(folder.glob("report_*.npy"))]


def _train(opts: AdaptOptions, m: dict, frames: store.FrameStore, hist: np.ndarray, info: dict,
           previous: dict | None, views: int, rank: int, world: int, device, log) -> dict:
    """The training loop up to the budget; writes the checkpoint; returns its training metadata."""
    r, config, student, out = opts.recipe, m["config"], m["student"], Path(opts.output)
    optimizer = method.build_optimizer(student, r)
    criterion = method.make_criterion(config, r)
    weight = (class_weights_from_counts(torch.from_numpy(hist[:-1]), r.class_weight).to(device)
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
    sampler = method.BatchSampler(frames, config.reference_offsets, r, np.random.default_rng([opts.seed, rank, step]),
                                  views)
    loop = _Loop(opts, student, step_module, optimizer, criterion, weight, sampler, step, elapsed, history,
                 device, world)

    def save(interrupted: bool = False) -> dict:
        meta = {"method": "sdcpc adapt", "note": "self-trained on teacher pseudo-labels (docs/adapt.md)",
                "output": str(out), "teacher": str(opts.teacher), "student_init": str(opts.student or "teacher"),
                "source_paths": [str(s) for s in opts.sources], **info, "every": opts.every,
                "minutes": loop.clock.elapsed / 60, "budget": {"minutes": opts.minutes, "steps": opts.steps},
                "steps": loop.step, "recipe": r.to_dict(), "world_size": world, "interrupted": interrupted,
                "history": loop.history,
                "adapt_state": {"optimizer": optimizer.state_dict(), "elapsed_s": loop.clock.elapsed}}
        if criterion is not None:
            meta["adapt_state"]["criterion"] = criterion.state_dict()
        if rank == 0:
            save_checkpoint(out, student, config, m["labels"], m["mean"], m["std"], training=meta,
                            input_size=tuple(info["input_size"]))
        return meta

    if loop.progress() >= 1.0:
        raise AdaptError(f"{out} has already trained its budget ({step} steps, {elapsed / 60:.1f} min); "
                         "raise --minutes / --steps to train on")
    interrupted = loop.run(save, rank == 0 and opts.progress)
    if loop.step == 0 and previous is None:
        if interrupted:
            raise AdaptInterrupted("before the first step; nothing was written")
        raise AdaptError("no training step fitted in the budget; raise --minutes or use --steps")
    meta = save(interrupted)
    log(f"wrote {out}: {loop.step} steps in {loop.clock.elapsed / 60:.1f} min"
        f"{' (interrupted: Ctrl-C; continue with --resume)' if interrupted else ''}")
    return meta


class _Loop:
    """The step loop: lr schedule, a step, history, periodic saves, Ctrl-C."""

    def __init__(self, opts, student, step_module, optimizer, criterion, weight, sampler, step, elapsed,
                 history, device, world):
        self.student = student
        self.opts, self.step_module, self.optimizer, self.criterion = opts, step_module, optimizer, criterion
        self.weight, self.sampler, self.step, self.history = weight, sampler, step, history
        self.device, self.world = device, world
        self.clock = method.Clock(elapsed)
        self.budget_s = opts.minutes * 60 if opts.minutes is not None else None
        self.params = [p for p in step_module.parameters() if p.requires_grad]

    def progress(self) -> float:
        return self.clock.elapsed / self.budget_s if self.budget_s else self.step / self.opts.steps

    def _done(self) -> bool:
        done = self.progress() >= 1.0
        if self.world > 1:  # every rank stops at the same step
            flag = torch.tensor([float(done)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            done = bool(flag.item())
        return done

    def one_step(self) -> dict:
        r, device = self.opts.recipe, self.device
        factor = method.lr_factor(self.progress(), self.step, r.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        batch = self.sampler.draw()
        batch = {"target": [t.to(device) for t in batch["target"]],
                 "references": [[t.to(device) for t in ref] for ref in batch["references"]],
                 **{k: batch[k].to(device) for k in ("labels", "probs", "centre_probs") if k in batch}}
        method.set_train_mode(self.student, r)
        losses = method.compute_losses(self.step_module, batch, r, self.criterion, self.weight)
        if not math.isfinite(float(losses["loss"].detach())):
            raise FloatingPointError(f"the loss is {float(losses['loss'])} at step {self.step}; nothing "
                                     f"of this step was kept (last checkpoint: {self.opts.output})")
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        method.clip_grad(self.params, r.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def run(self, save, show: bool) -> bool:
        """Steps up to the budget; True when Ctrl-C stopped it."""
        total = int(self.budget_s) if self.budget_s else self.opts.steps
        bar = tqdm(total=total, initial=min(total, int(self.clock.elapsed) if self.budget_s else self.step),
                   unit="s" if self.budget_s else "step", desc="adapt", disable=not show, dynamic_ncols=True)
        last_save = time.perf_counter()
        try:
            while not self._done():
                losses = self.one_step()
                self.history["step"].append(self.step)
                self.history["loss"].append(round(losses["loss"], 5))
                self.history["coverage"].append(round(losses["coverage"], 4))
                bar.set_postfix(step=self.step, loss=f"{losses['loss']:.3f}", cov=f"{losses['coverage']:.2f}",
                                refresh=False)
                bar.update(min(total, int(self.clock.elapsed) if self.budget_s else self.step) - bar.n)
                if time.perf_counter() - last_save > SAVE_EVERY_S:
                    save()
                    last_save = time.perf_counter()
        except KeyboardInterrupt:
            return True
        finally:
            bar.close()
        return False


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
