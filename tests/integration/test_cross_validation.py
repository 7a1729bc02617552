"""`finetune.<task>.cv_folds=k` through the real command line and fine-tuning stage: k fold
models scored, logged and summarised; the final model and a cached rerun as without
cross-validation."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lm_tasks.config import load_config
from lm_tasks.stages import run_finetune
from tests.integration.test_finetune import small_pretrained_model

pytestmark = pytest.mark.slow

TASK = ["finetune=classification", "finetune.classification.data.max_rows=60", "finetune.classification.max_steps=4",
        "finetune.classification.val_check_interval=2", "finetune.classification.batch_size=8"]


def test_three_fold_cross_validation_of_classification(tmp_path, smoke_overrides, prefect_api):
    model_dir = small_pretrained_model(tmp_path, load_config(smoke_overrides + TASK))
    overrides = smoke_overrides + TASK + [f"init_from={model_dir}"]
    cfg = load_config(overrides + ["finetune.classification.cv_folds=3"])
    result = subprocess.run([sys.executable, "-m", "flows.finetune", *overrides, "finetune.classification.cv_folds=3"],
                            cwd=Path(__file__).resolve().parents[2], env=prefect_api, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    fold_lines = [line.split(" - ")[-1].split(":")[0] for line in result.stderr.splitlines() if " fold " in line]
    assert fold_lines == ["classification fold 1/3", "classification fold 2/3", "classification fold 3/3"]
    tuned = run_finetune(cfg, "classification")  # the entry the command made: a cache hit
    assert tuned.cached

    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    history = MlflowClient().get_metric_history(tuned.run_id, "cv/classification/accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]  # one point per fold
    folds = [m.value for m in sorted(history, key=lambda m: m.step)]
    mean, std = statistics.fmean(folds), statistics.pstdev(folds)  # population std (ddof=0), as np.std
    assert tuned.metrics["eval/classification/accuracy_mean"] == pytest.approx(mean)
    assert tuned.metrics["eval/classification/accuracy_std"] == pytest.approx(std)
    logged = MlflowClient().get_run(tuned.run_id).data.metrics
    assert logged["eval/classification/accuracy_mean"] == pytest.approx(mean)
    assert logged["eval/classification/accuracy_std"] == pytest.approx(std)
    assert "finetune/classification/best_val_accuracy" in tuned.metrics  # the final model, as always

    # The entry keeps the report and the final model, not the fold models.
    entry = Path(tuned.output_dir)
    assert "- fold 3/3: accuracy=" in (entry / "cross_validation.md").read_text()
    assert (entry / "model" / "head.safetensors").is_file() and not (entry / "cv").exists()

    # Without cv_folds the final model is the same.
    plain = run_finetune(load_config(overrides), "classification")
    assert not plain.cached and plain.digest == tuned.digest
    assert not any(k.endswith(("_mean", "_std")) for k in plain.metrics)

