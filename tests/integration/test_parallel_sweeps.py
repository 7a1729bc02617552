"""Sweep jobs in parallel (hydra/launcher=joblib): processes writing one MLflow store and one
stage cache at the same time, a stage they share computed once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two data stages in two processes
def test_sweep_jobs_run_two_at_once_into_one_mlflow_store_computing_a_shared_stage_once(tmp_path, prefect_api):
    # Four jobs, two at a time: first the two max_rows values at once, then the same again with
    # another data.num_proc, which is not part of the data stage's key: two cache hits.
    result = subprocess.run(
        [sys.executable, "-m", "flows.data", "-m", "debug=smoke", f"paths.root_dir={tmp_path}",
         "data.num_proc=1,2", "data.max_rows=200,300", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        cwd=ROOT, env=prefect_api, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert all(f"[multirun] job {n}: debug=smoke" in result.stdout for n in range(4))
    assert result.stderr.count("Finished in state Cached('cache hit") == 2, result.stderr[-3000:]

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("lm-lifecycle")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'data'")
    assert sorted(r.data.params["data.max_rows"] for r in runs) == ["200", "300"]
    assert all(r.info.status == "FINISHED" for r in runs)
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time, "the two jobs did not overlap"

    # Each job's record in its own numbered folder of the sweep directory.
    sweep_dir = next((tmp_path / "outputs" / "lm-lifecycle" / "multirun").iterdir())
    jobs = [yaml.safe_load((sweep_dir / str(n) / ".hydra" / "overrides.yaml").read_text())[-2:] for n in range(4)]
    assert jobs == [["data.num_proc=1", "data.max_rows=200"], ["data.num_proc=1", "data.max_rows=300"],
                    ["data.num_proc=2", "data.max_rows=200"], ["data.num_proc=2", "data.max_rows=300"]]
    assert all((sweep_dir / str(n) / "data.log").stat().st_size > 0 for n in range(4))
