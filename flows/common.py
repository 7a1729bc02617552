"""What every flow entry point shares: the command line, retries, the summary table."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import hydra
from hydra._internal.utils import get_args_parser  # Hydra's own flag parser (hydra-core is pinned <1.4)
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import CompactHydraException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Completed
from prefect.task_runners import TaskRunner

from lm_tasks.config import (CONF_DIR, ENTRY_CONFIG, ConfigError, LifecycleConfig, RunnerConfig, compose_config,
                             group_options, load_config)
from lm_tasks import checkpoint_eval, tracking
from lm_tasks.redaction import RedactingFilter, install_log_filter, redact, secrets_in
from lm_tasks.retry import is_transient
from lm_tasks.stages import StageResult

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


def emit_checkpoint_event(announcement: dict) -> None:
    """A pretraining checkpoint, published to the cache, as a Prefect event (subscribed below):
    its resource is the pretraining's MLflow run, its payload what an evaluator needs. The
    `lm-evaluate-checkpoint` deployment's trigger (prefect.yaml) takes those whose resource
    says `lm-tasks.evaluator: deployment`."""
    from prefect.events import emit_event

    run_id = announcement["run_id"]
    emit_event(event=checkpoint_eval.EVENT,
               resource={"prefect.resource.id": f"mlflow.run.{run_id}", "prefect.resource.name": f"pretrain {run_id}",
                         "lm-tasks.evaluator": announcement["evaluator"]},
               payload={k: announcement[k] for k in ("run_id", "step", "digest", "path", "tokens_key", "pretrain_key")})


checkpoint_eval.subscribe(emit_checkpoint_event)


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


def named_after_overrides() -> str:
    """A flow run's name: its overrides (credentials are already environment references,
    see stash_secrets), so runs differ by name in the Prefect UI; `defaults` without any."""
    from prefect.runtime import flow_run

    name = redact(" ".join(flow_run.parameters.get("overrides") or []) or "defaults")  # before it is cut
    return name if len(name) <= 100 else name[:99] + "…"


def flow_config(overrides: list[str] | None) -> LifecycleConfig:
    """The flow's validated config; from here on no log line of this process carries a secret
    from it (a deployment run starts here, not in run_cli)."""
    cfg = _checked.pop(tuple(overrides or []), None) or load_config(overrides or [])
    install_log_filter()
    tracking.check_reachable(cfg.tracking)
    return cfg


# The configs check_command_line composed, by overrides: the flow it then starts in this
# process takes its own instead of composing it again (a few tenths of a second).
_checked: dict[tuple, LifecycleConfig] = {}


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

    @flow(name=name, flow_run_name=named_after_overrides)
    @redacting
    def stage_alone(overrides: list[str] | None = None) -> dict:
        cfg = flow_config(overrides)
        with stage_runner(cfg.runner) as runner:
            return asdict(run_stage(runner, stage, cfg=cfg))

    stage_alone.__doc__ = f"Run the {name} stage alone (a top-level MLflow run tagged stage={name})."
    return stage, stage_alone


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
    """`python -m flows.<name> [flags] [overrides]`: a Hydra application around the flow.

    Hydra parses the command line (--help, --cfg, --info, --shell-completion, -m and the
    whole override grammar), writes the run's record to hydra.run.dir and, for -m, hands
    the jobs to the configured sweeper and launcher. Each job calls the flow with its
    overrides, the same list a Prefect deployment run passes: one composition path."""
    install_log_filter()
    _checked.clear()  # a config composed for an earlier command line of this process
    args = stash_secrets(list(sys.argv[1:] if argv is None else argv))  # before Hydra records them
    flags = get_args_parser().parse_args(args)  # a bad flag: argparse's usage line and exit 2
    try:
        multirun = flags.multirun
        if not (flags.help or flags.hydra_help or flags.shell_completion):  # these compose nothing
            multirun = check_command_line(flags.overrides, flags.multirun)
    except ConfigError as err:
        sys.exit(redact(f"Configuration error: {one_line(err)}"))
    app = hydra.main(config_path=str(CONF_DIR), config_name=ENTRY_CONFIG, version_base="1.3")(hydra_job(flow))
    hydra_args = [f"hydra.job.name={flow.name}", "hydra/help=lm_tasks"]
    register_help(flow)
    # Hydra's messages ("Launching 2 jobs locally") go through Prefect's console handler.
    for name in ("hydra", "hydra_plugins"):
        logging.getLogger(name).setLevel(logging.DEBUG if flags.info else logging.INFO)
    GlobalHydra.instance().clear()
    try:
        with command_line([*args, *hydra_args]), shared_prefect_server(multirun), console_to_hydra(flags.info), \
                tracebacks_off_the_console():
            app()
    except KeyboardInterrupt:
        sys.exit(interrupted(flow, KeyboardInterrupt()))
    finally:
        GlobalHydra.instance().clear()


def hydra_job(flow: Callable) -> Callable[[DictConfig], dict]:
    """The Hydra task function: run the flow with this job's overrides. A failed single run
    exits with one paragraph, the traceback left in the job's log file; a failed sweep job is
    reported to the sweeper, which decides whether the sweep goes on."""

    def job(_: DictConfig) -> dict:
        config = HydraConfig.get()
        # Unresolved: a credential stashed in the environment stays an ${oc.env:...} reference.
        overrides = OmegaConf.to_container(config.overrides.task, resolve=False)
        log_file = Path(config.runtime.output_dir) / f"{config.job.name}.log"
        with job_log(log_file):
            return run_job(flow, overrides, config, log_file)

    job.__name__ = job.__qualname__ = flow.name
    return job


def run_job(flow: Callable, overrides: list[str], config: DictConfig, log_file: Path) -> dict:
    if config.mode == RunMode.RUN:
        try:
            return flow(overrides=overrides)
        except Exception as err:
            sys.exit(redact(f"{flow.name} failed: {type(err).__name__}: {one_line(err)}\n"
                            f"(the traceback is in {log_file}; {TRACEBACK_ENV}=1 shows it here)"))
        except (KeyboardInterrupt, SystemExit) as err:  # Ctrl-C, or SIGTERM turned into an exit by Lightning
            sys.exit(interrupted(flow, err))
    print(f"[multirun] job {config.job.num}: {' '.join(overrides)}", flush=True)
    try:
        return flow(overrides=overrides)
    except Exception as err:
        raise JobFailed(redact(f"{flow.name} job {config.job.num} failed: {type(err).__name__}: "
                               f"{one_line(err)}")) from err


@contextmanager
def job_log(path: Path) -> Iterator[None]:
    """Everything the console shows of a job (flow, stage and library logs, through the root
    logger), also in a file in its run directory, secrets masked."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.addFilter(RedactingFilter())
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def interrupted(flow: Callable, err: BaseException) -> str:
    return f"{flow.name} interrupted ({type(err).__name__}); run the same command again to resume"


