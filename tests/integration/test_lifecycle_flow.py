"""The lifecycle through Prefect, read back from the MLflow store it leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterName

from flows.common import run_cli
from flows.lifecycle import lifecycle
from lm_tasks.config import load_config
from lm_tasks.models.io import load_pretrained
from lm_tasks.stages import MissingStageError, find, pretrained_model, run_data, run_tokenizer

pytestmark = pytest.mark.slow

STAGES = ("data", "tokenizer", "pretrain", "evaluate")


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
    assert {"report.json", "report.md", "dropped_samples.jsonl", "lengths.png", "manifest.json"} <= \
        artifacts(children["data"])
    data_inputs = client.get_run(children["data"].info.run_id).inputs.dataset_inputs
    manifest = json.loads(Path(smoke_cfg.paths.data_dir, "manifest.json").read_text())
    assert [i.dataset.digest for i in data_inputs] == [manifest["digest"][:32]]
    report = json.loads(Path(smoke_cfg.paths.data_dir, "report.json").read_text())
    length = next(step for step in report["steps"]["train"] if step["step"] == "length")
    assert children["data"].data.metrics["data/train/length_dropped"] == length["rows_in"] - length["rows_out"] > 0
    assert "tokenizer.json" in artifacts(children["tokenizer"])
    assert artifacts(children["pretrain"], "model") == {"config.json", "model.safetensors", "tokenizer.json",
                                                        "README.md"}  # the model card
    # Each stage's log: in its cache entry and on its run.
    for stage in STAGES:
        assert "stage.log" in artifacts(children[stage]), stage
        assert (Path(result[stage]["output_dir"]) / "stage.log").is_file(), stage
    assert "train/loss" in (Path(result["pretrain"]["output_dir"]) / "stage.log").read_text()
    assert {"lm", "report.json", "report.md"} <= artifacts(children["evaluate"])
    assert "samples.jsonl" in artifacts(children["evaluate"], "lm")

    # The exported model reproduces the evaluated loss.
    model = load_pretrained(Path(smoke_cfg.paths.pretrain_dir) / "model")
    meta = json.loads(Path(smoke_cfg.paths.tokenizer_dir, "meta.json").read_text())
    assert model.config.vocab_size == meta["vocab_size"]
    summary = Artifact.get("lifecycle-summary")
    assert summary is not None and all(f"| {stage} |" in summary.data for stage in STAGES)
    link = (f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
            "?workflowType=machine_learning")
    assert f"MLflow run [`{parent.info.run_id}`]({link})" in summary.data  # the Prefect run links the MLflow one
    name = " ".join(smoke_overrides + ["optim.lr=0.002"])
    name = name if len(name) <= 100 else name[:99] + "…"
    with get_client(sync_client=True) as prefect:
        assert prefect.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    data_report = Artifact.get("data-report")
    assert data_report is not None and "| near_dedup |" in data_report.data

    samples = Path(smoke_cfg.paths.eval_dir, "lm", "samples.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in samples]
    assert [s["prompt"] for s in samples] == smoke_cfg.eval.prompts

    # The first lifecycle's model becomes the registry's champion; the decision is on the run.
    assert parent.data.tags["promotion.decision"] == "promoted"
    assert parent.data.metrics["promotion/candidate"] == evaluation["eval/lm/bpb"]
    champion = client.get_model_version_by_alias("lm-lifecycle-lm", "champion")
    assert champion.run_id == pretrain.info.run_id

    # The champion is a pyfunc model: a fresh process loads it from the registry and generates.
    code = ("import json, mlflow; m = mlflow.pyfunc.load_model('models:/lm-lifecycle-lm@champion'); "
            "print(json.dumps(m.predict(['def main'], params={'max_new_tokens': 4}).to_dict('records')))")
    env = {**os.environ, "MLFLOW_TRACKING_URI": smoke_cfg.tracking.tracking_uri}
    served = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert served.returncode == 0, served.stderr[-2000:]
    [row] = json.loads(served.stdout.strip().splitlines()[-1])
    assert row["prompt"] == "def main" and isinstance(row["generation"], str)


def test_unchanged_lifecycle_reruns_entirely_from_the_cache(prefect_harness, smoke_overrides, smoke_cfg):
    first = lifecycle(overrides=smoke_overrides)
    state = lifecycle(overrides=smoke_overrides, return_state=True)
    second = state.result()
    assert all(r["cached"] for r in second.values())
    assert {s: r["digest"] for s, r in second.items()} == {s: r["digest"] for s, r in first.items()}

    # Prefect shows every stage task in its Cached state ...
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert sorted(t.state.name for t in task_runs) == ["Cached"] * len(STAGES)
    # ... and the second MLflow parent run records it, pointing at the runs that did the work.
    client = mlflow_client(smoke_cfg)
    experiment = client.get_experiment_by_name("lm-lifecycle")
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'lifecycle'",
                                 order_by=["attributes.start_time ASC"])
    assert len(parents) == 2
    assert parents[1].data.tags["cached_stages"] == ",".join(STAGES)
    assert parents[1].data.metrics["lifecycle/cached_stages"] == len(STAGES)
    assert parents[1].data.tags["stage.pretrain.run_id"] == first["pretrain"]["run_id"]
    assert not client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parents[1].info.run_id}'")
    assert parents[1].data.tags["promotion.decision"] == "kept"


def test_a_sweep_is_one_lifecycle_per_job_sharing_upstream_stages(prefect_harness, smoke_overrides, smoke_cfg):
    task = ["finetune=classification", "finetune.classification.max_steps=2",
            "finetune.classification.val_check_interval=2", "finetune.classification.data.max_rows=24"]
    run_cli(lifecycle, ["-m", *smoke_overrides, *task, "finetune.classification.lr=1e-3,2e-3"])

    client = mlflow_client(smoke_cfg)
    experiment = client.get_experiment_by_name("lm-lifecycle")
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'lifecycle'")
    assert sorted(p.data.params["finetune.classification.lr"] for p in parents) == ["0.001", "0.002"]
    assert sorted(p.info.run_name.split()[0] for p in parents) == [  # what differs comes first
        "finetune.classification.lr=0.001", "finetune.classification.lr=0.002"]
    assert all(p.info.run_name.endswith("(embedded-bpe300-tiny)") and "paths.root_dir" not in p.info.run_name
               for p in parents)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on training runs
    for stage, count in {"data": 1, "tokenizer": 1, "pretrain": 1, "finetune": 2, "evaluate": 2}.items():
        assert len(client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'")) == count, stage


def test_stage_alone_finds_the_previous_stage_in_the_cache(smoke_overrides):
    cfg = load_config(smoke_overrides)
    with pytest.raises(MissingStageError, match=r"No cached output of the data stage .* python -m flows.data"):
        run_tokenizer(cfg)
    data = run_data(cfg)
    tokens = run_tokenizer(cfg)
    assert find(cfg, "tokenizer").digest == tokens.digest
    client = mlflow_client(cfg)
    run = client.get_run(tokens.run_id)
    assert run.data.tags["stage"] == "tokenizer"
    assert run.data.tags["input.data_digest"] == data.digest
    assert "mlflow.parentRunId" not in run.data.tags


TASK_METRICS = {"classification": "accuracy", "qa": "f1", "summarization": "rouge1", "translation": "bleu"}


def test_lifecycle_fine_tunes_every_task(prefect_harness, smoke_overrides, smoke_cfg):
    overrides = smoke_overrides + ["finetune=all", "finetune.qa.stride=4"]
    for task in TASK_METRICS:
        overrides += [f"finetune.{task}.max_steps=4", f"finetune.{task}.val_check_interval=2",
                      f"finetune.{task}.data.max_rows=24", f"finetune.{task}.max_new_tokens=6"]
    result = lifecycle(overrides=overrides)
    assert list(result) == ["data", "tokenizer", "pretrain", *[f"finetune:{t}" for t in smoke_cfg_tasks()],
                            "evaluate"]

    client = mlflow_client(smoke_cfg)
    experiment = client.get_experiment_by_name("lm-lifecycle")
    runs = {r.data.tags["task"]: r for r in client.search_runs([experiment.experiment_id], "tags.stage = 'finetune'")}
    assert set(runs) == set(TASK_METRICS)
    [evaluation] = client.search_runs([experiment.experiment_id], "tags.stage = 'evaluate'")
    [parent] = client.search_runs([experiment.experiment_id], "tags.stage = 'lifecycle'")
    eval_artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {"report.json", "report.md", *TASK_METRICS} <= eval_artifacts
    report = json.loads((Path(smoke_cfg.paths.eval_dir) / "report.json").read_text())
    assert set(report) == {"lm", *TASK_METRICS}
    for task, metric in TASK_METRICS.items():
        assert "train/loss" in runs[task].data.metrics
        assert {a.path for a in client.list_artifacts(runs[task].info.run_id)} >= {"model", "train_summary.json"}
        value = evaluation.data.metrics[f"eval/{task}/{metric}"]
        assert value == report[task]["metrics"][metric] == parent.data.metrics[f"eval/{task}/{metric}"]
        assert f"eval/{task}/baseline_{metric}" in evaluation.data.metrics
        assert f"| {task} | {metric} |" in (Path(smoke_cfg.paths.eval_dir) / "report.md").read_text()
        task_files = {a.path.split("/")[-1] for a in client.list_artifacts(evaluation.info.run_id, task)}
        assert {"predictions.jsonl", "metrics.json"} <= task_files
        lines = (Path(smoke_cfg.paths.eval_dir) / task / "predictions.jsonl").read_text().splitlines()
        assert lines and all("prediction" in json.loads(line) for line in lines)
    assert "confusion_matrix.png" in {a.path.split("/")[-1]
                                      for a in client.list_artifacts(evaluation.info.run_id, "classification")}

    # Fine-tuning can start from any pretraining run, by MLflow run id.
    [pretrain] = client.search_runs([experiment.experiment_id], "tags.stage = 'pretrain'")
    model_dir, digest = pretrained_model(load_config(smoke_overrides + [f"init_from={pretrain.info.run_id}"]))
    assert digest == result["pretrain"]["digest"] and (model_dir / "tokenizer.json").is_file()


def smoke_cfg_tasks() -> list[str]:
    return ["classification", "qa", "summarization", "translation"]  # finetune=all, in its defaults order
