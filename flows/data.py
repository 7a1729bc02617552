"""Load, clean and split the configured text source.

    python -m flows.data [hydra overrides]
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import retry_on_io, run_cli
from lm_tasks import stages
from lm_tasks.config import LifecycleConfig, load_config


@task(name="data", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)
def data_task(cfg: LifecycleConfig, parent_run_id: str | None = None) -> stages.StageResult:
    return stages.run_data(cfg, parent_run_id)


@flow(name="data")
def data_flow(overrides: list[str] | None = None) -> dict:
    """Run the data stage alone (a top-level MLflow run tagged stage=data)."""
    return asdict(data_task(load_config(overrides or [])))


if __name__ == "__main__":
    run_cli(data_flow)
