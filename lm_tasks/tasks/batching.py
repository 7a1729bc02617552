"""Batching shared by the task adapters."""

from __future__ import annotations

import torch


def pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad token lists to the longest one: (B, T_max) int64."""
    out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its tensors on `device` (lists of rows, texts and ids stay as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
