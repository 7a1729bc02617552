"""A tracking server outage loses nothing: a real `mlflow server` (SQLite in tmp_path) is
killed in the middle of a real pretraining and started again on the same port and
database; the stage finishes and its run holds every logged point.

The training process gets MLflow's client with few HTTP retries, so the outage is much
longer than the client's own retries: what saves the metrics is the training logger.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lm_tasks import tracking
from lm_tasks.config import load_config
from tests.servers import MlflowServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OUTAGE_S = 25  # from the kill until the server answers again (its start included)
LOG_EVERY = 10
# A tiny model trained for a fixed time, long enough to go on after the server is back.
TRAINING = ["debug=smoke", "trainer.max_steps=1000000", "trainer.max_minutes=0.75",
            f"trainer.log_every_n_steps={LOG_EVERY}", "trainer.val_check_interval=400",
            "trainer.checkpoint_every_n_steps=400"]
PRETRAIN = """
import json, logging, sys
from pathlib import Path
from lm_tasks.config import load_config
from lm_tasks.stages import run_data, run_pretrain, run_tokenizer
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
cfg = load_config(sys.argv[1:])
result = run_pretrain(cfg, run_tokenizer(cfg, run_data(cfg)))
summary = json.loads((Path(result.output_dir) / "train_summary.json").read_text())
print("RESULT " + json.dumps({"run_id": result.run_id, "steps": summary["steps"], "cached": result.cached}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop(hard=True)


def logged_points(db: Path, key: str) -> int:
    """Rows of `key` in the server's database, read directly (the server may be down)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM metrics WHERE key = ?", (key,)).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def test_an_outage_longer_than_the_clients_retries_mid_pretraining_loses_no_metric(server, tmp_path):
    if not server.answers():
        server.start()
    overrides = [*TRAINING, f"paths.root_dir={tmp_path}", f"tracking.tracking_uri={server.url}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    output = tmp_path / "pretrain.log"
    with open(output, "w") as out:
        training = subprocess.Popen([sys.executable, "-c", PRETRAIN, *overrides], cwd=ROOT, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while logged_points(server.db, "train/loss") < 3:  # some points of this training are in
            assert training.poll() is None, output.read_text()
            assert time.monotonic() < deadline, f"no train/loss logged:\n{output.read_text()}"
            time.sleep(0.2)
        server.stop(hard=True)
        down = time.time()
        time.sleep(max(0.0, OUTAGE_S - 10))  # about 10 s more to start again
        server.start()
        back = time.time()
        training_went_on = training.poll() is None
        training.wait(timeout=300)
    finally:
        if training.poll() is None:
            os.killpg(training.pid, signal.SIGKILL)
    log = output.read_text()
    assert training.returncode == 0, log
    assert "MLflow server unreachable" in log and "MLflow server back after" in log, log
    result = json.loads(log.split("RESULT ")[-1])
    assert not result["cached"]

    client = MlflowClient(server.url)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "pretrain"
    assert "output.digest" in run.data.tags  # the stage's end reached the server too
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    steps = sorted(m.step for m in losses)
    # Lightning logs every LOG_EVERY optimizer steps, and the last one (training stopped on time):
    # every one of them is there, once.
    final = result["steps"] - 1  # the step number Lightning gives the N-th optimizer step's metrics
    expected = sorted(set(range(LOG_EVERY - 1, final, LOG_EVERY)) | {final})
    assert steps == expected, (f"missing {sorted(set(expected) - set(steps))}, "
                               f"unexpected {sorted(set(steps) - set(expected))}, {len(steps)} points")
    during = [m for m in losses if down * 1000 <= m.timestamp <= back * 1000]
    assert len(during) >= 3, f"training stalled during the outage ({back - down:.0f} s)"

    # What an outage costs the training loop: tokens/s logged while the server was away vs up
    # (printed, not asserted: on a loaded machine the local server's own CPU use dominates).
    rates = client.get_metric_history(run.info.run_id, "train/tokens_per_sec")
    away = [m.value for m in rates if down * 1000 <= m.timestamp <= back * 1000]
    up = [m.value for m in rates if not down * 1000 <= m.timestamp <= back * 1000]
    print(f"outage {back - down:.0f} s, training went on after it: {training_went_on}; "
          f"{len(steps)} train/loss points to step {result['steps']}; "
          f"median tokens/s with the server up {statistics.median(up):.0f}, away {statistics.median(away):.0f}")


def test_a_run_whose_block_failed_is_closed_failed_once_the_server_is_back(server, tmp_path, monkeypatch, caplog):
    if not server.answers():
        server.start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: the retries here are ours
    cfg = load_config(["debug=smoke", f"paths.root_dir={tmp_path}", f"tracking.tracking_uri={server.url}",
                       "tracking.outage_patience_minutes=5"])
    restarted = threading.Thread(target=lambda: (time.sleep(3), server.start()))
    with pytest.raises(ValueError, match="the stage's own error"):
        with tracking.tracked_run(cfg, "data") as run:
            server.stop(hard=True)
            restarted.start()
            raise ValueError("the stage's own error")
    restarted.join()
    assert f"Marking MLflow run {run.info.run_id} FAILED failed" in caplog.text  # it was retried
    assert MlflowClient(server.url).get_run(run.info.run_id).info.status == "FAILED"
