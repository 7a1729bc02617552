"""Pretrain the GPT with Lightning on the packed tokens; export the best weights.

    python -m flows.pretrain [hydra overrides]
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import run_cli
from lm_tasks import stages
from lm_tasks.config import LifecycleConfig, load_config


@task(name="pretrain", cache_policy=NO_CACHE)
def pretrain_task(cfg: LifecycleConfig, parent_run_id: str | None = None) -> stages.StageResult:
    return stages.run_pretrain(cfg, parent_run_id)


@flow(name="pretrain")
def pretrain_flow(overrides: list[str] | None = None) -> dict:
    """Run the pretrain stage alone (a top-level MLflow run tagged stage=pretrain)."""
    return asdict(pretrain_task(load_config(overrides or [])))


if __name__ == "__main__":
    run_cli(pretrain_flow)
