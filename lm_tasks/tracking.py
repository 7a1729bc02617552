"""MLflow tracking: one experiment per project config, a parent run per lifecycle,
a child run per stage, the resolved config as params and as a YAML artifact.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lm_tasks.artifacts import write_json
from lm_tasks.config import DataConfig, LifecycleConfig, TrackingConfig
from lm_tasks.redaction import redact, redact_tree
from lm_tasks.retry import is_transient, retry_transient

log = logging.getLogger(__name__)

PARAMS_PER_CALL = 100  # MLflow's log_batch limit


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store; return the experiment id (created if new)."""
    mlflow.set_tracking_uri(cfg.tracking_uri)
    if redact(cfg.tracking_uri) != cfg.tracking_uri:  # MLflow prints run links built from the URI, password included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    with _store_lock(cfg.tracking_uri):
        return _experiment_id(cfg)


class TrackingUnreachable(ConnectionError):
    """The configured MLflow tracking server does not answer at all."""


def check_reachable(cfg: TrackingConfig, timeout_s: float = 10.0) -> None:
    """Before a flow starts: a tracking server that does not answer its health check fails
    the run at once, in one paragraph, rather than after minutes of MLflow's own retries.
    (Once a run is going, an outage is waited out: see `outage_patience_minutes`.)"""
    if not serves_ui(cfg.tracking_uri):
        return
    import requests

    try:
        requests.get(f"{cfg.tracking_uri.rstrip('/')}/health", timeout=timeout_s)
    except requests.exceptions.RequestException as err:
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", str(err))  # urllib3's long message, its cause kept
        reason = errno.group(0) if errno else type(err).__name__
        raise TrackingUnreachable(
            f"The MLflow tracking server at {redact(cfg.tracking_uri)} does not answer ({redact(reason)}). Start it (mlflow server --host 127.0.0.1 --port 5000 ...), check the address, "
            "or track locally with tracking.tracking_uri=sqlite:///mlruns/mlflow.db") from None


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first contact with a SQLite store: MLflow creates and migrates its tables on
    first use, and two processes doing that at once corrupt the migration."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(f"{db.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# The MLflow UI opens an experiment on what its kind says: training runs, not GenAI traces.
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def _experiment_id(cfg: TrackingConfig) -> str:
    experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
    if experiment is not None:
        if not experiment.tags.get(KIND_TAG):  # made before the kind was set; a user's choice stays
            try:
                MlflowClient().set_experiment_tag(experiment.experiment_id, KIND_TAG, TRAINING_KIND)
            except MlflowException as err:  # not ours to edit: the tag is for the UI only
                log.warning("Could not tag experiment %s as training runs (%s)", cfg.experiment_name, err.message)
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(cfg.experiment_name, artifact_location=_artifact_location(cfg),
                                        tags={KIND_TAG: TRAINING_KIND})
    except MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(cfg.experiment_name).experiment_id


def _artifact_location(cfg: TrackingConfig) -> str | None:
    """Where a new experiment's artifacts go: the configured location; else `artifacts/`
    beside a SQLite database; else None, and the store decides (a tracking server its own,
    possibly proxied, artifact store, which everyone using the server can read)."""
    location = cfg.artifact_location
    if location is None and cfg.tracking_uri.startswith("sqlite:///"):
        database = cfg.tracking_uri.removeprefix("sqlite:///").split("?")[0]
        location = str(Path(database).parent / "artifacts")
    if location is None or "://" in location:
        return location
    return Path(location).resolve().as_uri()


def run_url(tracking_uri: str, run: Run) -> str:
    """Where the MLflow UI shows `run`: on the tracking server itself, or (a local store) on
    `mlflow ui --backend-store-uri <store>` at its default address. Credentials are left out."""
    base = "http://127.0.0.1:5000"
    if serves_ui(tracking_uri):
        parts = urlsplit(tracking_uri)
        host = parts.netloc.rpartition("@")[2]  # without user:password@, IPv6 brackets kept
        base = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    # MLflow 3's UI shows the "Model training" view (not GenAI) when the link asks for it
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"


# Overrides that say where a run is kept, not what it trains: left out of run names.
WHERE_PREFIXES = ("paths.", "tracking.", "cache.", "hydra.", "runner.", "debug=")


def lifecycle_run_name(cfg: LifecycleConfig, overrides: list[str]) -> str:
    """A lifecycle run's name: its overrides, the last typed first (in a sweep, the swept
    ones usually come last), then the default name. The MLflow UI cuts long names, so
    sweep jobs must differ at the start."""
    what = [o for o in reversed(overrides) if not o.lstrip("+~").startswith(WHERE_PREFIXES)]
    return " ".join([*what, f"({default_run_name(cfg)})" if what else default_run_name(cfg)])


def serves_ui(tracking_uri: str) -> bool:
    """Whether the tracking URI is a server whose UI shows its runs (else `mlflow ui` does)."""
    return tracking_uri.startswith(("http://", "https://"))


def default_run_name(cfg: LifecycleConfig) -> str:
    return cfg.tracking.run_name or f"{cfg.data.name}-{cfg.tokenizer.name}{cfg.tokenizer.vocab_size}-{cfg.model.name}"


@contextmanager
def tracked_run(cfg: LifecycleConfig, stage: str, parent_run_id: str | None = None,
                tags: dict | None = None, resume_from: Path | None = None,
                run_id: str | None = None, name: str | None = None, system_metrics: bool = False) -> Iterator[Run]:
    """Start a run tagged `stage=<stage>`: a child of `parent_run_id`, or top level.

    Every run carries the flattened resolved config as params and config.yaml. The run
    ends FINISHED; FAILED when the block raises; KILLED when it is interrupted (Ctrl-C,
    SIGTERM, a cancelled Prefect run). `run_id`, or the id saved in `resume_from` by an
    interrupted earlier attempt, continues that run instead of starting a new one. With
    `system_metrics` (and `tracking.system_metrics`), MLflow samples CPU, memory, disk,
    network and, with `nvidia-ml-py`, GPU use into `system/*` metrics while the run is open.
    """
    experiment_id = configure(cfg.tracking)
    patience = 60 * cfg.tracking.outage_patience_minutes
    family = stage.split(":")[0]  # finetune:classification is tagged stage=finetune
    if run_id is None and resume_from is not None and resume_from.is_file():
        expected = {"stage": family, "cache_key": (tags or {}).get("cache_key")}
        run_id = _resumable(resume_from, parent_run_id, experiment_id, expected)
    name = name or (stage if parent_run_id else f"{stage}: {default_run_name(cfg)}")
    all_tags = {"stage": family, "host": socket.gethostname(), "pid": str(os.getpid()),  # who ran it
                **({"git_commit": git_commit()} if git_commit() else {}), **(tags or {})}
    system_metrics = system_metrics and cfg.tracking.system_metrics
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(cfg.tracking.system_metrics_interval_s)
    run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id, log_system_metrics=system_metrics,
                           run_name=None if run_id else redact(name, remembered=False), parent_run_id=parent_run_id,
                           nested=parent_run_id is not None, tags=redact_tree(all_tags))
    if resume_from is not None:
        write_json(resume_from, {"run_id": run.info.run_id})
    try:
        if run_id is None:
            log_params(flatten(_config_dict(cfg)))
            mlflow.log_text(cfg.resolved_yaml, "config.yaml")
        else:
            log.info("%s: continuing MLflow run %s of an interrupted attempt", stage, run_id)
        yield run
    except Exception as err:
        _end_run(run.info.run_id, RunStatus.FAILED, patience, ending=err)
        raise
    except BaseException as err:  # KeyboardInterrupt, SystemExit, Prefect's TerminationSignal: no waiting
        _end_run(run.info.run_id, RunStatus.KILLED, 0, ending=err)
        raise
    _end_run(run.info.run_id, RunStatus.FINISHED, patience)


