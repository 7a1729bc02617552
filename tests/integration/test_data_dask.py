"""The data stage partitioned over a local Dask cluster of two workers: the same output as one process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream

from lm_tasks.config import load_config
from lm_tasks.data.prepare import prepare_data
from lm_tasks.stage_keys import data_key
from lm_tasks.stages import run_data, run_tokenizer
from tests.text_samples import paragraphs

pytestmark = pytest.mark.slow


def write_corpus(folder: Path) -> list[str]:
    """Three files of three formats, with what every cleaning step acts on: exact and near
    duplicates across files, PII, rows too short, a German row (counted by the language step), a row quoting the validation split."""
    texts = paragraphs(90, seed=11, words=30)
    near = texts[5].split()
    near[3] = "changed"
    held_out = paragraphs(4, seed=12, words=30)
    contact = paragraphs(1, seed=13, words=30)[0]
    first = texts[:40] + [texts[2], "Too short.", "Write to jane.doe@example.org or call 555-123-4567. " + contact]
    second = texts[40:70] + [" ".join(near), "Der schnelle braune Fuchs springt über den faulen Hund und "
                                             "läuft dann weiter durch den Wald bis zum Fluss."]
    third = texts[70:] + [texts[10], f"As quoted: {held_out[1]}"]
    (folder / "a.txt").write_text("\n\n".join(first))
    (folder / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in second))
    (folder / "c.csv").write_text("text\n" + "".join(json.dumps(t) + "\n" for t in third))
    (folder / "held_out.txt").write_text("\n\n".join(held_out))
    return [str(folder / name) for name in ("a.txt", "b.jsonl", "c.csv")]


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield cluster, client


def test_the_dask_partitioned_stage_equals_the_single_process_one(tmp_path, cluster):
    cluster, client = cluster
    files = write_corpus(tmp_path)
    base = [f"paths.root_dir={tmp_path}", "data=local", f"data.files=[{','.join(files)}]",
            f"data.validation_files=[{tmp_path / 'held_out.txt'}]"]
    local = load_config(base)
    single = prepare_data(local.data, tmp_path / "single", local.seed)

    spread = load_config(base + ["data.executor=dask", f"data.dask_address={cluster.scheduler_address}",
                                 "data.partitions=3"])
    assert data_key(spread) == data_key(local)  # where it runs is not part of the cache key
    with get_task_stream(client) as stream:
        partitioned = prepare_data(spread.data, tmp_path / "dask", spread.seed)
    tasks = stream.data
    workers = {task["worker"] for task in tasks}
    names = {task["key"].split("-")[0] for task in tasks}
    assert len(workers) == 2 and {"_generate", "map_partition"} <= names

    assert partitioned["digest"] == single["digest"]
    manifest = [json.loads((tmp_path / run / "manifest.json").read_text()) for run in ("single", "dask")]
    assert manifest[0] == manifest[1]
    steps = {s["step"]: s for s in single["steps"]["train"]}
    assert [s["step"] for s in partitioned["steps"]["train"]] == list(steps)
    assert partitioned["steps"] == single["steps"]  # counts, reasons, samples: step by step
    dropped = {step: s["rows_in"] - s["rows_out"] for step, s in steps.items()}
    assert dropped["exact_dedup"] == 2 and dropped["near_dedup"] == 1 and dropped["length"] == 1
    assert steps["language"]["details"]["languages"]["de"] == 1 and dropped["decontamination"] == 1
    assert steps["pii"]["changed"] == 1


def test_the_tokenizer_stage_packs_the_same_tokens_on_the_cluster(tmp_path, cluster):
    cluster, _ = cluster
    local = load_config([f"paths.root_dir={tmp_path}", "debug=smoke"])
    spread = load_config([f"paths.root_dir={tmp_path}", "debug=smoke", "data.executor=dask",
                          f"data.dask_address={cluster.scheduler_address}", "data.partitions=3"])
    data = run_data(local)
    assert run_data(spread).key == data.key  # the same entry, from the cache
    alone = run_tokenizer(local, data)
    shutil.rmtree(alone.output_dir)  # computed again, this time on the cluster
    spread_tokens = run_tokenizer(spread, data)
    assert spread_tokens.key == alone.key and spread_tokens.digest == alone.digest  # .bin files included
    folder = Path(spread_tokens.output_dir)
    assert not (folder / ".partitions").exists()
    assert np.load(folder / "train.docs.npy").size == json.loads((folder / "meta.json").read_text())[
        "splits"]["train"]["documents"]
