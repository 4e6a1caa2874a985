"""Iteration-based trainer: single process or ``torchrun`` + DistributedDataParallel.

Loss: CE(final logits) + static_weight·CE(static logits) + mcp_weight·MCP-CL(embedding), with the
logits upsampled to the label size (the per-frame baseline has only the first term). AdamW with
warm-up + poly decay, AMP (fp16 + GradScaler on CUDA, optional bf16), gradient clipping, periodic
validation on the clips' target frames, ``last.pt`` / ``best.pt`` in our checkpoint format, exact
resume of model, optimiser, scaler, MCP-CL bank, step (the schedule follows from it), data order and RNG.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from sdcpc_core.checkpoints import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_pretrained,
    read_file,
    save_checkpoint,
)
from sdcpc_core.classes import LabelSet
from sdcpc_core.losses import MCPContrastiveLoss
from sdcpc_core.metrics import VideoMetrics, nan_to_none
from sdcpc_core.models import build_model
from sdcpc_core.train.config import TrainConfig, load_config
from sdcpc_core.train.data import build_datasets
from sdcpc_core.train.optim import build_optimizer, build_scheduler


def init_distributed(device: str, timeout_min: float = 120) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Joins the process group when started by torchrun
    (``WORLD_SIZE`` > 1 in the environment): nccl on CUDA, gloo on CPU. The timeout covers the
    other ranks' wait while rank 0 validates."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_min))
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def seed_worker(worker_id: int) -> None:
    """DataLoader workers: seed numpy and random from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict:
    """This process's RNG states, as weights-only-loadable types."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """CE of (B, K, h, w) logits upsampled (bilinear) to the (B, H, W) label size."""
    logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, label, ignore_index=ignore_index)


class Trainer:
    """Owns the model, optimiser, schedule, data and checkpoints of one run.

    ``train_set`` / ``val_set`` / ``labels`` default to what ``build_datasets`` makes from
    ``cfg.data``; pass them to train on anything that yields the clip dicts
    ``{"frames": (T+1, 3, H, W) float, "label": (H, W) int64}``.
    """

    def __init__(self, cfg: TrainConfig, train_set: Dataset | None = None, val_set: Dataset | None = None,
                 labels: LabelSet | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.cfg = cfg
        self.rank, self.world_size, self.device = init_distributed(cfg.device, cfg.dist_timeout_min)
        self.is_main = self.rank == 0
        self.output_dir = Path(cfg.output_dir)
        if train_set is None:
            train_set, val_set, labels, mean, std = build_datasets(cfg)
        self.train_set, self.val_set = train_set, val_set
        self.labels = labels or LabelSet.from_names([f"class{i}" for i in range(cfg.model.num_classes)])
        self.mean, self.std = tuple(mean), tuple(std)

        torch.manual_seed(cfg.seed + self.rank)
        np.random.seed((cfg.seed + self.rank) % 2**32)
        random.seed(cfg.seed + self.rank)

        model = build_model(cfg.model)
        resume = self._resume_path()
        if cfg.pretrained and resume is None:
            summary = load_pretrained(model, cfg.pretrained)
            self._print(f"pretrained weights from {cfg.pretrained}: loaded {summary['loaded']}")
        if self.world_size > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the head's BN, as mmseg (CUDA only)
        model.to(self.device)
        self.model = model
        self.ddp = (DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None, find_unused_parameters=cfg.find_unused_parameters)
                    if self.world_size > 1 else None)
        self.criterion = None
        if cfg.model.temporal and cfg.loss.mcp_weight > 0:
            lc = cfg.loss
            self.criterion = MCPContrastiveLoss(
                cfg.model.num_classes, cfg.model.embed_dim, lc.prototypes_per_class, lc.momentum,
                lc.temperature, lc.ignore_index, lc.max_pixels_per_class, lc.kmeans_iters,
                lc.mcp_pixels).to(self.device)
        self.optimizer = build_optimizer(model, cfg.optim)
        self.amp_dtype = self._amp_dtype(cfg.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        self.sampler = DistributedSampler(train_set, num_replicas=self.world_size, rank=self.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // cfg.data.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training set has {len(train_set)} clips: fewer than batch_size "
                             f"{cfg.data.batch_size} × {self.world_size} processes")
        self.step = 0
        self.best_miou = -math.inf
        self.last_metrics: dict = {}
        if resume is not None:
            self.load_state(resume)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, start_step=self.step)

    # -- set-up -------------------------------------------------------------------------------
    def _print(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    def _resume_path(self) -> Path | None:
        if self.cfg.resume in (None, "", "none"):
            return None
        if self.cfg.resume == "auto":
            last = self.output_dir / "last.pt"
            return last if last.is_file() else None
        return Path(self.cfg.resume)

    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        choices = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
        if amp == "auto":
            return torch.float16 if self.device.type == "cuda" else None
        if amp not in choices:
            raise ValueError(f"amp {amp!r} is not one of auto, fp16, bf16, off")
        if amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp fp16 needs CUDA; use bf16 or off on CPU")
        return choices[amp]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -- state --------------------------------------------------------------------------------
    def training_state(self, with_optimizer: bool = True) -> dict:
        state = {"step": self.step, "best_miou": self.best_miou, "metrics": nan_to_none(self.last_metrics),
                 "train_config": self.cfg.to_dict(), "world_size": self.world_size}
        if with_optimizer:
            state.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                         rng=self._gather_rng())
            if self.criterion is not None:
                state["criterion"] = self.criterion.state_dict()
        return state

    def _gather_rng(self) -> list:
        if self.world_size == 1:
            return [rng_state()]
        states = [None] * self.world_size
        dist.all_gather_object(states, rng_state())
        return states

    def save(self, name: str, with_optimizer: bool = True) -> Path | None:
        """Write ``output_dir/name`` (rank 0 only; every rank must call it under DDP)."""
        training = self.training_state(with_optimizer)
        if not self.is_main:
            return None
        return save_checkpoint(self.output_dir / name, self.model, self.cfg.model, self.labels,
                               self.mean, self.std, training=training)

    def load_state(self, path) -> None:
        """Resume from one of our checkpoints written by this trainer."""
        obj = read_file(path)
        training = obj.get("training", {})
        if "optimizer" not in training:
            raise ValueError(f"{path} holds no optimiser state (a best.pt?); resume from last.pt")
        self.model.load_state_dict(obj["state_dict"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.scaler.load_state_dict(training["scaler"])
        if self.criterion is not None and "criterion" in training:
            self.criterion.load_state_dict(training["criterion"])
        self.step = int(training["step"])
        self.best_miou = float(training.get("best_miou", -math.inf))
        rngs = training.get("rng", [])
        if len(rngs) == self.world_size:
            set_rng_state(rngs[self.rank])
        else:  # another number of processes: fresh, distinct seeds per rank
            torch.manual_seed(self.cfg.seed + self.rank + self.step)
        self._print(f"resumed from {path} at step {self.step}")

    # -- training -----------------------------------------------------------------------------
    def batches(self):
        """Endless batches from ``self.step`` on; the clip order depends only on (seed, rank, step),
        so a resumed run sees what the uninterrupted one would have seen."""
        bs = self.cfg.data.batch_size
        while True:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)[offset * bs: self.steps_per_epoch * bs]
            seed = torch.Generator().manual_seed(self.cfg.seed + 7919 * epoch + 104729 * self.rank)
            loader = DataLoader(self.train_set, batch_size=bs, sampler=indices, drop_last=True,
                                num_workers=self.cfg.data.num_workers, worker_init_fn=seed_worker,
                                generator=seed, pin_memory=self.device.type == "cuda")
            yield from loader

    def compute_losses(self, batch: dict) -> dict:
        """Forward one batch → {"loss": total, "ce", "static"?, "mcp"?} (tensors)."""
        frames = batch["frames"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True).long()
        lc = self.cfg.loss
        kwargs = {} if self.cfg.reference_grad or not self.cfg.model.temporal else {"reference_grad": False}
        with self._autocast():
            out = (self.ddp or self.model)(frames, **kwargs)
        losses = {"ce": segmentation_loss(out["logits"], label, lc.ignore_index)}
        total = losses["ce"]
        if "static_logits" in out and lc.static_weight > 0:
            losses["static"] = segmentation_loss(out["static_logits"], label, lc.ignore_index)
            total = total + lc.static_weight * losses["static"]
        if self.criterion is not None and "embedding" in out:
            predicted = out["logits"].detach().argmax(1) if lc.mcp_pixels == "prediction" else None
            losses["mcp"] = self.criterion(out["embedding"].float(), label, predicted)
            total = total + lc.mcp_weight * losses["mcp"]
        losses["loss"] = total
        return losses

    def train_step(self, batch: dict) -> dict:
        """One optimiser step; returns the losses, lr and grad norm as floats."""
        self.model.train()
        losses = self.compute_losses(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        record = {k: float(v.detach()) for k, v in losses.items()}
        record.update(lr=lr, grad_norm=float(grad_norm))
        return record

    def _log(self, record: dict) -> None:
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(nan_to_none(record)) + "\n")

    def fit(self) -> dict:
        """Train to ``schedule.max_iters``; returns the last validation metrics (may be empty)."""
        cfg = self.cfg
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        max_iters = cfg.schedule.max_iters
        bar = tqdm(total=max_iters, initial=self.step, disable=not self.is_main, desc="train",
                   dynamic_ncols=True)
        batches = self.batches()
        t0 = time.perf_counter()
        while self.step < max_iters:
            record = self.train_step(next(batches))
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if not math.isfinite(record["loss"]) and not self.scaler.is_enabled():  # fp16: the scaler skips
                raise FloatingPointError(f"loss is {record['loss']} at step {self.step}: {record}")
            if (cfg.log_interval and self.step % cfg.log_interval == 0) or self.step == max_iters:
                record.update(step=self.step, time_s=round(time.perf_counter() - t0, 3))
                self._log(record)
            last = self.step == max_iters
            if self.val_set is not None and (last or (cfg.eval.interval and self.step % cfg.eval.interval == 0)):
                self.run_validation()
            if last or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0):
                self.save("last.pt")
        bar.close()
        if dist.is_initialized():
            dist.barrier()
        return self.last_metrics

    # -- validation ---------------------------------------------------------------------------
    def run_validation(self) -> dict:
        """Validate on rank 0 (others wait), keep ``best.pt`` on a new best mIoU."""
        metrics = self.validate() if self.is_main else {}
        if self.world_size > 1:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        self.last_metrics = metrics
        self._log({"step": self.step, "val": metrics})
        miou = metrics.get("miou")
        self._print(f"step {self.step}: val mIoU {miou}")
        if miou is not None and not math.isnan(miou) and miou > self.best_miou:
            self.best_miou = miou
            self.save("best.pt", with_optimizer=False)
        return metrics

    @torch.no_grad()
    def validate(self) -> dict:
        """mIoU on the target frames of ``val_set`` (clip mode: each clip re-encodes its references).

        When items carry ``"video"`` (a name) and arrive in frame order, mVC_n is scored too.
        """
        ev, k = self.cfg.eval, self.cfg.model.num_classes
        self.model.eval()
        loader = DataLoader(self.val_set, batch_size=ev.batch_size, shuffle=False,
                            num_workers=self.cfg.data.num_workers,
                            generator=torch.Generator().manual_seed(self.cfg.seed))  # keeps the global RNG
        metrics = VideoMetrics(k, ns=ev.mvc, ignore_index=self.cfg.loss.ignore_index)
        video, limit = None, ev.max_clips if ev.max_clips is not None else math.inf
        for batch in loader:
            with self._autocast():
                logits = self.model(batch["frames"].to(self.device))["logits"]
            label = batch["label"]
            pred = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear",
                                 align_corners=False).argmax(1).cpu().numpy()
            names = batch.get("video", [None] * len(pred))
            for p, g, name in zip(pred, label.numpy(), names):
                if metrics.num_frames >= limit:
                    break
                if name != video or name is None:
                    video = name
                    metrics.start_video(name)
                metrics.update(p, g)
            if metrics.num_frames >= limit:
                break
        metrics.end_video()
        self.model.train()
        return nan_to_none(metrics.compute())


def add_train_arguments(parser) -> None:
    """Arguments of ``sdcpc train`` / ``python -m sdcpc_core.train``."""
    parser.add_argument("config", help="YAML config file, or a bundled name such as vspw_b0 or synthetic_b0")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=1e-4 --set data.batch_size=4")
    parser.add_argument("--output-dir", default=None, help="shortcut for --set output_dir=DIR")
    parser.add_argument("--resume", default=None,
                        help="checkpoint to resume from, 'auto' (output_dir/last.pt) or 'none'")


def run_training(args) -> dict:
    """Run one training from parsed ``add_train_arguments`` args; returns the last val metrics."""
    overrides = list(args.overrides)
    if args.output_dir is not None:
        overrides.append(f"output_dir={args.output_dir}")
    if args.resume is not None:
        overrides.append(f"resume={args.resume}")
    cfg = load_config(args.config, overrides)
    try:
        return Trainer(cfg).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
