"""Task datasets by config: embedded, local files with column mapping, and bad rows."""

from __future__ import annotations

import json

import pytest

from lm_tasks.config import ConfigError, load_config
from lm_tasks.data.sources import DataSourceError
from lm_tasks.tasks.data import (TASK_MAX_RECORD_BYTES, check_record_sizes, evaluation_texts, load_task_data,
                                 scored_split)


def task_cfg(*overrides: str):
    return load_config(["finetune=classification", *overrides]).finetune["classification"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_embedded_sentiment_is_balanced_and_labelled():
    data, info = load_task_data(task_cfg(), seed=0)
    assert info["label_names"] == ["negative", "positive"]
    assert (len(data["train"]), len(data["validation"])) == (2000, 300)
    share = sum(data["train"]["label"]) / len(data["train"])
    assert 0.45 < share < 0.55
    negated = [(t, y) for t, y in zip(data["train"]["text"], data["train"]["label"]) if " not " in t]
    assert negated and all(isinstance(t, str) for t, _ in negated)


def test_local_files_with_column_mapping_and_string_labels(tmp_path):
    rows = [{"review": f"text number {i}", "stars": "good" if i % 3 else "bad"} for i in range(30)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = task_cfg("finetune.classification.data.source=local", f"finetune.classification.data.train_files=[{path}]",
                   "finetune.classification.data.columns.text=review", "finetune.classification.data.columns.label=stars")
    data, info = load_task_data(cfg, seed=0)
    assert info["label_names"] == ["bad", "good"]
    assert len(data["train"]) + len(data["validation"]) == 30 and len(data["validation"]) == 3
    by_text = {r["text"]: r["label"] for split in data.values() for r in split}
    assert by_text["text number 3"] == 0 and by_text["text number 4"] == 1


def test_nested_columns_are_addressed_with_dots(tmp_path):
    rows = [{"item": {"body": f"sentence {i}", "y": i % 2}} for i in range(20)]
    path = write_jsonl(tmp_path / "nested.jsonl", rows)
    cfg = task_cfg("finetune.classification.data.source=local", f"finetune.classification.data.train_files=[{path}]",
                   "finetune.classification.data.columns.text=item.body", "finetune.classification.data.columns.label=item.y")
    data, _ = load_task_data(cfg, seed=0)
    assert set(data["train"].column_names) == {"text", "label"}


def test_label_outside_the_label_set_names_the_row(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": f"row {i}", "label": i % 2} for i in range(10)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "fine", "label": 1}, {"text": "odd one", "label": 7}])
    cfg = task_cfg("finetune.classification.data.source=local",
                   f"finetune.classification.data.train_files=[{train}]",
                   f"finetune.classification.data.validation_files=[{val}]",
                   "finetune.classification.data.label_names=[negative,positive]")
    with pytest.raises(DataSourceError, match=r"validation row 1: label 7 is not one of the labels"):
        load_task_data(cfg, seed=0)


def test_empty_texts_are_skipped_and_counted(tmp_path):
    rows = [{"text": "" if i < 4 else f"text {i}", "label": i % 2} for i in range(20)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = task_cfg("finetune.classification.data.source=local", f"finetune.classification.data.train_files=[{path}]")
    data, info = load_task_data(cfg, seed=0)
    assert sum(info["skipped"].values()) == 4
    assert len(data["train"]) + len(data["validation"]) == 16


def test_missing_column_names_the_field_and_columns(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"sentence": "x", "label": 0}] * 5)
    cfg = task_cfg("finetune.classification.data.source=local", f"finetune.classification.data.train_files=[{path}]")
    with pytest.raises(DataSourceError, match=r"no column 'text' for the classification field 'text'.*columns.text"):
        load_task_data(cfg, seed=0)


def test_a_task_needs_a_column_for_every_field():
    with pytest.raises(ConfigError, match="finetune.qa.data.columns needs a column for context, question, answers"):
        load_config(["finetune=classification", "finetune.classification.task=qa"])


def test_all_selects_every_task():
    assert sorted(load_config(["finetune=all"]).finetune) == ["classification", "qa", "summarization", "translation"]


def test_unreachable_hub_task_dataset_points_to_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    cfg = task_cfg("finetune.classification.data.source=hub", "finetune.classification.data.hub_name=someone/reviews")
    with pytest.raises(DataSourceError, match=r"(?s)Hub dataset 'someone/reviews' for classification.*source=local"):
        load_task_data(cfg, seed=0)


def test_split_by_keeps_groups_on_one_side(tmp_path):
    rows = [{"title": f"article{i % 10}", "text": f"row {i}", "label": i % 2} for i in range(100)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = task_cfg("finetune.classification.data.source=local", f"finetune.classification.data.train_files=[{path}]",
                   "finetune.classification.data.split_by=title", "finetune.classification.data.val_ratio=0.2")
    data, _ = load_task_data(cfg, seed=0)
    title = {r["text"]: r["title"] for r in rows}
    train_titles = {title[t] for t in data["train"]["text"]}
    val_titles = {title[t] for t in data["validation"]["text"]}
    assert len(val_titles) == 2 and not train_titles & val_titles


# --- untrusted task files: a record past the limit is refused before `datasets` reads it ---

HUGE = TASK_MAX_RECORD_BYTES + 1


def local_cfg(path):
    return task_cfg("finetune.classification.data.source=local", f"finetune.classification.data.train_files=[{path}]")


def test_a_jsonl_line_past_the_limit_is_refused_naming_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": f"row {i}", "label": i % 2} for i in range(10)])
    with open(path, "a") as f:
        f.write(json.dumps({"text": "a" * HUGE, "label": 0}) + "\n")
    with pytest.raises(DataSourceError, match=r"train.jsonl:11: a record of 16,777,2\d\d bytes is longer than "
                                              r"the 16,777,216 bytes a task record may have"):
        load_task_data(local_cfg(path), seed=0)


def test_a_csv_field_that_never_closes_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{i % 2}\n" for i in range(10)) + '"open quote\n'
                    + ("x" * 1023 + "\n") * (HUGE // 1024 + 1))
    with pytest.raises(DataSourceError, match=r"train.csv:12: a record of"):
        load_task_data(local_cfg(path), seed=0)


def test_a_large_json_array_is_refused_and_a_small_one_read(tmp_path):
    rows = [{"text": f"row number {i}", "label": i % 2} for i in range(20)]
    small = tmp_path / "small.json"
    small.write_text(json.dumps(rows))
    data, _ = load_task_data(local_cfg(small), seed=0)
    assert len(data["train"]) + len(data["validation"]) == 20
    large = tmp_path / "large.json"
    large.write_text(json.dumps(rows * (HUGE // len(json.dumps(rows)) + 1)))
    with pytest.raises(DataSourceError, match=r"large.json is a JSON array of [\d,]+ bytes, which is read whole; "
                                              r"task files over 16,777,216 bytes must be JSON lines"):
        load_task_data(local_cfg(large), seed=0)


def test_a_parquet_cell_past_the_limit_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(10)] + ["a" * HUGE], "label": [0, 1] * 5 + [0]}), path)
    with pytest.raises(DataSourceError, match=r"train.parquet: a cell in rows 0..10 has 16,777,217 bytes"):
        check_record_sizes(str(path), TASK_MAX_RECORD_BYTES)


def summarization_cfg(train: list, validation: list | None = None, test: list | None = None):
    overrides = ["finetune=summarization", "finetune.summarization.data.source=local",
                 f"finetune.summarization.data.train_files=[{','.join(map(str, train))}]",
                 "finetune.summarization.data.columns.source=dialogue",
                 "finetune.summarization.data.columns.target=summary"]
    if validation:
        overrides.append(f"finetune.summarization.data.validation_files=[{','.join(map(str, validation))}]")
    if test:
        overrides.append(f"finetune.summarization.data.test_files=[{','.join(map(str, test))}]")
    return load_config(overrides).finetune["summarization"]


def dialogues(n: int, **extra) -> list[dict]:
    return [{"id": str(i), "dialogue": f"A: hello {i}\nB: hi", "summary": f"greeting {i}", **extra} for i in range(n)]


def test_each_split_loads_on_its_own_columns(tmp_path):
    """A validation file with a column the train file lacks (as some dialogue datasets ship)."""
    train = write_jsonl(tmp_path / "train.jsonl", dialogues(12))
    validation = write_jsonl(tmp_path / "validation.jsonl", dialogues(5, topic="greetings"))
    data, _ = load_task_data(summarization_cfg([train], [validation]), seed=0)
    assert (len(data["train"]), len(data["validation"])) == (12, 5)
    assert data["validation"][0] == {"source": "A: hello 0\nB: hi", "target": "greeting 0"}


def test_files_of_one_split_need_to_agree_only_on_the_columns_used(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", dialogues(6))
    second = write_jsonl(tmp_path / "b.jsonl", dialogues(4, topic="greetings", turns=2))
    validation = write_jsonl(tmp_path / "validation.jsonl", dialogues(3))
    data, _ = load_task_data(summarization_cfg([first, second], [validation]), seed=0)
    assert len(data["train"]) == 10 and data["train"][9]["target"] == "greeting 3"


def test_a_file_missing_a_used_column_is_named(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", dialogues(6))
    second = write_jsonl(tmp_path / "b.jsonl", [{"id": "x", "dialogue": "A: hi", "title": "no summary"}] * 3)
    with pytest.raises(DataSourceError, match=rf"{second} has no column 'summary', which finetune.summarization"):
        load_task_data(summarization_cfg([first, second]), seed=0)


def test_a_used_column_of_another_type_names_file_and_column(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"text": f"t {i}", "label": i % 2, "extra": 1} for i in range(6)])
    second = write_jsonl(tmp_path / "b.jsonl", [{"text": f"u {i}", "label": "pos"} for i in range(6)])
    cfg = task_cfg("finetune.classification.data.source=local",
                   f"finetune.classification.data.train_files=[{first},{second}]")
    with pytest.raises(DataSourceError, match=rf"Column 'label' of {second} holds .*string.* but in {first}"):
        load_task_data(cfg, seed=0)


def test_a_test_split_is_loaded_and_scored_in_place_of_validation(tmp_path):
    """SciTLDR, Multi30k: scored on the official test split; validation stays for early stopping."""
    train = write_jsonl(tmp_path / "train.jsonl", dialogues(12))
    test = write_jsonl(tmp_path / "test.jsonl", [{"dialogue": f"A: bye {i}", "summary": f"farewell {i}", "topic": "x"}
                                                 for i in range(4)])
    data, _ = load_task_data(summarization_cfg([train], test=[test]), seed=0)
    assert (len(data["train"]) + len(data["validation"]), len(data["test"])) == (12, 4)  # validation split off train
    assert scored_split(data) == "test" and data["test"][3] == {"source": "A: bye 3", "target": "farewell 3"}
    texts = evaluation_texts(summarization_cfg([train], test=[test]), seed=0)
    assert "A: bye 2" in texts and "farewell 0" in texts  # decontamination covers the test split too
    assert any(t in texts for t in data["validation"]["source"])
    assert scored_split(load_task_data(summarization_cfg([train]), seed=0)[0]) == "validation"


def test_an_empty_test_file_is_refused(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", dialogues(12))
    test = write_jsonl(tmp_path / "test.jsonl", [{"dialogue": "", "summary": ""}])
    with pytest.raises(Exception, match="test split of summarization data .* has no usable rows"):
        load_task_data(summarization_cfg([train], test=[test]), seed=0)
