"""The lifecycle against a team's tracking server: a real `mlflow server` with a proxied
artifact store, driven through the real CLI (with its own Prefect home).

- Artifacts go where the server says: every artifact and the registered model are in the
  server's artifact store, none on the client's disk.
- A password in the tracking URI reaches the server and is recorded nowhere: every byte
  the runs left behind is searched, the server's database (params, tags, run names) and
  artifact store (config.yaml, models, reports), the outputs and the stage cache (launch
  requests, config.yaml), Prefect's database (flow parameters, states, logs), and what the
  commands printed, a failing one included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.servers import MlflowServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SECRET = "Sup3r-s3cret-w0rd"


def files_holding(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def test_artifacts_go_to_the_server_and_credentials_are_recorded_nowhere(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    with MlflowServer(tmp_path / "server") as server:
        uri = server.url.replace("http://", f"http://alice:{SECRET}@")
        common = ["debug=smoke", f"paths.root_dir={tmp_path / 'root'}", f"tracking.tracking_uri={uri}"]
        ran = subprocess.run([sys.executable, "-m", "flows.lifecycle", *common], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stderr[-4000:]
        # An error whose message names the tracking store.
        failed = subprocess.run([sys.executable, "-m", "flows.finetune", "task=classification",
                                 "init_from=no-such-run", *common], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=600)
        assert failed.returncode == 1
        [line] = [line for line in failed.stderr.splitlines() if line.startswith("finetune failed:")]
        assert "init_from='no-such-run'" in line and "http://alice:***@127.0.0.1" in line, line

        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name("lm-lifecycle")
        runs = {r.data.tags["stage"]: r for r in client.search_runs([experiment.experiment_id])}
        assert runs["lifecycle"].info.status == "FINISHED"
        assert runs["lifecycle"].data.params["tracking.tracking_uri"] == uri.replace(SECRET, "***")
        assert runs["lifecycle"].data.tags["promotion.decision"] == "promoted"
        assert client.get_model_version_by_alias("lm-lifecycle-lm", "champion").run_id == runs["pretrain"].info.run_id

    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    stored = server.artifacts / experiment.experiment_id
    for stage, path in [("pretrain", "model/model.safetensors"), ("pretrain", "config.yaml"),
                        ("data", "report.md"), ("evaluate", "report.md"), ("lifecycle", "summary.md")]:
        assert (stored / runs[stage].info.run_id / "artifacts" / path).is_file(), (stage, path)
    assert list(stored.glob("models/*/artifacts/MLmodel"))  # the registered pyfunc model, on the server
    assert not (tmp_path / "root" / "mlruns").exists()  # nothing on the client's disk

    assert SECRET not in ran.stdout + ran.stderr + failed.stdout + failed.stderr
    assert files_holding(tmp_path, SECRET.encode()) == []
    assert (tmp_path / "root" / "outputs" / "lm-lifecycle" / "config.yaml").is_file()  # searched above
