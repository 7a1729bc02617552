"""Task fine-tuning: one LightningModule for every task, the task-specific parts in an adapter.

The recipe loads the exported pretrained model, builds the adapter's head, trains with
early stopping on the task's validation metric, keeps the best checkpoint, and writes
the fine-tuned model, validation predictions (JSONL) and metrics beside the baseline's.

Output folder (`paths.finetune_dir/<task>`):
    checkpoints/best.ckpt   the best checkpoint by the monitored validation metric
    model/                  backbone (exported format) + head.safetensors + task.json
    predictions.jsonl       one line per validation example: prediction and reference
    metrics.json            the task metrics and the trivial baseline's
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from safetensors.torch import save_model
from torch.utils.data import DataLoader

from lm_tasks.artifacts import atomic_path, write_json
from lm_tasks.config import LifecycleConfig, TaskConfig
from lm_tasks.models.io import load_pretrained, save_pretrained
from lm_tasks.tasks.classification import ClassificationAdapter
from lm_tasks.tasks.data import load_task_data
from lm_tasks.tasks.qa import QAAdapter
from lm_tasks.tasks.seq2seq import Seq2SeqAdapter
from lm_tasks.tokenizer import load_tokenizer
from lm_tasks.training.callbacks import Throughput
from lm_tasks.training.optim import build_optimizer

log = logging.getLogger(__name__)


class FinetuneModule(L.LightningModule):
    """Backbone + task head; the adapter supplies the loss, predictions and metrics."""

    def __init__(self, model: nn.Module, adapter, task_cfg: TaskConfig):
        super().__init__()
        self.model, self.adapter, self.task_cfg = model, adapter, task_cfg
        self.head = adapter.build_head(model)
        self._predictions: list = []
        self._references: list = []

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
        groups = self.model.optimizer_groups(self.task_cfg.weight_decay)
        groups.append({"params": list(self.head.parameters()), "weight_decay": 0.0})
        optimizer, scheduler = build_optimizer(groups, self.task_cfg.optim(), self.task_cfg.max_steps,
                                               on_cuda=self.device.type == "cuda")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def build_adapter(cfg: LifecycleConfig, task_cfg: TaskConfig, info: dict, model, tokenizer, max_length: int):
    if task_cfg.task == "classification":
        return ClassificationAdapter(info["label_names"], task_cfg.pooling, max_length, model.config.pad_id)
    sep_id = tokenizer.token_to_id(cfg.tokenizer.sep_token)
    if sep_id is None:
        raise ValueError(f"The model's tokenizer has no separator token '{cfg.tokenizer.sep_token}' "
                         "(tokenizer.sep_token); pretrain with a tokenizer that includes it")
    if task_cfg.task == "qa":
        return QAAdapter(max_length, task_cfg.stride, task_cfg.max_answer_tokens, task_cfg.n_best, sep_id,
                         model.config.pad_id)
    return Seq2SeqAdapter(task_cfg.task, max_length, sep_id, model.config.eos_id, model.config.pad_id,
                          task_cfg.num_beams, task_cfg.max_new_tokens, tokenizer)


def finetune_task(cfg: LifecycleConfig, task_name: str, pretrained_dir: str | Path, out_dir: str | Path,
                  logger: Logger | bool = False) -> dict:
    """Fine-tune the pretrained model on one task; return metrics, baseline and counts."""
    task_cfg = cfg.finetune[task_name]
    out_dir, pretrained_dir = Path(out_dir), Path(pretrained_dir)
    L.seed_everything(cfg.seed, workers=True)
    model = load_pretrained(pretrained_dir).train()
    max_length = task_cfg.max_length or model.config.block_size
    if max_length > model.config.block_size:
        raise ValueError(f"finetune.{task_name}.max_length={max_length} exceeds the pretrained "
                         f"model's block_size {model.config.block_size}")
    tokenizer = load_tokenizer(pretrained_dir / "tokenizer.json")
    dataset, info = load_task_data(task_cfg, cfg.seed)
    adapter = build_adapter(cfg, task_cfg, info, model, tokenizer, max_length)
    encoded, truncated = {}, {}
    for split, ds in dataset.items():
        encoded[split], truncated[split] = adapter.encode(ds, tokenizer)
    info["truncated"] = truncated  # classification, seq2seq: rows cut; qa: contexts split into windows
    info.update(getattr(adapter, "skipped", {}))
    log.info("finetune %s: %s", task_name, {k: len(v) for k, v in encoded.items()})

    module = FinetuneModule(model, adapter, task_cfg)
    monitor = f"val/{task_cfg.monitor}"
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor=monitor,
                                 mode=task_cfg.monitor_mode, save_top_k=1, enable_version_counter=False)
    stopper = EarlyStopping(monitor=monitor, mode=task_cfg.monitor_mode, patience=task_cfg.patience)
    t = cfg.trainer
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=t.precision, max_steps=task_cfg.max_steps, val_check_interval=task_cfg.val_check_interval,
        check_val_every_n_epoch=None, log_every_n_steps=t.log_every_n_steps,
        gradient_clip_val=t.gradient_clip_val, logger=logger,
        callbacks=[checkpoint, stopper, Throughput(t.log_every_n_steps, line_every=max(1, task_cfg.max_steps // 10))],
        enable_progress_bar=t.enable_progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(encoded["train"], batch_size=task_cfg.batch_size, shuffle=True,
                              collate_fn=adapter.collate, generator=generator)
    val_loader = DataLoader(encoded["validation"], batch_size=task_cfg.batch_size, collate_fn=adapter.collate)
    trainer.fit(module, train_loader, val_loader)

    state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.eval()
    predictions, references = [], []
    with torch.no_grad():
        for batch in val_loader:
            predictions += adapter.predict(module.model, module.head, batch)
            references += adapter.references(batch)
    predictions, references = adapter.finalize(predictions, references)
    metrics = adapter.score(predictions, references)
    baseline = adapter.baseline(dataset["train"], dataset["validation"])
    _write_outputs(out_dir, module, adapter, dataset["validation"], predictions, references, pretrained_dir)
    summary = {"task": task_name, "metrics": metrics, "baseline": baseline, "info": info,
               "steps": trainer.global_step, "best_checkpoint": checkpoint.best_model_path}
    write_json(out_dir / "metrics.json", summary)
    return summary


def _write_outputs(out_dir: Path, module: FinetuneModule, adapter, validation, predictions: list,
                   references: list, pretrained_dir: Path) -> None:
    model_dir = save_pretrained(module.model, out_dir / "model", pretrained_dir / "tokenizer.json")
    save_model(module.head, str(model_dir / "head.safetensors"))
    (model_dir / "task.json").write_text(json.dumps(adapter.describe(), indent=2) + "\n")
    with atomic_path(out_dir / "predictions.jsonl") as tmp:
        with open(tmp, "w") as f:
            for i, (prediction, reference) in enumerate(zip(predictions, references)):
                row = validation[prediction.get("example_id", i)]  # qa may skip examples
                f.write(json.dumps(adapter.record(row, prediction, reference), ensure_ascii=False) + "\n")
    if adapter.task == "classification":
        plot_confusion_matrix([p["label_id"] for p in predictions], references, adapter.label_names,
                              out_dir / "confusion_matrix.png")


def plot_confusion_matrix(predicted: list[int], actual: list[int], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    counts = [[0] * n for _ in range(n)]
    for p, a in zip(predicted, actual):
        counts[a][p] += 1
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.2 * n + 1.5))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, counts[i][j], ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
