"""The content-addressed stage cache: what re-runs after which change, and what is never trusted."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lm_tasks.config import load_config
from lm_tasks.stages import run_data, run_evaluate, run_finetune, run_pretrain, run_tokenizer

pytestmark = pytest.mark.slow

TASK = [
    "finetune=classification", "finetune.classification.max_steps=4", "finetune.classification.val_check_interval=2",
    "finetune.classification.data.max_rows=40",
]


def run_stages(overrides: list[str]) -> dict:
    """Every stage in lifecycle order (as the flow runs them); {stage: StageResult}."""
    cfg = load_config(overrides)
    data = run_data(cfg)
    tokens = run_tokenizer(cfg, data)
    pretrained = run_pretrain(cfg, tokens)
    tuned = {task: run_finetune(cfg, task, pretrained) for task in cfg.finetune}
    evaluated = run_evaluate(cfg, tokens, pretrained, tuned)
    return {r.stage: r for r in [data, tokens, pretrained, *tuned.values(), evaluated]}


def ran(results: dict) -> set[str]:
    return {stage for stage, result in results.items() if not result.cached}


@pytest.fixture
def base(smoke_overrides) -> list[str]:
    return smoke_overrides + TASK


def test_each_change_reruns_only_what_it_affects(base, smoke_cfg):
    first = run_stages(base)
    assert ran(first) == {"data", "tokenizer", "pretrain", "finetune:classification", "evaluate"}

    again = run_stages(base)
    assert ran(again) == set()
    assert {s: r.digest for s, r in again.items()} == {s: r.digest for s, r in first.items()}
    assert again["pretrain"].run_id == first["pretrain"].run_id  # the run that produced it

    # Where runs are tracked and how often they log change nothing that is computed.
    other_store = f"sqlite:///{smoke_cfg.paths.root_dir}/other/mlflow.db"
    assert ran(run_stages(base + [f"tracking.tracking_uri={other_store}", "trainer.log_every_n_steps=2",
                                  "trainer.enable_progress_bar=true"])) == set()

    # A fine-tuning hyperparameter: that task and its evaluation; the LM's evaluation is reused.
    tuned = run_stages(base + ["finetune.classification.lr=3e-3"])
    assert ran(tuned) == {"finetune:classification", "evaluate"}
    mlflow.set_tracking_uri(smoke_cfg.tracking.tracking_uri)
    assert MlflowClient().get_run(tuned["evaluate"].run_id).data.tags["cached_parts"] == "lm"

    # A cleaning rule that changes the data: everything downstream.
    cleaned = run_stages(base + ["data.cleaning.max_chars=300"])
    assert ran(cleaned) == set(first)
    assert cleaned["data"].digest != first["data"].digest

    # Refresh on request: the stage recomputes; downstream stages re-run only if its output changed.
    refreshed = run_stages(base + ["cache.refresh=tokenizer"])
    assert "tokenizer" in ran(refreshed) and "data" not in ran(refreshed)
    assert refreshed["tokenizer"].digest == first["tokenizer"].digest  # deterministic: same content
    assert ran(refreshed) == {"tokenizer"}
    assert ran(run_stages(base + ["cache.refresh=all"])) == set(first)


def test_missing_or_corrupt_outputs_are_recomputed_not_used(base):
    first = run_stages(base)
    tokens = Path(first["tokenizer"].output_dir) / "train.bin"
    data = tokens.read_bytes()
    tokens.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])  # one flipped byte
    (Path(first["pretrain"].output_dir) / "model" / "model.safetensors").unlink()

    second = run_stages(base)
    assert ran(second) == {"tokenizer", "pretrain"}  # their rebuilt outputs equal the old ones: the rest hits
    assert tokens.read_bytes() == data
    assert (Path(second["pretrain"].output_dir) / "model" / "model.safetensors").is_file()
    assert second["pretrain"].digest == first["pretrain"].digest


def test_a_remote_store_is_mirrored_and_read_back(base, tmp_path):
    remote = [f"cache.store=file://{tmp_path}/remote-cache", f"cache.staging_dir={tmp_path}/staging"]
    first = run_stages(base + remote)
    assert ran(first) == set(first)
    manifests = sorted(p.parent.parent.name for p in (tmp_path / "remote-cache").glob("*/*/stage.json"))
    assert manifests == sorted(["data", "tokenizer", "pretrain", "finetune-classification", "evaluate",
                                "evaluate-lm", "evaluate-classification"])

    shutil.rmtree(tmp_path / "staging")  # a fresh machine that shares only the store
    second = run_stages(base + remote)
    assert ran(second) == set()
    assert (Path(second["pretrain"].output_dir) / "model" / "model.safetensors").is_file()


def test_a_hostile_store_entry_is_refused_and_the_stage_recomputed(smoke_overrides, tmp_path, caplog):
    """Someone who can write to the shared store plants a manifest naming a file outside the entry."""
    remote = [f"cache.store=file://{tmp_path}/remote-cache", f"cache.staging_dir={tmp_path}/staging"]
    first = run_data(load_config(smoke_overrides + remote))
    [entry] = (tmp_path / "remote-cache" / "data").glob("*/stage.json")
    manifest = json.loads(entry.read_text())
    planted = b"#!/bin/sh\necho owned\n"
    (tmp_path / "remote-cache" / "evil.sh").write_bytes(planted)
    manifest["files"]["../../evil.sh"] = hashlib.sha256(planted).hexdigest()
    manifest["sizes"]["../../evil.sh"] = len(planted)
    entry.write_text(json.dumps(manifest))

    shutil.rmtree(tmp_path / "staging")  # another machine, which fetches from the store
    with caplog.at_level(logging.WARNING, logger="lm_tasks.cache"):
        second = run_data(load_config(smoke_overrides + remote))
    assert not second.cached and second.digest == first.digest
    assert f"refused data entry {first.key[:12]}" in caplog.text and "../../evil.sh" in caplog.text
    assert not (tmp_path / "staging" / "evil.sh").exists() and not list(tmp_path.rglob("staging/**/evil.sh"))