def _end_run(run_id: str, status: int, patience_s: float, ending: BaseException | None = None) -> None:
    """End the active run `run_id` with `status`, retrying transient errors (a server away)
    for up to `patience_s`. When the block raised `ending`, a failure here is only warned
    about: the error that ended the block is the one to report."""
    name = RunStatus.to_string(status)
    try:
        try:
            mlflow.end_run(name)  # takes the run off the active-run stack, then sends the status
        except Exception as err:
            if not is_transient(err):
                raise
            retry_transient(lambda: MlflowClient().set_terminated(run_id, name),
                            f"Marking MLflow run {run_id} {name}", patience_s)
    except Exception as err:
        if ending is None:
            raise
        log.warning("Could not mark MLflow run %s %s (%s: %s); it may still show RUNNING. "
                    "The error that ended the run follows.", run_id, name, type(err).__name__, err)


def _resumable(resume_from: Path, parent_run_id: str | None, experiment_id: str, expected: dict) -> str | None:
    """The run an interrupted earlier attempt of this stage saved in `resume_from`, re-parented
    under `parent_run_id`; None when the file is unreadable or names another run. The file
    lives in a shared store's `.partial` folder and is not trusted: it must name a run of this
    experiment with this stage and cache key, or any run could be written into."""
    try:
        run = MlflowClient().get_run(str(json.loads(resume_from.read_text())["run_id"]))
    except (OSError, ValueError, KeyError, TypeError, MlflowException):
        return None
    if run.info.experiment_id != experiment_id or any(run.data.tags.get(k) != v for k, v in expected.items()):
        log.warning("Not continuing MLflow run %s named in %s: it is not this stage's run (another experiment, "
                    "stage or cache key); starting a new run", run.info.run_id, resume_from)
        return None
    if parent_run_id is not None:
        MlflowClient().set_tag(run.info.run_id, "mlflow.parentRunId", parent_run_id)
    return run.info.run_id  # mlflow.start_run(run_id=...) sets it RUNNING again


