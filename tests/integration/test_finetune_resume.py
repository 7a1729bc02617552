"""A fine-tuning killed with SIGKILL resumes from its last checkpoint, through the real command
line: the same MLflow run continued, the step count going on, the losses of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lm_tasks.config import load_config
from lm_tasks.stages import run_finetune
from tests.integration.test_finetune import small_pretrained_model
from tests.integration.test_recovery import ROOT, alongside, finish, loss_by_step, runs_by_stage

pytestmark = pytest.mark.slow

# Killed once the first validation (step 20) has written best.ckpt, so that last.ckpt holds
# the early-stopping and best-checkpoint state after it; dropout on, so the RNG state counts.
FINETUNE = ["finetune=classification", "finetune.classification.data.max_rows=100",
            "finetune.classification.batch_size=8", "finetune.classification.max_steps=60",
            "finetune.classification.val_check_interval=20", "finetune.classification.patience=1",
            "trainer.checkpoint_every_n_steps=10"]


def start_finetune(overrides: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.finetune", *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(process: subprocess.Popen, pattern: str, folder: Path) -> None:
    deadline = time.monotonic() + 240
    while not list(folder.glob(pattern)):
        assert process.poll() is None, finish(process)
        assert time.monotonic() < deadline, f"no {pattern} was written"
        time.sleep(0.01)


def test_sigkill_mid_finetuning_resumes_with_identical_losses(smoke_overrides, tmp_path, prefect_api):
    model_dir = small_pretrained_model(tmp_path, load_config(smoke_overrides), dropout=0.1)
    overrides = smoke_overrides + FINETUNE + [f"init_from={model_dir}"]
    cfg = load_config(overrides)
    process = start_finetune(overrides, prefect_api)
    wait_for(process, "*.partial/checkpoints/best.ckpt", Path(cfg.cache.store) / "finetune-classification")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at_ms = int(time.time() * 1000)
    [killed] = runs_by_stage(cfg)["finetune"]
    assert killed.info.status == "RUNNING"  # nothing could close it

    started = time.monotonic()
    with alongside("flows.finetune", overrides, prefect_api, tmp_path / "resumed.log") as resumed_run:
        # Meanwhile, the same fine-tuning, uninterrupted, in another store (compared below).
        reference_cfg = load_config(["debug=smoke", f"paths.root_dir={tmp_path / 'reference'}", *FINETUNE,
                                     f"init_from={model_dir}"])
        reference = run_finetune(reference_cfg, "classification")
        returncode, output = resumed_run()
    print(f"resume after SIGKILL (the reference run alongside): {time.monotonic() - started:.1f} s")
    assert returncode == 0, output
    assert "finetune classification: resuming from" in output and "continuing MLflow run" in output, output

    [finetune] = runs_by_stage(cfg)["finetune"]  # no second run
    assert finetune.info.run_id == killed.info.run_id and finetune.info.status == "FINISHED"

    # The resumed attempt went on from a checkpoint (step 10 or 20), not from step 0.
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    history = MlflowClient().get_metric_history(finetune.info.run_id, "train/loss")
    after_kill = sorted(m.step for m in history if m.timestamp > killed_at_ms)
    assert after_kill and after_kill[0] in (10, 20), after_kill

    # The uninterrupted fine-tuning: the same loss at every step.
    expected = loss_by_step(reference_cfg, reference.run_id)
    resumed = loss_by_step(cfg, finetune.info.run_id)
    # Steps the killed attempt had not yet sent may be missing; every step of the resumed one is there.
    assert len(expected) >= 40 and {step for step in expected if step >= after_kill[0]} <= set(resumed)
    assert {step: expected[step] for step in resumed} == resumed  # exact on CPU
    assert reference.metrics and all(finetune.data.metrics[k] == v for k, v in reference.metrics.items())
    assert reference.digest == finetune.data.tags["output.digest"]  # bit-identical task head
