"""The lifecycle deployed from prefect.yaml and run by a process worker, through the real CLI.

The session's throwaway `prefect server start` on a free local port (conftest's prefect_pool);
the worker and the CLI with their own PREFECT_HOME, and LM_TASKS_ROOT in a temporary folder:
nothing touches ~/.prefect or the repository's outputs/ and mlruns/. The worker starts outside
the repository, so the run reaches the code only through the deployment's set_working_directory
pull step.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.servers import POOL, REPO, Background, api_get, cli, isolated_env, start_worker

pytestmark = pytest.mark.slow

DEPLOYMENT = "lifecycle/lm-lifecycle"
RUN_TIMEOUT = 300
LR = "0.0123"


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory, prefect_pool):
    """A process worker on the session's Prefect server, and the lifecycle and data deployments."""
    tmp_path = tmp_path_factory.mktemp("prefect")
    env = {**isolated_env(tmp_path), "PREFECT_API_URL": prefect_pool}
    background = Background(tmp_path)
    try:
        # The worker starts away from the repository: the pull step must bring the run there.
        start_worker(background, tmp_path, env)
        # `{{ $PWD }}` in prefect.yaml is filled in from the shell's PWD at deploy time.
        cli(["deploy", "--name", "lm-lifecycle", "--name", "lm-data"], {**env, "PWD": str(REPO)}, cwd=REPO)
        yield env
    finally:
        background.stop_all()


def test_lifecycle_deployment_runs_on_a_process_worker(prefect_stack):
    env = prefect_stack
    api_url = env["PREFECT_API_URL"]
    deployment = api_get(api_url, f"/deployments/name/{DEPLOYMENT}")
    assert deployment["entrypoint"] == "flows.lifecycle:lifecycle"
    assert deployment["parameters"] == {"overrides": []}
    assert deployment["work_pool_name"] == POOL
    [pull_step] = deployment["pull_steps"]
    assert pull_step == {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}

    params = json.dumps({"overrides": ["debug=smoke", f"optim.lr={LR}"]})
    result = cli(["deployment", "run", DEPLOYMENT, "--params", params, "--watch",
                  "--watch-timeout", str(RUN_TIMEOUT)], env, timeout=RUN_TIMEOUT + 60)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout).group(1)
    flow_run = api_get(api_url, f"/flow_runs/{flow_run_id}")
    assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
    assert flow_run["parameters"] == {"overrides": ["debug=smoke", f"optim.lr={LR}"]}

    root = Path(env["LM_TASKS_ROOT"])
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("lm-lifecycle")
    assert experiment is not None, f"no MLflow experiment under {root}"
    [parent] = client.search_runs([experiment.experiment_id], "tags.stage = 'lifecycle'")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["optim.lr"] == LR
    assert (root / "outputs" / "lm-lifecycle" / "eval" / "report.md").is_file()


def test_a_sweep_launched_as_deployment_runs_goes_to_the_workers(prefect_stack, tmp_path):
    """hydra/launcher=prefect: each sweep job is a deployment run, taken by the pool's worker."""
    env = prefect_stack
    result = subprocess.run(
        [sys.executable, "-m", "flows.data", "-m", "debug=smoke", "data.max_rows=200,300",
         "hydra/launcher=prefect", "hydra.launcher.poll_seconds=1", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT + 60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    runs = {}
    for number in ("0", "1"):
        record = yaml.safe_load((tmp_path / "sweep" / number / ".hydra" / "flow_run.yaml").read_text())
        runs[number] = api_get(env["PREFECT_API_URL"], f"/flow_runs/{record['id']}")
        assert runs[number]["state"]["type"] == "COMPLETED", runs[number]["state"]
    assert sorted(r["parameters"]["overrides"][-1] for r in runs.values()) == ["data.max_rows=200",
                                                                                "data.max_rows=300"]
    client = MlflowClient(tracking_uri=f"sqlite:///{env['LM_TASKS_ROOT']}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("lm-lifecycle")
    data_runs = client.search_runs([experiment.experiment_id], "tags.stage = 'data' and params.`data.max_rows` != '400'")
    assert sorted(r.data.params["data.max_rows"] for r in data_runs) == ["200", "300"]
