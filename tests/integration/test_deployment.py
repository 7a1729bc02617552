"""The lifecycle deployed from prefect.yaml and run by a process worker, through the real CLI.

A throwaway `prefect server start` on a free local port, its own PREFECT_HOME, and
LM_TASKS_ROOT in a temporary folder: nothing touches ~/.prefect or the repository's
outputs/ and mlruns/. The worker starts outside the repository, so the run reaches the
code only through the deployment's set_working_directory pull step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.servers import POOL, REPO, Background, api_get, cli, isolated_env, start_prefect

pytestmark = pytest.mark.slow

DEPLOYMENT = "lifecycle/lm-lifecycle"
RUN_TIMEOUT = 300
LR = "0.0123"


def test_lifecycle_deployment_runs_on_a_process_worker(tmp_path: Path):
    isolated = isolated_env(tmp_path)
    background = Background(tmp_path)
    try:
        # The worker starts away from the repository: the pull step must bring the run there.
        env = start_prefect(background, tmp_path, isolated)
        api_url = env["PREFECT_API_URL"]

        # `{{ $PWD }}` in prefect.yaml is filled in from the shell's PWD at deploy time.
        cli(["deploy", "--name", DEPLOYMENT], {**env, "PWD": str(REPO)}, cwd=REPO)
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
    finally:
        background.stop_all()

    root = Path(isolated["LM_TASKS_ROOT"])
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("lm-lifecycle")
    assert experiment is not None, f"no MLflow experiment under {root}"
    [parent] = client.search_runs([experiment.experiment_id], "tags.stage = 'lifecycle'")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["optim.lr"] == LR
    assert (root / "outputs" / "lm-lifecycle" / "eval" / "report.md").is_file()
