"""Crashes, failures and concurrent jobs, driven through the real command line.

Each lifecycle runs as `python -m flows.lifecycle ...` in its own process, reporting to a
Prefect server, as a user or a scheduler would start it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lm_tasks.config import load_config
from lm_tasks.stages import run_data, run_pretrain, run_tokenizer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Long enough to be killed part-way, with a checkpoint every 10 steps and dropout on.
TRAINING = ["trainer.max_steps=150", "trainer.checkpoint_every_n_steps=10", "trainer.val_check_interval=50",
            "trainer.log_every_n_steps=1", "model.dropout=0.1", "promotion.enabled=false"]


@pytest.fixture(scope="module")
def prefect_env(prefect_api) -> dict:
    """The environment of every lifecycle process: the session's Prefect server."""
    return prefect_api


def start_lifecycle(overrides: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.lifecycle", *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    return output


@contextmanager
def alongside(module: str, overrides: list[str], env: dict, log: Path) -> Iterator[Callable[[], tuple[int, str]]]:
    """`python -m <module> ...` started in the background, its output to a file (not a pipe:
    nobody reads it meanwhile), while this process does other work; the `with` body calls the
    yielded function for its exit code and output. Killed on the way out if still running."""
    with open(log, "w") as stdout:
        process = subprocess.Popen([sys.executable, "-m", module, *overrides], cwd=ROOT, env=env, stdout=stdout,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def result(timeout: float = 300) -> tuple[int, str]:
        process.wait(timeout=timeout)
        return process.returncode, log.read_text()

    try:
        yield result
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_first_checkpoint(process: subprocess.Popen, pretrain_dir: Path) -> Path:
    """Poll until the running pretraining has written last.ckpt into its .partial folder."""
    deadline = time.monotonic() + 240
    while not list(pretrain_dir.glob("*.partial/checkpoints/last.ckpt")):
        assert process.poll() is None, finish(process)
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.01)
    return pretrain_dir


def runs_by_stage(cfg) -> dict[str, list]:
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    runs: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id]):
        runs.setdefault(run.data.tags["stage"], []).append(run)
    return runs


def loss_by_step(cfg, run_id: str) -> dict[int, float]:
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    history = sorted(MlflowClient().get_metric_history(run_id, "train/loss"), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}  # a step logged twice (before the kill, after resume): the later


def test_sigkill_mid_pretraining_resumes_with_identical_losses(smoke_overrides, tmp_path, prefect_env):
    overrides = smoke_overrides + TRAINING
    cfg = load_config(overrides)
    process = start_lifecycle(overrides, prefect_env)
    partial = wait_for_first_checkpoint(process, Path(cfg.cache.store) / "pretrain")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    [killed] = runs_by_stage(cfg)["pretrain"]
    assert killed.info.status == "RUNNING"  # nothing could close it
    assert not list(partial.glob("*/stage.json"))  # no entry: the stage did not finish

    started = time.monotonic()
    with alongside("flows.lifecycle", overrides, prefect_env, tmp_path / "resumed.log") as resumed_run:
        # Meanwhile, the same training, uninterrupted, in another folder (compared below).
        reference_cfg = load_config(["debug=smoke", f"paths.root_dir={tmp_path / 'reference'}", *TRAINING])
        reference = run_pretrain(reference_cfg, run_tokenizer(reference_cfg, run_data(reference_cfg)))
        _, output = resumed_run()
    assert "resuming from" in output and "continuing MLflow run" in output, output
    print(f"resume after SIGKILL (the reference run alongside): {time.monotonic() - started:.1f} s")

    runs = runs_by_stage(cfg)
    [pretrain], [parent] = runs["pretrain"], runs["lifecycle"]
    assert pretrain.info.run_id == killed.info.run_id and pretrain.info.status == "FINISHED"
    assert parent.info.status == "FINISHED" and pretrain.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert all(len(runs[stage]) == 1 for stage in ("data", "tokenizer", "evaluate"))

    # The uninterrupted training: the same loss at every step.
    expected = loss_by_step(reference_cfg, reference.run_id)
    resumed = loss_by_step(cfg, pretrain.info.run_id)
    # A step whose metrics were not yet sent when the process died (it finished just before the
    # checkpoint was written) may be missing; every step from the checkpoint on is there.
    resumed_steps = [step for step in expected if step >= 10]
    assert len(expected) == 150 and set(resumed_steps) <= set(resumed)
    assert max(abs(resumed[step] - expected[step]) for step in resumed) < 1e-5
    assert reference.digest == pretrain.data.tags["output.digest"]  # bit-identical weights


