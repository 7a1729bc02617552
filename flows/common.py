"""What every flow entry point shares: the command line, retries, the summary table."""

from __future__ import annotations

import itertools
import sys
from dataclasses import asdict
from typing import Callable

from hydra.core.override_parser.overrides_parser import OverridesParser
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lm_tasks.config import ConfigError, LifecycleConfig, load_config
from lm_tasks.stages import StageResult

MULTIRUN_FLAGS = ("-m", "--multirun")
IO_ERRORS = (ConnectionError, TimeoutError)


def retry_on_io(task, task_run, state) -> bool:
    """Prefect retry condition: retry network and timeout errors, nothing else."""
    try:
        state.result()
    except IO_ERRORS:
        return True
    except Exception:
        return False
    return False


def stage_flow(name: str, run_stage: Callable[..., StageResult], retry_io: bool = False):
    """The Prefect task wrapping one lm_tasks stage, and the flow that runs it alone.

    The task takes the typed config and the parent MLflow run id and returns the
    stage's StageResult (paths and digests). Retries are for I/O errors only.
    """
    retries = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": retry_on_io} if retry_io else {}

    @task(name=name, cache_policy=NO_CACHE, **retries)
    def stage_task(cfg: LifecycleConfig, parent_run_id: str | None = None) -> StageResult:
        return run_stage(cfg, parent_run_id)

    @flow(name=name)
    def stage_alone(overrides: list[str] | None = None) -> dict:
        return asdict(stage_task(load_config(overrides or [])))

    stage_alone.__doc__ = f"Run the {name} stage alone (a top-level MLflow run tagged stage={name})."
    return stage_task, stage_alone


def sweep(overrides: list[str]) -> list[list[str]]:
    """Expand Hydra sweep syntax (a=1,2 b=x,y) into one override list per job."""
    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.product(*choices)]


def run_cli(flow: Callable, argv: list[str] | None = None) -> None:
    """`python -m flows.<name> [-m] [overrides]`: run the flow once, or once per sweep job."""
    args = list(sys.argv[1:] if argv is None else argv)
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    overrides = [a for a in args if a not in MULTIRUN_FLAGS]
    jobs = sweep(overrides) if multirun else [overrides]
    try:
        for job in jobs:  # fail fast, before any flow starts, on a bad override
            load_config(job)
        for number, job in enumerate(jobs):
            if multirun:
                print(f"[multirun] job {number + 1}/{len(jobs)}: {' '.join(job)}", flush=True)
            flow(overrides=job)
    except ConfigError as err:
        sys.exit(f"Configuration error: {err}")


def summary_markdown(title: str, results: list) -> str:
    lines = [f"## {title}", "", "| stage | seconds | key metrics | output |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.stage} | {r.seconds:.1f} | {r.key_metric} | `{r.output_dir}` |")
    return "\n".join(lines) + "\n"
