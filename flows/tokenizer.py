"""Train the tokenizer on the cleaned data and pack every split into token arrays.

    python -m flows.tokenizer [hydra overrides]
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import run_cli
from lm_tasks import stages
from lm_tasks.config import LifecycleConfig, load_config


@task(name="tokenizer", cache_policy=NO_CACHE)
def tokenizer_task(cfg: LifecycleConfig, parent_run_id: str | None = None) -> stages.StageResult:
    return stages.run_tokenizer(cfg, parent_run_id)


@flow(name="tokenizer")
def tokenizer_flow(overrides: list[str] | None = None) -> dict:
    """Run the tokenizer stage alone (a top-level MLflow run tagged stage=tokenizer)."""
    return asdict(tokenizer_task(load_config(overrides or [])))


if __name__ == "__main__":
    run_cli(tokenizer_flow)
