"""A hyperparameter search in MLflow.

One search run (tagged `stage=search`, `search.study=<study>`) groups the search: each
trial is a lifecycle run nested under it (`mlflow.parentRunId`, tagged `search.trial`;
lm_tasks.tracking.lifecycle_run does that from `cfg.search`). The search run carries
`search/value` and `search/best_value` per trial, the best trial (`search.best_trial`,
`search.best_value`, `best.<param>` tags), and at the end the optimisation history and
parameter importance plots, a trials table and a summary. The best trial's lifecycle run
is tagged `search.best=true`.

Trials are read back from MLflow, not from what a job returns, so every Hydra launcher
(in-process, joblib, SLURM) is judged the same way.

All writes go through an MlflowClient: the search run is never the active run of this
process, where trials may run in-process and start their own.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from lm_tasks import search, tracking
from lm_tasks.config import TrackingConfig
from lm_tasks.redaction import redact

log = logging.getLogger(__name__)

RUN_ATTR = "mlflow_run_id"  # study user attr: the search's MLflow run


def start_search_run(cfg: TrackingConfig, study, spec: search.StudySpec) -> str:
    """The search's run: the one this study started earlier (a continued search), set
    RUNNING again, or a new one."""
    experiment_id = tracking.configure(cfg)
    client = MlflowClient()
    earlier = _earlier_run(client, experiment_id, study)
    if earlier is not None:
        client.update_run(earlier, status="RUNNING")
        log.info("search: continuing MLflow run %s of study %s", earlier, spec.name)
        return earlier
    tags = {"stage": "search", "search.study": spec.name, "search.objective": spec.objective,
            "search.direction": spec.direction, "search.storage": redact(spec.storage, remembered=False)}
    run = client.create_run(experiment_id, run_name=f"search: {spec.name}", tags=tags)
    run_id = run.info.run_id
    params = {"search.objective": spec.objective, "search.direction": spec.direction,
              "search.sampler": spec.sampler.kind, "search.pruner": spec.pruner.kind,
              **{f"space.{key}": value for key, value in spec.space.items()}}
    for key, value in params.items():
        client.log_param(run_id, key, redact(str(value), remembered=False)[:6000])
    if spec.fixed:
        client.set_tag(run_id, "search.fixed_overrides", redact(" ".join(spec.fixed), remembered=False))
    study.set_user_attr(RUN_ATTR, run_id)
    return run_id


def _earlier_run(client: MlflowClient, experiment_id: str, study) -> str | None:
    run_id = study.user_attrs.get(RUN_ATTR)
    if run_id is None:
        return None
    try:
        run = client.get_run(run_id)
    except Exception:  # deleted, or the study outlived its tracking store
        return None
    if run.info.experiment_id != experiment_id or run.data.tags.get("search.study") != study.study_name:
        return None
    return run_id


def trial_run(experiment_id: str, search_run_id: str, number: int) -> Run | None:
    """The newest lifecycle run of trial `number` among the search run's children (a study
    deleted and started again under the same name has a new search run: its old trials'
    runs never answer for the new ones)."""
    runs = MlflowClient().search_runs(
        [experiment_id], f"tags.stage = 'lifecycle' and tags.mlflow.parentRunId = '{_quoted(search_run_id)}' "
                         f"and tags.`search.trial` = '{number}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def objective_value(run: Run | None, metric: str) -> float | None:
    """`metric` as the trial logged it: on its lifecycle run (eval/..., lifecycle/...), else on
    the runs of its stages (val/... on pretraining), those it ran and those served from the
    cache (lineage tags `stage.<stage>.run_id`)."""
    if run is None:
        return None
    if metric in run.data.metrics:
        return run.data.metrics[metric]
    client = MlflowClient()
    stage_runs = [v for k, v in run.data.tags.items() if k.startswith("stage.") and k.endswith(".run_id")]
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    for stage_run in [*children, *filter(None, map(_run_or_none, stage_runs))]:
        if metric in stage_run.data.metrics:
            return stage_run.data.metrics[metric]
    return None


def _run_or_none(run_id: str) -> Run | None:
    try:
        return MlflowClient().get_run(run_id)
    except Exception:
        return None


def record_trial(search_run_id: str, study, number: int, outcome: search.Outcome) -> None:
    """One finished trial: its value and the best so far on the search run, its state on its
    own lifecycle run."""
    client = MlflowClient()
    if outcome.state == search.COMPLETE:
        client.log_metric(search_run_id, "search/value", outcome.value, step=number)
    best = search.best_trial(study)
    if best is not None:
        client.log_metric(search_run_id, "search/best_value", best.value, step=number)
    if outcome.run_id:
        client.set_tag(outcome.run_id, "search.state", outcome.state)
        if outcome.value is not None:
            client.set_tag(outcome.run_id, "search.value", repr(outcome.value))


def mark_best(search_run_id: str, study) -> None:
    """The best trial so far on the search run (tags), and `search.best=true` on its
    lifecycle run only."""
    best = search.best_trial(study)
    if best is None:
        return
    client = MlflowClient()
    tags = {"search.best_trial": str(best.number), "search.best_value": repr(best.value),
            **{f"best.{key}": str(value) for key, value in best.params.items()}}
    for key, value in tags.items():
        client.set_tag(search_run_id, key, value)
    experiment_id = client.get_run(search_run_id).info.experiment_id
    best_run = trial_run(experiment_id, search_run_id, best.number)
    marked = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{_quoted(search_run_id)}' "
                                                 "and tags.`search.best` = 'true'")
    for run in marked:
        if best_run is None or run.info.run_id != best_run.info.run_id:
            client.delete_tag(run.info.run_id, "search.best")
    if best_run is not None:
        client.set_tag(best_run.info.run_id, "search.best", "true")


def finish_search_run(search_run_id: str, study, out_dir: Path, status: str = "FINISHED") -> str:
    """Plots, the trials table and the summary on the search run, which then ends with
    `status`; returns the summary (markdown)."""
    client = MlflowClient()
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = []
    for path in write_plots(study, out_dir, notes):
        client.log_artifact(search_run_id, str(path), "plots")
    table = out_dir / "trials.csv"
    trials_frame(study).to_csv(table, index=False)
    client.log_artifact(search_run_id, str(table))
    text = summary(study, notes)
    (out_dir / "summary.md").write_text(text)
    client.log_artifact(search_run_id, str(out_dir / "summary.md"))
    tally = search.counts(study)
    for state in (search.COMPLETE, search.PRUNED, search.FAIL):
        client.set_tag(search_run_id, f"search.{state.lower()}_trials", str(tally[state]))
    client.set_terminated(search_run_id, status)
    return text


def end_search_run(search_run_id: str, status: str) -> None:
    """End the search run without the final report (the search failed or was interrupted)."""
    try:
        MlflowClient().set_terminated(search_run_id, status)
    except Exception as err:  # never hide the error that ended the search
        log.warning("search: could not mark MLflow run %s %s: %s", search_run_id, status, err)


def write_plots(study, out_dir: Path, notes: list[str]) -> list[Path]:
    """optimization_history.png, and param_importances.png where importances mean something
    (two complete trials or more, more than one parameter varying); why not otherwise goes
    into `notes`."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        notes.append("No plots: no trial completed.")
        return []
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        paths.append(_save(ovm.plot_optimization_history(study), out_dir / "optimization_history.png", plt))
        varying = [key for key in complete[0].params if len({repr(t.params.get(key)) for t in complete}) > 1]
        if len(complete) < 2 or len(varying) < 2:
            notes.append(f"No parameter importances: they need two complete trials or more and more than one "
                         f"parameter varying ({len(complete)} complete, varying: {', '.join(varying) or 'none'}).")
        else:
            try:
                paths.append(_save(ovm.plot_param_importances(study), out_dir / "param_importances.png", plt))
            except (ValueError, RuntimeError) as err:  # e.g. a constant objective
                notes.append(f"No parameter importances: {err}")
    for note in notes:
        log.info("search: %s", note)
    return paths


