"""The stage cache against a hostile or shared store: real `file://` stores, real processes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lm_tasks import cache_store
from lm_tasks.cache import StageCache
from lm_tasks.cache_manifest import MAX_FILES, CorruptEntryError, parse_manifest, verify
from lm_tasks.cache_store import Lease, RemoteStore
from lm_tasks.config import CacheConfig

ROOT = Path(__file__).resolve().parents[2]
KEY = "ab" * 32
FILES = {"out.txt": b"hello", "model/w.bin": bytes(range(256)) * 4}


def make_cache(store: str | Path, staging: Path) -> StageCache:
    return StageCache(CacheConfig(enabled=True, store=str(store), staging_dir=str(staging), refresh=[]))


def run_stage(cache: StageCache, files: dict = FILES) -> tuple[Path, bool]:
    """What lm_tasks.stages does for a stage: reuse, or claim, compute and commit; (entry, computed)."""
    entry = cache.reusable("data", KEY)
    if entry is not None:
        return entry.path, False
    with cache.claim("data", KEY) as work:
        for name, data in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        return cache.commit("data", KEY, work, {"stage": "data"}).path, True


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- the manifest's own checks ---------------------------------------------------------------


def manifest(files: dict, sizes: dict | None = None, **extra) -> bytes:
    sizes = sizes if sizes is not None else {name: 1 for name in files}
    return json.dumps({"key": KEY, "files": files, "sizes": sizes, **extra}).encode()


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "./a", "a/./b", "a//b", "a/", "",
                                  "..\\x", "a\\b", "stage.json", "a\0b", "..", "."])
def test_a_name_that_is_not_a_plain_relative_path_is_refused(name):
    with pytest.raises(CorruptEntryError, match="not a plain relative path"):
        parse_manifest(manifest({name: "0" * 64}), "store/data/k", KEY)


@pytest.mark.parametrize("raw, message", [
    (b"[1]", "not a JSON object"),
    (b"{", "not JSON"),
    (manifest(["a"]), "`files` and `sizes`"),
    (manifest({"a": "0" * 64}, {}), "`files` and `sizes`"),
    (manifest({"a": "not hex"}), "not a SHA-256"),
    (manifest({"a": "0" * 64}, {"a": -1}), "not a byte count"),
    (manifest({"a": "0" * 64}, {"a": True}), "not a byte count"),
    (manifest({"a": "0" * 64}, {"a": "1"}), "not a byte count"),
    (manifest({"a": "0" * 64, "a/b": "0" * 64}), "also a folder"),
    (manifest({"a": "0" * 64}, key="cd" * 32), "is for key"),
    (manifest({f"f{i}": "0" * 64 for i in range(MAX_FILES + 1)}), "more than"),
    (manifest({}, junk="x" * (5 << 20)), "over"),
    (manifest({}, metrics=[]), "'metrics' is not a dict"),
    (manifest({}, metrics={"eval/lm/bpb": "abc"}), "metrics are not names with numbers"),
    (manifest({}, run_id=7), "'run_id' is not a str"),
])
def test_a_malformed_manifest_is_refused(raw, message):
    with pytest.raises(CorruptEntryError, match=message):
        parse_manifest(raw, "store/data/k", KEY)


def test_plain_relative_names_pass():
    files = {"a": "0" * 64, "model/w.bin": "1" * 64, "checkpoints/last.ckpt": "2" * 64}
    assert parse_manifest(manifest(files), "store/data/k", KEY)["files"] == files


# --- a hostile file:// store -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> Path:
    """A file:// store holding one good entry (data/KEY), written by another machine."""
    run_stage(make_cache(f"file://{tmp_path}/store", tmp_path / "writer"))
    assert files_under(tmp_path / "store") == {f"data/{KEY}/{n}" for n in [*FILES, "stage.json"]}
    return tmp_path / "store"


