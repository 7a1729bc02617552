"""The `study` sweeper: a hyperparameter search as a Hydra multirun.

    python -m flows.lifecycle hparams_search=tpe [hydra.sweeper.n_trials=30] [overrides]

Each batch: ask the study for `n_jobs` trials, launch one job per trial through the
configured Hydra launcher (in-process by default, in parallel with hydra/launcher=joblib),
read each trial's objective back from MLflow, tell the study. The study lives in
`storage`, so the same command run again after a kill continues the search.

Each trial's overrides: this command's own (sweep values excepted), the sampled values,
and who the trial is (`search.study`, `search.storage`, `search.trial`, `search.run_id`),
from which its lifecycle run is nested under the search run and its training may be
pruned. The study logic is lm_tasks/search.py; MLflow is lm_tasks/search_tracking.py.
"""

import logging
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.lm_tasks_search._space import SearchSpace, override_value, parse_space
from lm_tasks.search import SearchError

log = logging.getLogger(__name__)

STORAGE_ENV = "LM_TASKS_SEARCH_STORAGE"  # a storage URL with credentials reaches trials through here


class StudySweeper(Sweeper):
    def __init__(self, objective: Optional[str], direction: Optional[str], study_name: Optional[str],
                 storage: str, n_trials: Optional[int], n_jobs: int, sampler: Any, pruner: Any,
                 params: Any, pretrain_params: Any, finetune_params: Any) -> None:
        super().__init__()
        self.settings = {"objective": objective, "direction": direction, "study_name": study_name,
                         "storage": storage, "n_trials": n_trials}
        self.n_jobs = max(1, int(n_jobs))
        self.sampler, self.pruner = _plain(sampler), _plain(pruner)
        self.params, self.pretrain_params, self.finetune_params = map(_plain, (params, pretrain_params,
                                                                              finetune_params))
        self.hydra_context: Optional[HydraContext] = None
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # --- the search -------------------------------------------------------------------

    def sweep(self, arguments: List[str]) -> Any:
        from lm_tasks import search, search_tracking

        base, cli_space = _split_arguments(arguments)
        cfg = self._typed_config()  # the trials' shared config, validated before anything starts
        spec, space = self._plan(cfg, base, cli_space)
        n_trials = self._n_trials(spec, space)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        study = search.open_study(spec, space.grid, parallel=self.n_jobs > 1)
        run_id = search_tracking.start_search_run(cfg.tracking, study, spec)
        log.info("search %s: %s %s over %s; %d of %d trials done; study in %s", spec.name, spec.direction,
                 spec.objective, ", ".join(spec.space) or "nothing", search.finished_count(study), n_trials,
                 _masked(spec.storage))
        try:
            search.recover_interrupted(study)
            self._run_trials(study, spec, space, base, n_trials, run_id, cfg)
        except Exception:
            search_tracking.end_search_run(run_id, "FAILED")
            raise
        except BaseException:  # Ctrl-C, SIGTERM: the next run of the command continues
            search_tracking.end_search_run(run_id, "KILLED")
            raise
        out_dir = Path(cfg.paths.output_dir) / "hparams_search" / spec.name
        text = search_tracking.finish_search_run(run_id, study, out_dir)
        print(text, flush=True)
        return search.best_trial(study)

    def _run_trials(self, study, spec, space: SearchSpace, base: list[str], n_trials: int, run_id: str,
                    cfg) -> None:
        from lm_tasks import search, search_tracking, tracking

        experiment_id = tracking.configure(cfg.tracking)
        identity = {"study": override_value(spec.name), "storage": self._storage_override(spec.storage),
                    "run_id": run_id}
        first = True
        while (todo := search.remaining(study, n_trials)) > 0:
            trials = [study.ask(space.distributions) for _ in range(min(self.n_jobs, todo))]
            batch = [search.trial_overrides(base, trial.params, {**identity, "trial": str(trial.number)},
                                            override_value) for trial in trials]
            try:
                self.validate_batch_is_legal(batch)  # composition errors, before any job starts
            except Exception as err:
                for trial in trials:
                    search.tell(study, trial.number, search.Outcome(search.FAIL, error=f"{err}"))
                raise
            for trial, overrides in zip(trials, batch):
                log.info("search %s: trial %d: %s", spec.name, trial.number, " ".join(overrides[len(base):]))
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            outcomes = []
            for trial, returned in zip(trials, returns):
                outcome = self._outcome(study, trial.number, returned, spec.objective, experiment_id, run_id)
                search.tell(study, trial.number, outcome)
                search_tracking.record_trial(run_id, study, trial.number, outcome)
                self._log_outcome(study, spec, trial.number, outcome)
                outcomes.append(outcome)
            search_tracking.mark_best(run_id, study)
            error = search.all_failed_alike(outcomes) if first else None
            if error is not None:
                raise SearchError(f"search {spec.name}: every trial of the first batch failed with the same "
                                  f"error, so the others would too; fix it and run the same command again to "
                                  f"continue:\n{error}")
            first = False

    def _outcome(self, study, number: int, returned, objective: str, experiment_id: str, search_run_id: str):
        from lm_tasks import search, search_tracking

        run = search_tracking.trial_run(experiment_id, search_run_id, number)
        error = None
        if returned.status != JobStatus.COMPLETED:
            error = _job_error(returned._return_value)  # JobReturn.return_value would raise it
        elif run is None or run.info.status != "FINISHED":
            error = (f"the trial's job returned but its lifecycle run is "
                     f"{'missing' if run is None else run.info.status}")
        value = search_tracking.objective_value(run, objective) if error is None else None
        outcome = search.judge(search.frozen_trial(study, number), error is None, value, error, objective)
        outcome.run_id = run.info.run_id if run is not None else None
        return outcome

    @staticmethod
    def _log_outcome(study, spec, number: int, outcome) -> None:
        from lm_tasks import search

        best = search.best_trial(study)
        best_text = f"; best {best.value:.6g} (trial {best.number})" if best is not None else ""
        if outcome.state == search.COMPLETE:
            log.info("search %s: trial %d COMPLETE %s=%.6g%s", spec.name, number, spec.objective, outcome.value,
                     best_text)
        elif outcome.state == search.PRUNED:
            log.info("search %s: trial %d PRUNED%s", spec.name, number, best_text)
        else:
            log.warning("search %s: trial %d FAILED: %s", spec.name, number, outcome.error)

    # --- what to search ------------------------------------------------------------------

    def _typed_config(self):
        """This command's config (composed by Hydra without the sweeps) as the validated
        LifecycleConfig every trial starts from: what Hydra composed, not composed again."""
        from lm_tasks.config import config_from_dict

        app = OmegaConf.masked_copy(self.config, [key for key in self.config if key != "hydra"])
        return config_from_dict(OmegaConf.to_container(app, resolve=True))

    def _plan(self, cfg, base: list[str], cli_space: dict[str, str]):
        """The study's spec and search space from the settings, the config and the command line."""
        from lm_tasks import search

        objective = self.settings["objective"] or cfg.promotion.metric
        direction = self.settings["direction"] or search.direction_of(cfg.promotion.mode)
        if direction not in ("minimize", "maximize"):
            raise SearchError(f"hydra.sweeper.direction must be minimize or maximize, got {direction!r}")
        params = {**self._params_for(objective, cfg), **cli_space}  # the command line wins
        space = parse_space(params)
        choice = OmegaConf.select(self.config, "hydra.runtime.choices.hparams_search") or "study"
        name = self.settings["study_name"] or f"{cfg.name}-{choice}-{re.sub(r'[^A-Za-z0-9._-]+', '_', objective)}"
        spec = search.StudySpec(
            name=name, storage=self.settings["storage"], objective=objective, direction=direction,
            sampler=search.SamplerSpec(**self.sampler), pruner=search.PrunerSpec(**self.pruner),
            space=space.sources, fixed=[*base, *space.fixed])
        return spec, space

    def _params_for(self, objective: str, cfg) -> dict[str, Any]:
        """`params`, plus `finetune_params` under finetune.<task> when the objective is a task's,
        else `pretrain_params`."""
        from hydra_plugins.lm_tasks_search._space import flatten

        parts = objective.split("/")
        task = parts[1] if len(parts) >= 3 and parts[0] == "eval" and parts[1] != "lm" else None
        if task is not None and task not in cfg.finetune:
            raise SearchError(f"the objective {objective!r} is task {task!r}'s, which this config does not "
                              f"fine-tune (finetune: {', '.join(cfg.finetune) or 'none'}): add finetune={task}")
        if task is not None:
            scoped = {f"finetune.{task}.{key}": value for key, value in flatten(self.finetune_params).items()}
        else:
            scoped = flatten(self.pretrain_params)
        return {**scoped, **flatten(self.params)}

    def _n_trials(self, spec, space: SearchSpace) -> int:
        n_trials = self.settings["n_trials"]
        if spec.sampler.kind != "grid":
            if n_trials is None or n_trials < 1:
                raise SearchError(f"hydra.sweeper.n_trials must be >= 1 for sampler.kind={spec.sampler.kind}")
            return n_trials
        size = space.grid_size()
        if n_trials is not None and n_trials > size:
            log.warning("search %s: n_trials=%d is more than the grid's %d points; running the grid once",
                        spec.name, n_trials, size)
        return size if n_trials is None else min(n_trials, size)

    def _storage_override(self, url: str) -> str:
        """The storage as a trial override; one with credentials goes through the environment
        (inherited by launched jobs), so overrides, which are recorded, never hold them."""
        from lm_tasks.redaction import secrets_in

        if not secrets_in(url):
            return override_value(url)
        os.environ[STORAGE_ENV] = url
        return "${oc.env:%s}" % STORAGE_ENV


def _split_arguments(arguments: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line's plain overrides (shared by every trial) and its sweeps (searched)."""
    base, sweeps = [], {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        if override.is_sweep_override():
            sweeps[override.get_key_element()] = override.get_value_string()
        else:
            base.append(override.input_line)
    return base, sweeps


def _job_error(err: Any) -> str:
    """A failed job's error in one line, the same for every trial it happened to: the cause
    the CLI wrapped (flows/common.py's JobFailed), without the job's number."""
    if isinstance(err, BaseException) and err.__cause__ is not None:
        err = err.__cause__
    text = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)
    return re.sub(r"^JobFailed: \S+ job \d+ failed: ", "", text)  # the cause is lost when a process pickled it


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def _masked(url: str) -> str:
    from lm_tasks.redaction import redact

    return redact(url, remembered=False)
