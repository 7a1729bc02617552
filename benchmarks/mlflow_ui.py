"""Check that the MLflow UI shows what the docs say, in headless Chromium, with screenshots.

    python benchmarks/mlflow_ui.py [--root DIR] [--out outputs/benchmarks/mlflow_ui]

Runs a two-job sweep (`-m debug=smoke optim.lr=0.003,0.002`) into a fresh store under
--root (skipped when the store already holds it), serves that store with `mlflow server`,
and opens it in Chromium (Playwright driving Debian's /usr/bin/chromium: `apt-get install
chromium`, `pip install playwright`; no browser download). It checks, and screenshots:

1. the experiment's training runs (MLflow 3.17 opens on its GenAI overview unless the "Model
   training" switch or `?workflowType=machine_learning` says otherwise; the lifecycle's
   links carry it), with the two sweep jobs' parent runs, whose names differ at the start;
2. a parent run's page lists its stage runs (data, tokenizer, pretrain, evaluate);
3. the pretraining run's metric charts (train/loss, val/bpb);
4. its artifacts (the model with its card, stage.log);
5. the two parent runs compared side by side (optim.lr, eval/lm/bpb).

Writes report.json (each check, passed or not) and one PNG per check into --out; exits 1 if
any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Without these Chromium keeps trying to reach Google's services, which a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
SWEEP = ["-m", "debug=smoke", "optim.lr=0.003,0.002"]
STAGES = ("data", "tokenizer", "pretrain", "evaluate")
TIMEOUT_MS = 60_000
# MLflow 3's UI opens an experiment on its "GenAI" or "Model training" view as its side switch
# (remembered per browser) or this query says; the lifecycle's links carry it.
TRAINING_VIEW = "workflowType=machine_learning"
SHOWN_CHARACTERS = 18  # of a run's name in the runs table at this width, before its ellipsis


def run_sweep(root: Path) -> None:
    if (root / "mlruns" / "mlflow.db").is_file():
        return
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    subprocess.run([sys.executable, "-m", "flows.lifecycle", *SWEEP, f"paths.root_dir={root}"], cwd=ROOT, env=env,
                   check=True)


def start_server(root: Path, port: int) -> subprocess.Popen:
    log = open(root / "mlflow-server.log", "ab")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{root}/mlruns/mlflow.db", "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"mlflow server did not start: see {root / 'mlflow-server.log'}")


def runs_of(url: str) -> tuple[str, list, dict]:
    """The experiment id, the lifecycle parent runs and their stage runs (parent id -> runs)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(url)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("lm-lifecycle")
    runs = client.search_runs([experiment.experiment_id])
    parents = sorted((r for r in runs if r.data.tags.get("stage") == "lifecycle"), key=lambda r: r.info.run_name)
    children = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
                for p in parents}
    return experiment.experiment_id, parents, children


def check_ui(url: str, out: Path) -> list[dict]:
    from playwright.sync_api import sync_playwright

    experiment_id, parents, children = runs_of(url)
    if len(parents) != 2:
        raise RuntimeError(f"the store holds {len(parents)} lifecycle runs, not the sweep's 2: remove it and run again")
    first = max(parents, key=lambda p: len(children[p.info.run_id]))  # the job that ran every stage
    pretrain = next(r for r in children[first.info.run_id] if r.data.tags["stage"] == "pretrain")
    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 2000})  # tall: charts below the fold render lazily

        def check(name: str, address: str, texts: list[str], extra=None) -> None:
            page.goto(f"{url}/{address}" + ("&" if "?" in address else "?") + TRAINING_VIEW)
            problem, waiting_for = None, None
            try:
                for text in texts:
                    waiting_for = text
                    page.get_by_text(text, exact=False).first.wait_for(timeout=TIMEOUT_MS)
                if extra:
                    problem = extra()
            except Exception as err:
                problem = f"{waiting_for!r} not shown ({type(err).__name__}: {str(err).splitlines()[0]})"
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
            results.append({"check": name, "url": page.url, "expects": texts, "passed": problem is None,
                            "problem": problem})
            print(f"{'ok  ' if problem is None else 'FAIL'} {name}" + (f": {problem}" if problem else ""), flush=True)

        def names_differ_where_shown() -> str | None:
            # the runs table shows about the first 18 characters of a name (see the screenshot)
            shown = [p.info.run_name[:SHOWN_CHARACTERS] for p in parents]
            return None if len(set(shown)) == len(shown) else f"the names look alike where shown: {shown}"

        check("1-experiment-runs", f"#/experiments/{experiment_id}", [p.info.run_name for p in parents],
              names_differ_where_shown)
        check("2-parent-run-children", f"#/experiments/{experiment_id}/runs/{first.info.run_id}",
              [first.info.run_name, *(r.info.run_name for r in children[first.info.run_id])])
        # one chart per metric, grouped by prefix; each chart's legend names its run and metric
        check("3-pretrain-metric-charts", f"#/experiments/{experiment_id}/runs/{pretrain.info.run_id}/model-metrics",
              ["pretrain (train/loss)", "pretrain (val/bpb)", "pretrain (train/tokens_per_sec)"])
        check("4-pretrain-artifacts", f"#/experiments/{experiment_id}/runs/{pretrain.info.run_id}/artifacts",
              ["model", "stage.log", "config.yaml"])
        ids = urllib.parse.quote(json.dumps([p.info.run_id for p in parents]))
        check("5-compare-parents", f"#/compare-runs?runs={ids}&experiments={urllib.parse.quote(json.dumps([experiment_id]))}",
              ["optim.lr", "eval/lm/bpb", *(p.data.params["optim.lr"] for p in parents)])
        browser.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "benchmarks" / "mlflow_ui" / "store")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "mlflow_ui")
    parser.add_argument("--port", type=int, default=5055)
    args = parser.parse_args()
    args.root, args.out = args.root.resolve(), args.out.resolve()
    args.root.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    run_sweep(args.root)
    server = start_server(args.root, args.port)
    try:
        results = check_ui(f"http://127.0.0.1:{args.port}", args.out)
    finally:
        server.terminate()
        server.wait(10)
    (args.out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{sum(r['passed'] for r in results)}/{len(results)} checks passed; screenshots in {args.out}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
