"""Cross-validation folds: a seeded partition of the train split that never splits a group."""

from __future__ import annotations

import json
import statistics

import pytest

from lm_tasks.config import ConfigError, load_config
from lm_tasks.data.sources import EmptyDataError
from lm_tasks.tasks.cross_validation import report_markdown, summarize
from lm_tasks.tasks.data import fold_ids, load_task_data


def test_folds_partition_the_rows_near_equally_and_repeat_for_a_seed():
    keys = list(range(10))
    folds = fold_ids(keys, 3, seed=0)
    assert len(folds) == 10 and set(folds) == {0, 1, 2}  # every row in exactly one fold, none empty
    assert sorted(folds.count(f) for f in range(3)) == [3, 3, 4]
    assert fold_ids(keys, 3, seed=0) == folds
    assert fold_ids(keys, 3, seed=1) != folds


def test_a_group_never_straddles_two_folds():
    keys = [f"article{i % 7}" for i in range(50)]  # 7 groups of 7 or 8 rows
    folds = fold_ids(keys, 3, seed=0)
    fold_of_group = {}
    for key, fold in zip(keys, folds):
        assert fold_of_group.setdefault(key, fold) == fold
    assert set(folds) == {0, 1, 2}
    sizes = [folds.count(f) for f in range(3)]
    assert max(sizes) - min(sizes) <= 8  # whole groups to the emptiest fold: off by one group at most


def test_more_folds_than_rows_or_groups_is_a_clear_error():
    with pytest.raises(EmptyDataError, match="4 cross-validation folds need at least 4 rows, found 3"):
        fold_ids([0, 1, 2], 4, seed=0)
    with pytest.raises(EmptyDataError, match="3 cross-validation folds need at least 3 .*found 2"):
        fold_ids(["a", "a", "b", "b", "b"], 3, seed=0)


@pytest.mark.parametrize("k", [1, 0])
def test_cv_folds_below_two_is_refused(k):
    with pytest.raises(ConfigError, match=rf"finetune.classification.cv_folds={k}: cross-validation needs at least 2 "
                                          "folds; set null to turn it off"):
        load_config(["finetune=classification", f"finetune.classification.cv_folds={k}"])
    assert load_config(["finetune=classification"]).finetune["classification"].cv_folds is None


def test_task_data_for_a_fold_holds_that_fold_out_of_train(tmp_path):
    rows = [{"title": f"article{i % 10}", "text": f"row {i}", "label": i % 2} for i in range(100)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(["finetune=classification", "finetune.classification.data.source=local",
                       f"finetune.classification.data.train_files=[{path}]", "finetune.classification.data.split_by=title",
                       "finetune.classification.data.val_ratio=0.2"]).finetune["classification"]
    whole, _ = load_task_data(cfg, seed=0)
    title = {r["text"]: r["title"] for r in rows}
    held_out = []
    for i in range(4):
        data, info = load_task_data(cfg, seed=0, fold=(i, 4))
        assert info["label_names"] == ["0", "1"]
        assert list(data["validation"]["text"]) == list(whole["validation"]["text"])  # early stopping data, unchanged
        assert sorted(list(data["train"]["text"]) + list(data["held_out"]["text"])) == sorted(whole["train"]["text"])
        assert not {title[t] for t in data["train"]["text"]} & {title[t] for t in data["held_out"]["text"]}
        held_out += data["held_out"]["text"]
    assert sorted(held_out) == sorted(whole["train"]["text"])  # the folds partition train


def test_summary_is_the_mean_and_population_std_of_the_folds():
    scores = [{"accuracy": 0.5, "f1": 0.4}, {"accuracy": 0.7, "f1": 0.6}, {"accuracy": 0.9, "f1": 0.5}]
    summary = summarize(scores)
    assert summary["accuracy_mean"] == pytest.approx(0.7)
    assert summary["accuracy_std"] == pytest.approx(statistics.pstdev([0.5, 0.7, 0.9]))  # ddof=0
    assert list(summary) == ["accuracy_mean", "accuracy_std", "f1_mean", "f1_std"]
    report = report_markdown("classification", scores, summary)
    assert "- fold 2/3: accuracy=0.7, f1=0.6" in report and "| accuracy | 0.7 ± 0.1633 |" in report
