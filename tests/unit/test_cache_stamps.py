"""Cache hits checked by stat stamps: O(1) in entry size, yet a changed file is still caught."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from lm_tasks import stamps as stamps_module
from lm_tasks.cache import StageCache
from lm_tasks.config import CacheConfig, ConfigError
from lm_tasks.stamps import Stamps

KEY = "cd" * 32


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """The files whose bytes were read to compute a digest."""
    seen: list[Path] = []
    real = stamps_module.sized_digest

    def counting(path):
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(stamps_module, "sized_digest", counting)
    return seen


def make_cache(tmp_path: Path, verify: str = "stamp", stamp_dir: str | None = "stamps") -> StageCache:
    return StageCache(CacheConfig(enabled=True, store=str(tmp_path / "store"), staging_dir=str(tmp_path / "staging"),
                                  refresh=[], verify=verify,
                                  stamp_dir=str(tmp_path / stamp_dir) if stamp_dir else None))


def commit(cache: StageCache, files: dict[str, bytes]) -> Path:
    with cache.claim("pretrain", KEY) as work:
        for name, data in files.items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        return cache.commit("pretrain", KEY, work, {"stage": "pretrain"}).path


def rewrite_keeping_size_and_mtime(path: Path) -> None:
    """The change a size-and-mtime check misses: same length, mtime put back."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_hit_reads_no_file_after_the_commit(tmp_path, reads):
    cache = make_cache(tmp_path)
    entry = commit(cache, {"model.safetensors": os.urandom(1 << 20), "checkpoints/last.ckpt": b"x" * 4096})
    reads.clear()
    for _ in range(3):
        found = cache.lookup("pretrain", KEY)
        assert found is not None and found.path == entry
    assert reads == []  # the commit's digests are remembered with the files' stamps


def test_a_changed_file_is_refused_even_with_size_and_mtime_restored(tmp_path, reads, caplog):
    cache = make_cache(tmp_path)
    entry = commit(cache, {"model.safetensors": b"weights" * 1000, "notes.txt": b"ok"})
    rewrite_keeping_size_and_mtime(entry / "model.safetensors")
    reads.clear()
    assert cache.lookup("pretrain", KEY) is None
    assert reads == [entry / "model.safetensors"]  # its ctime moved: read again, and refused
    assert "does not match its digest" in caplog.text
    assert not entry.exists()


def test_verify_full_reads_every_file_on_every_hit(tmp_path, reads):
    files = {"a.bin": b"a" * 100, "b/c.bin": b"c" * 200}
    commit(make_cache(tmp_path), files)
    cache = make_cache(tmp_path, verify="full")
    reads.clear()
    assert cache.lookup("pretrain", KEY) is not None
    assert cache.lookup("pretrain", KEY) is not None
    assert sorted(p.name for p in reads) == ["a.bin", "a.bin", "c.bin", "c.bin"]


def test_without_a_stamp_folder_every_hit_reads_every_file(tmp_path, reads):
    cache = make_cache(tmp_path, stamp_dir=None)
    commit(cache, {"a.bin": b"a"})
    reads.clear()
    cache.lookup("pretrain", KEY)
    cache.lookup("pretrain", KEY)
    assert [p.name for p in reads] == ["a.bin", "a.bin"]


def test_stamps_are_kept_outside_the_store(tmp_path):
    cache = make_cache(tmp_path)
    entry = commit(cache, {"a.bin": b"a"})
    records = list((tmp_path / "stamps").rglob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["path"] == str(entry / "a.bin") and record["sha256"] == hashlib.sha256(b"a").hexdigest()
    assert not any("stamp" in p.name for p in (tmp_path / "store").rglob("*"))


def test_a_record_for_another_path_or_malformed_is_ignored(tmp_path, reads):
    book = Stamps(tmp_path / "stamps")
    target = tmp_path / "data.txt"
    target.write_text("real bytes")
    book.digest(target)
    record_file = next((tmp_path / "stamps").rglob("*.json"))
    for forged in ({"path": "/elsewhere", "stamp": [], "sha256": "0" * 64}, "not json", ["a", "list"]):
        record_file.write_text(forged if isinstance(forged, str) else json.dumps(forged))
        reads.clear()
        assert book.digest(target) == hashlib.sha256(b"real bytes").hexdigest()
        assert reads == [target.absolute()]


def test_a_file_changing_while_hashed_is_not_remembered(tmp_path, monkeypatch):
    target = tmp_path / "growing.txt"
    target.write_text("start")
    real = stamps_module.sized_digest

    def append_while_reading(path):
        result = real(path)
        with open(path, "a") as f:
            f.write(" more")
        return result

    monkeypatch.setattr(stamps_module, "sized_digest", append_while_reading)
    Stamps(tmp_path / "stamps").digest(target)
    assert not list((tmp_path / "stamps").rglob("*.json"))


def test_input_corpus_digest_follows_links_and_sees_changes(tmp_path, reads):
    from lm_tasks.config import load_config
    from lm_tasks.stage_keys import data_key

    corpus = tmp_path / "real.txt"
    corpus.write_text("Some prose.\n\nMore prose.\n")
    (tmp_path / "link.txt").symlink_to(corpus)
    overrides = ["data=local", f"data.files=[{tmp_path / 'link.txt'}]", f"paths.root_dir={tmp_path}",
                 f"cache.stamp_dir={tmp_path / 'stamps'}"]
    first = data_key(load_config(overrides))
    reads.clear()
    assert data_key(load_config(overrides)) == first and reads == []
    rewrite_keeping_size_and_mtime(corpus)
    assert data_key(load_config(overrides)) != first


def test_verify_takes_stamp_or_full():
    with pytest.raises(ConfigError, match="cache.verify"):
        CacheConfig(enabled=True, store="s", staging_dir="t", refresh=[], verify="fast")
