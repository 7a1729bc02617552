"""Hyperparameter search: the search space, the study (create, continue, recover, count),
reading trials back from MLflow, and when a training stage prunes a trial."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.lm_tasks_search._space import SearchSpaceError, flatten, override_value, parse_space
from lm_tasks import search
from lm_tasks.config import TrackingConfig, load_config
from lm_tasks.training.pruning import TrialPruning, proxy_metric, pruning_callbacks

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- the search space ----------------------------------------------------------------


def test_sweep_strings_become_distributions():
    space = parse_space({
        "optim.lr": "tag(log, interval(1e-4, 3e-3))",
        "optim.weight_decay": "interval(0.0, 0.2)",
        "model.n_layer": "int(interval(2, 8))",
        "trainer.global_batch_size": "range(16, 65, 16)",
        "model.dropout": "0.0,0.1,0.2",
        "model": "choice(tiny, small)",
        "seed": 7,
    })
    d = space.distributions
    assert d["optim.lr"] == FloatDistribution(1e-4, 3e-3, log=True)
    assert d["optim.weight_decay"] == FloatDistribution(0.0, 0.2)
    assert d["model.n_layer"] == IntDistribution(2, 8)
    assert d["trainer.global_batch_size"] == IntDistribution(16, 64, step=16)
    assert d["model.dropout"] == CategoricalDistribution([0.0, 0.1, 0.2])
    assert d["model"] == CategoricalDistribution(["tiny", "small"])
    assert space.fixed == ["seed=7"] and "seed" not in d
    assert space.grid["trainer.global_batch_size"] == [16, 32, 48, 64]
    assert "optim.lr" not in space.grid  # continuous: no grid
    assert space.sources["optim.lr"] == "tag(log, interval(1e-4, 3e-3))"


def test_nested_params_are_flattened():
    assert flatten({"finetune": {"classification": {"lr": "1,2"}}, "seed": "3"}) == {
        "finetune.classification.lr": "1,2", "seed": "3"}


@pytest.mark.parametrize("value, message", [
    ("glob(*)", "glob(...) is not supported"),
    ("shuffle(1, 2)", "shuffle(...) has no meaning"),
    ("tag(log, choice(1, 2))", "applies to interval(...) only"),
    ("tag(log, interval(0, 1))", "needs low > 0"),
    ("interval(3, 1)", "needs low < high"),
    ("tag(int, interval(1, 3))", "unsupported tag(s) int"),
    ("choice([1, 2], [3])", "single values"),
    ("1,1,2", "repeated choices"),
    ("interval(1,", "does not parse"),
])
def test_unsupported_sweeps_are_explained(value, message):
    with pytest.raises(SearchSpaceError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace(".", r"\.")):
        parse_space({"optim.lr": value})


def test_grid_size_and_continuous_parameters():
    assert parse_space({"a": "1,2,3", "b": "range(0, 4)"}).grid_size() == 12
    with pytest.raises(SearchSpaceError, match="a grid search needs discrete values, but b is continuous"):
        parse_space({"a": "1,2", "b": "interval(0, 1)"}).grid_size()


@pytest.mark.parametrize("value", ["sqlite:////tmp/x/optuna.db", "a,b", "true", "1e-3", "it's", 0.00031, 3,
                                   None, False, "null"])
def test_override_values_read_back_unchanged(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    written = override_value(value)
    read = OverridesParser.create().parse_override(f"k={written}").value()
    assert read == value and type(read) is type(value)


def test_presets_compose_and_search_twelve_grid_points():
    from hydra import compose, initialize_config_dir

    from lm_tasks.config import CONF_DIR

    for preset in ("tpe", "grid"):
        cfg = load_config([f"hparams_search={preset}", "debug=smoke"])
        assert not cfg.promotion.enabled and cfg.search.trial is None
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        grid = compose("lifecycle", ["hparams_search=grid"], return_hydra_config=True).hydra.sweeper
        tpe = compose("lifecycle", ["hparams_search=tpe"], return_hydra_config=True).hydra.sweeper
    assert grid._target_ == "hydra_plugins.lm_tasks_search.sweeper.StudySweeper"
    assert parse_space(grid.pretrain_params).grid_size() == 12
    assert parse_space(grid.finetune_params).grid_size() == 12
    assert set(parse_space(tpe.pretrain_params).distributions) == {"optim.lr", "optim.weight_decay",
                                                                  "model.dropout"}
    assert parse_space(tpe.finetune_params).distributions["lr"].log


# --- the study -----------------------------------------------------------------------


def spec(tmp_path, **changes) -> search.StudySpec:
    values = dict(name="s", storage=f"sqlite:///{tmp_path}/studies/optuna.db", objective="eval/lm/bpb",
                  direction="minimize", space={"x": "interval(0, 1)"}, fixed=["debug=smoke"])
    return search.StudySpec(**{**values, **changes})


X = {"x": FloatDistribution(0, 1)}


def test_a_study_is_created_then_continued(tmp_path):
    study = search.open_study(spec(tmp_path))
    assert (tmp_path / "studies" / "optuna.db").is_file()
    assert study.user_attrs["objective"] == "eval/lm/bpb"
    trial = study.ask(X)
    study.tell(trial, 0.5)
    again = search.open_study(spec(tmp_path))
    assert [t.value for t in again.trials] == [0.5]
    assert search.finished_count(again) == 1 and search.remaining(again, 3) == 2


def test_another_search_cannot_continue_a_study(tmp_path):
    search.open_study(spec(tmp_path))
    with pytest.raises(ValueError, match="belongs to another search.*hydra.sweeper.study_name"):
        search.open_study(spec(tmp_path, space={"x": "interval(0, 2)"}))
    with pytest.raises(ValueError, match="belongs to another search"):
        search.open_study(spec(tmp_path, fixed=[]))
    with pytest.raises(ValueError, match="created to minimize, this search would maximize"):
        search.open_study(spec(tmp_path, direction="maximize"))


def test_a_trial_left_running_is_failed_and_run_again(tmp_path):
    study = search.open_study(spec(tmp_path))
    done = study.ask(X)
    study.tell(done, 0.3)
    killed = study.ask(X)  # the search is killed while this trial runs
    killed_x = killed.params["x"]

    study = search.open_study(spec(tmp_path))  # the same command again
    assert search.recover_interrupted(study) == [killed.number]
    frozen = study.trials[killed.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs[search.INTERRUPTED]
    assert search.finished_count(study) == 1  # the interrupted trial does not count
    rerun = study.ask(X)
    assert rerun.params["x"] == killed_x and rerun.user_attrs[search.RETRY_OF] == killed.number
    assert search.recover_interrupted(search.open_study(spec(tmp_path))) == [rerun.number]  # killed again


def test_a_continued_seeded_study_proposes_new_values(tmp_path):
    seeded = spec(tmp_path, sampler=search.SamplerSpec("tpe", seed=3))
    study = search.open_study(seeded)
    study.tell(study.ask(X), 0.1)
    again = search.open_study(seeded)
    again.tell(again.ask(X), 0.2)
    first, second = (t.params["x"] for t in again.trials)
    assert first != second


def test_grid_runs_each_point_once_and_counts_itself(tmp_path):
    grid = {"a": [1, 2], "b": ["x", "y"]}
    distributions = {"a": CategoricalDistribution([1, 2]), "b": CategoricalDistribution(["x", "y"])}
    study = search.open_study(spec(tmp_path, space={"a": "1,2", "b": "x,y"}, sampler=search.SamplerSpec("grid", 0)),
                              grid)
    batch = [study.ask(distributions) for _ in range(2)]  # asked together: distinct points
    for trial in batch:
        study.tell(trial, 1.0)
    while search.remaining(study, 4):
        study.tell(study.ask(distributions), 2.0)  # the last point does not call Study.stop
    points = {(t.params["a"], t.params["b"]) for t in study.trials}
    assert len(study.trials) == 4 and points == {(1, "x"), (1, "y"), (2, "x"), (2, "y")}


def test_outcomes(tmp_path):
    study = search.open_study(spec(tmp_path))
    trial = study.ask(X)
    frozen = search.frozen_trial(study, trial.number)
    assert search.judge(frozen, True, 0.7, None, "eval/lm/bpb") == search.Outcome("COMPLETE", 0.7)
    assert "logged no 'eval/lm/bpb'" in search.judge(frozen, True, None, None, "eval/lm/bpb").error
    assert search.judge(frozen, True, math.nan, None, "eval/lm/bpb").state == "FAIL"
    assert search.judge(frozen, False, None, "ValueError: x", "m") == search.Outcome("FAIL", error="ValueError: x")
    trial.set_user_attr(search.PRUNED_AT, 6)  # what the pruning callback does before stopping training
    assert search.judge(search.frozen_trial(study, trial.number), False, None, "TrialPruned", "m").state == "PRUNED"
    search.tell(study, trial.number, search.Outcome("PRUNED"))
    assert study.trials[0].state == TrialState.PRUNED

    fail = search.Outcome("FAIL", error="boom")
    assert search.all_failed_alike([fail, search.Outcome("FAIL", error="boom")]) == "boom"
    assert search.all_failed_alike([fail, search.Outcome("FAIL", error="other")]) is None
    assert search.all_failed_alike([fail, search.Outcome("PRUNED")]) is None


def test_a_wrapped_job_error_reads_the_same_for_every_trial():
    from hydra_plugins.lm_tasks_search.sweeper import _job_error

    try:
        try:
            raise ImportError("no module x")
        except ImportError as cause:
            raise RuntimeError("lifecycle job 3 failed: ImportError: no module x") from cause
    except RuntimeError as err:
        assert _job_error(err) == "ImportError: no module x"
    pickled = type("JobFailed", (Exception,), {})("lifecycle job 7 failed: ImportError: no module x")
    assert _job_error(pickled) == "ImportError: no module x"  # a process boundary dropped the cause


def test_trial_overrides():
    overrides = search.trial_overrides(["debug=smoke"], {"optim.lr": 0.001, "model": "tiny"},
                                       {"study": "s", "trial": "3"}, override_value)
    assert overrides == ["debug=smoke", "optim.lr=0.001", "model=tiny", "search.study=s", "search.trial=3"]


# --- MLflow: the search run and its trials ---------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real local MLflow store (SQLite), shared by this module's MLflow tests."""
    from lm_tasks import tracking

    root = tmp_path_factory.mktemp("mlflow")
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_location=None,
                         experiment_name="search-test", run_name=None)
    return cfg, tracking.configure(cfg)


