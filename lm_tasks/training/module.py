"""The LightningModule for causal language modelling (pretraining)."""

from __future__ import annotations

import math

import torch
from torchmetrics import MeanMetric

from lm_tasks.config import OptimConfig
from lm_tasks.models.io import build_config, build_model
from lm_tasks.training.checkpoints import RestoresRNG
from lm_tasks.training.optim import build_optimizer, time_budget_used


class CausalLMModule(RestoresRNG):
    """Next-token cross-entropy on packed blocks; logs loss, lr and bits per byte.

    `bytes_per_token` of the validation split turns the mean loss in nats per
    token into bits per byte, which compares across tokenizers.
    """

    def __init__(self, model_config: dict, optim_config: dict, total_steps: int, bytes_per_token: float):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the stage logs the resolved config itself
        self.model = build_model(build_config(**model_config))
        self.optim_cfg = OptimConfig(**optim_config)
        self.total_steps = total_steps
        self.bytes_per_token = bytes_per_token
        self.val_loss = MeanMetric()

    def configure_model(self) -> None:
        from lm_tasks.training.fsdp import shard_for

        shard_for(self, self.model)  # trainer.strategy=fsdp: one FSDP unit per Transformer block

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self.model(x, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        _, loss = self.model(x, y)
        self.val_loss.update(loss, weight=y.numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/bpb", loss / math.log(2) / self.bytes_per_token, prog_bar=True)

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(
            self.model.optimizer_groups(self.optim_cfg.weight_decay), self.optim_cfg, self.total_steps,
            on_cuda=self.device.type == "cuda", hidden_matrices=self.model.hidden_matrices(),
            budget_used=lambda: time_budget_used(self.trainer),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
