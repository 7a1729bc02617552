"""The lifecycle deployed from prefect.yaml and run by a process worker, through the real CLI.

A throwaway `prefect server start` on a free local port, its own PREFECT_HOME, and
LM_TASKS_ROOT in a temporary folder: nothing touches ~/.prefect or the repository's
outputs/ and mlruns/. The worker starts outside the repository, so the run reaches the
code only through the deployment's set_working_directory pull step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect", "--no-prompt"]
POOL = "lm-tasks"
DEPLOYMENT = "lifecycle/lm-lifecycle"
SERVER_TIMEOUT = 120
RUN_TIMEOUT = 300
LR = "0.0123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Background:
    """Long-running CLI processes, each in its own process group, logging to a file."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str, lines: int = 80) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        # The worker turns SIGTERM into a graceful shutdown that can hang: SIGKILL after a grace period.
        for proc in reversed(list(self.procs.values())):
            self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            self._signal(proc, signal.SIGKILL)  # the whole group: no stray flow-run subprocess
            proc.wait()

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def api_get(api_url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{api_url}{path}", timeout=10) as response:
        return json.loads(response.read())


def wait_for_health(api_url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {server.returncode}")
        try:
            if api_get(api_url, "/health") is True:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {SERVER_TIMEOUT} s")


def cli(args: list[str], env: dict, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(PREFECT + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    print(f"$ prefect {' '.join(args)}  [exit {result.returncode}]\n{result.stdout}{result.stderr}", flush=True)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def isolated_env(tmp_path: Path) -> dict:
    """The environment of every Prefect process: no inherited PREFECT_* (profiles, Cloud keys)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick the run up within a second, not ten
        "LM_TASKS_ROOT": str(tmp_path / "root"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",  # no wrapped CLI output
        "PYTHONUNBUFFERED": "1",  # complete logs even from a killed process
    })
    return env


def test_lifecycle_deployment_runs_on_a_process_worker(tmp_path: Path, isolated_env: dict):
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**isolated_env, "PREFECT_API_URL": api_url}
    background = Background(tmp_path)
    try:
        server = background.start("server", PREFECT + ["server", "start", "--host", "127.0.0.1", "--port",
                                                      str(port), "--no-ui"], isolated_env, tmp_path)
        wait_for_health(api_url, server)
        cli(["work-pool", "create", POOL, "--type", "process"], env)

        # The worker starts away from the repository: the pull step must bring the run there.
        worker_dir = tmp_path / "worker"
        worker_dir.mkdir()
        background.start("worker", PREFECT + ["worker", "start", "--pool", POOL, "--name", "test-worker"],
                         {**env, "PWD": str(worker_dir)}, worker_dir)

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
        for name in ("server", "worker"):
            print(f"----- {name} log (tail) -----\n{background.log(name)}", flush=True)

    root = Path(isolated_env["LM_TASKS_ROOT"])
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("lm-lifecycle")
    assert experiment is not None, f"no MLflow experiment under {root}"
    [parent] = client.search_runs([experiment.experiment_id], "tags.stage = 'lifecycle'")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["optim.lr"] == LR
    assert (root / "outputs" / "lm-lifecycle" / "eval" / "report.md").is_file()