def trial_lifecycle(experiment_id: str, study: str, number: int, metrics: dict, **tags) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.create_run(experiment_id, tags={"stage": "lifecycle", "search.study": study,
                                                 "search.trial": str(number), **tags})
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_objective_is_read_from_the_trial_or_its_stage_runs(store):
    from mlflow.tracking import MlflowClient

    from lm_tasks import search_tracking

    _, experiment_id = store
    client = MlflowClient()
    pretrain = client.create_run(experiment_id, tags={"stage": "pretrain"}).info.run_id
    client.log_metric(pretrain, "val/bpb", 2.5)
    search_run, other_search = (client.create_run(experiment_id).info.run_id for _ in range(2))
    trial_lifecycle(experiment_id, "obj", 0, {"eval/lm/bpb": 9.0}, **{"mlflow.parentRunId": search_run})
    trial_lifecycle(experiment_id, "obj", 0, {"eval/lm/bpb": 3.0}, **{"stage.pretrain.run_id": pretrain,
                                                                       "mlflow.parentRunId": search_run})
    trial_lifecycle(experiment_id, "obj", 0, {"eval/lm/bpb": 1.0}, **{"mlflow.parentRunId": other_search})

    run = search_tracking.trial_run(experiment_id, search_run, 0)
    assert search_tracking.objective_value(run, "eval/lm/bpb") == 3.0  # the newest run of trial 0 of this search
    assert search_tracking.objective_value(run, "val/bpb") == 2.5  # a cached stage's run, by lineage tag
    assert search_tracking.objective_value(run, "eval/classification/accuracy") is None
    assert search_tracking.trial_run(experiment_id, search_run, 1) is None
    assert search_tracking.objective_value(None, "eval/lm/bpb") is None


