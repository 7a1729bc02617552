"""The training logger keeps what it cannot send and never fails or stalls training over an
unreachable server (a closed port); a real SQLite store receives every batch, in order."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from lm_tasks.training import mlflow_logger
from lm_tasks.training.mlflow_logger import OutageTolerantMLFlowLogger


@pytest.fixture
def unreachable(monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def store_run(tmp_path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("logger"))
    return uri, run.info.run_id


def test_every_point_reaches_the_store_in_order_with_its_step_and_time(store_run):
    uri, run_id = store_run
    logger = OutageTolerantMLFlowLogger(uri, run_id, patience_s=120)
    for step in range(1500):  # more than one request's worth: sent in a few merged requests
        logger.log_metrics({"train/loss": 10.0 - step / 1000, "train/lr": 0.1}, step=step)
    logger.log_hyperparams({"model": {"n_layer": 2}})
    logger.finalize("success")
    history = MlflowClient(uri).get_metric_history(run_id, "train/loss")
    assert [m.step for m in history] == list(range(1500))
    assert [m.value for m in history] == [10.0 - step / 1000 for step in range(1500)]
    assert all(a.timestamp <= b.timestamp for a, b in zip(history, history[1:]))
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params == {"model/n_layer": "2"} and run.info.status == "RUNNING"  # the stage ends it


def test_an_unreachable_server_costs_the_training_loop_nothing(unreachable, caplog):
    logger = OutageTolerantMLFlowLogger(unreachable, "0" * 32, patience_s=1.0)
    started = time.perf_counter()
    for step in range(1000):
        logger.log_metrics({"train/loss": 1.0}, step=step)
    assert time.perf_counter() - started < 1.0  # microseconds a call; Lightning's logger blocks for retries
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        logger.finalize("success")  # waits its patience, then reports what it could not send
    assert 0.9 < time.perf_counter() - started < 10
    assert "MLflow server unreachable" in caplog.text
    assert "1000 metric/param batches not sent" in caplog.text


def test_a_failed_training_waits_briefly_and_the_oldest_points_go_first_past_the_bound(unreachable, monkeypatch,
                                                                                        caplog):
    monkeypatch.setattr(mlflow_logger, "FAILED_RUN_GRACE_S", 0.5)
    monkeypatch.setattr(mlflow_logger, "MAX_PENDING", 10)
    logger = OutageTolerantMLFlowLogger(unreachable, "0" * 32, patience_s=600)
    for step in range(25):
        logger.log_metrics({"train/loss": 1.0}, step=step)
    assert [batch["metrics"][0].step for batch in logger._pending][-10:] == list(range(15, 25))
    started = time.perf_counter()
    with caplog.at_level(logging.ERROR):
        logger.finalize("failed")
    assert time.perf_counter() - started < 5
    assert "the 15 oldest metric/param batches were dropped" in caplog.text


def test_a_refused_batch_stops_training_at_the_next_log_call(store_run):
    uri, run_id = store_run
    logger = OutageTolerantMLFlowLogger(uri, run_id, patience_s=60)
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.log_metrics({"bad//name/": 1.0}, step=1)  # MLflow refuses the name: a bug, not an outage
    with pytest.raises(RuntimeError, match="refused metrics"):
        for step in range(2, 1000):
            logger.log_metrics({"train/loss": 1.0}, step=step)
            time.sleep(0.01)
