"""Stage tasks on a Dask cluster through prefect-dask (runner=dask): the data stage runs in a
Dask worker process and its result, cache entry and MLflow run are the ones a local run makes."""

from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from flows.data import data_flow
from lm_tasks.stages import find

pytestmark = pytest.mark.slow


def test_the_data_stage_runs_on_a_local_dask_cluster(smoke_overrides, smoke_cfg):
    with prefect_test_harness(server_startup_timeout=120):
        result = data_flow(overrides=smoke_overrides + ["runner=dask", "runner.n_workers=1"])
    assert result["cached"] is False and result["metrics"]["data/train_rows"] > 0
    assert find(smoke_cfg, "data").digest == result["digest"]  # a local run now finds it in the cache

    mlflow.set_tracking_uri(smoke_cfg.tracking.tracking_uri)
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "data"
    # It ran in a Dask worker process, not in this one.
    assert run.data.tags["pid"] != str(os.getpid())
