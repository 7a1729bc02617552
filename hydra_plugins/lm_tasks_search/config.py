"""The `study` sweeper's settings (hydra.sweeper.*), registered as hydra/sweeper=study.

Hydra imports every module of a plugin package while it discovers plugins: nothing here
imports Optuna or MLflow. (No `from __future__ import annotations` in this package: Hydra
executes the modules before registering them, where dataclasses cannot resolve string
annotations.)
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SamplerConf:
    kind: str = "tpe"                 # tpe | grid | random
    seed: Optional[int] = None
    n_startup_trials: int = 5         # tpe: random trials before the model-based ones


@dataclass
class PrunerConf:
    kind: str = "median"              # median | threshold | none
    n_startup_trials: int = 3         # median: trials that finish before any is pruned
    n_warmup_steps: int = 0           # no pruning before this training step
    lower: Optional[float] = None     # threshold: prune when the reported value is below / above
    upper: Optional[float] = None


@dataclass
class StudySweeperConf:
    _target_: str = "hydra_plugins.lm_tasks_search.sweeper.StudySweeper"
    # Any metric the lifecycle logs (eval/<part>/<metric>, val/..., lifecycle/...).
    # null: promotion.metric, the metric that also gates the champion.
    objective: Optional[str] = None
    direction: Optional[str] = None   # minimize | maximize; null: from promotion.mode
    # The study's name; null: <name>-<hparams_search choice>-<objective>. Running the same
    # command again continues the study of that name.
    study_name: Optional[str] = None
    storage: str = "sqlite:///${paths.output_dir}/hparams_search/optuna.db"
    n_trials: Optional[int] = 20      # the study's total, counting earlier attempts; null for grid: its size
    n_jobs: int = 1                   # trials launched together (in parallel with hydra/launcher=joblib)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    # key -> Hydra sweep: interval(a, b), tag(log, interval(a, b)), int(interval(a, b)),
    # choice(x, y), range(a, b[, step]) or x,y,z. Searched whatever the objective.
    params: Dict[str, Any] = field(default_factory=dict)
    # Searched when the objective is the language model's (eval/lm/..., val/...).
    pretrain_params: Dict[str, Any] = field(default_factory=dict)
    # Searched when the objective is a task's (eval/<task>/...): keys relative to
    # finetune.<task> (lr, weight_decay, ...). Pretraining stays fixed, so it runs once and
    # every trial fine-tunes the cached model.
    finetune_params: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="study", node=StudySweeperConf,
                             provider="lm_tasks_search")
