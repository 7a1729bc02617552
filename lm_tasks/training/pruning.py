"""Pruning: a search trial that is clearly worse than earlier ones stops early.

On a search trial (`cfg.search.trial` set), the training stage whose validation metric
stands in for the search's objective reports that metric to the trial after every
validation; when the study's pruner says the trial is behind, the callback notes the step
(trial user attr `pruned_at_step`) and raises `optuna.TrialPruned`. The stage then fails
like any stage that raises: nothing is committed to the stage cache, no retry (not a
transient error), and the search records the trial PRUNED.

Which stage stands in for which objective:
- `eval/<task>/...`: the fine-tuning of <task> reports `val/<monitor>`, when the monitor
  improves in the direction the study optimises (accuracy for a maximised accuracy);
- `eval/lm/...` or `val/...`: pretraining reports `val/bpb`, when the study minimises.
Anything else (a maximised LM metric, lifecycle/...): no pruning.
"""

from __future__ import annotations

import logging

import lightning as L

from lm_tasks.config import LifecycleConfig
from lm_tasks.search import PRUNED_AT, build_pruner, storage

log = logging.getLogger(__name__)

MINIMIZE, MAXIMIZE = "minimize", "maximize"


def proxy_metric(objective: str, direction: str, stage: str, task: str | None = None,
                 monitor: str | None = None, monitor_mode: str | None = None) -> str | None:
    """The validation metric `stage` (pretrain, or finetune of `task` monitoring `monitor`
    in `monitor_mode`) reports for a study optimising `objective` in `direction`; None when
    this stage's validation says nothing reliable about the objective."""
    parts = objective.split("/")
    if stage == "finetune" and len(parts) >= 3 and parts[0] == "eval" and parts[1] == task:
        same_way = {"min": MINIMIZE, "max": MAXIMIZE}.get(monitor_mode) == direction
        return f"val/{monitor}" if monitor and same_way else None
    if stage == "pretrain" and (parts[:2] == ["eval", "lm"] or parts[0] == "val"):
        return "val/bpb" if direction == MINIMIZE else None
    return None


class TrialPruning(L.Callback):
    """Report `monitor` to trial `number` of the study after each validation; stop the
    training when the study's pruner says so."""

    def __init__(self, study, number: int, monitor: str):
        self.study, self.number, self.monitor = study, number, monitor
        self._trial = None

    def trial(self):
        if self._trial is None:  # opened lazily: only rank 0 reports
            import optuna

            trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, self.number)
            self._trial = optuna.trial.Trial(self.study, trial_id)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune, step, value = False, trainer.global_step, None
        if trainer.is_global_zero and self.monitor in trainer.callback_metrics:
            trial, value = self.trial(), float(trainer.callback_metrics[self.monitor])
            trial.report(value, step=step)
            prune = trial.should_prune()
            if prune:
                trial.set_user_attr(PRUNED_AT, step)  # read by the sweeper: PRUNED, not FAIL
        prune = trainer.strategy.broadcast(prune, src=0)  # every rank stops together
        if prune:
            import optuna

            raise optuna.TrialPruned(f"search trial {self.number} pruned at step {step} ({self.monitor} = "
                                     f"{value}): the study's pruner judged it behind")


def pruning_callbacks(cfg: LifecycleConfig, stage: str, task: str | None = None) -> list[L.Callback]:
    """[TrialPruning] when this run is a search trial and `stage` reports the objective's
    stand-in; [] otherwise (no search: nothing is imported or opened)."""
    if cfg.search.trial is None or not cfg.search.storage or not cfg.search.study:
        return []
    import optuna

    study = optuna.load_study(study_name=cfg.search.study, storage=storage(cfg.search.storage),
                              sampler=optuna.samplers.RandomSampler())  # samples nothing here
    task_cfg = cfg.finetune.get(task) if task else None
    monitor = proxy_metric(study.user_attrs.get("objective", ""), study.direction.name.lower(), stage, task,
                           task_cfg and task_cfg.monitor, task_cfg and task_cfg.monitor_mode)
    if monitor is None:
        return []
    study.pruner = build_pruner(study.user_attrs.get("pruner", {"kind": "none"}))  # as the search set it
    log.info("%s: search trial %d reports %s to study %s for pruning", stage, cfg.search.trial, monitor,
             cfg.search.study)
    return [TrialPruning(study, cfg.search.trial, monitor)]
