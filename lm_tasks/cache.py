"""Content-addressed stage cache: what DVC does for files, for every lifecycle stage.

A stage's cache key is a digest of everything that decides its output: the config
keys it reads, the source code it runs and the content digests of its inputs
(never their paths). Its output folder lives at `<store>/<stage>/<key>/`, with a
manifest (`stage.json`) that lists every file and its SHA-256.

    entry = cache.reusable(stage, key)      # a verified earlier result, or None
    with cache.claim(stage, key) as work:   # compute into work/, then cache.commit(...)

- A hit is used only after every file is checked against the manifest: a missing
  or corrupt output is reported and recomputed, never loaded.
- Writes go into `<key>.partial/` and are renamed into place at the end, so an
  interrupted stage never leaves an entry; pretraining resumes from the
  checkpoints in its `.partial` folder.
- A per-key file lock makes concurrent jobs that need the same stage compute it
  once: the second waits, then finds the first one's entry.
- `store` may be any fsspec URL (s3://, gs://, file://...): stages then work in a
  local staging folder and every committed entry is mirrored to the store, manifest
  last, so a reader never sees half an entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterator

import fsspec

import lm_tasks
from lm_tasks.artifacts import file_digest, read_json, write_json
from lm_tasks.config import CacheConfig

log = logging.getLogger(__name__)

MANIFEST = "stage.json"
PACKAGE_DIR = Path(lm_tasks.__file__).parent


def digest_of(payload) -> str:
    """A stable digest of any JSON-able value (dict keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# Libraries whose version can change a stage's output.
DEPENDENCIES = ("torch", "lightning", "tokenizers", "datasets", "evaluate")


def code_version(modules: list[str]) -> str:
    """A digest of the library source a stage runs (files or subpackages of lm_tasks) and of
    the versions of the libraries it computes with."""
    versions = [f"{name}=={metadata.version(name)}" for name in DEPENDENCIES]
    h = hashlib.sha256(" ".join([lm_tasks.__version__, *versions]).encode())
    for module in sorted(modules):
        path = PACKAGE_DIR / module
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            h.update(str(file.relative_to(PACKAGE_DIR)).encode())
            h.update(file.read_bytes())
    return h.hexdigest()


def stage_key(stage: str, config: dict, code: list[str], inputs: dict[str, str]) -> str:
    return digest_of({"stage": stage, "config": config, "code": code_version(code), "inputs": inputs})


class CorruptEntryError(RuntimeError):
    """A cached entry whose files no longer match its manifest."""


@dataclass
class Entry:
    """A committed cache entry: its folder and manifest."""

    path: Path
    manifest: dict


class StageCache:
    """The cache configured by `cache.*`: entries under `<store>/<stage>/<key>/`."""

    def __init__(self, cfg: CacheConfig):
        self.cfg = cfg
        self.remote = cfg.store.rstrip("/") if "://" in cfg.store else None  # any fsspec URL
        self.local = Path(cfg.staging_dir if self.remote else cfg.store)
        refresh = cfg.refresh if isinstance(cfg.refresh, list) else [cfg.refresh]
        self.refresh = {str(name) for name in refresh if name}

    # --- reading -------------------------------------------------------------

    def wants_refresh(self, stage: str) -> bool:
        """Whether `cache.refresh` asks to recompute this stage (`finetune` covers every task)."""
        family = stage.split(":")[0]
        return bool({"all", stage, family} & self.refresh)

    def reusable(self, stage: str, key: str) -> Entry | None:
        """The entry a run of `stage` may reuse: None when absent, when the cache is off or
        when a refresh is asked for (a stage run alone still finds its inputs by `lookup`)."""
        if not self.cfg.enabled or self.wants_refresh(stage):
            return None
        return self.lookup(stage, key)

    def lookup(self, stage: str, key: str) -> Entry | None:
        """The verified entry for (stage, key), fetched from the store if needed, or None.
        A corrupt entry is discarded (with a warning) and reported as absent."""
        path = self.entry_dir(stage, key)
        if not (path / MANIFEST).is_file() and not self._fetch(stage, key):
            return None
        try:
            return Entry(path, verify(path))
        except CorruptEntryError as err:
            log.warning("cache: %s; recomputing %s", err, stage)
            self._discard(path)
            return None

    def entry_dir(self, stage: str, key: str) -> Path:
        return self.local / entry_name(stage, key)

    # --- writing -------------------------------------------------------------

    @contextmanager
    def claim(self, stage: str, key: str, resume: bool = False) -> Iterator[Path]:
        """Hold the key's lock and yield its `.partial` work folder.

        Without `resume` the work folder starts empty; with it, whatever an interrupted
        earlier attempt left there (checkpoints) is kept for the stage to resume from.
        """
        final = self.entry_dir(stage, key)
        work = final.with_name(f"{key}.partial")
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.with_name(f"{key}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel even on SIGKILL
            try:
                if work.exists() and not resume:
                    shutil.rmtree(work)
                work.mkdir(exist_ok=True)
                yield work
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def try_exclusive(self, name: str) -> Iterator[bool]:
        """Hold the lock `name` if no other process does; yield whether it was acquired."""
        path = self.local / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def commit(self, stage: str, key: str, work: Path, manifest: dict) -> Entry:
        """Write the manifest (with every file's digest) and move `work` into place."""
        files = {str(p.relative_to(work)): file_digest(p) for p in sorted(work.rglob("*"))
                 if p.is_file() and p.name != MANIFEST}
        manifest = {**manifest, "key": key, "files": files}
        write_json(work / MANIFEST, manifest, sort_keys=False)  # metrics keep their order
        final = self.entry_dir(stage, key)
        self._discard(final)
        os.replace(work, final)
        self._push(stage, key, final)
        return Entry(final, manifest)

    def _discard(self, path: Path) -> None:
        if path.exists():
            trash = path.with_name(f"{path.name}.trash-{os.getpid()}")
            os.replace(path, trash)  # atomic: readers see the old entry or none
            shutil.rmtree(trash, ignore_errors=True)

    # --- remote store ----------------------------------------------------------

    def _push(self, stage: str, key: str, local: Path) -> None:
        if not self.remote:
            return
        fs, root = fsspec.core.url_to_fs(f"{self.remote}/{entry_name(stage, key)}")
        for path in sorted(local.rglob("*")):
            if path.is_file() and path.name != MANIFEST:
                fs.makedirs(f"{root}/{path.parent.relative_to(local)}".rstrip("/."), exist_ok=True)
                fs.put_file(str(path), f"{root}/{path.relative_to(local)}")
        fs.put_file(str(local / MANIFEST), f"{root}/{MANIFEST}")  # last: marks the entry complete
        log.info("cache: %s %s mirrored to %s", stage, key[:12], self.remote)

    def _fetch(self, stage: str, key: str) -> bool:
        if not self.remote:
            return False
        fs, root = fsspec.core.url_to_fs(f"{self.remote}/{entry_name(stage, key)}")
        if not fs.exists(f"{root}/{MANIFEST}"):
            return False
        final = self.entry_dir(stage, key)
        tmp = final.with_name(f"{key}.fetch-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
        for name in [*manifest["files"], MANIFEST]:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{name}", str(tmp / name))
        self._discard(final)
        os.replace(tmp, final)
        log.info("cache: %s %s fetched from %s", stage, key[:12], self.remote)
        return True


def entry_name(stage: str, key: str) -> str:
    """`<stage>/<key>`, the same locally and in the store (finetune:qa -> finetune-qa)."""
    return f"{stage.replace(':', '-')}/{key}"


def verify(path: Path) -> dict:
    """The entry's manifest, after checking every listed file against its digest."""
    try:
        manifest = read_json(path / MANIFEST)
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as err:
        raise CorruptEntryError(f"{path / MANIFEST} is unreadable ({err})") from err
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            raise CorruptEntryError(f"{file} listed in the manifest is missing")
        if file_digest(file) != digest:
            raise CorruptEntryError(f"{file} does not match its digest in the manifest")
    return manifest
