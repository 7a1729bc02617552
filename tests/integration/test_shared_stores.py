"""A team's stores: one cache store used from two tracking stores, and a real MLflow tracking
server whose (proxied) artifact store receives every artifact."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from flows.lifecycle import lifecycle
from lm_tasks.promotion import PromotionError

pytestmark = pytest.mark.slow

SERVER_TIMEOUT = 120
MODEL = "lm-lifecycle-lm"


@pytest.fixture(scope="module")
def prefect_harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def lifecycle_run(tracking_uri: str):
    """The client, the experiment and the newest lifecycle run of a tracking store."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("lm-lifecycle")
    parents = client.search_runs([experiment.experiment_id], "tags.stage = 'lifecycle'",
                                 order_by=["attributes.start_time DESC"])
    return client, experiment, parents[0]


def test_a_lifecycle_cached_from_another_tracking_store_still_registers_and_promotes(prefect_harness, tmp_path):
    # One cache store (under root_dir), two tracking stores.
    common = ["debug=smoke", f"paths.root_dir={tmp_path}"]
    store_a, store_b = f"sqlite:///{tmp_path}/a/mlflow.db", f"sqlite:///{tmp_path}/b/mlflow.db"
    first = lifecycle(overrides=common + [f"tracking.tracking_uri={store_a}"])
    second = lifecycle(overrides=common + [f"tracking.tracking_uri={store_b}"])
    assert all(stage["cached"] for stage in second.values())

    client, _, parent = lifecycle_run(store_b)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    for stage in first:  # every stage's producing run is in store A, and the tags say so
        assert tags[f"stage.{stage}.run_id"] == first[stage]["run_id"]
        assert tags[f"stage.{stage}.tracking"] == "other-store"
    assert tags["promotion.decision"] == "promoted"
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == parent.info.run_id  # the model was logged again into this store
    assert champion.tags["model_digest"] == first["pretrain"]["digest"]
    generated = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(["def"], params={"max_new_tokens": 2})
    assert list(generated.columns) == ["prompt", "generation"]

    _, _, parent_a = lifecycle_run(store_a)  # in its own store, the first lifecycle's runs are here
    assert parent_a.data.tags["stage.pretrain.tracking"] == "this-store"

    # A registry error (the registry refuses the reserved alias name) stops the promotion
    # visibly: the lifecycle fails, its run says why, no alias moves.
    with pytest.raises(PromotionError, match="registry error, 'latest' not moved: .*reserved"):
        lifecycle(overrides=common + [f"tracking.tracking_uri={store_b}", "promotion.alias=latest"])
    client, _, failed = lifecycle_run(store_b)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["promotion.decision"] == "error" and "reserved" in failed.data.tags["promotion.reason"]
    assert set(client.get_registered_model(MODEL).aliases) == {"champion"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` with proxied artifacts in tmp_path/server-artifacts; yields its URL."""
    port, folder = free_port(), tmp_path / "server"
    folder.mkdir()
    log = open(folder / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"mlflow server not up after {SERVER_TIMEOUT} s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_with_a_tracking_server_artifacts_go_to_the_servers_store(prefect_harness, tmp_path, mlflow_server):
    lifecycle(overrides=["debug=smoke", f"paths.root_dir={tmp_path}", f"tracking.tracking_uri={mlflow_server}"])

    client, experiment, parent = lifecycle_run(mlflow_server)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    runs = {r.data.tags["stage"]: r for r in client.search_runs([experiment.experiment_id])}
    stored = tmp_path / "server-artifacts" / experiment.experiment_id

    def on_server(stage: str, path: str) -> Path:
        return stored / runs[stage].info.run_id / "artifacts" / path

    assert on_server("pretrain", "model/model.safetensors").is_file()
    assert on_server("pretrain", "config.yaml").is_file()
    assert on_server("data", "report.md").is_file()
    assert on_server("evaluate", "report.md").is_file()
    assert on_server("lifecycle", "summary.md").is_file()
    assert parent.data.tags["promotion.decision"] == "promoted"
    assert client.get_model_version_by_alias(MODEL, "champion").run_id == runs["pretrain"].info.run_id
    assert list(stored.glob("models/*/artifacts/MLmodel"))  # the registered pyfunc model, on the server
    assert not (tmp_path / "mlruns").exists()  # nothing on the client's disk
