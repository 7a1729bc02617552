"""A hyperparameter search from the command line, as a user runs it: killed mid-trial and
continued by the same command; a trial the pruner stops is recorded PRUNED.

    python -m flows.lifecycle hparams_search=tpe debug=smoke ...
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lm_tasks import search

ROOT = Path(__file__).resolve().parents[2]
STUDY = "e2e"
CLI = [sys.executable, "-m", "flows.lifecycle"]


def command(tmp_path: Path, *overrides: str) -> list[str]:
    return [*CLI, "hparams_search=tpe", "debug=smoke", f"paths.root_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/multirun", f"hydra.sweeper.study_name={STUDY}", *overrides]


def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/outputs/lm-lifecycle/hparams_search/optuna.db"


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own process group, killed as one


def states(tmp_path: Path) -> list[str]:
    """The trials' states, read without opening Optuna's storage (which would create its
    tables, racing the search doing the same)."""
    db = tmp_path / "outputs" / "lm-lifecycle" / "hparams_search" / "optuna.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return [state for (state,) in connection.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.Error:  # not created yet
        return []


def pretraining(tmp_path: Path) -> bool:
    """A pretraining is under way: its cache entry is still partial (a sleep after the trial
    started was not enough on a fast machine: the whole smoke trial could finish in it)."""
    pretrain = tmp_path / "outputs" / "cache" / "pretrain"
    return pretrain.is_dir() and any(p.name.endswith(".partial") for p in pretrain.iterdir())


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the search ended (exit {process.returncode}) before it could be killed:\n"
                        + log.read_text()[-4000:])
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("timed out waiting for the search:\n" + log.read_text()[-4000:])
        time.sleep(0.5)


def finish(cmd: list[str], log: Path, env: dict, timeout: float = 300) -> None:
    process = start(cmd, log, env)
    try:
        assert process.wait(timeout=timeout) == 0, log.read_text()[-6000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def mlflow_client(tmp_path: Path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    return client, client.get_experiment_by_name("lm-lifecycle").experiment_id


@pytest.mark.slow  # two searches of smoke lifecycles (about a minute on 2 cores)
def test_a_killed_search_continues_where_it_stopped(tmp_path, prefect_api):
    cmd, log = command(tmp_path, "hydra.sweeper.n_trials=2"), tmp_path / "search.log"
    process = start(cmd, log, prefect_api)
    try:  # kill the whole search (Prefect server included) while the second trial trains
        wait_for(lambda: {"COMPLETE", "RUNNING"} <= set(states(tmp_path)) and pretraining(tmp_path),
                 process, log, timeout=240)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finish(cmd, log, prefect_api)  # the same command again

    study = optuna.load_study(study_name=STUDY, storage=storage(tmp_path))
    everything = study.get_trials()
    interrupted = [t for t in everything if t.user_attrs.get(search.INTERRUPTED)]
    counted = [t for t in everything if search.counted(t)]
    assert len(interrupted) == 1 and interrupted[0].state == TrialState.FAIL
    assert len(counted) == 2 and all(t.state == TrialState.COMPLETE for t in counted)
    [retry] = [t for t in counted if t.user_attrs.get(search.RETRY_OF) == interrupted[0].number]
    assert retry.params == interrupted[0].params
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 2  # nothing else ran twice

    client, experiment_id = mlflow_client(tmp_path)
    [search_run] = client.search_runs([experiment_id], f"tags.stage = 'search' and tags.`search.study` = '{STUDY}'")
    tags = search_run.data.tags
    best = search.best_trial(study)
    assert search_run.info.status == "FINISHED" and tags["search.best_trial"] == str(best.number)
    assert float(tags["search.best_value"]) == pytest.approx(best.value)
    plots = {a.path for a in client.list_artifacts(search_run.info.run_id, "plots")}
    assert plots == {"plots/optimization_history.png", "plots/param_importances.png"}
    assert {a.path for a in client.list_artifacts(search_run.info.run_id)} >= {"trials.csv", "summary.md"}

    lifecycles = client.search_runs([experiment_id], f"tags.stage = 'lifecycle' and tags.`search.study` = '{STUDY}'")
    assert {r.data.tags["mlflow.parentRunId"] for r in lifecycles} == {search_run.info.run_id}
    finished = {int(r.data.tags["search.trial"]): r for r in lifecycles if r.info.status == "FINISHED"}
    assert set(finished) == {t.number for t in counted}  # the retry continued the killed trial's run
    assert [n for n, r in finished.items() if r.data.tags.get("search.best") == "true"] == [best.number]


@pytest.mark.slow  # one smoke lifecycle
def test_a_pruned_trial_is_recorded_pruned_and_commits_nothing(tmp_path, prefect_api):
    # No validation bpb is below 0.1: the threshold pruner stops the trial at its first report.
    log = tmp_path / "search.log"
    finish(command(tmp_path, "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner.kind=threshold",
                   "hydra.sweeper.pruner.upper=0.1"), log, prefect_api)

    [trial] = optuna.load_study(study_name=STUDY, storage=storage(tmp_path)).get_trials()
    assert trial.state == TrialState.PRUNED and trial.user_attrs[search.PRUNED_AT] == 3
    assert list(trial.intermediate_values) == [3]
    pretrain = tmp_path / "outputs" / "cache" / "pretrain"
    assert [p.name.endswith(".partial") for p in pretrain.iterdir()] == [True]  # nothing committed
    assert "Trials: 0 complete, 1 pruned, 0 failed" in log.read_text()
    assert log.read_text().count("Retry") == 0  # Prefect did not retry the pruned stage

    client, experiment_id = mlflow_client(tmp_path)
    [search_run] = client.search_runs([experiment_id], "tags.stage = 'search'")
    assert search_run.info.status == "FINISHED" and search_run.data.tags["search.pruned_trials"] == "1"
    [lifecycle] = client.search_runs([experiment_id], "tags.stage = 'lifecycle'")
    assert lifecycle.data.tags["search.state"] == "PRUNED"
