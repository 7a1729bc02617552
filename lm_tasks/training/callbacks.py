"""Lightning callbacks shared by the training recipes."""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

log = logging.getLogger(__name__)


class Throughput(L.Callback):
    """Logs `train/tokens_per_sec` every `every` steps (all devices together), and a
    progress line every `line_every` steps, readable in Prefect logs and CI output
    where a progress bar is not."""

    def __init__(self, every: int, line_every: int):
        self.every = max(1, every)
        self.line_every = max(self.every, line_every // self.every * self.every)
        self._start: float | None = None
        self._tokens = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        inputs = batch["idx"] if isinstance(batch, dict) else batch[0]  # fine-tuning batches are dicts
        self._tokens += inputs.numel() * trainer.world_size
        step = trainer.global_step
        if step % self.every == 0 and self._start is not None:
            rate = self._tokens / max(time.perf_counter() - self._start, 1e-9)
            pl_module.log("train/tokens_per_sec", rate)
            self._start, self._tokens = time.perf_counter(), 0
            if step % self.line_every == 0 and trainer.is_global_zero:
                metrics = trainer.callback_metrics
                val = f" val/loss {float(metrics['val/loss']):.3f}" if "val/loss" in metrics else ""
                log.info("step %d/%d  train/loss %.3f%s  %.0f tokens/s", step, trainer.max_steps,
                         float(outputs["loss"]), val, rate)


class ResumableEarlyStopping(EarlyStopping):
    """EarlyStopping whose decision to stop survives a resume. The checkpoint written after
    the validation that stopped training (by patience, or the time budget) would otherwise
    resume into more training: Lightning does not keep `trainer.should_stop`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stopped = False

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self.stopped = trainer.should_stop

    def on_train_start(self, trainer, pl_module) -> None:
        if self.stopped:  # restored from a checkpoint of a run that had finished training
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {**super().state_dict(), "stopped": self.stopped}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.stopped = bool(state_dict.get("stopped", False))
