"""Lightning callbacks shared by the training recipes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import EarlyStopping

from lm_tasks.artifacts import file_digest, write_json
from lm_tasks.checkpoint_eval import SNAPSHOT
from lm_tasks.models.io import save_pretrained

log = logging.getLogger(__name__)


class Throughput(L.Callback):
    """Logs `train/tokens_per_sec` every `every` steps (all devices together), and a
    progress line every `line_every` steps, readable in Prefect logs and CI output
    where a progress bar is not.

    With the model's FLOPs per token it also logs `train/tflops` (model TFLOP/s, all devices)
    and, where the device's peak is known (`peak_tflops`, else Lightning's table of GPU peaks
    for the training precision), `train/mfu`: model FLOPs utilisation in [0, 1].
    """

    def __init__(self, every: int, line_every: int, flops_per_token: float | None = None,
                 peak_tflops: float | None = None):
        self.every = max(1, every)
        self.line_every = max(self.every, line_every // self.every * self.every)
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_tflops * 1e12 if peak_tflops else None  # per device
        self._start: float | None = None
        self._tokens = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.peak_flops is None and pl_module.device.type == "cuda":
            self.peak_flops = get_available_flops(pl_module.device, _compute_dtype(trainer.precision))

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
            if self.flops_per_token:
                flops = rate * self.flops_per_token
                pl_module.log("train/tflops", flops / 1e12)
                if self.peak_flops:
                    pl_module.log("train/mfu", flops / (self.peak_flops * trainer.world_size))
            self._start, self._tokens = time.perf_counter(), 0
            if step % self.line_every == 0 and trainer.is_global_zero:
                metrics = trainer.callback_metrics
                val = f" val/loss {float(metrics['val/loss']):.3f}" if "val/loss" in metrics else ""
                mfu = f"  MFU {float(metrics['train/mfu']):.1%}" if "train/mfu" in metrics else ""
                log.info("step %d/%d  train/loss %.3f%s  %.0f tokens/s%s", step, trainer.max_steps,
                         float(outputs["loss"]), val, rate, mfu)


def _compute_dtype(precision) -> torch.dtype:
    """The matmul dtype of a Lightning precision setting ("bf16-mixed" -> bfloat16)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def profiler(name: str | None, out_dir: Path):
    """Lightning's profiler `name` (simple, advanced, pytorch), reporting into `out_dir/profile/`."""
    if name is None:
        return None
    from lightning.pytorch.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler

    kinds = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}
    return kinds[name](dirpath=str(out_dir / "profile"), filename="profile")


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


class SnapshotWriter(L.Callback):
    """A snapshot of the weights every `every` optimizer steps (on rank zero), for the checkpoint
    evaluator (lm_tasks.checkpoint_eval) to score outside the training process."""

    def __init__(self, folder: Path, every: int, tokenizer_path: Path):
        self.folder, self.every, self.tokenizer_path = Path(folder), every, Path(tokenizer_path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every or not trainer.is_global_zero:
            return
        path = self.folder / f"step-{step:07d}"
        if (path / SNAPSHOT).is_file():
            return  # written before this run resumed, or on the last accumulation micro-batch already
        save_pretrained(pl_module.model, path, self.tokenizer_path)
        write_json(path / SNAPSHOT, {"step": step, "digest": file_digest(path / "model.safetensors")})
