"""Lightning callbacks shared by the training recipes."""

from __future__ import annotations

import time

import lightning as L


class TokensPerSecond(L.Callback):
    """Logs `train/tokens_per_sec` over the last `every` steps (all devices together)."""

    def __init__(self, every: int):
        self.every = max(1, every)
        self._start: float | None = None
        self._tokens = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._tokens += batch[0].numel() * trainer.world_size
        if trainer.global_step % self.every == 0 and self._start is not None:
            elapsed = time.perf_counter() - self._start
            pl_module.log("train/tokens_per_sec", self._tokens / max(elapsed, 1e-9))
            self._start, self._tokens = time.perf_counter(), 0
