"""The data stage reads every source by config alone, keeps each row's provenance, and
writes parquet shards with a manifest that later stages check."""

from __future__ import annotations

import json

import pytest

from lm_tasks.config import load_config
from lm_tasks.data.prepare import load_prepared, prepare_data
from lm_tasks.data.shards import ShardError
from lm_tasks.data.sources import DataSourceError
from lm_tasks.retry import is_transient
from tests.text_samples import paragraphs

PARAGRAPHS = paragraphs(60, seed=7)


def all_texts(data_dir) -> list[str]:
    dataset = load_prepared(data_dir)
    return list(dataset["train"]["text"]) + list(dataset["validation"]["text"])


def data_cfg(*overrides: str):
    return load_config(["data=local", *overrides]).data


def test_txt_files_one_row_per_paragraph_with_split_and_provenance(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(PARAGRAPHS[:30]))
    (tmp_path / "b.txt").write_text("\n\n\n".join(PARAGRAPHS[30:]))
    cfg = data_cfg(f"data.files=[{tmp_path}/*.txt]", "data.val_ratio=0.1")
    report = prepare_data(cfg, tmp_path / "out", seed=0)
    assert report["splits"]["train"]["rows"] == 54 and report["splits"]["validation"]["rows"] == 6
    assert sorted(all_texts(tmp_path / "out")) == sorted(PARAGRAPHS)
    # every row knows its file and first line
    rows = {r["text"]: (r["source"], r["row"]) for split in load_prepared(tmp_path / "out").values() for r in split}
    assert rows[PARAGRAPHS[0]] == (str(tmp_path / "a.txt"), 1)
    assert rows[PARAGRAPHS[2]] == (str(tmp_path / "a.txt"), 5)  # paragraphs separated by one blank line
    assert rows[PARAGRAPHS[32]] == (str(tmp_path / "b.txt"), 7)  # ... by two


def test_split_is_seeded(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(PARAGRAPHS))
    cfg = data_cfg(f"data.files=[{tmp_path}/a.txt]")
    for name, seed in (("one", 3), ("two", 3), ("three", 4)):
        prepare_data(cfg, tmp_path / name, seed=seed)
    val = {name: list(load_prepared(tmp_path / name)["validation"]["text"]) for name in ("one", "two", "three")}
    assert val["one"] == val["two"] != val["three"]


def test_jsonl_with_text_column_and_given_validation(tmp_path):
    rows = [{"id": i, "body": p} for i, p in enumerate(PARAGRAPHS)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:50]))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[50:]))
    cfg = data_cfg(f"data.files=[{tmp_path}/train.jsonl]", f"data.validation_files=[{tmp_path}/val.jsonl]",
                   "data.text_column=body")
    report = prepare_data(cfg, tmp_path / "out", seed=0)
    assert report["splits"]["validation"]["rows"] == 10
    validation = load_prepared(tmp_path / "out")["validation"]
    assert list(validation["text"]) == PARAGRAPHS[50:] and list(validation["row"]) == list(range(1, 11))


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"content": PARAGRAPHS})
    path = tmp_path / f"data.{suffix}"
    frame.to_csv(path, index=False) if suffix == "csv" else frame.to_parquet(path)
    report = prepare_data(data_cfg(f"data.files=[{path}]", "data.text_column=content"), tmp_path / "out", 0)
    assert sum(s["rows"] for s in report["splits"].values()) == len(PARAGRAPHS)


def test_csv_rows_spanning_lines_keep_their_first_line(tmp_path):
    import pandas as pd

    texts = [PARAGRAPHS[0], PARAGRAPHS[1].replace(" ", "\n", 2), PARAGRAPHS[2]]  # the second spans 3 lines
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "data.csv", index=False)
    prepare_data(data_cfg(f"data.files=[{tmp_path}/data.csv]"), tmp_path / "out", 0)
    rows = {r["text"]: r["row"] for split in load_prepared(tmp_path / "out").values() for r in split}
    assert [rows[t] for t in texts] == [2, 3, 6]  # line 1 is the header


def test_an_empty_validation_file_is_named(tmp_path):
    (tmp_path / "train.txt").write_text("\n\n".join(PARAGRAPHS))
    (tmp_path / "val.txt").write_text("\n")
    cfg = data_cfg(f"data.files=[{tmp_path}/train.txt]", f"data.validation_files=[{tmp_path}/val.txt]")
    with pytest.raises(DataSourceError, match=r"validation data from source 'local' is empty: .*val.txt$"):
        prepare_data(cfg, tmp_path / "out", 0)


def test_max_rows_and_max_bytes_stop_reading_early(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(PARAGRAPHS))
    report = prepare_data(data_cfg(f"data.files=[{tmp_path}/a.txt]", "data.max_rows=20"), tmp_path / "rows", 0)
    assert report["steps"]["train"][0]["rows_in"] == 20
    budget = sum(len(p.encode()) for p in PARAGRAPHS[:10])
    report = prepare_data(data_cfg(f"data.files=[{tmp_path}/a.txt]", f"data.max_bytes={budget}"), tmp_path / "b", 0)
    assert report["steps"]["train"][0]["rows_in"] == 10


def test_streaming_a_hub_style_dataset_takes_only_what_is_asked(tmp_path):
    """`datasets` streams a dataset folder the way it streams a Hub repository (offline here)."""
    repo = tmp_path / "someone-corpus"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in PARAGRAPHS))
    cfg = load_config(["data=hub", f"data.hub_name={repo}", "data.streaming=true", "data.max_rows=25"]).data
    report = prepare_data(cfg, tmp_path / "out", 0)
    assert report["steps"]["train"][0]["rows_in"] == 25
    assert sorted(all_texts(tmp_path / "out")) == sorted(PARAGRAPHS[:25])
    sources = set(load_prepared(tmp_path / "out")["train"]["source"])
    assert sources == {f"hub:{repo}:train"}


def test_shards_and_manifest(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(PARAGRAPHS))
    prepare_data(data_cfg(f"data.files=[{tmp_path}/a.txt]", "data.shard_rows=20"), tmp_path / "out", 0)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == ["train-00000.parquet", "train-00001.parquet",
                                                     "train-00002.parquet", "validation-00000.parquet"]
    assert [s["rows"] for s in manifest["shards"]] == [20, 20, 17, 3]
    assert manifest["splits"]["train"] == {"rows": 57, "bytes": sum(s["bytes"] for s in manifest["shards"][:3]),
                                           "shards": 3}
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert len(load_prepared(tmp_path / "out")["train"]) == 57

    shard = tmp_path / "out" / "shards" / "train-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    with pytest.raises(ShardError, match=r"train-00001.parquet does not match its digest.*cache.refresh=data"):
        load_prepared(tmp_path / "out")


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
    # offline mode is a setting, not an outage: the flows do not retry it (lm_tasks.retry)
    assert "offline mode is on" in message and not is_transient(err.value)


def test_embedded_corpus_is_real_english_prose(tmp_path):
    report = prepare_data(load_config().data, tmp_path / "out", seed=0)
    assert report["splits"]["train"]["bytes"] > 300_000
    text = " ".join(all_texts(tmp_path / "out")[:50])
    assert text.count(" the ") > 20
    language = next(s for s in report["steps"]["train"] if s["step"] == "language")
    assert next(iter(language["details"]["languages"])) == "en"  # the most frequent
    for name in ("report.json", "report.md", "dropped_samples.jsonl", "lengths.png"):
        assert (tmp_path / "out" / name).stat().st_size > 100
