"""MLflow tracking: one experiment per project config, a parent run per lifecycle,
a child run per stage, the resolved config as params and as a YAML artifact.
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from lm_tasks.config import LifecycleConfig, TrackingConfig

PARAMS_PER_CALL = 100  # MLflow's log_batch limit


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store; return the experiment id (created if new)."""
    if cfg.tracking_uri.startswith("sqlite:///"):
        Path(cfg.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = cfg.artifact_location
    if "://" not in artifacts:
        artifacts = Path(artifacts).resolve().as_uri()
    try:
        return mlflow.create_experiment(cfg.experiment_name, artifact_location=artifacts)
    except MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(cfg.experiment_name).experiment_id


def default_run_name(cfg: LifecycleConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.data.name}-{cfg.tokenizer.name}{cfg.tokenizer.vocab_size}-{cfg.model.name}"


@contextmanager
def tracked_run(cfg: LifecycleConfig, stage: str, parent_run_id: str | None = None,
                tags: dict | None = None) -> Iterator[Run]:
    """Start a run tagged `stage=<stage>`: a child of `parent_run_id`, or top level.

    Every run carries the flattened resolved config as params and config.yaml.
    The run ends FINISHED, or FAILED when the block raises.
    """
    experiment_id = configure(cfg.tracking)
    name = stage if parent_run_id else f"{stage}: {default_run_name(cfg)}"
    all_tags = {"stage": stage, **({"git_commit": git_commit()} if git_commit() else {}), **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, parent_run_id=parent_run_id,
                          nested=parent_run_id is not None, tags=all_tags) as run:
        log_params(flatten(_config_dict(cfg)))
        mlflow.log_text(cfg.resolved_yaml, "config.yaml")
        yield run


def log_params(params: dict) -> None:
    items = list(params.items())
    for start in range(0, len(items), PARAMS_PER_CALL):
        mlflow.log_params(dict(items[start:start + PARAMS_PER_CALL]))


def log_metrics(metrics: dict, prefix: str = "", step: int | None = None) -> None:
    mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None}, step=step)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists become their string form."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _config_dict(cfg: LifecycleConfig) -> dict:
    tree = asdict(cfg)
    tree.pop("resolved_yaml")
    tree.pop("paths")  # machine-specific; in config.yaml for the record
    return tree


_GIT_COMMIT: list[str | None] = []


def git_commit() -> str | None:
    """The checkout's commit (cached), or None outside a git work tree."""
    if not _GIT_COMMIT:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                 cwd=Path(__file__).parent)
            _GIT_COMMIT.append(out.stdout.strip() if out.returncode == 0 else None)
        except (OSError, subprocess.SubprocessError):
            _GIT_COMMIT.append(None)
    return _GIT_COMMIT[0]
