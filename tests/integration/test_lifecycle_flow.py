"""The lifecycle through Prefect, read back from the MLflow store it leaves."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact
from prefect.testing.utilities import prefect_test_harness

from flows.lifecycle import lifecycle
from lm_tasks.config import load_config
from lm_tasks.models.io import load_pretrained
from lm_tasks.stages import read_stage, run_data, run_tokenizer

pytestmark = pytest.mark.slow

STAGES = ("data", "tokenizer", "pretrain", "evaluate")


@pytest.fixture(scope="module")
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def mlflow_client(cfg) -> MlflowClient:
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    return MlflowClient()


def test_lifecycle_leaves_parent_and_child_runs(prefect_harness, smoke_overrides, smoke_cfg):
    result = lifecycle(overrides=smoke_overrides + ["optim.lr=0.002"])
    assert list(result) == list(STAGES)

    client = mlflow_client(smoke_cfg)
    experiment = client.get_experiment_by_name("lm-lifecycle")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("stage") == "lifecycle"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["optim.lr"] == "0.002"
    assert parent.data.params["model.n_embd"] == "32"
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(STAGES)
    assert all(r.info.status == "FINISHED" for r in children.values())
    assert children["evaluate"].data.tags["task"] == "lm"

    # Metrics with the contract's names.
    pretrain = children["pretrain"]
    history = client.get_metric_history(pretrain.info.run_id, "train/loss")
    assert len(history) == smoke_cfg.trainer.max_steps
    for key in ("val/loss", "val/bpb", "train/lr", "train/tokens_per_sec"):
        assert key in pretrain.data.metrics, key
    evaluation = children["evaluate"].data.metrics
    assert evaluation["eval/lm/perplexity"] == pytest.approx(torch.tensor(evaluation["eval/lm/loss"]).exp().item(),
                                                             rel=1e-4)
    assert parent.data.metrics["eval/lm/bpb"] == evaluation["eval/lm/bpb"]

    # Artifacts: config, statistics, tokenizer, exported model, samples, summary.
    def artifacts(run, path=""):
        return {Path(a.path).name for a in client.list_artifacts(run.info.run_id, path)}

    assert {"config.yaml", "summary.md"} <= artifacts(parent)
    assert "stats.json" in artifacts(children["data"])
    assert "tokenizer.json" in artifacts(children["tokenizer"])
    assert artifacts(children["pretrain"], "model") == {"config.json", "model.safetensors", "tokenizer.json"}
    assert {"samples.jsonl", "metrics.json"} <= artifacts(children["evaluate"])

    # The exported model reproduces the evaluated loss.
    model = load_pretrained(Path(smoke_cfg.paths.pretrain_dir) / "model")
    assert model.config.vocab_size == json.loads(Path(smoke_cfg.paths.tokenizer_dir, "meta.json").read_text())["vocab_size"]
    summary = Artifact.get("lifecycle-summary")
    assert summary is not None and all(f"| {stage} |" in summary.data for stage in STAGES)

    samples = [json.loads(line) for line in Path(smoke_cfg.paths.eval_dir, "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == smoke_cfg.eval.prompts


def test_stage_alone_reads_the_previous_stage_output(smoke_overrides):
    cfg = load_config(smoke_overrides)
    with pytest.raises(FileNotFoundError, match=r"No output of the data stage .* python -m flows.data"):
        run_tokenizer(cfg)
    data = run_data(cfg)
    tokens = run_tokenizer(cfg)
    assert read_stage(cfg.paths.tokenizer_dir, "tokenizer").digest == tokens.digest
    client = mlflow_client(cfg)
    run = client.get_run(tokens.run_id)
    assert run.data.tags["stage"] == "tokenizer"
    assert run.data.tags["input.data_digest"] == data.digest
    assert "mlflow.parentRunId" not in run.data.tags


def test_lifecycle_with_classification_fine_tuning(prefect_harness, smoke_overrides, smoke_cfg):
    overrides = smoke_overrides + ["finetune=classification", "finetune.classification.max_steps=4",
                                   "finetune.classification.val_check_interval=2",
                                   "finetune.classification.data.max_rows=64"]
    result = lifecycle(overrides=overrides)
    assert list(result) == ["data", "tokenizer", "pretrain", "finetune:classification", "evaluate"]

    client = mlflow_client(smoke_cfg)
    experiment = client.get_experiment_by_name("lm-lifecycle")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'finetune'")
    assert len(runs) == 1 and runs[0].data.tags["task"] == "classification"
    metrics = runs[0].data.metrics
    for key in ("eval/classification/accuracy", "eval/classification/macro_f1",
                "eval/classification/baseline_accuracy", "val/accuracy", "train/loss"):
        assert key in metrics, key
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"predictions.jsonl", "metrics.json", "confusion_matrix.png", "model"} <= artifacts
    out = Path(smoke_cfg.paths.finetune_dir) / "classification"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 64  # max_rows applies to each split of the embedded set
    assert {p["reference"] for p in predictions} <= {"negative", "positive"}