def test_search_run_marks_the_best_trial_and_is_continued(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from lm_tasks import search_tracking

    cfg, experiment_id = store
    client = MlflowClient()
    study_spec = spec(tmp_path, name="best")
    study = search.open_study(study_spec)
    run_id = search_tracking.start_search_run(cfg, study, study_spec)
    runs = {}
    for value in (5.0, 3.0, 4.0):
        trial = study.ask(X)
        runs[trial.number] = trial_lifecycle(experiment_id, "best", trial.number, {"eval/lm/bpb": value},
                                             **{"mlflow.parentRunId": run_id})
        outcome = search.Outcome("COMPLETE", value, run_id=runs[trial.number])
        search.tell(study, trial.number, outcome)
        search_tracking.record_trial(run_id, study, trial.number, outcome)
        search_tracking.mark_best(run_id, study)
        if trial.number == 0:
            assert client.get_run(runs[0]).data.tags["search.best"] == "true"

    tags = client.get_run(run_id).data.tags
    assert tags["stage"] == "search" and tags["search.best_trial"] == "1" and float(tags["search.best_value"]) == 3.0
    assert float(tags["best.x"]) == study.trials[1].params["x"]
    assert [r for r, run in runs.items() if client.get_run(run).data.tags.get("search.best")] == [1]
    assert client.get_run(runs[2]).data.tags["search.state"] == "COMPLETE"
    history = client.get_metric_history(run_id, "search/best_value")
    assert [(m.step, m.value) for m in history] == [(0, 5.0), (1, 3.0), (2, 3.0)]

    text = search_tracking.finish_search_run(run_id, study, tmp_path / "report")
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert artifacts == {"plots/optimization_history.png"}  # one parameter: no importances
    assert "No parameter importances" in text and "Best: trial 1" in text and "3 complete, 0 pruned, 0 failed" in text
    assert client.get_run(run_id).info.status == "FINISHED"
    assert search_tracking.start_search_run(cfg, search.open_study(study_spec), study_spec) == run_id  # continued
    assert client.get_run(run_id).info.status == "RUNNING"


def test_a_trial_lifecycle_run_is_nested_under_its_search(smoke_cfg):
    from lm_tasks.tracking import search_tags

    assert search_tags(smoke_cfg) == {}
    smoke_cfg.search.study, smoke_cfg.search.trial, smoke_cfg.search.run_id = "s", 4, "abc"
    assert search_tags(smoke_cfg) == {"search.study": "s", "search.trial": "4", "mlflow.parentRunId": "abc"}


# --- pruning ------------------------------------------------------------------------


@pytest.mark.parametrize("objective, direction, stage, task, monitor, mode, expected", [
    ("eval/lm/bpb", "minimize", "pretrain", None, None, None, "val/bpb"),
    ("val/loss", "minimize", "pretrain", None, None, None, "val/bpb"),
    ("eval/lm/bpb", "minimize", "finetune", "classification", "accuracy", "max", None),
    ("eval/lm/bpb", "maximize", "pretrain", None, None, None, None),  # bpb says nothing of a maximised metric
    ("eval/classification/accuracy", "maximize", "finetune", "classification", "accuracy", "max", "val/accuracy"),
    ("eval/classification/f1_mean", "maximize", "finetune", "classification", "accuracy", "max", "val/accuracy"),
    ("eval/classification/accuracy", "maximize", "finetune", "classification", "loss", "min", None),
    ("eval/classification/accuracy", "maximize", "finetune", "qa", "f1", "max", None),  # another task's metric
    ("eval/classification/accuracy", "maximize", "pretrain", None, None, None, None),
    ("eval/summarization/loss", "minimize", "finetune", "summarization", "loss", "min", "val/loss"),
    ("lifecycle/pretrain_seconds", "minimize", "pretrain", None, None, None, None),
])
def test_which_stage_reports_for_which_objective(objective, direction, stage, task, monitor, mode, expected):
    assert proxy_metric(objective, direction, stage, task, monitor, mode) == expected


def fake_trainer(value: float, step: int):
    return SimpleNamespace(sanity_checking=False, global_step=step, is_global_zero=True,
                           callback_metrics={"val/bpb": value},
                           strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj))


