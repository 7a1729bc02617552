"""Fine-tune the pretrained model on tasks, one Prefect task and MLflow run per task.

    python -m flows.finetune task=classification [overrides]
    python -m flows.finetune task=classification init_from=<model folder or MLflow run id>

`task=<name>` is short for the lifecycle's `finetune=<name>`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from prefect import flow

from flows.common import flow_config, named_after_overrides, redacting, run_cli, run_stages, stage_runner, stage_task
from lm_tasks import stages

finetune_task = stage_task("finetune", task_run_name="finetune-{task}")(stages.run_finetune)


@flow(name="finetune", flow_run_name=named_after_overrides)
@redacting
def finetune_flow(overrides: list[str] | None = None) -> dict:
    """Fine-tune every selected task alone (top-level MLflow runs tagged stage=finetune)."""
    cfg = flow_config(overrides)
    if not cfg.finetune:
        raise ValueError("No task selected: pass task=<name> (or finetune=[a,b])")
    with stage_runner(cfg.runner) as runner:
        # On a Dask runner the tasks fine-tune concurrently, one per worker.
        tuned = run_stages(runner, finetune_task, [{"cfg": cfg, "task": name} for name in cfg.finetune])
    return {name: asdict(result) for name, result in zip(cfg.finetune, tuned)}


def task_alias(args: list[str]) -> list[str]:
    return [f"finetune={a.split('=', 1)[1]}" if a.startswith("task=") else a for a in args]


def main() -> None:
    """The `lm-finetune` command (pyproject.toml), same as `python -m flows.finetune`."""
    run_cli(finetune_flow, task_alias(sys.argv[1:]))


if __name__ == "__main__":
    main()