def rewrite_manifest(entry: Path, change) -> None:
    payload = json.loads((entry / "stage.json").read_text())
    change(payload)
    (entry / "stage.json").write_text(json.dumps(payload))


def add_file(payload: dict, name: str, data: bytes) -> None:
    import hashlib

    payload["files"][name] = hashlib.sha256(data).hexdigest()
    payload["sizes"][name] = len(data)


def hostile_cases(store: Path, victims: dict) -> dict:
    """How a store writer can try to make a fetch write or read outside the entry."""
    entry, outside = store / "data" / KEY, store.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "w.bin").write_bytes(FILES["model/w.bin"])
    (outside / "out.txt").write_bytes(FILES["out.txt"])

    def climbing_name():  # the old fetch copied <store>/victim.txt to <staging>/victim.txt
        (store / "victim.txt").write_bytes(b"planted")
        rewrite_manifest(entry, lambda m: add_file(m, "../../victim.txt", b"planted"))

    def absolute_name():
        planted = entry / victims["absolute"].relative_to("/")
        planted.parent.mkdir(parents=True)
        planted.write_bytes(b"planted")
        rewrite_manifest(entry, lambda m: add_file(m, str(victims["absolute"]), b"planted"))

    def symlinked_file():  # same content, so only the link gives it away
        (entry / "out.txt").unlink()
        (entry / "out.txt").symlink_to(outside / "out.txt")

    def symlinked_folder():
        (entry / "model" / "w.bin").unlink()
        (entry / "model").rmdir()
        (entry / "model").symlink_to(outside)

    def wrong_size():
        (entry / "model" / "w.bin").write_bytes(FILES["model/w.bin"] * 1000)

    def oversized_manifest():
        rewrite_manifest(entry, lambda m: m.update(junk="x" * (5 << 20)))

    def files_not_a_dict():
        rewrite_manifest(entry, lambda m: m.update(files=list(m["files"])))

    return {f.__name__: f for f in [climbing_name, absolute_name, symlinked_file, symlinked_folder, wrong_size,
                                    oversized_manifest, files_not_a_dict]}


def outside_state(tmp_path: Path) -> dict:
    return {p: (p.is_symlink(), p.read_bytes()) for p in (tmp_path / "outside").iterdir()}


CASES = ["climbing_name", "absolute_name", "symlinked_file", "symlinked_folder", "wrong_size",
         "oversized_manifest", "files_not_a_dict"]


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_store_entry_is_refused_and_recomputed_writing_nothing_outside(store, tmp_path, caplog, case):
    staging = tmp_path / "staging"
    victims = {"climbing": staging / "victim.txt", "absolute": tmp_path / "victim-abs.txt"}
    hostile_cases(store, victims)[case]()
    outside_before = outside_state(tmp_path)

    with caplog.at_level(logging.WARNING, logger="lm_tasks.cache"):
        path, computed = run_stage(make_cache(f"file://{store}", staging))

    assert computed, "the hostile entry was used"
    assert f"refused data entry {KEY[:12]}" in caplog.text and f"data/{KEY}" in caplog.text, caplog.text
    assert not any(victim.exists() for victim in victims.values())
    assert outside_state(tmp_path) == outside_before
    assert files_under(staging) == {f"data/{KEY}/{n}" for n in [*FILES, "stage.json"]}  # nothing else, no leftovers
    assert {n: (path / n).read_bytes() for n in FILES} == FILES
    # The recomputed entry replaced the hostile one in the store: another machine now fetches it.
    _, computed = run_stage(make_cache(f"file://{store}", tmp_path / "third"))
    assert not computed and verify(store / "data" / KEY)["files"].keys() == FILES.keys()
    assert outside_state(tmp_path) == outside_before


@pytest.mark.parametrize("case", ["climbing_name", "absolute_name", "symlinked_file", "symlinked_folder",
                                  "wrong_size", "oversized_manifest"])
