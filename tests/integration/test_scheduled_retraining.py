"""Scheduled retraining as it really happens: prefect.yaml's `weekly-retrain` deployment,
given a short interval on the session's throwaway server, fires twice; a process worker runs each
firing; each run records its promotion decision. The second is served from the cache (only
the refreshed data stage runs, and its output is unchanged) and leaves the champion as it was.

One run at a time (a deployment concurrency limit of 1): a firing that comes due while the
previous one still runs waits for it, so the second run starts right after the first ends,
however long the first takes, instead of a fixed minute later.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.servers import REPO, Background, api_get, cli, isolated_env, start_worker

pytestmark = pytest.mark.slow

DEPLOYMENT = "lifecycle/weekly-retrain"
OVERRIDES = ["debug=smoke", "cache.refresh=data", "promotion.enabled=true"]
INTERVAL = 15
TIMEOUT = 600


def flow_runs(api_url: str, deployment_id: str) -> list[dict]:
    body = json.dumps({"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"})
    request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_scheduled_retraining_fires_twice_and_the_second_changes_nothing(tmp_path: Path, prefect_pool):
    # The server's scheduler looks for due schedules every 2 s instead of every minute; a run
    # waiting for the deployment's concurrency slot tries again after 1 s instead of 30 (conftest).
    isolated = isolated_env(tmp_path)
    api_url = prefect_pool
    env = {**isolated, "PREFECT_API_URL": api_url}
    background = Background(tmp_path)
    try:
        start_worker(background, tmp_path, env)
        anchor = (datetime.now(timezone.utc) + timedelta(seconds=5)).isoformat()
        cli(["deploy", "--name", DEPLOYMENT, "--interval", str(INTERVAL), "--anchor-date", anchor,
             "--params", json.dumps({"overrides": OVERRIDES})],
            {**env, "PWD": str(REPO)}, cwd=REPO)
        deployment = api_get(api_url, f"/deployments/name/{DEPLOYMENT}")
        # prefect.yaml's weekly cron, plus the interval given here (the cron will not fire during the test).
        kinds = sorted("cron" if "cron" in s["schedule"] else "interval" for s in deployment["schedules"])
        assert kinds == ["cron", "interval"] and all(s["active"] for s in deployment["schedules"])
        assert deployment["global_concurrency_limit"]["limit"] == 1  # prefect.yaml: retrains never overlap

        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            runs = flow_runs(api_url, deployment["id"])
            finished = [r for r in runs if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED")]
            if len(finished) >= 2:
                break
            time.sleep(2)
        assert len(finished) >= 2, f"two scheduled runs did not finish within {TIMEOUT} s: {runs}"
        first, second = finished[:2]
        assert [r["state"]["type"] for r in (first, second)] == ["COMPLETED", "COMPLETED"]
        assert all(r["auto_scheduled"] and r["parameters"] == {"overrides": OVERRIDES} for r in (first, second))
    finally:
        background.stop_all()
        # The server outlives this test: no more firings of its deployment.
        request = urllib.request.Request(f"{api_url}/deployments/name/{DEPLOYMENT}", method="GET")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                deployment_id = json.loads(response.read())["id"]
            urllib.request.urlopen(urllib.request.Request(f"{api_url}/deployments/{deployment_id}",
                                                          method="DELETE"), timeout=10).close()
        except OSError:  # never deployed
            pass

    root = Path(isolated["LM_TASKS_ROOT"])
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("lm-lifecycle")
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'lifecycle'",
                                 order_by=["attributes.start_time ASC"])
    assert len(parents) >= 2 and all(p.info.status == "FINISHED" for p in parents[:2])
    retrain, again = parents[:2]
    assert retrain.data.tags["promotion.decision"] == "promoted"
    assert again.data.tags["promotion.decision"] == "kept"
    assert again.data.tags["promotion.version"] == retrain.data.tags["promotion.version"]
    assert set(again.data.tags["cached_stages"].split(",")) == {"tokenizer", "pretrain", "evaluate"}
    champion = client.get_model_version_by_alias("lm-lifecycle-lm", "champion")
    assert str(champion.version) == retrain.data.tags["promotion.version"]
