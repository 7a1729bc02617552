"""LightningDataModule over the packed token arrays of the tokenizer stage."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from lm_tasks.data.packing import PackedBlocks, read_meta


class PackedDataModule(L.LightningDataModule):
    def __init__(self, tokens_dir: str | Path, block_size: int, batch_size: int,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.tokens_dir, self.block_size = Path(tokens_dir), block_size
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.meta = read_meta(tokens_dir)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PackedBlocks(self.tokens_dir / "train.bin", self.block_size, self.meta["dtype"])
        self.val_set = PackedBlocks(self.tokens_dir / "validation.bin", self.block_size, self.meta["dtype"])

    def bytes_per_token(self, split: str = "validation") -> float:
        return self.meta["splits"][split]["bytes"] / self.meta["splits"][split]["tokens"]

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self.train_set, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0, **kwargs,
        )