def test_a_failed_stage_fails_the_flow_and_the_rerun_resumes_there(smoke_overrides, tmp_path, prefect_env):
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text('{"text": "good film"}\n' * 40)  # no label column
    overrides = smoke_overrides + ["finetune=classification", "finetune.classification.data.source=local",
                                   "data.cleaning.decontamination.tasks=false",  # fail in fine-tuning, not before
                                   f"finetune.classification.data.train_files=[{reviews}]",
                                   "finetune.classification.max_steps=2",
                                   "finetune.classification.val_check_interval=2"]
    cfg = load_config(overrides)
    process = start_lifecycle(overrides, prefect_env)
    output = finish(process)
    assert process.returncode == 1
    lines = output.splitlines()
    [at] = [i for i, line in enumerate(lines) if line.startswith("lifecycle failed:")]
    assert lines[at].startswith(f"lifecycle failed: DataSourceError: {reviews} has no column 'label'")
    # one paragraph on the console; the traceback in the job's log file and the stage's log
    assert "Traceback" not in output
    log_file = Path(lines[at + 1].removeprefix("(the traceback is in ").split(";")[0])
    assert "Traceback" in log_file.read_text() and "has no column 'label'" in log_file.read_text()
    runs = runs_by_stage(cfg)
    [parent], [finetune] = runs["lifecycle"], runs["finetune"]
    assert parent.info.status == "FAILED" and finetune.info.status == "FAILED"
    stage_log = MlflowClient().download_artifacts(finetune.info.run_id, "stage.log", str(tmp_path))
    assert "Traceback" in Path(stage_log).read_text() and "finetune:classification failed" in Path(stage_log).read_text()
    assert all(runs[s][0].info.status == "FINISHED" for s in ("data", "tokenizer", "pretrain"))

    reviews.write_text("".join(f'{{"text": "{w} film", "label": "{w}"}}\n' for w in ["good", "bad"] * 20))
    process = start_lifecycle(overrides, prefect_env)
    output = finish(process)
    assert process.returncode == 0, output
    runs = runs_by_stage(cfg)
    [again] = runs["lifecycle"]  # the failed run, continued
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["cached_stages"] == "data,tokenizer,pretrain"
    assert sorted(r.info.status for r in runs["finetune"]) == ["FAILED", "FINISHED"]


def test_concurrent_jobs_share_one_store_and_cache(smoke_overrides, prefect_env):
    jobs = [smoke_overrides + ["finetune=classification", "finetune.classification.max_steps=4",
                               "finetune.classification.val_check_interval=2", f"finetune.classification.lr={lr}"]
            for lr in ("1e-3", "2e-3")]
    processes = [start_lifecycle(job, prefect_env) for job in jobs]
    outputs = [finish(p) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs

    runs = runs_by_stage(load_config(jobs[0]))
    # The shared stages were computed once (the second job waited, then used the entry) ...
    assert {stage: len(runs[stage]) for stage in ("data", "tokenizer", "pretrain")} == {
        "data": 1, "tokenizer": 1, "pretrain": 1}
    # ... and each job has its own fine-tuning, evaluation and finished parent run.
    assert len(runs["finetune"]) == len(runs["evaluate"]) == len(runs["lifecycle"]) == 2
    assert all(r.info.status == "FINISHED" for group in runs.values() for r in group)
    lrs = sorted(r.data.params["finetune.classification.lr"] for r in runs["lifecycle"])
    assert lrs == ["0.001", "0.002"]


def test_sigterm_ends_the_runs_as_killed(smoke_overrides, prefect_env):
    overrides = smoke_overrides + TRAINING
    cfg = load_config(overrides)
    process = start_lifecycle(overrides, prefect_env)
    wait_for_first_checkpoint(process, Path(cfg.cache.store) / "pretrain")
    process.send_signal(signal.SIGTERM)  # what a cancelled Prefect run or a scheduler's stop sends
    output = finish(process, timeout=60)
    assert process.returncode != 0, output
    runs = runs_by_stage(cfg)
    assert runs["pretrain"][0].info.status == "KILLED" and runs["lifecycle"][0].info.status == "KILLED"
    assert runs["tokenizer"][0].info.status == "FINISHED"


def test_an_unreachable_tracking_server_fails_at_once_in_one_paragraph(smoke_overrides, prefect_env):
    started = time.monotonic()
    process = start_lifecycle([*smoke_overrides, "tracking.tracking_uri=http://127.0.0.1:9"], prefect_env)
    output = finish(process)
    assert process.returncode == 1 and time.monotonic() - started < 120  # not MLflow's minutes of retries
    assert "lifecycle failed: TrackingUnreachable: The MLflow tracking server at http://127.0.0.1:9 does not " \
           "answer ([Errno 111] Connection refused). Start it (mlflow server" in output
    assert "Traceback" not in output
