"""The flows' command line is a Hydra application: Hydra's flags and override grammar,
one-line errors before anything runs, and the run directory honoured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.common import check_command_line, sweep_values
from hydra.core.override_parser.overrides_parser import OverridesParser
from lm_tasks.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, module: str = "flows.lifecycle", timeout: float = 120, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_shows_the_flow_description_and_every_config_group_with_its_options():
    result = cli("--help", module="flows.finetune")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Fine-tune the pretrained model on tasks")
    assert "model: gpt, gpt2_small, gru, lstm, modern, ngram, rnn, small, tiny" in result.stdout
    assert "finetune: all, classification, none, qa, summarization, translation" in result.stdout
    assert "hparams_search=tpe" in result.stdout and "--cfg,-c" in result.stdout


def test_cfg_job_prints_the_composed_config_with_overrides_and_runs_nothing(tmp_path):
    result = cli("--cfg", "job", "--resolve", "model=small", "optim.lr=0.01", f"paths.root_dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    whole = yaml.safe_load(result.stdout)
    assert whole["optim"]["lr"] == 0.01 and whole["model"]["name"] == "small"
    assert whole["paths"]["output_dir"] == f"{tmp_path}/outputs/lm-lifecycle"  # resolved
    assert "hydra" not in whole
    assert list(tmp_path.iterdir()) == []


def test_typo_on_the_command_line_exits_with_one_line_and_a_suggestion(tmp_path):
    result = cli("trainer.max_step=10", f"paths.root_dir={tmp_path}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Configuration error: Unknown config key 'trainer.max_step'")
    assert "Did you mean: trainer.max_steps" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_every_value_of_a_sweep_is_checked_before_any_job_runs():
    with pytest.raises(ConfigError, match=r"Unknown option 'smal' for model\. Did you mean model=small\?"):
        check_command_line(["model=tiny,smal"], multirun=True)
    with pytest.raises(ConfigError, match=r"Unknown config key 'optim\.lrr'.*Did you mean: optim\.lr"):
        check_command_line(["optim.lrr=1e-3,2e-3"], multirun=True)
    with pytest.raises(ConfigError, match="model.n_embd .* must be divisible by model.n_head"):
        check_command_line(["model.n_embd=48,50", "model=tiny"], multirun=True)
    assert check_command_line(["model=tiny,small", "optim.lr=1e-3,2e-3"], multirun=True) is True


def test_a_sweep_without_multirun_and_hydra_settings_we_cannot_honour_are_refused():
    with pytest.raises(ConfigError, match=r"'optim\.lr=1e-3,2e-3' is a sweep: add -m"):
        check_command_line(["optim.lr=1e-3,2e-3"], multirun=False)
    with pytest.raises(ConfigError, match="hydra.job.chdir=true is not supported"):
        check_command_line(["hydra.job.chdir=true"], multirun=False)
    with pytest.raises(ConfigError, match="no viable alternative at input 'interval\\(1'"):
        check_command_line(["optim.lr=interval(1"], multirun=True)
    assert check_command_line(["hydra.run.dir=/tmp/elsewhere", "optim.lr=1e-3"], multirun=False) is False


def test_sweep_values_cover_choices_ranges_and_interval_bounds():
    def values(text: str) -> list[str]:
        return sweep_values(OverridesParser.create().parse_override(text))

    assert values("model=tiny,small") == ["model=tiny", "model=small"]
    assert values("trainer.max_steps=range(2,8,3)") == ["trainer.max_steps=2", "trainer.max_steps=5"]
    assert values("optim.lr=interval(0.0001,0.01)") == ["optim.lr=0.0001", "optim.lr=0.01"]
    assert values("model=glob(*r*)") == ["model=gru", "model=modern", "model=ngram", "model=rnn"]
    with pytest.raises(ConfigError, match=r"'model=glob\(zz\*\)' matches no option of model: gpt, gpt2_small"):
        values("model=glob(zz*)")


@pytest.mark.slow  # one data stage through the real command line
def test_a_run_writes_its_record_to_hydra_run_dir_and_never_changes_directory(tmp_path, prefect_api):
    run_dir = tmp_path / "my-run"
    result = cli("debug=smoke", f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}", module="flows.data",
                 timeout=300, env=prefect_api)
    assert result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) == [
        "debug=smoke", f"paths.root_dir={tmp_path}"]
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["data"]["max_rows"] == 400
    log = (run_dir / "data.log").read_text()
    assert "[lm_tasks.data.prepare][INFO] - data: {'train':" in log
    assert "Finished in state Completed" in log
    # Stage outputs stay in the shared outputs folder, relative to where the command ran.
    assert (tmp_path / "outputs" / "cache" / "data").is_dir()
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "data.log"]


@pytest.mark.slow  # two CLI start-ups
def test_name_inside_the_cache_is_refused_and_deletes_nothing(tmp_path):
    entry = tmp_path / "outputs" / "cache" / "data" / "0123abcd"
    entry.mkdir(parents=True)
    (entry / "stage.json").write_text("{}")
    for name in ("cache", "../../x"):
        result = cli(f"name={name}", f"paths.root_dir={tmp_path}", module="flows.data")
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("Configuration error: ") and repr(name) in last
    assert (entry / "stage.json").read_text() == "{}"
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["cache"]


def test_finetune_task_alias():
    from flows.finetune import task_alias

    assert task_alias(["task=classification", "seed=1"]) == ["finetune=classification", "seed=1"]


def test_a_credential_on_the_command_line_never_reaches_hydra():
    """Hydra records the overrides it is given (.hydra/overrides.yaml, hydra.yaml): it is given
    an interpolation of the environment variable the credential moved into."""
    result = cli("--cfg", "hydra", "--package", "hydra.overrides",
                 "tracking.tracking_uri=http://me:hunter2@mlflow.internal:5000", module="flows.data")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# @package hydra.overrides")
    task = yaml.safe_load(result.stdout)["task"]
    assert task == ["tracking.tracking_uri=http://me:${oc.env:LM_TASKS_SECRET_0}@mlflow.internal:5000"]
    assert "hunter2" not in result.stdout + result.stderr


class RecordingFlow:
    """Stands in for a Prefect flow as the Hydra job's callee: records what it is called with."""

    name, description = "data", "records its overrides"

    def __init__(self):
        self.calls = []
        self.fn = self.__call__

    def __call__(self, overrides):
        self.calls.append(overrides)
        return {}


def test_the_flow_receives_the_credential_as_an_environment_reference(tmp_path, monkeypatch):
    from flows.common import run_cli

    monkeypatch.chdir(tmp_path)
    flow = RecordingFlow()
    run_cli(flow, ["tracking.tracking_uri=http://me:hunter2@mlflow.internal:5000", f"hydra.run.dir={tmp_path}/run"])
    [[override]] = flow.calls
    assert override.startswith("tracking.tracking_uri=http://me:${oc.env:LM_TASKS_SECRET_")
    assert "hunter2" not in (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