@contextmanager
def lifecycle_run(cfg: LifecycleConfig, key: str, name: str, may_resume: bool, tags: dict) -> Iterator[Run]:
    """The lifecycle's parent run: a new one, or (when `may_resume`, i.e. no other process
    runs this lifecycle) the unfinished run of an earlier attempt with the same key. A trial
    of a hyperparameter search is nested under the search's run."""
    run_id = unfinished_lifecycle(cfg, key) if may_resume else None
    tags = {**tags, "lifecycle_key": key, **search_tags(cfg)}
    with tracked_run(cfg, "lifecycle", tags=tags, run_id=run_id, name=name) as run:
        yield run


def search_tags(cfg: LifecycleConfig) -> dict:
    """A search trial's tags: its study and number, and its search run as MLflow parent
    (set as a tag, which also re-parents a continued run of an interrupted trial)."""
    if cfg.search.trial is None:
        return {}
    tags = {"search.study": cfg.search.study, "search.trial": str(cfg.search.trial)}
    if cfg.search.run_id:
        tags["mlflow.parentRunId"] = cfg.search.run_id
    return tags


def unfinished_lifecycle(cfg: LifecycleConfig, key: str) -> str | None:
    """The newest lifecycle run with this key that did not finish (FAILED, KILLED, or left
    RUNNING by a killed process), to be continued. Its unfinished stage runs are marked
    KILLED; the stages that resume (pretraining, fine-tuning) reopen their own."""
    experiment_id = configure(cfg.tracking)
    client = MlflowClient()
    runs = client.search_runs([experiment_id], f"tags.lifecycle_key = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs or runs[0].info.status == "FINISHED":
        return None
    parent = runs[0].info.run_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}' "
                                  "and attributes.status = 'RUNNING'")
    for child in children:
        client.set_terminated(child.info.run_id, "KILLED")
    return parent


def log_params(params: dict) -> None:
    items = list(params.items())
    for start in range(0, len(items), PARAMS_PER_CALL):
        mlflow.log_params({k: redact(str(v), remembered=False) for k, v in items[start:start + PARAMS_PER_CALL]})


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


def log_dataset(digest: str, data: DataConfig, data_dir: Path) -> None:
    """Record the cleaned dataset as an input of the active run: its origin, content digest
    and the manifest's row counts."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import HuggingFaceDatasetSource, LocalArtifactDatasetSource
    from mlflow.types.schema import ColSpec, Schema

    if data.source == "hub":
        origin = HuggingFaceDatasetSource(path=data.hub_name, config_name=data.hub_config, revision=data.hub_revision)
    else:
        origin = LocalArtifactDatasetSource(str(Path(data_dir).absolute() / "shards"))
    schema = Schema([ColSpec("string", "text"), ColSpec("string", "source"), ColSpec("long", "row"),
                     ColSpec("long", "n_bytes")])
    dataset = MetaDataset(origin, name=f"{data.name}-cleaned", digest=digest[:32], schema=schema)
    mlflow.log_input(dataset, context="training")
