"""From the trainer config to what Lightning needs: world size, batch plan, strategy.

The optimisation is set by `trainer.global_batch_size` (sequences per optimizer step,
all devices together). The per-device micro-batch (`trainer.micro_batch_size`, or the
largest that fits the global batch in one pass) and the gradient accumulation follow
from it and the world size, so adding devices changes the speed, not the training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from lm_tasks.config import ConfigError, TrainerConfig


@dataclass(frozen=True)
class BatchPlan:
    world_size: int
    micro_batch_size: int  # sequences per device per forward pass
    accumulate: int  # micro-batches per optimizer step

    @property
    def samples_per_step(self) -> int:
        """Sequences one process consumes per optimizer step."""
        return self.micro_batch_size * self.accumulate


def world_size(t: TrainerConfig) -> int:
    """Processes taking part: devices per node times nodes (-1 or "auto": every visible GPU,
    or every CPU core for accelerator=cpu)."""
    devices = t.devices
    if isinstance(devices, (list, tuple)):
        per_node = len(devices)
    elif str(devices) in ("-1", "auto"):
        on_gpu = t.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if on_gpu else (1 if str(devices) == "auto" else os.cpu_count() or 1)
    else:
        per_node = int(devices)
    return per_node * t.num_nodes


def batch_plan(t: TrainerConfig, world: int | None = None) -> BatchPlan:
    world = world or world_size(t)
    micro = t.micro_batch_size or t.global_batch_size // world
    if micro < 1 or t.global_batch_size % (micro * world):
        raise ConfigError(
            f"trainer.global_batch_size={t.global_batch_size} is not a multiple of micro_batch_size x world size "
            f"({micro} x {world}); choose a global batch divisible by {world} x the micro-batch"
        )
    return BatchPlan(world, micro, t.global_batch_size // (micro * world))


def strategy(t: TrainerConfig):
    """The Lightning strategy: its name, or for FSDP one that shards each Transformer block (FSDP2)."""
    if t.strategy != "fsdp":
        return t.strategy
    from lm_tasks.training.fsdp import FSDP2Strategy  # Lightning is imported by training processes only

    return FSDP2Strategy(t)