class JobFailed(CompactHydraException):
    """A sweep job's failure, which Hydra prints as one line (without a stack trace)."""


def check_command_line(overrides: list[str], multirun: bool) -> bool:
    """Fail before any run starts on an override that does not parse or compose, with a
    one-line reason ("Did you mean ..." for a mistyped key). Every value of a sweep is
    composed once. Returns whether this is a multirun (-m, or a config that asks for one,
    such as hparams_search=...)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise ConfigError(str(err)) from None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [o for o in parsed if o.is_sweep_override()]
    hydra_cfg = compose_config(fixed, with_hydra=True).hydra
    multirun = multirun or hydra_cfg.mode == "MULTIRUN"
    if hydra_cfg.job.chdir:
        raise ConfigError("hydra.job.chdir=true is not supported: stages share paths.output_dir and the cache "
                          "across runs; hydra.run.dir already holds each run's record")
    if sweeps and not multirun:
        raise ConfigError(f"'{sweeps[0].input_line}' is a sweep: add -m to run one job per value "
                          "(quote it, key='a,b', for a string; key=[a,b] for a list)")
    first = [sweep_values(o)[0] for o in sweeps]
    cfg = load_config(fixed + first)
    if not sweeps:
        _checked[tuple(fixed)] = cfg
    for i, sweep in enumerate(sweeps):
        for value in sweep_values(sweep)[1:]:
            load_config(fixed + first[:i] + [value] + first[i + 1:])
    return multirun


def sweep_values(override: Override) -> list[str]:
    """One override per value of a sweep, to check it composes: every choice and range
    value, the bounds of an interval(), the group options a glob() matches."""
    key = override.get_key_element()
    if override.value_type == ValueType.INTERVAL_SWEEP:
        bounds = override.value()
        return [f"{key}={bounds.start}", f"{key}={bounds.end}"]
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        matches = override.value().filter(group_options(key))
        if not matches:
            raise ConfigError(f"'{override.input_line}' matches no option of {key}: "
                              f"{', '.join(group_options(key)) or 'no such group'}")
        return [f"{key}={option}" for option in matches]
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


@contextmanager
def command_line(args: list[str]) -> Iterator[None]:
    """sys.argv as Hydra reads it, put back afterwards (tests call run_cli in-process)."""
    saved = sys.argv
    sys.argv = [saved[0], *args]
    try:
        yield
    finally:
        sys.argv = saved


TRACEBACK_ENV = "LM_TASKS_TRACEBACK"


class NoTraceback(logging.Formatter):
    """A console handler's formatter, less tracebacks: the job's log file keeps them."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


