"""The data stage inside the lifecycle: decontamination against the fine-tuning tasks'
evaluation sets, and provenance from a packed token back to its source line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from lm_tasks.config import load_config
from lm_tasks.data.packing import trace_token
from lm_tasks.data.prepare import load_prepared
from lm_tasks.stages import run_data, run_tokenizer
from lm_tasks.tasks.data import evaluation_texts
from tests.text_samples import paragraphs


def test_pretraining_rows_quoting_a_task_evaluation_text_are_dropped(tmp_path):
    overrides = [f"paths.root_dir={tmp_path}", "finetune=classification", "data=local",
                 f"data.files=[{tmp_path}/corpus.txt]", f"data.validation_files=[{tmp_path}/held_out.txt]"]
    probe = load_config(overrides[:2])
    # (short evaluation sentences of 8+ words count whole: lm_tasks/data/decontamination.py)
    quoted = next(t for t in evaluation_texts(probe.finetune["classification"], probe.seed) if len(t.split()) >= 9)
    corpus = paragraphs(60, seed=3) + [f"Someone wrote this down: {quoted} That was all."]
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus))
    (tmp_path / "held_out.txt").write_text("\n\n".join(paragraphs(5, seed=4)))
    cfg = load_config(overrides)
    data = run_data(cfg)

    train = load_prepared(data.output_dir)["train"]
    assert len(train) == 60 and not any(quoted in text for text in train["text"])
    report = (Path(data.output_dir) / "report.md").read_text()
    assert "| decontamination |" in report and "finetune.classification" in report
    assert data.metrics["data/train/decontamination_dropped"] == 1

    # Without that task selected, the row stays (and the data stage is a different cache entry).
    plain = run_data(load_config(overrides[:1] + overrides[2:]))
    assert plain.key != data.key
    assert any(quoted in t for t in load_prepared(plain.output_dir)["train"]["text"])


def test_pretraining_rows_quoting_the_validation_split_are_dropped(tmp_path):
    held_out = paragraphs(5, seed=4)
    quoted = " ".join(held_out[2].split()[:20])
    corpus = paragraphs(40, seed=3) + [f"As it was said before, {quoted}, and so on."]
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus))
    (tmp_path / "held_out.txt").write_text("\n\n".join(held_out))
    data = run_data(load_config([f"paths.root_dir={tmp_path}", "data=local", f"data.files=[{tmp_path}/corpus.txt]",
                                 f"data.validation_files=[{tmp_path}/held_out.txt]"]))
    train = load_prepared(data.output_dir)["train"]
    assert len(train) == 40 and not any(quoted in text for text in train["text"])
    assert data.metrics["data/train/decontamination/shares_eval_ngram_rows"] == 1
    assert data.metrics["data/train/decontamination/shares_eval_ngram_bytes"] == len(corpus[-1].encode())


def test_a_packed_token_traces_back_to_its_file_and_line(tmp_path):
    corpus = paragraphs(80, seed=5)
    (tmp_path / "corpus.txt").write_text("\n\n".join(corpus))
    cfg = load_config(["debug=smoke", f"paths.root_dir={tmp_path}", "data=local",
                       f"data.files=[{tmp_path}/corpus.txt]", "data.max_rows=null"])
    data = run_data(cfg)
    tokens = run_tokenizer(cfg, data)
    train = load_prepared(data.output_dir)["train"]
    packed = np.memmap(Path(tokens.output_dir) / "train.bin", dtype=np.uint16, mode="r")
    tokenizer = Tokenizer.from_file(str(Path(tokens.output_dir) / "tokenizer.json"))

    for position in (0, 137, len(packed) // 2, len(packed) - 2):
        found = trace_token(tokens.output_dir, "train", position, train)
        start = position - found["token_offset"]
        end = start + len(tokenizer.encode(found["text"]).ids)
        assert tokenizer.decode(packed[start:end].tolist()) == found["text"]  # the document around the token
        assert found["source"] == str(tmp_path / "corpus.txt")
        assert corpus[(found["row"] - 1) // 2] == found["text"]  # paragraph k starts on line 2k + 1
    with pytest.raises(IndexError, match="outside"):
        trace_token(tokens.output_dir, "train", len(packed), train)
