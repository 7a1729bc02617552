"""How long a fully cached lifecycle takes, and where the time goes, side by side in one run.

    python benchmarks/cached_rerun.py [--repeats 5] [--out outputs/benchmarks/cached_rerun.json] [overrides]

Fills a fresh stage cache with one lifecycle (default overrides: debug=smoke), then times
`python -m flows.lifecycle` again, every stage a cache hit, in three set-ups:

    temporary     no Prefect server configured: Prefect starts a temporary one per run;
                  MLflow in a local SQLite file (the out-of-the-box default)
    prefect       a long-lived local Prefect server (PREFECT_API_URL); SQLite MLflow
    servers       a long-lived Prefect server and a long-lived MLflow server

and beside them `python -m flows.plan` and the fixed costs every run pays: starting Python,
importing the lifecycle's libraries (Prefect, MLflow, Hydra) and MLflow's SQLite store
code. Each figure is the median of --repeats runs. Both servers run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def wait_for(url: str, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.5)
    raise RuntimeError(f"{what} did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "benchmarks" / "cached_rerun")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "cached_rerun.json")
    parser.add_argument("overrides", nargs="*", default=["debug=smoke"])
    args = parser.parse_args()
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    overrides = [*args.overrides, f"paths.root_dir={root}"]
    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base_env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(root / "prefect-home"))
    servers = []
    (root / "mlflow-server").mkdir(exist_ok=True)
    try:
        prefect = subprocess.Popen([PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", "4321"],
                                   env=base_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        servers.append(prefect)
        mlflow_server = subprocess.Popen(
            [PY, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", "5321", "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root}/mlflow-server/mlflow.db",
             "--artifacts-destination", str(root / "mlflow-server" / "artifacts")],
            env={**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        servers.append(mlflow_server)
        wait_for("http://127.0.0.1:4321/api/health", prefect, "prefect server")
        wait_for("http://127.0.0.1:5321/health", mlflow_server, "mlflow server")
        with_prefect = {**base_env, "PREFECT_API_URL": "http://127.0.0.1:4321/api"}
        lifecycle = [PY, "-m", "flows.lifecycle", *overrides]
        setups = {
            "temporary": (lifecycle, base_env),
            "prefect": (lifecycle, with_prefect),
            "servers": ([*lifecycle, "tracking.tracking_uri=http://127.0.0.1:5321"], with_prefect),
        }
        print("filling the cache and both stores ...", flush=True)
        for command, env in setups.values():
            timed(command, env)  # the first run of each set-up: computes, or records in a new store
        fixed = {
            "python": [PY, "-c", "pass"],
            "imports": [PY, "-c", "import flows.lifecycle"],
            "imports_and_sqlite_store": [PY, "-c", "import flows.lifecycle, mlflow.store.tracking.sqlalchemy_store"],
            "plan": [PY, "-m", "flows.plan", *overrides],
        }
        samples: dict[str, list[float]] = {name: [] for name in [*setups, *fixed]}
        for _ in range(args.repeats):  # interleaved, so a slow moment of the machine hits every set-up alike
            for name, (command, env) in setups.items():
                samples[name].append(timed(command, env))
            for name, command in fixed.items():
                samples[name].append(timed(command, with_prefect))
            print({name: round(values[-1], 2) for name, values in samples.items()}, flush=True)
    finally:
        for server in servers:
            try:
                os.killpg(server.pid, 15)
            except ProcessLookupError:  # it died: its error is the one to show
                continue
            server.wait(30)
    median = {name: round(statistics.median(values), 2) for name, values in samples.items()}
    result = {"overrides": args.overrides, "repeats": args.repeats, "median_seconds": median,
              "samples": {name: [round(v, 3) for v in values] for name, values in samples.items()},
              "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(median, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