def test_a_hostile_entry_in_a_shared_folder_store_is_refused_and_recomputed(store, tmp_path, caplog, case):
    """A store given as a plain (shared) folder: the entries are read in place."""
    victims = {"climbing": tmp_path / "victim.txt", "absolute": tmp_path / "victim-abs.txt"}
    hostile_cases(store, victims)[case]()
    outside_before = outside_state(tmp_path)

    with caplog.at_level(logging.WARNING, logger="lm_tasks.cache"):
        path, computed = run_stage(make_cache(store, tmp_path / "unused"))

    assert computed and f"refused data entry {KEY[:12]}" in caplog.text, caplog.text
    assert outside_state(tmp_path) == outside_before
    assert files_under(path) == {*FILES, "stage.json"} and not (path / "model").is_symlink()
    assert not any(victim.exists() for victim in victims.values())


def test_a_committed_symlink_is_an_error_naming_it(tmp_path):
    cache = make_cache(tmp_path / "store", tmp_path / "unused")
    with cache.claim("data", KEY) as work:
        (work / "link").symlink_to(tmp_path)
        with pytest.raises(ValueError, match="link is a symlink"):
            cache.commit("data", KEY, work, {})


# --- several machines on one store -----------------------------------------------------------

RACER = """
import os, sys, time
from pathlib import Path
from lm_tasks.cache import StageCache
from lm_tasks.config import CacheConfig

store, staging, computed, go = sys.argv[1:]
cache = StageCache(CacheConfig(enabled=True, store=store, staging_dir=staging, refresh=[]))
while not os.path.exists(go):
    time.sleep(0.005)
key = "ab" * 32
entry = cache.reusable("data", key)
if entry is None:
    with cache.claim("data", key) as work:
        entry = cache.reusable("data", key)  # computed by the other machine while this one waited
        if entry is None:
            with open(computed, "a") as f:
                f.write(f"{os.getpid()}\\n")
            with open(work / "big.bin", "wb") as f:
                for i in range(20):  # slow enough for the other process to try meanwhile
                    f.write(bytes([i]) * 100_000)
                    time.sleep(0.02)
            entry = cache.commit("data", key, work, {"stage": "data"})
print(entry.path, flush=True)
"""


def test_two_machines_racing_on_one_store_compute_once_and_leave_one_whole_entry(tmp_path):
    store, computed, go = f"file://{tmp_path}/store", tmp_path / "computed.txt", tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACER, store, str(tmp_path / f"staging{i}"), str(computed),
                                str(go)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(2)]
    time.sleep(1.5)  # both imported and polling for the start signal
    go.touch()
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs

    assert len(computed.read_text().splitlines()) == 1  # computed once
    expected = bytes().join(bytes([i]) * 100_000 for i in range(20))
    entry = tmp_path / "store" / "data" / KEY
    assert verify(entry)["files"].keys() == {"big.bin"} and (entry / "big.bin").read_bytes() == expected
    for i in range(2):
        local = tmp_path / f"staging{i}" / "data" / KEY
        assert (local / "big.bin").read_bytes() == expected and verify(local)
        assert files_under(tmp_path / f"staging{i}") == {f"data/{KEY}/big.bin", f"data/{KEY}/stage.json"}
    assert files_under(tmp_path / "store") == {f"data/{KEY}/big.bin", f"data/{KEY}/stage.json"}  # lease gone


@pytest.mark.parametrize("lost", ["everything", "the manifest"])
def test_a_failed_upload_is_retried_by_the_next_run(tmp_path, lost):
    """What an upload that failed (nothing arrived) or was killed (no manifest yet) leaves."""
    store = tmp_path / "store"
    run_stage(make_cache(f"file://{store}", tmp_path / "staging"))
    if lost == "everything":
        shutil.rmtree(store / "data" / KEY)
    else:
        (store / "data" / KEY / "stage.json").unlink()

    _, computed = run_stage(make_cache(f"file://{store}", tmp_path / "staging"))
    assert not computed  # the local entry, uploaded again
    assert verify(store / "data" / KEY)["files"].keys() == FILES.keys()
    _, computed = run_stage(make_cache(f"file://{store}", tmp_path / "other-machine"))
    assert not computed


