"""Held-out loss, perplexity, bits per byte and sample generations of the pretrained model.

    python -m flows.evaluate [hydra overrides]
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import run_cli
from lm_tasks import stages
from lm_tasks.config import LifecycleConfig, load_config


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(cfg: LifecycleConfig, parent_run_id: str | None = None) -> stages.StageResult:
    return stages.run_evaluate(cfg, parent_run_id)


@flow(name="evaluate")
def evaluate_flow(overrides: list[str] | None = None) -> dict:
    """Run the evaluate stage alone (a top-level MLflow run tagged stage=evaluate)."""
    return asdict(evaluate_task(load_config(overrides or [])))


if __name__ == "__main__":
    run_cli(evaluate_flow)
