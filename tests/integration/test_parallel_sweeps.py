"""Sweep jobs in parallel (hydra/launcher=joblib): two processes writing one MLflow store
and one stage cache at the same time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two data stages in two processes
def test_two_sweep_jobs_run_at_once_into_one_mlflow_store(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flows.data", "-m", "debug=smoke", f"paths.root_dir={tmp_path}",
         "data.max_rows=200,300", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[multirun] job 0: debug=smoke" in result.stdout and "[multirun] job 1: debug=smoke" in result.stdout

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("lm-lifecycle")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'data'")
    assert sorted(r.data.params["data.max_rows"] for r in runs) == ["200", "300"]
    assert all(r.info.status == "FINISHED" for r in runs)
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time, "the two jobs did not overlap"

    # Each job's record in its own numbered folder of the sweep directory.
    sweep_dir = next((tmp_path / "outputs" / "lm-lifecycle" / "multirun").iterdir())
    jobs = {yaml.safe_load((sweep_dir / n / ".hydra" / "overrides.yaml").read_text())[-1] for n in ("0", "1")}
    assert jobs == {"data.max_rows=200", "data.max_rows=300"}
    assert all((sweep_dir / n / "data.log").stat().st_size > 0 for n in ("0", "1"))
