"""What every flow entry point shares: the command line, retries, the summary table."""

from __future__ import annotations

import functools
import inspect
import itertools
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

from hydra.core.override_parser.overrides_parser import OverridesParser
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Completed
from prefect.task_runners import TaskRunner

from lm_tasks.config import ConfigError, LifecycleConfig, RunnerConfig, load_config
from lm_tasks.redaction import install_log_filter, redact, secrets_in
from lm_tasks.retry import is_transient
from lm_tasks.stages import StageResult

MULTIRUN_FLAGS = ("-m", "--multirun")


def retry_on_io(task, task_run, state) -> bool:
    """Prefect retry condition: retry transient network and server errors
    (lm_tasks.retry.is_transient), nothing else."""
    try:
        state.result()
    except Exception as err:
        return is_transient(err)
    return False


# Every stage task: retried on transient errors (a Hub download, a remote cache or
# tracking server away or overloaded), failed at once on anything else. The second try
# waits a minute: long enough for a server restart.
RETRY_POLICY = {"retries": 2, "retry_delay_seconds": [10, 60], "retry_condition_fn": retry_on_io}


def stage_task(name: str, **options):
    """Decorate a function returning a StageResult as a Prefect task. Prefect's own result
    cache is off: the stage cache (lm_tasks/cache.py) decides, and a hit finishes the task
    run in Prefect's `Cached` state. A stage's report.md (data, evaluate) becomes the
    task run's markdown artifact `<stage>-report`."""

    def decorate(fn: Callable[..., StageResult]):
        def run(*args, **kwargs):
            result = redacting(fn)(*args, **kwargs)
            report = Path(result.output_dir) / "report.md"
            if report.is_file():
                create_markdown_artifact(report.read_text(), key=f"{name}-report",
                                         description=f"The {name} stage's report ({'cached' if result.cached else 'ran'})")
            if result.cached:
                return Completed(data=result, name="Cached", message=f"cache hit: key {result.key[:12]}")
            return result

        # The task's parameters (in the Prefect UI, on a Dask worker) are the stage function's.
        run.__signature__ = inspect.signature(fn)
        run.__name__, run.__qualname__, run.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        return task(name=name, cache_policy=NO_CACHE, **RETRY_POLICY, **options)(run)

    return decorate


def flow_config(overrides: list[str] | None) -> LifecycleConfig:
    """The flow's validated config; from here on no log line of this process carries a secret
    from it (a deployment run starts here, not in run_cli)."""
    cfg = load_config(overrides or [])
    install_log_filter()
    return cfg


def redacting(fn: Callable) -> Callable:
    """`fn`, with secrets masked in any exception it raises before Prefect records it (in a
    task or flow run's state, its logs, its result). Every stage task and flow body is wrapped."""

    @functools.wraps(fn)  # the signature, which Prefect reads for parameters, stays fn's
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as err:
            redact_exception(err)
            raise

    return call


def redact_exception(err: BaseException) -> None:
    """Mask secrets in an exception's message (and its causes') before anything records it."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if redact(str(err)) != str(err):
            err.args = tuple(redact(a) if isinstance(a, str) else a for a in err.args)
            if isinstance(getattr(err, "message", None), str):  # MlflowException formats its `message`
                err.message = redact(err.message)
        err = err.__cause__ or err.__context__


def result_of(returned: StageResult | State) -> StageResult:
    """A stage task's StageResult, whether it ran or came from the cache."""
    return returned.result() if isinstance(returned, State) else returned


@contextmanager
def stage_runner(cfg: RunnerConfig) -> Iterator[TaskRunner | None]:
    """Where stage tasks run: None for in the flow's process, or a started Dask task runner
    (a cluster at `runner.address`, or a local one of `runner.n_workers` processes)."""
    if cfg.kind == "local":
        yield None
        return
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        runner = DaskTaskRunner(address=cfg.address)
    else:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": cfg.n_workers,
                                                "threads_per_worker": cfg.threads_per_worker})
    with runner:
        yield runner


