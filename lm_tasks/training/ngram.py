"""Fitting the n-gram baseline in the pretraining stage's place: counting, not training.

Same inputs (the packed token arrays), same outputs (model/ in the exported format and a
summary) and the same held-out metrics as `pretrain()`, so its runs sit beside the neural
ones in MLflow: `val/loss` and `val/bpb` on the first `trainer.limit_val_batches` validation
micro-batches, the blocks one training process validates on (a fraction there: every
block). The evaluate stage's `eval/lm/bpb`, over the whole split, is the number to compare.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import Logger

from lm_tasks.config import LifecycleConfig
from lm_tasks.data.packing import read_meta
from lm_tasks.evaluation import heldout_loss, lm_metrics
from lm_tasks.models.io import save_pretrained
from lm_tasks.models.ngram import NGramConfig, NGramLM
from lm_tasks.training.distributed import batch_plan

log = logging.getLogger(__name__)


def fit_ngram(cfg: LifecycleConfig, config: NGramConfig, tokens_dir: str | Path, tokenizer_path: str | Path,
              out_dir: str | Path, logger: Logger | bool = False) -> dict:
    """Count the training tokens into an n-gram model; export it; return pretrain()'s summary."""
    out_dir, tokens_dir = Path(out_dir), Path(tokens_dir)
    train = np.memmap(tokens_dir / "train.bin", dtype=read_meta(tokens_dir)["dtype"], mode="r")
    start = time.perf_counter()
    model = NGramLM.fit(config, torch.from_numpy(train.astype(np.int64)))
    seconds = time.perf_counter() - start
    log.info("ngram: order %d fitted on %d tokens in %.1f s: %d n-grams, discounts %s", config.order,
             len(train), seconds, model.num_parameters(), [round(d, 3) for d in model.discounts.tolist()])
    limit = cfg.trainer.limit_val_batches
    loss = heldout_loss(model, tokens_dir, batch_plan(cfg.trainer).micro_batch_size,
                        limit if isinstance(limit, int) else None)
    metrics = {"val/loss": loss, "val/bpb": lm_metrics(loss, tokens_dir)["bpb"],
               "train/tokens_per_sec": len(train) / max(seconds, 1e-9)}
    if logger:
        logger.log_metrics(metrics, step=0)
    model_dir = save_pretrained(model, out_dir / "model", tokenizer_path)
    return {
        "best_checkpoint": "model/model.safetensors",
        "model_dir": str(model_dir),
        "world_size": 1,
        "parameters": model.num_parameters(),
        "steps": 0,
        "best_val_loss": loss,
        "last_metrics": metrics,
    }
