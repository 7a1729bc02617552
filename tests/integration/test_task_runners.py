"""Stage tasks on a Dask cluster through prefect-dask (runner=dask): the data stage runs in a
Dask worker process and its result, cache entry and MLflow run are the ones a local run makes;
independent fine-tuning tasks run at once, one per worker, against one MLflow store and cache."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
import torch
from datasets import Dataset
from mlflow.tracking import MlflowClient

from flows.data import data_flow
from flows.finetune import finetune_flow
from lm_tasks.models.gpt import GPT, GPTConfig
from lm_tasks.models.io import save_pretrained
from lm_tasks.stages import find
from lm_tasks.tasks.embedded import sentiment
from lm_tasks.tokenizer import special_token_ids, train_tokenizer

pytestmark = pytest.mark.slow


def test_the_data_stage_runs_on_a_local_dask_cluster(prefect_harness, smoke_overrides, smoke_cfg):
    result = data_flow(overrides=smoke_overrides + ["runner=dask", "runner.n_workers=1"])
    assert result["cached"] is False and result["metrics"]["data/train_rows"] > 0
    assert find(smoke_cfg, "data").digest == result["digest"]  # a local run now finds it in the cache

    mlflow.set_tracking_uri(smoke_cfg.tracking.tracking_uri)
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "data"
    # It ran in a Dask worker process, not in this one.
    assert run.data.tags["pid"] != str(os.getpid())


def tiny_model(tmp_path: Path, cfg) -> Path:
    """A randomly initialised smoke-size GPT with a tokenizer trained on task texts: a model
    folder to fine-tune (init_from) without running the lifecycle's stages first."""
    texts = Dataset.from_dict({"text": list(sentiment(n_train=200, n_validation=1)["train"]["text"])})
    tokenizer = train_tokenizer(texts, cfg.tokenizer, tmp_path / "tok" / "tokenizer.json")
    ids = special_token_ids(tokenizer, cfg.tokenizer)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=ids.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32,
                          eos_id=ids.eos_id, pad_id=ids.pad_id))
    return save_pretrained(model, tmp_path / "pretrained", tmp_path / "tok" / "tokenizer.json")


def test_fine_tuning_tasks_run_concurrently_on_two_dask_workers(prefect_harness, tmp_path, smoke_overrides,
                                                                smoke_cfg):
    tasks = ["classification", "qa"]
    overrides = smoke_overrides + [f"finetune=[{','.join(tasks)}]", f"init_from={tiny_model(tmp_path, smoke_cfg)}",
                                   "runner=dask", "runner.n_workers=2", "finetune.qa.stride=4"]
    for task in tasks:
        overrides += [f"finetune.{task}.max_steps=2", f"finetune.{task}.val_check_interval=2",
                      f"finetune.{task}.data.max_rows=24"]
    result = finetune_flow(overrides=overrides)
    assert list(result) == tasks and not any(r["cached"] for r in result.values())

    mlflow.set_tracking_uri(smoke_cfg.tracking.tracking_uri)
    runs = [MlflowClient().get_run(result[task]["run_id"]) for task in tasks]
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert [r.data.tags["task"] for r in runs] == tasks
    # Two worker processes, neither this one, ...
    pids = {r.data.tags["pid"] for r in runs}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    # ... at the same time: each run started before the other ended.
    first, second = (r.info for r in runs)
    assert first.start_time < second.end_time and second.start_time < first.end_time
