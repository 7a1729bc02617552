"""k-fold cross-validation of a fine-tuning task (`finetune.<task>.cv_folds=k`).

As scikit-learn's `cross_val_score` before the refit: the task's train split is cut into
k folds (whole `data.split_by` groups, `lm_tasks.tasks.data.fold_ids`). For each fold a
model is fine-tuned from the same pretrained model on the other k-1 folds and scored by
the task's own evaluation on the fold left out. It early-stops on the task's validation
split, as the final model does, so the fold it is scored on never chose its checkpoint.
Fold models are thrown away; the fine-tuning stage then trains its one model on the whole
train split, as without cross-validation.
"""

from __future__ import annotations

import logging
import shutil
import statistics
from pathlib import Path

from lm_tasks.config import LifecycleConfig
from lm_tasks.tasks.evaluate import evaluate_task
from lm_tasks.training.launch import run_training

log = logging.getLogger(__name__)


def cross_validate(cfg: LifecycleConfig, task: str, pretrained_dir: str | Path, work_dir: Path,
                   tracking_uri: str, run_id: str) -> list[dict]:
    """Each fold's evaluation metrics (the numeric ones), fold by fold. Fold models are trained
    (on as many devices as the final one) and scored in `work_dir`, removed afterwards."""
    k = cfg.finetune[task].cv_folds
    scores = []
    # The folds of an interrupted attempt start over: their scores were not kept, and a fold's
    # checkpoint left here would otherwise be resumed.
    shutil.rmtree(work_dir, ignore_errors=True)
    try:
        for i in range(k):
            fold_dir = work_dir / f"fold{i}"
            fold_dir.mkdir(parents=True, exist_ok=True)
            run_training(cfg, "finetune", {"task": task, "pretrained_dir": pretrained_dir, "fold": f"{i}/{k}"},
                         fold_dir, tracking_uri, run_id, log_metrics=False)
            result = evaluate_task(cfg, task, fold_dir / "model", fold_dir / "eval", fold=(i, k))
            shutil.rmtree(fold_dir)  # a fold model is only its scores
            scores.append({name: float(v) for name, v in result["metrics"].items() if isinstance(v, (int, float))})
            log.info("%s fold %d/%d: %s", task, i + 1, k, _shown(scores[-1]))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return scores


def summarize(scores: list[dict]) -> dict:
    """`<metric>_mean` and `<metric>_std` over the folds. The population standard deviation
    (ddof=0), as `np.std(cross_val_score(...))` gives: the spread of these k folds."""
    summary = {}
    for name in scores[0]:
        values = [fold[name] for fold in scores]
        summary[f"{name}_mean"] = statistics.fmean(values)
        summary[f"{name}_std"] = statistics.pstdev(values)
    return summary


def report_markdown(task: str, scores: list[dict], summary: dict) -> str:
    """A line per fold, then mean ± std per metric."""
    lines = [f"## {task}: {len(scores)}-fold cross-validation", ""]
    lines += [f"- fold {i + 1}/{len(scores)}: {_shown(fold)}" for i, fold in enumerate(scores)]
    lines += ["", "| metric | mean ± std |", "|---|---|"]
    lines += [f"| {name} | {summary[f'{name}_mean']:.4g} ± {summary[f'{name}_std']:.4g} |" for name in scores[0]]
    return "\n".join(lines) + "\n"


def _shown(metrics: dict) -> str:
    return ", ".join(f"{name}={value:.4g}" for name, value in metrics.items())
