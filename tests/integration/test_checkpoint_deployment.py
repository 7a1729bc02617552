"""Checkpoints evaluated through Prefect: a pretraining with eval.checkpoints.evaluator=deployment
emits one `lm-tasks.checkpoint.saved` event per snapshot; the trigger declared in prefect.yaml
starts the `lm-evaluate-checkpoint` deployment for each, a process worker runs it, and the
results land in the pretraining's MLflow run at the checkpoints' steps.

Two machines, as far as the cache can tell: the training and the worker share a cache store at
a file:// URL, each with its own staging folder, so the worker reads the snapshots and the
tokens from the store. They share the MLflow store (the session's `prefect server`, a worker
of this module started away from the repository, everything under a temporary folder).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lm_tasks.checkpoint_eval import EVENT, listing
from lm_tasks.config import load_config
from lm_tasks.stages import find, run_data, run_tokenizer
from tests.servers import REPO, Background, api_get, api_post, cli, isolated_env, start_worker

pytestmark = pytest.mark.slow

DEPLOYMENT = "evaluate-checkpoint/lm-evaluate-checkpoint"
PRETRAIN = ["debug=smoke", "eval.checkpoints.enabled=true", "eval.checkpoints.evaluator=deployment",
            "trainer.max_steps=9", "trainer.checkpoint_every_n_steps=3"]


def machine(root: Path, name: str) -> list[str]:
    """The overrides of one machine: the shared store, a staging folder of its own."""
    return [f"cache.store=file://{root}/shared-cache", f"cache.staging_dir={root}/{name}-staging"]


@pytest.fixture(scope="module")
def evaluation_worker(tmp_path_factory, prefect_pool):
    """A process worker on the session's server, and the evaluate-checkpoint deployment (whose
    trigger becomes an automation). Both go at the end: later modules' events start nothing."""
    tmp_path = tmp_path_factory.mktemp("checkpoint-deployment")
    env = {**isolated_env(tmp_path), "PREFECT_API_URL": prefect_pool}
    background = Background(tmp_path)
    try:
        start_worker(background, tmp_path, env)
        worker_overrides = json.dumps({"overrides": machine(Path(env["LM_TASKS_ROOT"]), "worker")})
        cli(["deploy", "--name", "lm-evaluate-checkpoint", "--params", worker_overrides],
            {**env, "PWD": str(REPO)}, cwd=REPO)
        yield env, background
    finally:
        deployment = api_get(prefect_pool, f"/deployments/name/{DEPLOYMENT}")
        request = urllib.request.Request(f"{prefect_pool}/automations/owned-by/prefect.deployment.{deployment['id']}",
                                         method="DELETE")  # its trigger: `prefect deployment delete` keeps it
        urllib.request.urlopen(request, timeout=30).close()
        cli(["deployment", "delete", DEPLOYMENT], env)
        background.stop_all()


def test_each_checkpoint_event_starts_an_evaluation_on_a_worker(evaluation_worker):
    env, background = evaluation_worker
    api_url, root = env["PREFECT_API_URL"], Path(env["LM_TASKS_ROOT"])
    deployment = api_get(api_url, f"/deployments/name/{DEPLOYMENT}")
    assert deployment["entrypoint"] == "flows.evaluate_checkpoint:evaluate_checkpoint_flow"

    trainer = [*PRETRAIN, *machine(root, "trainer")]
    cfg = load_config([*trainer, f"paths.root_dir={root}"])
    run_tokenizer(cfg, run_data(cfg))  # the inputs, in the store the worker reads
    training = subprocess.run([sys.executable, "-m", "flows.pretrain", *trainer], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    assert training.returncode == 0, training.stdout[-3000:] + training.stderr[-3000:]
    pretrained = find(cfg, "pretrain")
    listed = listing(Path(pretrained.output_dir))
    assert [item["step"] for item in listed] == [3, 6, 9]

    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    deadline = time.monotonic() + 300
    while sorted(m.step for m in client.get_metric_history(pretrained.run_id, "ckpt/bpb")) != [3, 6, 9]:
        if time.monotonic() > deadline:
            pytest.fail("the worker did not evaluate the three checkpoints:\n" + background.log("worker", 120))
        time.sleep(2)

    events = api_post(api_url, "/events/filter", {"filter": {"event": {"name": [EVENT]}}, "limit": 50})["events"]
    ours = [e for e in events if e["resource"]["prefect.resource.id"] == f"mlflow.run.{pretrained.run_id}"]
    assert sorted((e["payload"]["step"], e["payload"]["digest"]) for e in ours) == \
        [(item["step"], item["digest"]) for item in listed]
    assert all(e["resource"]["lm-tasks.evaluator"] == "deployment" for e in ours)

    runs = api_post(api_url, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
    ours = [r for r in runs if r["parameters"].get("run_id") == pretrained.run_id]
    assert sorted(int(r["parameters"]["step"]) for r in ours) == [3, 6, 9]
    deadline = time.monotonic() + 60  # the metrics are logged before the flow run reports its end
    while not all(r["state"]["type"] == "COMPLETED" for r in ours) and time.monotonic() < deadline:
        time.sleep(1)
        ours = [api_get(api_url, f"/flow_runs/{r['id']}") for r in ours]
    assert all(r["state"]["type"] == "COMPLETED" for r in ours), [r["state"] for r in ours]

    artifacts = {a.path for a in client.list_artifacts(pretrained.run_id, "ckpt")}
    assert {"ckpt/curve.png", "ckpt/evaluations.md", "ckpt/samples"} <= artifacts
    fetched = root / "worker-staging"  # the worker's machine got the snapshots and tokens from the store
    assert sorted(p.parent.name for p in (fetched / "snapshot").glob("*/stage.json")) == \
        sorted(item["digest"] for item in listed)
    assert (fetched / "tokenizer").is_dir() and len(list((fetched / "ckpt-eval").glob("*/evaluation.json"))) == 3
    assert len(list((root / "shared-cache" / "ckpt-eval").glob("*/stage.json"))) == 3  # and shared its evaluations
    assert client.get_run(pretrained.run_id).info.status == "FINISHED"


def test_the_trigger_goes_with_the_deployment(evaluation_worker):
    """What the fixture's teardown relies on: the deployment's trigger is an automation it owns."""
    env, _ = evaluation_worker
    deployment = api_get(env["PREFECT_API_URL"], f"/deployments/name/{DEPLOYMENT}")
    automations = api_post(env["PREFECT_API_URL"], "/automations/filter", {})
    owned = [a for a in automations if a["actions"][0].get("deployment_id") == deployment["id"]]
    assert len(owned) == 1 and owned[0]["trigger"]["expect"] == [EVENT]
    assert owned[0]["trigger"]["match"]["lm-tasks.evaluator"] == "deployment"
