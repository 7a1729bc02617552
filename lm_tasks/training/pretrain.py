"""The pretraining recipe: setup -> fit -> export, callable directly from tests.

Output folder:
    checkpoints/best.ckpt   the best Lightning checkpoint by val/loss
    checkpoints/last.ckpt   every trainer.checkpoint_every_n_steps: model, optimizer, scheduler,
                            loop counters and RNG state; a run finding it resumes from it
    model/                  the best weights in the exported format
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from lm_tasks.config import LifecycleConfig
from lm_tasks.data.datamodule import PackedDataModule
from lm_tasks.models.io import build_config, build_model, save_pretrained
from lm_tasks.tokenizer import load_tokenizer, special_token_ids
from lm_tasks.training.callbacks import SnapshotWriter, Throughput, profiler
from lm_tasks.training.checkpoints import (AtomicCheckpointIO, LastCheckpoint, load_checkpoint,
                                           sigterm_between_steps, submodule_state)
from lm_tasks.training.distributed import batch_plan, strategy
from lm_tasks.training.module import CausalLMModule
from lm_tasks.training.pruning import pruning_callbacks

log = logging.getLogger(__name__)


def model_config_for(cfg: LifecycleConfig, tokenizer_path: str | Path):
    """The family's model config; vocabulary size and special ids come from the trained tokenizer."""
    specials = special_token_ids(load_tokenizer(tokenizer_path), cfg.tokenizer)
    keys = {k: v for k, v in asdict(cfg.model).items() if k != "name"}
    return build_config(**keys, vocab_size=specials.vocab_size, eos_id=specials.eos_id, pad_id=specials.pad_id)


def pretrain(cfg: LifecycleConfig, tokens_dir: str | Path, tokenizer_path: str | Path,
             out_dir: str | Path, logger: Logger | bool = False, callbacks: tuple[L.Callback, ...] = (),
             snapshots_dir: str | Path | None = None) -> dict:
    """Train the model on the packed tokens; export the best weights; return a summary.
    `callbacks`: Lightning callbacks to add to the recipe's own (a benchmark's step clock).
    `snapshots_dir`: where weight snapshots for checkpoint evaluation go (lm_tasks.checkpoint_eval)."""
    if not cfg.model.trainable:
        from lm_tasks.training.ngram import fit_ngram

        return fit_ngram(cfg, model_config_for(cfg, tokenizer_path), tokens_dir, tokenizer_path, out_dir, logger)
    out_dir = Path(out_dir)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision("high")
    t = cfg.trainer
    plan = batch_plan(t)
    datamodule = PackedDataModule(tokens_dir, cfg.model.block_size, plan.micro_batch_size, t.num_workers, cfg.seed,
                                  samples_per_step=plan.samples_per_step, max_steps=t.max_steps)
    model_config = model_config_for(cfg, tokenizer_path)
    module = CausalLMModule(model_config.to_dict(), asdict(cfg.optim), t.max_steps,
                            datamodule.bytes_per_token("validation"))
    n_params = module.model.num_parameters()
    log.info("pretrain: %.2fM parameters, vocabulary %d; global batch %d = %d device(s) x %d x %d accumulated",
             n_params / 1e6, model_config.vocab_size, t.global_batch_size, plan.world_size, plan.micro_batch_size,
             plan.accumulate)
    if t.compile:
        module.model.compile()  # in place: parameter names (checkpoints, export) stay the same

    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="best", monitor="val/loss",
                                 mode="min", save_top_k=1, enable_version_counter=False)
    resume_from = out_dir / "checkpoints" / "last.ckpt"
    last = LastCheckpoint(resume_from, t.checkpoint_every_n_steps, t.val_check_interval)
    if resume_from.is_file():
        step = load_checkpoint(resume_from)["global_step"]  # fails here, naming the file, if corrupt
        log.info("pretrain: resuming from %s (step %d of %d)", resume_from, step, t.max_steps)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=strategy(t), num_nodes=t.num_nodes,
        precision=t.precision, max_steps=t.max_steps, max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        val_check_interval=t.val_check_interval * plan.accumulate,  # Lightning counts micro-batches here
        check_val_every_n_epoch=None, limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=plan.accumulate, logger=logger,
        callbacks=[checkpoint, last,
                   Throughput(t.log_every_n_steps, line_every=max(1, t.max_steps // 10),
                              flops_per_token=module.model.flops_per_token(), peak_tflops=t.peak_tflops),
                   *pruning_callbacks(cfg, "pretrain"), *callbacks,  # pruning: on a search trial only
                   *([SnapshotWriter(snapshots_dir, cfg.eval.checkpoints.every_n_steps or t.checkpoint_every_n_steps,
                                     tokenizer_path)] if snapshots_dir else [])],
        profiler=profiler(t.profiler, out_dir),
        enable_progress_bar=t.enable_progress_bar, enable_model_summary=False,
        default_root_dir=str(out_dir), num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()], use_distributed_sampler=False,  # the sampler shards and resumes itself
    )
    with warnings.catch_warnings(), sigterm_between_steps():
        # Lightning warns that a mid-epoch resume may repeat data; ResumableSampler does not.
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from if resume_from.is_file() else None,
                    weights_only=True)  # never unpickle objects from a checkpoint the store may hold

    best_path = checkpoint.best_model_path or checkpoint.last_model_path
    model_dir = out_dir / "model"
    if trainer.is_global_zero:  # one process exports, from a fresh (unsharded) model
        best = build_model(model_config)
        best.load_state_dict(submodule_state(load_checkpoint(best_path)["state_dict"], "model"))
        save_pretrained(best, model_dir, tokenizer_path)
    return {
        "best_checkpoint": str(Path(best_path).relative_to(out_dir)),
        "model_dir": str(model_dir),
        "world_size": trainer.world_size,
        "parameters": n_params,
        "steps": trainer.global_step,
        "best_val_loss": float(checkpoint.best_model_score),
        "last_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
    }
