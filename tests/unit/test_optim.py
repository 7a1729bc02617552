"""The one learning-rate schedule and optimizer helper."""

from __future__ import annotations

import pytest
import torch

from lm_tasks.config import OptimConfig
from lm_tasks.training.optim import build_optimizer, lr_at

CFG = OptimConfig(name="adamw", lr=1e-3, min_lr=1e-4, weight_decay=0.1, betas=[0.9, 0.95], eps=1e-8,
                  warmup_steps=10, fused=None)


def test_warmup_then_cosine_to_min_lr():
    assert lr_at(0, CFG, 100) == pytest.approx(1e-4)
    assert lr_at(9, CFG, 100) == pytest.approx(1e-3)
    assert lr_at(55, CFG, 100) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway through the decay
    assert lr_at(100, CFG, 100) == pytest.approx(1e-4)
    assert lr_at(500, CFG, 100) == pytest.approx(1e-4)
    decay = [lr_at(s, CFG, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_scheduler_follows_lr_at():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer, scheduler = build_optimizer([{"params": [param], "weight_decay": 0.1}], CFG, total_steps=30)
    seen = []
    for _ in range(30):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([lr_at(s, CFG, 30) for s in range(30)])
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95)
