"""Data-parallel pretraining on CPU: two processes (torchrun, gloo) train what one process trains."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from lm_tasks.config import load_config
from lm_tasks.models.gpt import GPT
from lm_tasks.models.io import load_pretrained
from lm_tasks.stages import run_data, run_pretrain, run_tokenizer
from lm_tasks.training.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow

# The same global batch (8 sequences per optimizer step) on one process, then on two of 4 each.
TRAINING = ["model.dropout=0.0", "trainer.max_steps=12", "trainer.global_batch_size=8",
            "trainer.val_check_interval=3", "trainer.limit_val_batches=1.0", "trainer.log_every_n_steps=1"]


def val_losses(cfg, run_id: str) -> dict[int, float]:
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, "val/loss")}


def test_two_processes_follow_the_single_process_trajectory(smoke_overrides):
    single = load_config(smoke_overrides + TRAINING)
    tokens = run_tokenizer(single, run_data(single))
    one = run_pretrain(single, tokens)
    ddp = load_config(smoke_overrides + TRAINING + ["trainer.devices=2", "trainer.strategy=ddp"])
    two = run_pretrain(ddp, tokens)
    assert two.key != one.key  # a different stage output, cached apart

    # Validation loss at every check: equal up to float summation order (tolerance 1e-5).
    expected, got = val_losses(single, one.run_id), val_losses(ddp, two.run_id)
    assert sorted(got) == sorted(expected) == [2, 5, 8, 11]
    assert max(abs(got[step] - expected[step]) for step in expected) < 1e-5
    assert got[11] < got[2] - 0.2  # and it learned

    # The exported weights and the DDP checkpoint load in this single process.
    a, b = load_pretrained(Path(one.output_dir) / "model"), load_pretrained(Path(two.output_dir) / "model")
    assert max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())) < 1e-5
    state = load_checkpoint(Path(two.output_dir) / "checkpoints" / "best.ckpt")["state_dict"]  # what was exported
    model = GPT(b.config)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    x = torch.randint(0, b.config.vocab_size, (2, b.config.block_size))
    assert torch.allclose(model.eval()(x)[0], b.eval()(x)[0], atol=1e-5)
