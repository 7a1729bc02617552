"""The flows' command line: sweeps expand like Hydra's, bad overrides fail before any run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.common import sweep

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_expands_the_cartesian_product():
    jobs = sweep(["optim.lr=0.001,0.0003", "model=tiny,gpt2_small", "trainer.max_steps=5"])
    assert jobs == [
        ["optim.lr=0.001", "model=tiny", "trainer.max_steps=5"],
        ["optim.lr=0.001", "model=gpt2_small", "trainer.max_steps=5"],
        ["optim.lr=0.0003", "model=tiny", "trainer.max_steps=5"],
        ["optim.lr=0.0003", "model=gpt2_small", "trainer.max_steps=5"],
    ]


def test_sweep_without_sweep_syntax_is_one_job():
    assert sweep(["optim.lr=1e-3"]) == [["optim.lr=1e-3"]]


def test_typo_on_the_command_line_exits_with_a_suggestion(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flows.lifecycle", "trainer.max_step=10", f"paths.root_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Configuration error: Unknown config key 'trainer.max_step'" in result.stderr
    assert "Did you mean: trainer.max_steps" in result.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "outputs").exists()


def test_finetune_task_alias():
    from flows.finetune import task_alias

    assert task_alias(["task=classification", "seed=1"]) == ["finetune=classification", "seed=1"]


@pytest.mark.slow  # two CLI start-ups
def test_name_inside_the_cache_is_refused_and_deletes_nothing(tmp_path):
    entry = tmp_path / "outputs" / "cache" / "data" / "0123abcd"
    entry.mkdir(parents=True)
    (entry / "stage.json").write_text("{}")
    for name in ("cache", "../../x"):
        result = subprocess.run([sys.executable, "-m", "flows.data", f"name={name}", f"paths.root_dir={tmp_path}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("Configuration error: ") and repr(name) in last
    assert (entry / "stage.json").read_text() == "{}"
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["cache"]
