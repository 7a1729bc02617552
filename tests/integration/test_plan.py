"""`python -m flows.plan`: each stage's key and state before a run, after it, after a config
change and after a killed pretraining, computed without Prefect, MLflow or torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flows.lifecycle import lifecycle
from lm_tasks.config import load_config
from lm_tasks.plan import make_plan
from lm_tasks.stages import run_data, run_pretrain, run_tokenizer
from tests.integration.test_recovery import TRAINING, wait_for_first_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def states(overrides: list[str]) -> dict[str, str]:
    return {s.stage: s.state for s in make_plan(load_config(overrides)).stages}


def plan_command(args: list[str]) -> subprocess.CompletedProcess:
    """The command, in a process that then reports which heavy libraries it imported."""
    code = ("import sys; from flows.plan import main; code = main(sys.argv[1:]); "
            "print('imported:', sorted(m for m in ('prefect', 'mlflow', 'torch') if m in sys.modules)); "
            "sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_plan_before_a_run_after_it_and_after_a_config_change(prefect_harness, smoke_overrides, smoke_cfg):
    fresh = make_plan(smoke_cfg)
    assert [(s.stage, s.state) for s in fresh.stages] == [
        ("data", "missing"), ("tokenizer", "unknown"), ("pretrain", "unknown"), ("evaluate", "unknown")]
    assert fresh.stages[1].note == "key known after data ran" and fresh.stages[0].inputs == ["embedded corpus"]
    assert fresh.last_config is None and fresh.to_run == ["data", "tokenizer", "pretrain", "evaluate"]

    ran = lifecycle(overrides=smoke_overrides)

    after = make_plan(load_config(smoke_overrides))
    assert {s.stage: (s.state, s.key, s.digest) for s in after.stages} == {
        stage: ("cached", result["key"], result["digest"]) for stage, result in ran.items()}
    assert after.changes == {} and after.to_run == []
    assert after.last_config == str(Path(smoke_cfg.paths.output_dir) / "config.yaml")

    changed = make_plan(load_config([*smoke_overrides, "optim.lr=0.01", "model.dropout=0.2"]))
    assert {s.stage: s.state for s in changed.stages} == {
        "data": "cached", "tokenizer": "cached", "pretrain": "missing", "evaluate": "unknown"}
    assert changed.changes == {"optim.lr": (smoke_cfg.optim.lr, 0.01), "model.dropout": (smoke_cfg.model.dropout, 0.2)}
    assert changed.to_run == ["pretrain", "evaluate"]
    assert states([*smoke_overrides, "cache.refresh=tokenizer"])["tokenizer"] == "refresh"

    result = plan_command([*smoke_overrides, "optim.lr=0.01"])
    assert result.returncode == 0, result.stderr
    assert "pretrain   missing" in result.stdout and f"optim.lr: {smoke_cfg.optim.lr} -> 0.01" in result.stdout
    assert "Would run: pretrain, evaluate." in result.stdout
    assert "imported: []" in result.stdout  # no Prefect, MLflow or torch: a plan takes about a second


def test_plan_shows_a_running_then_a_killed_pretraining(prefect_api, smoke_overrides):
    overrides = [*smoke_overrides, *TRAINING]
    cfg = load_config(overrides)
    run_tokenizer(cfg, run_data(cfg))
    assert states(overrides)["pretrain"] == "missing"

    process = subprocess.Popen([sys.executable, "-m", "flows.pretrain", *overrides], cwd=ROOT, env=prefect_api,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_first_checkpoint(process, Path(cfg.cache.store) / "pretrain")
        assert states(overrides)["pretrain"] == "running"  # it holds the key's lock
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    plan = make_plan(cfg)
    pretrain = plan.stages[2]
    assert (pretrain.state, pretrain.note) == ("resumable", "resumes from checkpoints/last.ckpt")
    assert plan.to_run == ["pretrain", "evaluate"]
    assert states([*overrides, "cache.refresh=pretrain"])["pretrain"] == "refresh"  # a refresh starts over
    run_pretrain(cfg)
    assert states(overrides)["pretrain"] == "cached"


def test_plan_command_reports_a_config_error_in_one_line(tmp_path):
    result = plan_command([f"paths.root_dir={tmp_path}", "optim.lrr=0.1"])
    assert result.returncode == 2
    assert result.stderr.startswith("Configuration error: Unknown config key 'optim.lrr'")
    assert "optim.lr" in result.stderr and "Traceback" not in result.stderr
    assert plan_command(["-m", "optim.lr=1,2"]).returncode == 2