def plant_lease(store: Path, owner: str, expires: float) -> Path:
    lease = store / "data" / f"{KEY}.lease"
    lease.parent.mkdir(parents=True, exist_ok=True)
    lease.write_text(json.dumps({"owner": owner, "expires": expires}))
    return lease


@pytest.mark.parametrize("owner, expires", [
    (f"{socket.gethostname()}-{{dead}}-0000abcd", time.time() + 3600),  # a crashed process on this host
    ("other-host-123-0000abcd", time.time() - 1),  # expired
])
def test_a_dead_or_expired_lease_is_taken_over(tmp_path, owner, expires):
    lease = plant_lease(tmp_path / "store", owner.format(dead=dead_pid()), expires)
    started = time.monotonic()
    _, computed = run_stage(make_cache(f"file://{tmp_path}/store", tmp_path / "staging"))
    assert computed and time.monotonic() - started < 10
    assert not lease.exists()  # released after the commit


def test_a_lease_that_never_changes_is_taken_over_after_its_lifetime(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_store, "LEASE_SECONDS", 1.0)
    plant_lease(tmp_path / "store", "other-host-123-0000abcd", time.time() + 10**9)  # planted "for ever"
    started = time.monotonic()
    _, computed = run_stage(make_cache(f"file://{tmp_path}/store", tmp_path / "staging"))
    assert computed and 1.0 <= time.monotonic() - started < 10


def test_a_held_lease_is_renewed_and_keeps_others_out(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_store, "LEASE_SECONDS", 0.4)
    fs = RemoteStore(f"file://{tmp_path}").fs
    holder = Lease(fs, f"{tmp_path}/k.lease")
    assert holder.acquire(wait=False)
    first = (tmp_path / "k.lease").read_bytes()
    time.sleep(1.0)  # over twice its lifetime: only renewals keep it
    assert (tmp_path / "k.lease").read_bytes() != first
    assert not Lease(fs, f"{tmp_path}/k.lease").acquire(wait=False)
    waiter = Lease(fs, f"{tmp_path}/k.lease")
    got = threading.Thread(target=waiter.acquire, args=(True,))
    got.start()
    time.sleep(0.3)
    assert got.is_alive()  # still waiting
    holder.release()
    got.join(timeout=10)
    assert not got.is_alive() and json.loads((tmp_path / "k.lease").read_text())["owner"] == waiter.owner
    waiter.release()
    assert not (tmp_path / "k.lease").exists()


# --- leftovers of dead processes -----------------------------------------------------------


def test_leftovers_of_dead_processes_are_removed_and_a_live_ones_kept(tmp_path):
    cache = make_cache(f"file://{tmp_path}/store", tmp_path / "staging")
    folder = tmp_path / "staging" / "data"
    host, other = socket.gethostname(), "cd" * 32
    dead = [folder / f"{KEY}.fetch-{host}-{dead_pid()}-0000abcd", folder / f"{other}.trash-{host}-{dead_pid()}-1",
            folder / f"{other}.partial", folder / f"{other}.lock"]
    live = [folder / f"{other}.fetch-{host}-{os.getpid()}-0000abcd", folder / f"{other}.fetch-elsewhere-1-0"]
    for path in dead + live:
        path.mkdir(parents=True) if not path.name.endswith(".lock") else path.touch()
        if path.is_dir():
            (path / "file").write_text("x")
    run_stage(cache)
    assert [p for p in dead if p.exists()] == [] and all(p.exists() for p in live)
    assert not (folder / f"{KEY}.lock").exists()  # the claim's own lock file is gone with it


