"""Task fine-tuning: one LightningModule for every task, the task-specific parts in an adapter.

The recipe loads the exported pretrained model, builds the adapter's head, trains with
early stopping on the task's validation metric and exports the best checkpoint. The
evaluate stage (`lm_tasks.tasks.evaluate`) then scores the exported model.

Output folder (`paths.finetune_dir/<task>`):
    checkpoints/best.ckpt   the best checkpoint by the monitored validation metric
    checkpoints/last.ckpt   every trainer.checkpoint_every_n_steps: model, head, optimizer, scheduler,
                            loop counters, early-stopping and best-checkpoint state, RNG state;
                            a run finding it resumes from it (the data order continues at that step)
    model/                  backbone (exported format) + head.safetensors + task.json

On several devices (`trainer.devices`, `trainer.num_nodes`, launched by
`lm_tasks.training.launch`) `batch_size` stays the global batch: each rank takes its
share of one seeded order (`ResumableSampler`), so a step sees the same examples as on one device. Every
rank validates on the whole validation set, so early stopping agrees everywhere and
the generation metrics are exact.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from safetensors.torch import save_model
from torch.utils.data import DataLoader

from lm_tasks.artifacts import atomic_path
from lm_tasks.config import ConfigError, LifecycleConfig, TaskConfig
from lm_tasks.data.datamodule import ResumableSampler
from lm_tasks.models.io import load_pretrained, save_pretrained
from lm_tasks.tasks.adapters import build_adapter
from lm_tasks.tasks.data import load_task_data
from lm_tasks.tokenizer import load_tokenizer
from lm_tasks.training.callbacks import ResumableEarlyStopping, Throughput, profiler
from lm_tasks.training.checkpoints import (AtomicCheckpointIO, LastCheckpoint, RestoresRNG, load_checkpoint,
                                           sigterm_between_steps)
from lm_tasks.training.distributed import strategy
from lm_tasks.training.optim import build_optimizer, time_budget_used
from lm_tasks.training.pruning import pruning_callbacks

log = logging.getLogger(__name__)


class FinetuneModule(RestoresRNG):
    """Backbone + task head; the adapter supplies the loss, predictions and metrics."""

    def __init__(self, model: nn.Module, adapter, task_cfg: TaskConfig):
        super().__init__()
        self.model, self.adapter, self.task_cfg = model, adapter, task_cfg
        self.head = adapter.build_head(model)
        self._predictions: list = []
        self._references: list = []

    def configure_model(self) -> None:
        from lm_tasks.training.fsdp import shard_for

        shard_for(self, self.model, self.head)  # trainer.strategy=fsdp: the blocks, the rest, the head

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.adapter.loss(self.model, self.head, batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self.adapter.loss(self.model, self.head, batch), batch_size=len(batch["idx"]))
        if self.task_cfg.monitor != "loss":  # generation-based metrics only when they are monitored
            self._predictions += self.adapter.predict(self.model, self.head, batch)
            self._references += self.adapter.references(batch)

    def on_validation_epoch_end(self) -> None:
        if not self._predictions:
            return
        metrics = self.adapter.score(*self.adapter.finalize(self._predictions, self._references))
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                self.log(f"val/{name}", float(value), prog_bar=name == self.task_cfg.monitor)
        self._predictions, self._references = [], []

    def configure_optimizers(self):
        groups = self.model.optimizer_groups(self.task_cfg.weight_decay, self.task_cfg.layer_lr_decay)
        groups.append({"params": list(self.head.parameters()), "weight_decay": 0.0})
        optimizer, scheduler = build_optimizer(groups, self.task_cfg.optim(), self.task_cfg.max_steps,
                                               on_cuda=self.device.type == "cuda",
                                               budget_used=lambda: time_budget_used(self.trainer))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TaskDataModule(L.LightningDataModule):
    """The encoded task splits. Training batches come from one seeded order over as many epochs
    as `max_steps` needs; Lightning asks for the loader after restoring a checkpoint, so a
    resumed run starts the order at its restored step and sees the uninterrupted run's batches."""

    def __init__(self, train, validation, batch_size: int, collate, seed: int, max_steps: int):
        super().__init__()
        self.train, self.validation, self.collate = train, validation, collate
        self.batch_size, self.seed, self.max_steps = batch_size, seed, max_steps

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        per_rank = self.batch_size // trainer.world_size
        sampler = ResumableSampler(len(self.train), total=self.max_steps * per_rank, seed=self.seed,
                                   start=trainer.global_step * per_rank, rank=trainer.global_rank,
                                   world_size=trainer.world_size)
        return self._loader(self.train, per_rank, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.validation, self.batch_size)  # every rank the whole set

    def _loader(self, dataset, batch_size: int, **kwargs) -> DataLoader:
        # Its own generator: starting a loader would otherwise draw from the global RNG, which
        # the resumed run restores from the checkpoint and must then draw from as the uninterrupted one.
        return DataLoader(dataset, batch_size=batch_size, collate_fn=self.collate, generator=torch.Generator(),
                          **kwargs)