def test_a_trial_behind_the_threshold_is_pruned(tmp_path, smoke_cfg):
    study_spec = spec(tmp_path, pruner=search.PrunerSpec(kind="threshold", upper=3.0, n_warmup_steps=2))
    study = search.open_study(study_spec)
    trial = study.ask(X)
    smoke_cfg.search.study, smoke_cfg.search.storage, smoke_cfg.search.trial = "s", study_spec.storage, trial.number
    assert pruning_callbacks(smoke_cfg, "finetune", None) == []  # finetuning is no stand-in for eval/lm/bpb
    [callback] = pruning_callbacks(smoke_cfg, "pretrain")
    assert isinstance(callback, TrialPruning) and callback.monitor == "val/bpb"

    callback.on_validation_end(fake_trainer(9.0, 1), None)  # warm-up: reported, not pruned
    callback.on_validation_end(fake_trainer(2.0, 2), None)
    with pytest.raises(optuna.TrialPruned):
        callback.on_validation_end(fake_trainer(3.5, 3), None)
    frozen = search.frozen_trial(study, trial.number)
    assert frozen.intermediate_values == {1: 9.0, 2: 2.0, 3: 3.5} and frozen.user_attrs[search.PRUNED_AT] == 3


def test_no_search_no_pruning(smoke_cfg):
    assert pruning_callbacks(smoke_cfg, "pretrain") == []


def test_a_pruned_trial_is_not_retried():
    from lm_tasks.retry import is_transient

    assert not is_transient(optuna.TrialPruned("behind"))


# --- the sweeper's loop, with a stand-in launcher ------------------------------------------


