"""`python -m flows.cache`: listing entries with their runs, verifying them, and collecting
old ones without ever removing what a registered model version needs."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from flows.cache import main
from flows.lifecycle import lifecycle
from lm_tasks.cache import StageCache, file_lock
from lm_tasks.cache_admin import attach_registered, collect, list_entries
from lm_tasks.config import load_config
from lm_tasks.plan import make_plan
from lm_tasks.stages import run_data

pytestmark = pytest.mark.slow

DAY = 86400


def cache_command(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def age(path: Path, days: float) -> None:
    """Make an entry look last used `days` ago."""
    then = time.time() - days * DAY
    os.utime(path, (then, then))


@pytest.fixture
def after_a_lifecycle(prefect_harness, smoke_overrides) -> tuple[list[str], dict]:
    """One smoke lifecycle, its language model registered by the promotion step."""
    return smoke_overrides, lifecycle(overrides=smoke_overrides)


def test_list_shows_every_entry_its_runs_and_the_versions_that_need_it(after_a_lifecycle, capsys):
    overrides, ran = after_a_lifecycle
    code, out, _ = cache_command(["list", "--json", *overrides], capsys)
    assert code == 0
    entries = {e["stage"]: e for e in json.loads(out)}
    assert sorted(entries) == ["data", "evaluate", "evaluate-lm", "pretrain", "tokenizer"]
    store = Path(load_config(overrides).cache.store)
    for stage, result in ran.items():
        entry = entries[stage]
        assert (entry["key"], entry["digest"], entry["run_id"], entry["where"]) == (
            result["key"], result["digest"], result["run_id"], ["local"])
        manifest = json.loads((store / stage / result["key"] / "stage.json").read_text())
        assert entry["size"] == sum(manifest["sizes"].values()) > 0
        assert len(entry["used_by"]) == 1  # the lifecycle run
    assert entries["pretrain"]["inputs"] == {"tokens": ran["tokenizer"]["digest"]}
    # the registered LM needs its weights and, upstream, its tokenizer and data
    for stage in ("pretrain", "tokenizer", "data"):
        assert entries[stage]["needed_by"] == ["lm-lifecycle-lm v1"], stage
    assert entries["evaluate"]["needed_by"] == []

    code, out, _ = cache_command(["list", *overrides], capsys)
    assert code == 0 and "lm-lifecycle-lm v1" in out and out.strip().endswith("KB") and "5 entries" in out

    # entries written before entries recorded their inputs: the lineage comes from their runs' tags
    for stage in ("tokenizer", "pretrain"):
        manifest_file = store / stage / ran[stage]["key"] / "stage.json"
        manifest = json.loads(manifest_file.read_text())
        del manifest["inputs"]
        manifest_file.write_text(json.dumps(manifest))
    code, out, _ = cache_command(["list", "--json", *overrides], capsys)
    assert all(e["needed_by"] == ["lm-lifecycle-lm v1"] for e in json.loads(out) if e["stage"] != "evaluate"
               and not e["stage"].startswith("evaluate"))


def test_gc_removes_old_entries_but_never_what_a_registered_version_needs(after_a_lifecycle, capsys):
    overrides, ran = after_a_lifecycle
    store = Path(load_config(overrides).cache.store)
    code, out, _ = cache_command(["gc", "--older-than", "1d", *overrides], capsys)
    assert code == 0 and "removed 0 entries" in out  # everything was used just now

    for entry in store.glob("*/*"):  # the stages' entries and the evaluation's parts
        age(entry, 3)
    code, out, _ = cache_command(["gc", "--older-than", "2d", "--dry-run", *overrides], capsys)
    assert code == 0 and "would remove: evaluate " in out and "kept: pretrain" in out
    assert all((store / stage / ran[stage]["key"]).is_dir() for stage in ran)  # a dry run removes nothing

    code, out, _ = cache_command(["gc", "--older-than", "2d", *overrides], capsys)
    assert code == 0 and "removed 2 entries" in out
    assert not (store / "evaluate" / ran["evaluate"]["key"]).exists() and not list((store / "evaluate-lm").iterdir())
    for stage in ("data", "tokenizer", "pretrain"):
        assert (store / stage / ran[stage]["key"] / "stage.json").is_file()
    plan = make_plan(load_config(overrides))
    assert {s.stage: s.state for s in plan.stages} == {
        "data": "cached", "tokenizer": "cached", "pretrain": "cached", "evaluate": "missing"}


def test_gc_to_a_size_removes_the_least_recently_used_and_skips_entries_in_use(tmp_path, capsys):
    overrides = ["debug=smoke", f"paths.root_dir={tmp_path}"]
    runs = [[*overrides, f"data.val_ratio={ratio}"] for ratio in (0.1, 0.2, 0.3)]
    keys = [run_data(load_config(run)).key for run in runs]
    cache = StageCache(load_config(overrides).cache)
    for days, key in zip((3, 2, 1), keys):  # the first is the least recently used
        age(cache.entry_dir("data", key), days)
    sizes = {e.key: e.size for e in list_entries(cache)}

    with file_lock(cache.local / "data" / f"{keys[0]}.lock"):  # a run is using the oldest
        entries = list_entries(cache)
        attach_registered(load_config(overrides), entries)
        result = collect(cache, entries, max_size=sizes[keys[2]] + 1)
    assert [e.key for e in result.skipped_busy] == [keys[0]] and [e.key for e in result.removed] == [keys[1]]
    assert cache.entry_dir("data", keys[0]).is_dir() and not cache.entry_dir("data", keys[1]).exists()

    code, out, _ = cache_command(["gc", "--max-size", f"{sizes[keys[2]] + 1}", *overrides], capsys)
    assert code == 0 and f"removed: data {keys[0][:12]}" in out
    assert [e.key for e in list_entries(cache)] == [keys[2]]


def test_gc_in_a_url_store_and_when_the_registry_is_unreachable(tmp_path, capsys, monkeypatch):
    store = tmp_path / "shared"
    overrides = ["debug=smoke", f"paths.root_dir={tmp_path}", f"cache.store={store.as_uri()}"]
    key = run_data(load_config(overrides)).key
    code, out, _ = cache_command(["list", "--json", "--no-runs", *overrides], capsys)
    assert [(e["stage"], e["where"]) for e in json.loads(out)] == [("data", ["local", "store"])]

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, _, err = cache_command(["gc", "--older-than", "0d", "--keep-recent", "0", *overrides,
                                  "tracking.tracking_uri=http://127.0.0.1:9"], capsys)
    assert code == 1 and "could not be read" in err and "nothing removed" in err
    assert (store / "data" / key / "stage.json").is_file()

    code, out, _ = cache_command(["gc", "--older-than", "0d", *overrides], capsys)
    assert code == 0 and "removed 0 entries" in out  # used a moment ago: a running lifecycle may be reading it
    code, out, _ = cache_command(["gc", "--older-than", "0d", "--keep-recent", "0", *overrides], capsys)  # local only
    assert code == 0 and (store / "data" / key / "stage.json").is_file()
    assert not (tmp_path / "outputs" / "cache-staging" / "data" / key).exists()
    code, out, _ = cache_command(["gc", "--older-than", "0d", "--keep-recent", "0", "--remote", *overrides], capsys)
    assert code == 0 and not (store / "data" / key).exists()


def test_verify_finds_a_damaged_entry_and_fix_removes_it(tmp_path, capsys):
    overrides = ["debug=smoke", f"paths.root_dir={tmp_path}"]
    result = run_data(load_config(overrides))
    code, out, _ = cache_command(["verify", *overrides], capsys)
    assert code == 0 and "every local entry matches its manifest" in out

    planted = Path(result.output_dir).parent / ("f" * 64)  # a store's entry whose manifest is /dev/zero
    planted.mkdir()
    (planted / "stage.json").symlink_to("/dev/zero")
    code, out, _ = cache_command(["verify", *overrides], capsys)  # refused at once, never read
    assert code == 1 and f"corrupt: data {'f' * 12}" in out and "stage.json is a symlink" in out
    code, out, _ = cache_command(["list", "--json", "--no-runs", *overrides], capsys)
    assert sorted((e["key"][:1], e["size"] > 0) for e in json.loads(out)) == [(result.key[:1], True), ("f", False)]
    shutil.rmtree(planted)

    damaged = Path(result.output_dir) / "report.md"
    damaged.write_text(damaged.read_text() + "tampered\n")
    code, out, _ = cache_command(["verify", *overrides], capsys)
    assert code == 1 and f"corrupt: data {result.key[:12]}" in out and "report.md" in out
    code, out, _ = cache_command(["verify", "--fix", *overrides], capsys)
    assert code == 0 and "removed: data" in out and not Path(result.output_dir).exists()


def test_gc_of_an_abandoned_pretraining_takes_its_checkpoint_snapshots_too(tmp_path):
    cache = StageCache(load_config(["debug=smoke", f"paths.root_dir={tmp_path}"]).cache)
    key = "ab" * 32
    partial = cache.local / "pretrain" / f"{key}.partial"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "last.ckpt").write_bytes(b"x" * 100)
    staging = cache.local / ".snapshots" / f"pretrain-{key}" / "step-0000003"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"y" * 100)
    other = cache.local / ".snapshots" / f"pretrain-{'cd' * 32}"  # another pretraining's, still running
    other.mkdir(parents=True)
    for path in (partial / "checkpoints" / "last.ckpt", partial / "checkpoints", partial):
        age(path, 40)

    result = collect(cache, list_entries(cache), older_than_days=30)
    assert [(e.stage, e.key, e.partial) for e in result.removed] == [("pretrain", key, True)]
    assert not partial.exists() and not staging.parent.exists()
    assert other.is_dir()