def finetune_task(cfg: LifecycleConfig, task_name: str, pretrained_dir: str | Path, out_dir: str | Path,
                  logger: Logger | bool = False, fold: tuple[int, int] | None = None) -> dict:
    """Fine-tune the pretrained model on one task; return the best validation score, steps, data counts.
    With `fold=(i, k)` it trains on the train split less fold i of k (cross-validation)."""
    task_cfg = cfg.finetune[task_name]
    out_dir, pretrained_dir = Path(out_dir), Path(pretrained_dir)
    L.seed_everything(cfg.seed, workers=True)
    model = load_pretrained(pretrained_dir).train()  # on the CPU: the Trainer moves it to its device
    if not model.trainable:
        raise ConfigError(f"{pretrained_dir} is a {model.config.family} model, which has no hidden states to "
                          "fine-tune; fine-tune a gpt, rnn, lstm or gru model")
    if task_cfg.dropout is not None:
        model.set_dropout(task_cfg.dropout)  # a small task may need dropout the pretraining did without
    max_length = task_cfg.max_length or model.config.block_size
    if max_length > model.config.block_size:
        raise ValueError(f"finetune.{task_name}.max_length={max_length} exceeds the pretrained "
                         f"model's block_size {model.config.block_size}")
    tokenizer = load_tokenizer(pretrained_dir / "tokenizer.json")
    dataset, info = load_task_data(task_cfg, cfg.seed, fold)
    adapter = build_adapter(task_cfg, info, model.config, tokenizer, cfg.tokenizer.sep_token, max_length)
    encoded, truncated = {}, {}
    for split in ("train", "validation"):  # a cross-validation fold's held_out split is for evaluate_task
        encoded[split], truncated[split] = adapter.encode(dataset[split], tokenizer)
    info["truncated"] = truncated  # classification, seq2seq: rows cut; qa: contexts split into windows
    info["rows"] = {split: len(rows) for split, rows in dataset.items()}
    info.update(getattr(adapter, "skipped", {}))
    log.info("finetune %s: %s", task_name, {k: len(v) for k, v in encoded.items()})

    module = FinetuneModule(model, adapter, task_cfg)
    monitor = f"val/{task_cfg.monitor}"
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor=monitor,
                                 mode=task_cfg.monitor_mode, save_top_k=1, enable_version_counter=False)
    stopper = ResumableEarlyStopping(monitor=monitor, mode=task_cfg.monitor_mode, patience=task_cfg.patience)
    t = cfg.trainer
    resume_from = out_dir / "checkpoints" / "last.ckpt"
    last = LastCheckpoint(resume_from, t.checkpoint_every_n_steps, task_cfg.val_check_interval)
    if resume_from.is_file():
        step = load_checkpoint(resume_from)["global_step"]  # fails here, naming the file, if corrupt
        log.info("finetune %s: resuming from %s (step %d of %d)", task_name, resume_from, step, task_cfg.max_steps)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=strategy(t), num_nodes=t.num_nodes,
        precision=t.precision, max_steps=task_cfg.max_steps, val_check_interval=task_cfg.val_check_interval,
        max_time={"minutes": task_cfg.max_minutes} if task_cfg.max_minutes else None,
        check_val_every_n_epoch=None, log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val, logger=logger,
        callbacks=[checkpoint, last, stopper,
                   Throughput(t.log_every_n_steps, line_every=max(1, task_cfg.max_steps // 10),
                              flops_per_token=model.flops_per_token(), peak_tflops=t.peak_tflops),
                   *pruning_callbacks(cfg, "finetune", task_name)],  # on a search trial only
        profiler=profiler(t.profiler, out_dir),
        enable_progress_bar=t.enable_progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(out_dir), plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the sampler shards and resumes itself; validation is whole
    )
    world = trainer.world_size
    if task_cfg.batch_size % world:
        raise ConfigError(f"finetune.{task_name}.batch_size={task_cfg.batch_size} (the global batch) is not "
                          f"divisible by the {world} training processes")
    data = TaskDataModule(encoded["train"], encoded["validation"], task_cfg.batch_size, adapter.collate, cfg.seed,
                          task_cfg.max_steps)
    with warnings.catch_warnings(), sigterm_between_steps():
        # Lightning asks for sync_dist on validation metrics; every rank already scores the whole set.
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*when logging on epoch level")
        # Lightning warns that a mid-epoch resume may repeat data; ResumableSampler does not.
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(module, datamodule=data, ckpt_path=resume_from if resume_from.is_file() else None,
                    weights_only=True)  # never unpickle objects from a checkpoint the store may hold

    if trainer.is_global_zero:  # one process exports, from a fresh (unsharded) copy of the module
        best = FinetuneModule(load_pretrained(pretrained_dir), adapter, task_cfg)
        best.load_state_dict(load_checkpoint(checkpoint.best_model_path)["state_dict"])
        save_task_model(best, adapter, out_dir / "model", pretrained_dir / "tokenizer.json")
    return {"task": task_name, f"best_val_{task_cfg.monitor}": float(checkpoint.best_model_score),
            "baseline": adapter.baseline(dataset["train"], dataset["validation"]),  # for the model card
            "steps": trainer.global_step, "world_size": world, "device": str(trainer.strategy.root_device),
            "info": info}


def save_task_model(module: FinetuneModule, adapter, model_dir: Path, tokenizer_path: Path) -> None:
    """The exported backbone plus the task head and what is needed to rebuild the adapter."""
    with atomic_path(model_dir, is_dir=True) as tmp:
        save_pretrained(module.model, tmp, tokenizer_path)
        save_model(module.head, str(tmp / "head.safetensors"))
        (tmp / "task.json").write_text(json.dumps(adapter.describe(), indent=2) + "\n")
