"""Pretraining on the embedded corpus learns (held-out loss below the unigram baseline), also compiled."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lm_tasks.config import load_config
from lm_tasks.models.io import load_pretrained
from lm_tasks.stages import run_data, run_evaluate, run_pretrain, run_tokenizer

pytestmark = pytest.mark.slow


def test_short_pretraining_beats_the_unigram_model(tmp_path):
    cfg = load_config([
        f"paths.root_dir={tmp_path}", "data.max_rows=800", "tokenizer.vocab_size=512",
        "model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.block_size=64", "model.dropout=0.0",
        "trainer.max_steps=120", "trainer.global_batch_size=16", "trainer.val_check_interval=60",
        "trainer.enable_progress_bar=false", "eval.max_new_tokens=8",
    ])
    tokens = run_tokenizer(cfg, run_data(cfg))
    pretrained = run_pretrain(cfg, tokens)
    metrics = run_evaluate(cfg, tokens, pretrained).metrics
    assert metrics["eval/lm/loss"] < metrics["eval/lm/baseline_loss"] - 0.3
    assert metrics["eval/lm/loss"] < math.log(512) - 1.5
    assert 0 < metrics["eval/lm/bpb"] < metrics["eval/lm/baseline_bpb"]
    checkpoints = sorted(p.name for p in Path(cfg.paths.pretrain_dir, "checkpoints").iterdir())
    assert checkpoints == ["best.ckpt", "last.ckpt"]
    saved = json.loads(Path(cfg.paths.eval_dir, "report.json").read_text())["lm"]
    assert saved["metrics"]["loss"] == pytest.approx(metrics["eval/lm/loss"])
    assert saved["baseline"]["loss"] == pytest.approx(metrics["eval/lm/baseline_loss"])


def test_compiled_training_matches_eager_and_exports_plain_weights(smoke_overrides):
    eager_cfg = load_config(smoke_overrides + ["trainer.max_steps=12", "model.dropout=0.0"])
    tokens = run_tokenizer(eager_cfg, run_data(eager_cfg))
    eager = run_pretrain(eager_cfg, tokens)
    compiled = run_pretrain(load_config(smoke_overrides + ["trainer.max_steps=12", "model.dropout=0.0",
                                                           "trainer.compile=true"]), tokens)
    assert compiled.key != eager.key
    assert compiled.metrics["pretrain/best_val_loss"] == pytest.approx(eager.metrics["pretrain/best_val_loss"],
                                                                       abs=1e-3)
    model = load_pretrained(Path(compiled.output_dir) / "model")  # parameter names unchanged by compiling
    assert model.config.n_layer == eager_cfg.model.n_layer


def test_muon_pretraining_learns_and_checkpoints_both_optimizers(smoke_overrides):
    cfg = load_config(smoke_overrides + ["optim=muon", "optim.lr=1e-2", "optim.schedule=wsd",
                                         "trainer.max_steps=40", "model.dropout=0.0"])
    tokens = run_tokenizer(cfg, run_data(cfg))
    metrics = run_evaluate(cfg, tokens, run_pretrain(cfg, tokens)).metrics
    assert metrics["eval/lm/loss"] < metrics["eval/lm/baseline_loss"]
    checkpoint = torch.load(Path(cfg.paths.pretrain_dir, "checkpoints", "last.ckpt"), weights_only=True)
    state = checkpoint["optimizer_states"][0]["state"].values()
    hidden = 4 * cfg.model.n_layer  # qkv, attention projection, MLP in and out of every block
    assert sum("momentum_buffer" in s for s in state) == hidden
    assert sum("exp_avg" in s for s in state) == len(state) - hidden > 0