def run_stage(runner: TaskRunner | None, stage, **parameters) -> StageResult:
    """Run a stage task here, or on the runner's workers; its StageResult either way."""
    if runner is None:
        return result_of(stage(**parameters))
    return result_of(runner.submit(stage, parameters).result())


def run_stages(runner: TaskRunner | None, stage, calls: list[dict]) -> list[StageResult]:
    """Run independent calls of a stage task (one parameter dict each); their StageResults in
    the same order. On the runner they are all submitted before any is waited on, so they run
    concurrently on its workers; here they run one after another and the first error stops them.

    On the runner, when one call fails the others still run to their end (no future is left
    running behind the flow's back, and what they computed is cached), then the first
    failed call's error is raised.
    """
    if runner is None:
        return [run_stage(None, stage, **parameters) for parameters in calls]
    futures = [runner.submit(stage, parameters) for parameters in calls]
    for future in futures:
        future.wait()  # every call ends, whatever another one's fate
    return [result_of(future.result()) for future in futures]  # raises the first failure, in call order


def stage_flow(name: str, stage_function: Callable[..., StageResult]):
    """The Prefect task wrapping one lm_tasks stage, and the flow that runs it alone.

    The task returns the stage's StageResult (paths and digests). Run alone, a stage
    finds its inputs in the stage cache and is a top-level MLflow run.
    """
    stage = stage_task(name)(stage_function)

    @flow(name=name)
    @redacting
    def stage_alone(overrides: list[str] | None = None) -> dict:
        cfg = flow_config(overrides)
        with stage_runner(cfg.runner) as runner:
            return asdict(run_stage(runner, stage, cfg=cfg))

    stage_alone.__doc__ = f"Run the {name} stage alone (a top-level MLflow run tagged stage={name})."
    return stage, stage_alone


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


def stash_secrets(overrides: list[str]) -> list[str]:
    """Credentials typed on the command line move into this process's environment, and the
    override reads them back by interpolation: the flow's parameters, which Prefect stores,
    then hold none. (Subprocesses and local Dask workers inherit the environment.)"""
    stashed = []
    for override in overrides:
        key, equals, value = override.partition("=")
        for secret in secrets_in(value):
            if "${" not in secret:  # already an interpolation
                variable = f"LM_TASKS_SECRET_{len(_STASHED)}"  # a counter: the name says nothing of the secret
                _STASHED.append(variable)
                os.environ[variable] = secret
                value = value.replace(secret, "${oc.env:%s}" % variable)
        stashed.append(key + equals + value)
    return stashed


_STASHED: list[str] = []


def run_cli(flow: Callable, argv: list[str] | None = None) -> None:
    """`python -m flows.<name> [-m] [overrides]`: run the flow once, or once per sweep job."""
    install_log_filter()
    args = list(sys.argv[1:] if argv is None else argv)
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    overrides = stash_secrets([a for a in args if a not in MULTIRUN_FLAGS])
    jobs = sweep(overrides) if multirun else [overrides]
    try:
        for job in jobs:  # fail fast, before any flow starts, on a bad override
            load_config(job)
        for number, job in enumerate(jobs):
            if multirun:
                print(f"[multirun] job {number + 1}/{len(jobs)}: {' '.join(job)}", flush=True)
            flow(overrides=job)
    except ConfigError as err:
        sys.exit(redact(f"Configuration error: {err}"))
    except Exception as err:  # the traceback is in the flow's log above
        sys.exit(redact(f"{flow.name} failed: {type(err).__name__}: {err}"))
    except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, or SIGTERM turned into an exit by Lightning
        sys.exit(f"{flow.name} interrupted ({type(err).__name__}); run the same command again to resume")


def summary_markdown(title: str, results: list) -> str:
    lines = [f"## {title}", "", "| stage | status | seconds | key metrics | output |", "|---|---|---|---|---|"]
    for r in results:
        status = "cached" if r.cached else "ran"
        lines.append(f"| {r.stage} | {status} | {r.seconds:.1f} | {r.key_metric} | `{r.output_dir}` |")
    return "\n".join(lines) + "\n"
