"""Pretraining checkpoints evaluated outside the training process (eval.checkpoints): one
evaluation per snapshot, logged at its step; an evaluator that dies never fails the training."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lm_tasks import stages
from lm_tasks.checkpoint_eval import RESULT, snapshots
from lm_tasks.config import load_config
from lm_tasks.stages import run_data, run_pretrain, run_tokenizer

pytestmark = pytest.mark.slow

EVERY_3_OF_9 = ["eval.checkpoints.enabled=true", "trainer.max_steps=9", "trainer.checkpoint_every_n_steps=3",
                "promotion.enabled=false"]


def pretrained(overrides: list[str]):
    cfg = load_config(overrides)
    result = run_pretrain(cfg, run_tokenizer(cfg, run_data(cfg)))
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    snapshot_dir = Path(cfg.cache.store) / ".snapshots" / f"pretrain-{result.key}"
    return cfg, result, MlflowClient(), snapshot_dir


def test_each_checkpoint_is_evaluated_by_a_separate_process_at_its_step(smoke_overrides):
    cfg, result, client, snapshot_dir = pretrained([*smoke_overrides, *EVERY_3_OF_9])
    assert [s.step for s in snapshots(snapshot_dir)] == [3, 6, 9]
    history = client.get_metric_history(result.run_id, "ckpt/bpb")
    assert sorted(m.step for m in history) == [3, 6, 9] and all(m.value > 0 for m in history)
    for snapshot in snapshots(snapshot_dir):  # each scored once, of the weights it names
        scored = json.loads((snapshot.path / RESULT).read_text())
        assert scored["digest"] == snapshot.digest and scored["step"] == snapshot.step
    log = (snapshot_dir / "evaluator.log").read_text()
    assert "checkpoint evaluation: step 3" in log and "step 9" in log  # the evaluator process did it
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "ckpt")}
    assert artifacts == {"ckpt/curve.png", "ckpt/evaluations.md"}
    assert client.get_run(result.run_id).info.status == "FINISHED"


def test_an_evaluator_that_dies_never_fails_the_training_and_its_work_is_caught_up(smoke_overrides, monkeypatch,
                                                                                   caplog):
    monkeypatch.setattr(stages, "EVALUATOR", [sys.executable, "-c", "import sys; sys.exit(3)"])
    with caplog.at_level(logging.WARNING, logger="lm_tasks.stages"):
        cfg, result, client, snapshot_dir = pretrained([*smoke_overrides, *EVERY_3_OF_9])
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert "checkpoint evaluator ended with 3" in caplog.text
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "ckpt/bpb")) == [3, 6, 9]


def test_a_failing_training_stops_the_evaluator_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "EVALUATOR", [sys.executable, "-c", "import time; time.sleep(600)"])
    cfg = load_config(["debug=smoke", f"paths.root_dir={tmp_path}", "eval.checkpoints.enabled=true"])
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="training failed"):
        with stages.checkpoint_evaluator(cfg, tmp_path / "snapshots", tmp_path / "tokens", run_id="unused"):
            raise RuntimeError("training failed")
    assert time.monotonic() - started < 30  # not the evaluator's grace period (EVALUATOR_GRACE_S)