def _save(axes, path: Path, plt) -> Path:
    figure = axes.figure
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def trials_frame(study):
    """One row per trial: number, state, value, parameters, duration, pruning step, error."""
    import pandas as pd

    rows = []
    for trial in study.get_trials(deepcopy=False):
        state = "INTERRUPTED" if trial.user_attrs.get(search.INTERRUPTED) else trial.state.name
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else None
        rows.append({"number": trial.number, "state": state, "value": trial.value,
                     **{f"params.{k}": v for k, v in trial.params.items()}, "seconds": duration,
                     "pruned_at_step": trial.user_attrs.get(search.PRUNED_AT),
                     "retry_of": trial.user_attrs.get(search.RETRY_OF),
                     "error": trial.user_attrs.get(search.ERROR)})
    return pd.DataFrame(rows)


def summary(study, notes: list[str] = ()) -> str:
    tally = search.counts(study)
    objective = study.user_attrs.get("objective", "value")
    lines = [f"## Search `{study.study_name}`: {study.direction.name.lower()} {objective}", ""]
    best = search.best_trial(study)
    if best is None:
        lines.append("No trial completed.")
    else:
        lines += [f"Best: trial {best.number}, {objective} = {best.value:.6g}", "",
                  *[f"- `{key}={value}`" for key, value in best.params.items()]]
    lines += ["", f"Trials: {tally[search.COMPLETE]} complete, {tally[search.PRUNED]} pruned, "
                  f"{tally[search.FAIL]} failed" + (f", {tally['INTERRUPTED']} interrupted (re-run)"
                                                     if tally["INTERRUPTED"] else ""), *notes]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")
