"""Real servers for tests, started and stopped by the test that needs them: a throwaway
`mlflow server`, and a `prefect server` with a process worker, on free local ports.

Every Prefect process gets `isolated_env(tmp_path)`: its own PREFECT_HOME and
LM_TASKS_ROOT, so nothing touches ~/.prefect or the repository's outputs/ and mlruns/."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT = 120
REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect", "--no-prompt"]
POOL = "lm-tasks"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` with a SQLite store and a proxied artifact store, both under `root`;
    stopped (SIGKILL with `hard`, its whole process group) and started again on the same
    port and database when a test needs an outage."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = self.root / "mlflow.db"
        self.artifacts = self.root / "artifacts"
        self.log_file = self.root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination", str(self.artifacts),
                 "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job workers: a faster start
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop(hard=True)
                raise TimeoutError(f"mlflow server not healthy after {STARTUP_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.2)
        return self

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, hard: bool = False) -> None:
        if self.proc is None:
            return
        for sig in ((signal.SIGKILL,) if hard else (signal.SIGTERM, signal.SIGKILL)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-5000:] if self.log_file.exists() else ""

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- Prefect ---------------------------------------------------------------------------------


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
        for name in self.procs:  # in the test's output, for when it failed
            print(f"----- {name} log (tail) -----\n{self.log(name)}", flush=True)

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def api_get(api_url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{api_url}{path}", timeout=10) as response:
        return json.loads(response.read())


def api_post(api_url: str, path: str, body: dict) -> list | dict:
    """A POST to the Prefect API (its /filter endpoints): the decoded answer."""
    request = urllib.request.Request(f"{api_url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for_health(api_url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {server.returncode}")
        try:
            if api_get(api_url, "/health") is True:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {STARTUP_TIMEOUT} s")


def cli(args: list[str], env: dict, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(PREFECT + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    print(f"$ prefect {' '.join(args)}  [exit {result.returncode}]\n{result.stdout}{result.stderr}", flush=True)
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


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




def start_prefect_server(background: Background, tmp_path: Path, env: dict, server_env: dict | None = None) -> dict:
    """A `prefect server` on a free port; returns the environment that talks to it."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server = background.start("server", PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port),
                                                  "--no-ui"], {**env, **(server_env or {})}, tmp_path)
    wait_for_health(api_url, server)
    return {**env, "PREFECT_API_URL": api_url}


def start_prefect(background: Background, tmp_path: Path, env: dict, server_env: dict | None = None) -> dict:
    """A `prefect server` on a free port, the `lm-tasks` process pool and a worker started away
    from the repository; returns the environment that talks to that server."""
    client_env = start_prefect_server(background, tmp_path, env, server_env)
    cli(["work-pool", "create", POOL, "--type", "process"], client_env)
    start_worker(background, tmp_path, client_env)
    return client_env


def start_worker(background: Background, tmp_path: Path, client_env: dict) -> None:
    """A process worker of the `lm-tasks` pool (which must exist), started away from the repository."""
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir(exist_ok=True)
    background.start("worker", PREFECT + ["worker", "start", "--pool", POOL, "--name", "test-worker"],
                     {**client_env, "PWD": str(worker_dir)}, worker_dir)
