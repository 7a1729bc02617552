"""LightningDataModule over the packed token arrays of the tokenizer stage.

Training batches come from `ResumableSampler`: one seeded order over as many epochs
as the run needs, which can start at any position. A run resumed from a checkpoint
starts the sampler where the interrupted run stopped (its optimizer step times the
samples per step), so it sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from lm_tasks.data.packing import PackedBlocks, read_meta


class ResumableSampler(Sampler[int]):
    """Indices of a fresh seeded permutation per epoch, `total` in all, from `start` on.

    With `world_size` > 1 each rank takes every world_size-th index of the same order,
    so the ranks together see what one process would.
    """

    def __init__(self, n_items: int, total: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        self.n_items, self.total, self.seed, self.start = n_items, total, seed, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        position = self.start * self.world_size + self.rank
        end = self.total * self.world_size
        while position < end:
            epoch, offset = divmod(position, self.n_items)
            order = torch.randperm(self.n_items, generator=torch.Generator().manual_seed(self.seed + epoch))
            while offset < self.n_items and position < end:
                yield int(order[offset])
                offset += self.world_size
                position += self.world_size

    def __len__(self) -> int:
        # Lightning counts an interrupted epoch's batches from its checkpoint, so the
        # length stays the whole run's even when the sampler starts part-way.
        return self.total


class PackedDataModule(L.LightningDataModule):
    def __init__(self, tokens_dir: str | Path, block_size: int, batch_size: int, num_workers: int = 0,
                 seed: int = 0, samples_per_step: int | None = None, max_steps: int | None = None):
        super().__init__()
        self.tokens_dir, self.block_size = Path(tokens_dir), block_size
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.samples_per_step = samples_per_step or batch_size  # per device: batch x accumulation
        self.max_steps = max_steps
        self.meta = read_meta(tokens_dir)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PackedBlocks(self.tokens_dir / "train.bin", self.block_size, self.meta["dtype"])
        self.val_set = PackedBlocks(self.tokens_dir / "validation.bin", self.block_size, self.meta["dtype"])

    def bytes_per_token(self, split: str = "validation") -> float:
        return self.meta["splits"][split]["bytes"] / self.meta["splits"][split]["tokens"]

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        steps = self.max_steps or len(self.train_set) // self.samples_per_step
        sampler = ResumableSampler(
            len(self.train_set), total=steps * self.samples_per_step, seed=self.seed,
            start=(trainer.global_step if trainer else 0) * self.samples_per_step,  # restored on resume
            rank=trainer.global_rank if trainer else 0, world_size=trainer.world_size if trainer else 1,
        )
        return self._loader(self.train_set, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset, **kwargs) -> DataLoader:
        # Its own generator: starting an epoch would otherwise draw from the global RNG, and a
        # resumed run (which starts one more) would then see different dropout masks.
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers, generator=torch.Generator(),
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0, **kwargs,
        )
