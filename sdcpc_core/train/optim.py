"""AdamW with the model's parameter groups, and the warm-up + poly learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from sdcpc_core.train.config import OptimConfig, ScheduleConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``model.param_groups``: encoder at ``lr``, head/temporal at ``lr * head_lr_mult``,
    no weight decay on normalisation layers and position blocks (spec, training protocol)."""
    groups = model.param_groups(cfg.lr, cfg.weight_decay, cfg.head_lr_mult)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


class WarmupPoly:
    """Learning-rate factor at iteration ``step`` (mmseg semantics).

    poly(step) = (1 - min_ratio) * (1 - step / max_iters) ** power + min_ratio; during the first
    ``warmup_iters`` it is multiplied by a linear ramp from ``warmup_ratio`` to 1.
    A plain callable with plain fields, so LambdaLR checkpoints it.
    """

    def __init__(self, max_iters: int, warmup_iters: int = 0, warmup_ratio: float = 1e-6,
                 power: float = 1.0, min_ratio: float = 0.0):
        self.max_iters = max_iters
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.power = power
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        progress = min(step, self.max_iters) / self.max_iters
        factor = (1 - self.min_ratio) * (1 - progress) ** self.power + self.min_ratio
        if step < self.warmup_iters:
            factor *= 1 - (1 - step / self.warmup_iters) * (1 - self.warmup_ratio)
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig,
                    start_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR; every group keeps its own base lr (the head's ×10 included).

    The schedule is a pure function of the step, so a resumed run passes ``start_step`` (its
    optimiser groups already carry ``initial_lr``) instead of loading scheduler state: the
    schedule then follows the current config.
    """
    fn = WarmupPoly(cfg.max_iters, cfg.warmup_iters, cfg.warmup_ratio, cfg.power, cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn, last_epoch=start_step - 1)
