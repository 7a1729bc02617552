"""The one optimizer and learning-rate schedule, shared by every training recipe."""

from __future__ import annotations

import math

import torch

from lm_tasks.config import OptimConfig


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at total_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= total_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def build_optimizer(param_groups: list[dict], cfg: OptimConfig, total_steps: int, on_cuda: bool = False):
    """AdamW over the given (decay / no-decay) groups with the warmup + cosine schedule.

    Returns (optimizer, scheduler); step the scheduler once per optimizer step.
    """
    fused = on_cuda if cfg.fused is None else cfg.fused
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, cfg, total_steps) / cfg.lr
    )
    return optimizer, scheduler
