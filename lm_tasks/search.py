"""Hyperparameter search: the Optuna study behind `hparams_search=...`.

The Hydra sweeper (hydra_plugins/lm_tasks_search) asks this module for trials, launches
one lifecycle per trial and tells the study how each ended. Everything lives in the
study's storage (SQLite under the outputs folder by default), so a killed search,
started again with the same command, continues where it stopped:

- trials a killed search left RUNNING are marked FAIL (user attr `interrupted`) and their
  parameters enqueued again: the next trial re-runs them, and the stage cache and the
  pretraining checkpoints make that rerun continue rather than start over;
- `n_trials` is the study's total: finished trials (COMPLETE, PRUNED, FAIL; interrupted
  ones excepted) count, so a resumed search runs only what is missing.

The study's user attrs record what the search optimises (`objective`), how trials are
pruned (`pruner`, read by the training callback in lm_tasks/training/pruning.py) and a
fingerprint of the search, so that another search cannot silently continue this one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DIRECTIONS = {"min": "minimize", "max": "maximize"}
PRUNED_AT = "pruned_at_step"  # trial user attr set by the pruning callback before it stops training
INTERRUPTED = "interrupted"   # trial user attr: left RUNNING by a killed search, re-enqueued
RETRY_OF = "retry_of"         # trial user attr: the interrupted trial this one re-runs
ERROR = "error"               # trial user attr: why a FAILED trial failed
COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"


class SearchError(RuntimeError):
    """The search cannot go on (every trial of a first batch failed alike, a bad setting)."""


@dataclass
class SamplerSpec:
    kind: str = "tpe"               # tpe | grid | random
    seed: int | None = None
    n_startup_trials: int = 5       # tpe: random trials before the model-based ones


@dataclass
class PrunerSpec:
    kind: str = "median"            # median | threshold | none
    n_startup_trials: int = 3       # median: complete trials before any pruning
    n_warmup_steps: int = 0         # no pruning before this training step
    lower: float | None = None      # threshold: prune a trial reporting below / above these
    upper: float | None = None


@dataclass
class Outcome:
    """How a trial ended, as the sweeper judged it."""

    state: str                      # COMPLETE | PRUNED | FAIL
    value: float | None = None
    error: str | None = None
    run_id: str | None = None       # the trial's lifecycle run


@dataclass
class StudySpec:
    """What a search is: stored with the study, checked when it is continued."""

    name: str
    storage: str
    objective: str
    direction: str                  # minimize | maximize
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    space: dict[str, str] = field(default_factory=dict)   # key -> sweep string
    fixed: list[str] = field(default_factory=list)         # the overrides every trial shares

    def fingerprint(self) -> str:
        """Changes when the trials of this search stop being comparable with earlier ones."""
        what = {"objective": self.objective, "direction": self.direction, "space": self.space,
                "fixed": sorted(self.fixed), "sampler": self.sampler.kind}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def direction_of(mode: str) -> str:
    """promotion.mode (min | max) as an Optuna direction."""
    if mode not in DIRECTIONS:
        raise ValueError(f"mode must be min or max, got {mode!r}")
    return DIRECTIONS[mode]


def storage(url: str):
    """The study's storage. A SQLite file gets its folder created and a long lock timeout:
    parallel trials report intermediate values into it from their own processes."""
    import optuna

    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///").split("?")[0]).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 120}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def build_sampler(spec: SamplerSpec, grid: dict[str, list] | None = None, parallel: bool = False):
    import optuna

    if spec.kind == "tpe":
        # constant_liar: trials asked together (a parallel batch) avoid each other's points
        return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.n_startup_trials,
                                          constant_liar=parallel)
    if spec.kind == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if spec.kind == "grid":
        return _grid_sampler(grid or {}, spec.seed)
    raise ValueError(f"sampler.kind={spec.kind!r} is not one of tpe, grid, random")


def build_pruner(spec: PrunerSpec | dict):
    import optuna

    spec = PrunerSpec(**spec) if isinstance(spec, dict) else spec
    if spec.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials,
                                           n_warmup_steps=spec.n_warmup_steps)
    if spec.kind == "threshold":
        if spec.lower is None and spec.upper is None:
            raise ValueError("pruner.kind=threshold needs pruner.lower or pruner.upper")
        return optuna.pruners.ThresholdPruner(lower=spec.lower, upper=spec.upper,
                                              n_warmup_steps=spec.n_warmup_steps)
    if spec.kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner.kind={spec.kind!r} is not one of median, threshold, none")


def _grid_sampler(grid: dict[str, list], seed: int | None):
    import optuna

    class CountedGridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its stop call, which works only inside
        `Study.optimize`: the sweeper counts the grid's trials itself."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return CountedGridSampler(grid, seed=seed)


def open_study(spec: StudySpec, grid: dict[str, list] | None = None, parallel: bool = False):
    """Create the study, or load it when it exists (a continued search). A study made by
    another search (objective, direction, space, fixed overrides or sampler kind differ)
    is refused rather than mixed with this one."""
    import optuna

    where = storage(spec.storage)
    sampler = spec.sampler
    if sampler.seed is not None and spec.name in {s.study_name for s in where.get_all_studies()}:
        # A continued study: the same seed would propose the first trials' values again.
        done = len(where.get_all_trials(where.get_study_id_from_name(spec.name), deepcopy=False))
        sampler = replace(sampler, seed=sampler.seed + done)
    study = optuna.create_study(study_name=spec.name, storage=where, load_if_exists=True,
                                direction=spec.direction, sampler=build_sampler(sampler, grid, parallel),
                                pruner=build_pruner(spec.pruner))
    if study.direction.name.lower() != spec.direction:
        raise ValueError(f"study {spec.name!r} in {spec.storage} was created to "
                         f"{study.direction.name.lower()}, this search would {spec.direction}: choose "
                         "another study_name")
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", spec.fingerprint())
        study.set_user_attr("objective", spec.objective)
        study.set_user_attr("space", spec.space)
        study.set_user_attr("fixed", spec.fixed)
    elif stored != spec.fingerprint():
        raise ValueError(
            f"study {spec.name!r} in {spec.storage} belongs to another search (objective "
            f"{study.user_attrs.get('objective')!r}, space {study.user_attrs.get('space')}, fixed overrides "
            f"{study.user_attrs.get('fixed')}); this one differs. Pass hydra.sweeper.study_name=<new name> to "
            "start a new study, or repeat the original command to continue that one")
    study.set_user_attr("pruner", asdict(spec.pruner))  # may change between attempts: read by the callback
    return study


def recover_interrupted(study) -> list[int]:
    """Trials left RUNNING by a killed search: marked FAIL (user attr `interrupted`), their
    parameters enqueued so the next trial re-runs them. Returns their numbers."""
    from optuna.trial import TrialState

    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        set_trial_user_attr(study, trial.number, INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
        recovered.append(trial.number)
        log.warning("search: trial %d was left running by an interrupted search; marked FAIL, its parameters "
                    "%s queued to run again", trial.number, trial.params)
    return recovered


def counted(trial) -> bool:
    """Whether a trial counts toward n_trials: it finished, and not by being interrupted."""
    return trial.state.is_finished() and not trial.user_attrs.get(INTERRUPTED)


def finished_count(study) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def remaining(study, n_trials: int) -> int:
    return max(0, n_trials - finished_count(study))


def trial_overrides(base: list[str], params: dict[str, Any], identity: dict[str, str],
                    format_value=str) -> list[str]:
    """One trial's overrides: the sweep's own, the sampled parameters (as `format_value`
    writes them), who the trial is (`search.<key>=<value>`, values as given)."""
    sampled = [f"{key}={format_value(value)}" for key, value in params.items()]
    who = [f"search.{key}={value}" for key, value in identity.items()]
    return [*base, *sampled, *who]


def tell(study, trial_number: int, outcome: Outcome) -> None:
    """Record a trial's outcome in the study."""
    from optuna.trial import TrialState

    if outcome.error:
        set_trial_user_attr(study, trial_number, ERROR, outcome.error[:2000])
    if outcome.state == COMPLETE:
        study.tell(trial_number, outcome.value)
    elif outcome.state == PRUNED:
        study.tell(trial_number, state=TrialState.PRUNED)
    else:
        study.tell(trial_number, state=TrialState.FAIL)


