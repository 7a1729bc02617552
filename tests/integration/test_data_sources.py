"""The data stage reads local files and fails clearly on bad sources."""

from __future__ import annotations

import json

import pytest

from lm_tasks.config import load_config
from lm_tasks.data.prepare import EmptyDataError, load_prepared, prepare_data
from lm_tasks.data.sources import DataSourceError

PARAGRAPHS = [f"Paragraph {i} talks about topic {i % 7} at some length, with words." for i in range(60)]


def all_texts(data_dir) -> list[str]:
    dataset = load_prepared(data_dir)
    return list(dataset["train"]["text"]) + list(dataset["validation"]["text"])


def data_cfg(*overrides: str):
    return load_config(["data=local", *overrides]).data


def test_txt_files_one_row_per_paragraph_with_split(tmp_path):
    text = "\n\n".join(PARAGRAPHS[:30])
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text("\n\n".join(PARAGRAPHS[30:]))
    cfg = data_cfg(f"data.files=[{tmp_path}/*.txt]", "data.val_ratio=0.1")
    stats = prepare_data(cfg, tmp_path / "out", seed=0)
    assert stats["splits"]["train"]["rows"] == 54 and stats["splits"]["validation"]["rows"] == 6
    assert sorted(all_texts(tmp_path / "out")) == sorted(PARAGRAPHS)


def test_split_is_seeded(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(PARAGRAPHS))
    cfg = data_cfg(f"data.files=[{tmp_path}/a.txt]")
    prepare_data(cfg, tmp_path / "one", seed=3)
    prepare_data(cfg, tmp_path / "two", seed=3)
    prepare_data(cfg, tmp_path / "three", seed=4)
    val = {name: list(load_prepared(tmp_path / name)["validation"]["text"]) for name in ("one", "two", "three")}
    assert val["one"] == val["two"] != val["three"]


def test_jsonl_with_text_column_and_given_validation(tmp_path):
    rows = [{"id": i, "body": p} for i, p in enumerate(PARAGRAPHS)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:50]))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[50:]))
    cfg = data_cfg(f"data.files=[{tmp_path}/train.jsonl]", f"data.validation_files=[{tmp_path}/val.jsonl]",
                   "data.text_column=body")
    stats = prepare_data(cfg, tmp_path / "out", seed=0)
    assert stats["splits"]["validation"]["rows"] == 10
    assert list(load_prepared(tmp_path / "out")["validation"]["text"]) == PARAGRAPHS[50:]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"content": PARAGRAPHS})
    path = tmp_path / f"data.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    stats = prepare_data(data_cfg(f"data.files=[{path}]", "data.text_column=content"), tmp_path / "out", 0)
    assert sum(s["rows"] for s in stats["splits"].values()) == len(PARAGRAPHS)


def test_invalid_utf8_crlf_bom_and_nul_bytes_in_a_file(tmp_path):
    raw = ("\ufeffFirst paragraph with a BOM and CRLF\r\nline endings.\r\n\r\n".encode()
           + b"Second paragraph with bad bytes \xff\xfe in it and a NUL\x00 byte.\r\n\r\n"
           + "Third paragraph is plain and long enough.".encode())
    (tmp_path / "messy.txt").write_bytes(raw)
    stats = prepare_data(data_cfg(f"data.files=[{tmp_path}/messy.txt]", "data.val_ratio=0.34"),
                         tmp_path / "out", 0)
    assert sorted(all_texts(tmp_path / "out")) == [
        "First paragraph with a BOM and CRLF\nline endings.",
        "Second paragraph with bad bytes  in it and a NUL byte.",
        "Third paragraph is plain and long enough.",
    ]
    assert stats["cleaning"]["train"][0] == {"step": "normalize", "rows_in": 3, "rows_out": 3, "changed": 2}


def test_empty_file_stops_before_training(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(EmptyDataError, match="train data from source 'local' is empty"):
        prepare_data(data_cfg(f"data.files=[{tmp_path}/empty.txt]"), tmp_path / "out", 0)
    assert not (tmp_path / "out" / "dataset").exists()


def test_everything_filtered_names_the_steps(tmp_path):
    (tmp_path / "short.txt").write_text("tiny\n\n   \n\nsmall")
    with pytest.raises(EmptyDataError, match=r"length_filter 3 -> 0.*min_chars"):
        prepare_data(data_cfg(f"data.files=[{tmp_path}/short.txt]"), tmp_path / "out", 0)


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(DataSourceError, match=r"data.files: no file matches '.*nothing-\*.txt'"):
        prepare_data(data_cfg(f"data.files=[{tmp_path}/nothing-*.txt]"), tmp_path / "out", 0)


def test_missing_text_column_lists_columns(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "some text here that is long enough"}\n' * 5)
    with pytest.raises(DataSourceError, match=r"no column 'text' \(columns: \['body'\]\).*data.text_column"):
        prepare_data(data_cfg(f"data.files=[{tmp_path}/d.jsonl]"), tmp_path / "out", 0)


def test_malformed_jsonl_names_the_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine row with enough characters"}\n{"text": broken\n')
    with pytest.raises(DataSourceError, match=r"Could not read .*bad.jsonl as json"):
        prepare_data(data_cfg(f"data.files=[{tmp_path}/bad.jsonl]"), tmp_path / "out", 0)


def test_unreachable_hub_names_dataset_and_local_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    cfg = load_config(["data=hub", "data.hub_name=someone/not-cached-corpus", "data.hub_config=v1"]).data
    with pytest.raises(DataSourceError) as err:
        prepare_data(cfg, tmp_path / "out", 0)
    message = str(err.value)
    assert "Could not load the Hub dataset 'someone/not-cached-corpus' (config 'v1')" in message
    assert "data=local data.files=[" in message


def test_embedded_corpus_is_real_english_prose(tmp_path):
    stats = prepare_data(load_config().data, tmp_path / "out", seed=0)
    assert stats["splits"]["train"]["bytes"] > 300_000
    text = " ".join(all_texts(tmp_path / "out")[:50])
    assert text.count(" the ") > 20
