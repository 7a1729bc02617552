"""Pretraining checkpoints evaluated outside the training process (eval.checkpoints): one
evaluation per snapshot, logged at its step and cached by the weights' digest; an evaluator
that dies never fails the training, and what no evaluator scored is caught up by the next run."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lm_tasks import checkpoint_eval, checkpoint_publisher
from lm_tasks.cache import StageCache
from lm_tasks.checkpoint_eval import EVAL_STAGE, SNAPSHOT_STAGE, Settings, cached_evaluation, listing
from lm_tasks.config import load_config
from lm_tasks.stages import find, run_checkpoint_evaluation, run_data, run_finetune, run_pretrain, run_tokenizer
from tests.servers import api_post

pytestmark = pytest.mark.slow

EVERY_3_OF_9 = ["eval.checkpoints.enabled=true", "trainer.max_steps=9", "trainer.checkpoint_every_n_steps=3",
                "promotion.enabled=false"]


def pretrained(overrides: list[str]):
    cfg = load_config(overrides)
    tokens = run_tokenizer(cfg, run_data(cfg))
    result = run_pretrain(cfg, tokens)
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    return cfg, tokens, result, MlflowClient()


def steps_logged(client: MlflowClient, run_id: str, metric: str = "ckpt/bpb") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def test_each_checkpoint_is_evaluated_by_a_separate_process_at_its_step(smoke_overrides):
    cfg, tokens, result, client = pretrained([*smoke_overrides, *EVERY_3_OF_9])
    listed = listing(Path(result.output_dir))
    assert [item["step"] for item in listed] == [3, 6, 9]
    assert len({item["digest"] for item in listed}) == 3  # the weights changed between checkpoints

    history = client.get_metric_history(result.run_id, "ckpt/bpb")
    assert sorted(m.step for m in history) == [3, 6, 9] and all(0 < m.value < 20 for m in history)
    assert steps_logged(client, result.run_id, "ckpt/perplexity") == [3, 6, 9]

    cache = StageCache(cfg.cache)
    for item in listed:  # each snapshot and each evaluation is a cache entry, keyed by the weights' digest
        snapshot = cache.lookup(SNAPSHOT_STAGE, item["digest"])
        assert snapshot is not None and (snapshot.path / "model.safetensors").is_file()
        scored = cached_evaluation(cache, item["digest"], tokens.digest, Settings.of(cfg))
        assert scored["digest"] == item["digest"] and scored["step"] == item["step"]
        assert [s["prompt"] for s in scored["samples"]] == cfg.eval.prompts
        by_step = {m.step: m.value for m in history}
        assert scored["metrics"]["bpb"] == pytest.approx(by_step[item["step"]])

    log = (Path(result.output_dir) / "evaluator.log").read_text()
    assert "checkpoint evaluation: step 3" in log and "step 9" in log  # the evaluator process did it
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "ckpt")}
    assert artifacts == {"ckpt/curve.png", "ckpt/evaluations.md", "ckpt/evaluator.log", "ckpt/samples"}
    samples = {a.path for a in client.list_artifacts(result.run_id, "ckpt/samples")}
    assert samples == {f"ckpt/samples/step-{s:07d}.json" for s in (3, 6, 9)}
    table = mlflow.artifacts.load_text(f"runs:/{result.run_id}/ckpt/evaluations.md")
    assert re.findall(r"^\| (\d+) \|", table, re.M) == ["3", "6", "9"] and "Best held-out bits per byte" in table
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert not (cache.local / ".snapshots" / f"pretrain-{result.key}").exists()  # staging gone: all in the cache


def test_a_killed_evaluator_never_fails_the_training_and_its_work_is_caught_up(smoke_overrides, monkeypatch,
                                                                                caplog):
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    monkeypatch.setattr(checkpoint_publisher, "EVALUATOR", [sys.executable, "-c", killed])
    with caplog.at_level(logging.INFO, logger="lm_tasks.checkpoint_publisher"):
        cfg, tokens, result, client = pretrained([*smoke_overrides, *EVERY_3_OF_9])
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert "checkpoint evaluator ended with -9" in caplog.text
    assert "3 checkpoint(s) evaluated (3 after training, here)" in caplog.text
    assert steps_logged(client, result.run_id) == [3, 6, 9]


def test_checkpoints_no_evaluator_scored_are_caught_up_by_the_next_run(smoke_overrides, caplog):
    # Announced for a deployment, but no worker runs one (and no Prefect here): nothing is scored.
    cfg, tokens, result, client = pretrained([*smoke_overrides, *EVERY_3_OF_9, "eval.checkpoints.evaluator=deployment"])
    assert [item["step"] for item in listing(Path(result.output_dir))] == [3, 6, 9]
    assert steps_logged(client, result.run_id) == []

    with caplog.at_level(logging.INFO, logger="lm_tasks.stages"):
        _, _, again, _ = pretrained([*smoke_overrides, *EVERY_3_OF_9])  # the next run: pretraining is cached
    assert again.cached and again.run_id == result.run_id
    assert f"caught up 3 checkpoint evaluation(s) of run {result.run_id}" in caplog.text
    assert steps_logged(client, result.run_id) == [3, 6, 9]  # in the run that trained them
    assert {a.path for a in client.list_artifacts(result.run_id, "ckpt")} >= {"ckpt/curve.png", "ckpt/evaluations.md"}

    caplog.clear()
    pretrained([*smoke_overrides, *EVERY_3_OF_9])  # nothing left: nothing scored or logged twice
    assert "caught up" not in caplog.text
    assert len(client.get_metric_history(result.run_id, "ckpt/bpb")) == 3

    # An announcement handled the way the deployment's worker does: a cached evaluation, logged again
    # at its step, and a forged announcement refused before anything is read.
    step3 = listing(Path(result.output_dir))[0]
    metrics = run_checkpoint_evaluation(cfg, result.run_id, 3, step3["digest"], tokens.key)
    assert metrics["ckpt/bpb"] == pytest.approx(client.get_metric_history(result.run_id, "ckpt/bpb")[0].value)
    with pytest.raises(ValueError, match="not a checkpoint announcement"):
        run_checkpoint_evaluation(cfg, result.run_id, 3, "../../etc", tokens.key)
    with pytest.raises(FileNotFoundError, match="snapshot entry of checkpoint 3 is in neither"):
        run_checkpoint_evaluation(cfg, result.run_id, 3, "0" * 64, tokens.key)


def test_snapshots_and_evaluations_from_the_store_are_checked_before_use(smoke_overrides):
    cfg, tokens, result, client = pretrained([*smoke_overrides, *EVERY_3_OF_9])
    cache = StageCache(cfg.cache)
    first, second = listing(Path(result.output_dir))[:2]
    folder = cache.lookup(SNAPSHOT_STAGE, second["digest"]).path
    with pytest.raises(ValueError, match="not the ones of digest"):  # the weights of step 6 named as step 3's
        checkpoint_eval.evaluate_checkpoint(cache, folder, first["digest"], 3, Path(tokens.output_dir),
                                            tokens.digest, Settings(prompts=["x"], seed=1))
    assert not list((cache.local / EVAL_STAGE).glob("*.partial"))  # nothing half-written left

    # A planted evaluation (a well-formed entry whose numbers are not numbers) is scored again.
    settings = Settings.of(cfg)
    key = checkpoint_eval.evaluation_key(first["digest"], tokens.digest, settings)
    with cache.claim(EVAL_STAGE, key) as work:
        (work / checkpoint_eval.RESULT).write_text(json.dumps({"step": 3, "metrics": {"bpb": "<b>1</b>"},
                                                               "samples": []}))
        cache.commit(EVAL_STAGE, key, work, {"stage": EVAL_STAGE, "digest": first["digest"]})
    assert cached_evaluation(cache, first["digest"], tokens.digest, settings) is None
    snapshot = cache.lookup(SNAPSHOT_STAGE, first["digest"]).path
    again = checkpoint_eval.evaluate_checkpoint(cache, snapshot, first["digest"], 3, Path(tokens.output_dir),
                                                tokens.digest, settings)
    assert 0 < again["metrics"]["bpb"] < 20
    assert cached_evaluation(cache, first["digest"], tokens.digest, settings)["metrics"] == again["metrics"]


def test_a_failing_training_stops_the_evaluator_at_once(smoke_overrides, monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint_publisher, "EVALUATOR", [sys.executable, "-c", "import time; time.sleep(600)"])
    cfg = load_config([*smoke_overrides, "eval.checkpoints.enabled=true"])
    tokens = run_tokenizer(cfg, run_data(cfg))
    (tmp_path / "out").mkdir()
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    with mlflow.start_run() as run:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="training failed"):
            with checkpoint_publisher.beside_training(cfg, tmp_path / "snapshots", tokens, "k" * 64,
                                                      run.info.run_id, tmp_path / "out"):
                raise RuntimeError("training failed")
    assert time.monotonic() - started < 30  # not the evaluator's grace period (EVALUATOR_GRACE_S)


def test_finetuning_starts_from_the_checkpoint_best_on_a_chosen_metric(smoke_overrides):
    overrides = [*smoke_overrides, *EVERY_3_OF_9, "eval.checkpoints.probe=sentiment", "finetune=classification"]
    cfg, tokens, result, client = pretrained(overrides)
    probe = {m.step: m.value for m in client.get_metric_history(result.run_id, "ckpt/probe_sentiment_accuracy")}
    bpb = {m.step: m.value for m in client.get_metric_history(result.run_id, "ckpt/bpb")}
    assert sorted(probe) == [3, 6, 9] and all(0 <= v <= 1 for v in probe.values())
    digests = {item["step"]: item["digest"] for item in listing(Path(result.output_dir))}

    for spec, step in [("best:ckpt/bpb", min(bpb, key=lambda s: (bpb[s], s))),
                       ("best:ckpt/probe_sentiment_accuracy", min(probe, key=lambda s: (-probe[s], s))),
                       ("best:ckpt/bpb:max", min(bpb, key=lambda s: (-bpb[s], s)))]:
        tuned = run_finetune(load_config([*overrides, f"init_from={spec}"]), "classification", result)
        assert tuned.inputs["model"] == digests[step], spec  # fine-tuned from that checkpoint's weights
        assert client.get_run(tuned.run_id).data.tags["input.model_digest"] == digests[step]

    with pytest.raises(LookupError, match="no checkpoint of pretraining run .* has an evaluation of 'ckpt/nope'"):
        run_finetune(load_config([*overrides, "init_from=best:ckpt/nope"]), "classification", result)


def test_the_lifecycle_flow_emits_a_prefect_event_per_checkpoint(prefect_harness, prefect_api, smoke_overrides):
    """Under Prefect, each published snapshot is a `lm-tasks.checkpoint.saved` event about the
    pretraining's MLflow run; the local evaluator scores the same snapshots."""
    from flows.lifecycle import lifecycle

    overrides = [*smoke_overrides, *EVERY_3_OF_9, "finetune=none"]
    lifecycle(overrides=overrides)
    cfg = load_config(overrides)
    pretrained = find(cfg, "pretrain")
    listed = listing(Path(pretrained.output_dir))
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    assert steps_logged(MlflowClient(), pretrained.run_id) == [3, 6, 9]

    query = {"filter": {"event": {"name": [checkpoint_eval.EVENT]},
                        "resource": {"id": [f"mlflow.run.{pretrained.run_id}"]}}, "limit": 50}
    deadline = time.monotonic() + 60  # events are sent by Prefect's background worker, then stored
    while len(events := api_post(prefect_api["PREFECT_API_URL"], "/events/filter", query)["events"]) < 3 \
            and time.monotonic() < deadline:
        time.sleep(1)
    assert sorted((e["payload"]["step"], e["payload"]["digest"]) for e in events) == \
        [(item["step"], item["digest"]) for item in listed]
    for event in events:
        assert event["resource"]["lm-tasks.evaluator"] == "local"
        assert event["payload"]["run_id"] == pretrained.run_id and event["payload"]["tokens_key"]
        assert Path(event["payload"]["path"]).name == event["payload"]["digest"]  # the snapshot's cache entry
        assert any(r["prefect.resource.id"].startswith("prefect.flow-run.") for r in event["related"])