def test_a_resumed_stage_keeps_its_checkpoints_and_loses_interrupted_writes(tmp_path):
    cache = make_cache(tmp_path / "store", tmp_path / "unused")
    with cache.claim("pretrain", KEY, resume=True) as work:
        (work / "checkpoints").mkdir()
        (work / "checkpoints" / "last.ckpt").write_bytes(b"state")
        (work / "checkpoints" / ".last.ckpt.k3j_9x2a").write_bytes(b"half")  # tempfile.mkstemp's leftover
        (work / ".model.ab12cd34").mkdir()  # atomic_path's
    other = tmp_path / "store" / "pretrain" / f"{'cd' * 32}.partial"
    (other / "checkpoints").mkdir(parents=True)
    with cache.claim("pretrain", KEY, resume=True) as work:
        assert files_under(work) == {"checkpoints/last.ckpt"}
    with cache.claim("pretrain", KEY) as work:  # cache.refresh=pretrain: this key starts over
        assert files_under(work) == set()
        assert other.exists()  # another configuration's pretraining, resumable later


# --- the review's hostile layouts ------------------------------------------------------------


def test_a_file_the_manifest_does_not_list_is_refused(tmp_path):
    cache = make_cache(tmp_path / "store", tmp_path / "staging")
    entry, _ = run_stage(cache)
    (entry / "model" / "extra.py").write_text("print('not vouched for')")
    with pytest.raises(CorruptEntryError, match="'model/extra.py' is not listed"):
        verify(entry, KEY)
    _, computed = run_stage(cache)
    assert computed and not (entry / "model" / "extra.py").exists()


def test_planted_links_in_a_shared_folder_store_lead_nowhere(tmp_path):
    victim = tmp_path / "victim"
    (victim / "checkpoints").mkdir(parents=True)
    (victim / ".keep.abcd1234").write_text("a file that looks temporary")
    (victim / "poetry.lock").write_text("kept")
    folder = tmp_path / "store" / "data"
    folder.mkdir(parents=True)
    (folder / f"{KEY}.partial").symlink_to(victim)  # a work folder pointing outside
    (folder / f"{KEY}.lock").symlink_to(victim / "poetry.lock")  # a lock pointing outside
    cache = make_cache(tmp_path / "store", tmp_path / "staging")
    for resume in (True, False):
        with cache.claim("data", KEY, resume=resume) as work:
            assert not work.is_symlink() and work.parent == folder
    assert sorted(p.name for p in victim.iterdir()) == [".keep.abcd1234", "checkpoints", "poetry.lock"]
    assert (victim / "poetry.lock").read_text() == "kept"


def test_a_linked_stage_folder_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "data").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CorruptEntryError, match="is a symbolic link"):
        with make_cache(tmp_path / "store", tmp_path / "staging").claim("data", KEY):
            pass
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_folder_planted_at_a_lease_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_store, "LEASE_SECONDS", 1.0)
    (tmp_path / "store" / "data" / f"{KEY}.lease" / "x").mkdir(parents=True)
    _, computed = run_stage(make_cache(f"file://{tmp_path}/store", tmp_path / "staging"))
    assert computed and (tmp_path / "store" / "data" / KEY / "stage.json").is_file()


def test_an_upload_after_the_lease_was_lost_is_refused(tmp_path):
    cache = make_cache(f"file://{tmp_path}/store", tmp_path / "staging")
    with pytest.raises(RuntimeError, match="lost the lease"):
        with cache.claim("data", KEY) as work:
            (work / "out.txt").write_text("x")
            lease = tmp_path / "store" / "data" / f"{KEY}.lease"
            lease.write_text(json.dumps({"owner": "other-host-1-00000000", "expires": time.time() + 60}))
            cache.commit("data", KEY, work, {"stage": "data"})
    assert not (tmp_path / "store" / "data" / KEY).exists()  # nothing pushed over the other machine's work
