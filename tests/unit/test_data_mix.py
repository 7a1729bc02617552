"""Domain-adaptive pretraining: the tasks' training text joins the corpus, and data.mix weighs the kinds of rows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from lm_tasks.config import ConfigError, load_config
from lm_tasks.data.prepare import load_prepared, prepare_data
from lm_tasks.stage_keys import data_key
from tests.text_samples import paragraphs


def data_cfg(tmp_path: Path, *overrides: str):
    corpus, held_out = tmp_path / "corpus.txt", tmp_path / "held_out.txt"
    corpus.write_text("\n\n".join(paragraphs(60, seed=21, words=30)))
    held_out.write_text("\n\n".join(paragraphs(6, seed=22, words=30)))
    return load_config(["data=local", f"data.files=[{corpus}]", f"data.validation_files=[{held_out}]",
                        "finetune=classification", *overrides]).data


TASK_TEXTS = {"finetune.classification": paragraphs(20, seed=23, words=25)}


def train_sources(out: Path) -> Counter:
    train = load_prepared(out)["train"]
    return Counter((source.split(":")[0] if source.startswith("finetune.") else "corpus", row)
                   for source, row in zip(train["source"], train["row"]))


def test_task_text_joins_and_each_kind_is_repeated_by_its_weight(tmp_path):
    report = prepare_data(data_cfg(tmp_path, "data.mix.tasks=2"), tmp_path / "out", seed=0, task_texts=TASK_TEXTS)
    counts = train_sources(tmp_path / "out")
    task_rows = {row: n for (kind, row), n in counts.items() if kind == "finetune.classification"}
    # every task document twice, but the one held out for validation (data.val_ratio=0.05 of 20)
    assert len(task_rows) == 19 and set(task_rows.values()) == {2}
    assert {n for (kind, _), n in counts.items() if kind == "corpus"} == {1}
    steps = {s["step"]: s for s in report["steps"]["train"]}
    assert steps["read"]["details"]["task_text_rows"] == {"finetune.classification": 20}
    assert steps["mix"]["details"]["tasks"] == {"rows": 19, "weight": 2.0, "rows_out": 38}
    assert steps["mix"]["rows_out"] == steps["mix"]["rows_in"] + 19


def test_a_fractional_weight_samples_the_rows_with_the_seed(tmp_path):
    cfg = data_cfg(tmp_path, "data.mix.corpus=0.5", "data.mix.tasks=1")
    first = prepare_data(cfg, tmp_path / "a", seed=0, task_texts=TASK_TEXTS)
    second = prepare_data(cfg, tmp_path / "b", seed=0, task_texts=TASK_TEXTS)
    corpus = first["steps"]["train"][-1]["details"]["corpus"]
    assert corpus["rows_out"] == round(corpus["rows"] / 2)
    assert first["digest"] == second["digest"]
    assert sum(1 for kind, _ in train_sources(tmp_path / "a") if kind == "corpus") == corpus["rows_out"]


def test_the_default_mix_leaves_the_stage_as_it_was(tmp_path):
    report = prepare_data(data_cfg(tmp_path), tmp_path / "out", seed=0, task_texts=TASK_TEXTS)
    assert "mix" not in {s["step"] for s in report["steps"]["train"]}
    assert {kind for kind, _ in train_sources(tmp_path / "out")} == {"corpus"}


def test_task_text_is_part_of_the_data_key_and_needs_a_task(tmp_path):
    base = ["data=local", f"data.files=[{tmp_path}/x.txt]", "finetune=classification"]
    (tmp_path / "x.txt").write_text("some text")
    assert data_key(load_config(base)) != data_key(load_config([*base, "data.mix.tasks=1"]))
    with pytest.raises(ConfigError, match=r"data.mix.tasks=1.0 .* no task is selected: add finetune="):
        load_config(["data.mix.tasks=1"])


def validation_sources(out: Path) -> Counter:
    validation = load_prepared(out)["validation"]
    return Counter(source.split(":")[0] if source.startswith("finetune.") else "corpus"
                   for source in validation["source"])


def test_validation_holds_out_task_rows_beside_the_corpus_held_out_text(tmp_path):
    cfg = data_cfg(tmp_path, "data.mix.tasks=1", "data.val_ratio=0.2")
    report = prepare_data(cfg, tmp_path / "out", seed=0, task_texts=TASK_TEXTS)
    assert validation_sources(tmp_path / "out") == {"corpus": 6, "finetune.classification": 4}
    train_rows = {row for kind, row in train_sources(tmp_path / "out") if kind == "finetune.classification"}
    held = {row for source, row in zip(*(load_prepared(tmp_path / "out")["validation"][c] for c in ("source", "row")))
            if source.startswith("finetune.")}
    assert len(train_rows) == 16 and not train_rows & held  # a held-out task row is never trained on
    mix = report["steps"]["validation"][-1]
    assert (mix["step"], mix["details"]["task_rows_held_out"]) == ("mix", 4)


def test_a_corpus_weighed_0_leaves_validation_to_the_task_rows(tmp_path):
    """Pretraining on task text alone picks its best checkpoint on held-out task text."""
    cfg = data_cfg(tmp_path, "data.mix.corpus=0", "data.mix.tasks=1", "data.val_ratio=0.2")
    report = prepare_data(cfg, tmp_path / "out", seed=0, task_texts=TASK_TEXTS)
    assert validation_sources(tmp_path / "out") == {"finetune.classification": 4}
    assert {kind for kind, _ in train_sources(tmp_path / "out")} == {"finetune.classification"}
    mix = report["steps"]["validation"][-1]
    assert mix["dropped"] == {"corpus_weighed_0": 6} and mix["dropped_bytes"]["corpus_weighed_0"] > 6 * 100
    assert mix["rows_in"] + mix["details"]["task_rows_held_out"] - 6 == mix["rows_out"] == 4
    assert mix["bytes_in"] == mix["dropped_bytes"]["corpus_weighed_0"]  # the corpus's held-out text, all of it