class StandInLauncher:
    """Runs each trial by writing what a lifecycle would (a FINISHED run with the objective),
    or fails it with `fail(number)`'s exception."""

    def __init__(self, experiment_id: str, fail=lambda number: None, prune=()):
        self.experiment_id, self.fail, self.prune, self.batches = experiment_id, fail, prune, []

    def launch(self, batch, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        self.batches.append([list(job) for job in batch])
        returns = []
        for job in batch:
            given = dict(o.split("=", 1) for o in job)
            number = int(given["search.trial"])
            error = self.fail(number)
            if number in self.prune:
                study = optuna.load_study(study_name=given["search.study"], storage=given["search.storage"])
                search.set_trial_user_attr(study, number, search.PRUNED_AT, 3)
                error = optuna.TrialPruned("behind")
            if error is None:
                trial_lifecycle(self.experiment_id, given["search.study"], number,
                                {"eval/lm/bpb": float(given["optim.lr"]) * 1000},
                                **{"mlflow.parentRunId": given["search.run_id"]})
            returned = JobReturn(overrides=job, status=JobStatus.FAILED if error else JobStatus.COMPLETED)
            returned.return_value = error
            returns.append(returned)
        return returns


def sweeper_for(tmp_path, *overrides: str):
    """The study sweeper as Hydra would set it up for `hparams_search=tpe debug=smoke ...`."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lm_tasks import tracking
    from lm_tasks.config import CONF_DIR

    arguments = ["hparams_search=tpe", "debug=smoke", f"paths.root_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose("lifecycle", [*arguments, f"hydra.sweep.dir={tmp_path}/multirun", *overrides],
                         return_hydra_config=True)
    sweeper = instantiate(config.hydra.sweeper)
    sweeper.config = config
    sweeper.validate_batch_is_legal = lambda batch: None  # composing is Hydra's part
    experiment_id = tracking.configure(load_config(arguments).tracking)
    return sweeper, arguments, experiment_id


def test_the_sweeper_runs_batches_reads_objectives_and_records_pruning(tmp_path):
    sweeper, arguments, experiment_id = sweeper_for(
        tmp_path, "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2", "hydra.sweeper.study_name=loop")
    sweeper.launcher = StandInLauncher(experiment_id, fail=lambda n: RuntimeError("odd") if n == 1 else None,
                                       prune=(2,))
    best = sweeper.sweep(arguments)

    assert [len(batch) for batch in sweeper.launcher.batches] == [2, 2, 1]
    first = sweeper.launcher.batches[0][0]
    assert first[:3] == arguments and {o.split("=")[0] for o in first[3:]} == {
        "optim.lr", "optim.weight_decay", "model.dropout", "search.study", "search.storage", "search.run_id",
        "search.trial"}
    study = optuna.load_study(study_name="loop",
                              storage=f"sqlite:///{tmp_path}/outputs/lm-lifecycle/hparams_search/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "PRUNED", "COMPLETE", "COMPLETE"]
    assert study.trials[1].user_attrs[search.ERROR] == "RuntimeError: odd"
    assert best.number == search.best_trial(study).number
    assert best.value == pytest.approx(min(t.params["optim.lr"] for t in study.trials if t.value) * 1000)
    summary = (tmp_path / "outputs" / "lm-lifecycle" / "hparams_search" / "loop" / "summary.md").read_text()
    assert "3 complete, 1 pruned, 1 failed" in summary

    again, _, _ = sweeper_for(tmp_path, "hydra.sweeper.n_trials=5", "hydra.sweeper.study_name=loop")
    again.launcher = StandInLauncher(experiment_id)
    again.sweep(arguments)  # the study is complete: nothing more runs
    assert again.launcher.batches == []


def test_a_first_batch_failing_alike_stops_the_search(tmp_path):
    from mlflow.tracking import MlflowClient

    from lm_tasks.search import SearchError

    sweeper, arguments, experiment_id = sweeper_for(tmp_path, "hydra.sweeper.n_trials=6",
                                                    "hydra.sweeper.n_jobs=2")
    sweeper.launcher = StandInLauncher(experiment_id, fail=lambda n: ImportError("no module named x"))
    with pytest.raises(SearchError, match="(?s)first batch failed with the same error.*ImportError: no module"):
        sweeper.sweep(arguments)
    assert len(sweeper.launcher.batches) == 1
    [run] = MlflowClient().search_runs([experiment_id], "tags.stage = 'search'")
    assert run.info.status == "FAILED" and run.data.tags["search.study"] == "lm-lifecycle-tpe-eval_lm_bpb"