def frozen_trial(study, number: int):
    """Trial `number` as the storage has it now (user attrs its job may have set)."""
    return study._storage.get_trial(_trial_id(study, number))


def set_trial_user_attr(study, number: int, key: str, value: Any) -> None:
    """Set a user attr of trial `number` from outside the trial (Optuna's public setter
    lives on the live Trial object, which only the process running it holds)."""
    study._storage.set_trial_user_attr(_trial_id(study, number), key, value)


def _trial_id(study, number: int) -> int:
    return study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def judge(trial, finished: bool, value: float | None, error: str | None, objective: str) -> Outcome:
    """A launched trial's outcome: PRUNED when its training stopped it (the callback set
    `pruned_at_step`), COMPLETE when the job finished and logged a finite objective, else FAIL."""
    if trial.user_attrs.get(PRUNED_AT) is not None:
        return Outcome(PRUNED)
    if not finished:
        return Outcome(FAIL, error=error or "the trial's job failed")
    if value is None:
        return Outcome(FAIL, error=f"the trial finished but logged no {objective!r} (in its lifecycle run or "
                                   "its stage runs): is the objective's name right?")
    if not math.isfinite(value):
        return Outcome(FAIL, error=f"{objective} = {value}")
    return Outcome(COMPLETE, value=value)


def all_failed_alike(outcomes: list[Outcome]) -> str | None:
    """The shared error when every outcome of a batch is a FAIL with the same error: a
    broken setup, not bad luck with hyperparameters, and not worth repeating."""
    errors = {o.error for o in outcomes}
    if outcomes and all(o.state == FAIL for o in outcomes) and len(errors) == 1:
        return errors.pop()
    return None


def best_trial(study):
    """The best COMPLETE trial, or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    pick = min if study.direction.name.lower() == "minimize" else max
    return pick(complete, key=lambda t: t.value)


def counts(study) -> dict[str, int]:
    """Trials per state (interrupted ones apart from genuine failures)."""
    tally = {COMPLETE: 0, PRUNED: 0, FAIL: 0, "INTERRUPTED": 0, "RUNNING": 0, "WAITING": 0}
    for trial in study.get_trials(deepcopy=False):
        state = "INTERRUPTED" if trial.user_attrs.get(INTERRUPTED) else trial.state.name
        tally[state] = tally.get(state, 0) + 1
    return tally