@contextmanager
def tracebacks_off_the_console() -> Iterator[None]:
    """An expected error (bad data, a bad config, a missing input, a service away) reads as one
    paragraph: Prefect's tracebacks stay out of the console, in the job's log file
    (`<hydra.run.dir>/<flow>.log`) and each stage's `stage.log`. LM_TASKS_TRACEBACK=1 shows them."""
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        yield
        return
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
    consoles = {h for logger in loggers for h in getattr(logger, "handlers", [])
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr)}
    saved = {h: h.formatter for h in consoles}
    for handler in consoles:
        handler.setFormatter(NoTraceback(handler.formatter or logging.Formatter()))
    try:
        yield
    finally:
        for handler, formatter in saved.items():
            handler.setFormatter(formatter)


@contextmanager
def console_to_hydra(info: bool) -> Iterator[None]:
    """--info prints through a console handler of Hydra's own: Prefect's steps aside, or
    every line would show twice."""
    root = logging.getLogger()
    saved = root.handlers[:] if info else []
    for handler in saved:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in saved:
            root.addHandler(handler)


@contextmanager
def shared_prefect_server(multirun: bool) -> Iterator[None]:
    """The jobs of a sweep report to one Prefect server. Without PREFECT_API_URL each process
    would start a temporary server of its own: jobs in parallel processes (hydra/launcher=joblib)
    would each spend 10-20 s starting one. The in-process jobs use this same server."""
    from prefect.settings import get_current_settings

    if not multirun or get_current_settings().api.url:  # a server is configured (or a test harness's)
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer  # the server's code: only when needed

    server = SubprocessASGIServer()  # the instance Prefect's own temporary mode uses
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120)))
    os.environ["PREFECT_API_URL"] = server.api_url  # for job processes started from here
    try:
        yield
    finally:
        del os.environ["PREFECT_API_URL"]


def register_help(flow: Callable) -> None:
    """`--help`: the flow's own description (its module's docstring), then the config groups."""
    module = sys.modules.get(getattr(flow.fn, "__module__", ""), None)
    header = (module.__doc__ if module and module.__doc__ else flow.description or flow.name).strip()
    ConfigStore.instance().store(group="hydra/help", name="lm_tasks", node={
        "app_name": f"python -m flows.{flow.name}",
        "header": header.replace("$", "$$") + "\n",
        "footer": "Docs: README.md. Hydra's own options: --hydra-help\n",
        "template": HELP_TEMPLATE,
    })


HELP_TEMPLATE = """${hydra.help.header}
== Config groups (group=option) ==
experiment, hparams_search and debug are unset unless chosen.

$APP_CONFIG_GROUPS

== Overrides ==
Any key: optim.lr=3e-4 | a sweep, one job per value: -m optim.lr=1e-3,3e-4
A hyperparameter search: hparams_search=tpe (or grid); the whole config: --cfg job --resolve

== Flags ==
$FLAGS_HELP
${hydra.help.footer}"""


def summary_markdown(title: str, results: list) -> str:
    lines = [f"## {title}", "", "| stage | status | seconds | key metrics | output |", "|---|---|---|---|---|"]
    for r in results:
        status = "cached" if r.cached else "ran"
        lines.append(f"| {r.stage} | {status} | {r.seconds:.1f} | {r.key_metric} | `{r.output_dir}` |")
    return "\n".join(lines) + "\n"
