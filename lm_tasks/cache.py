"""Content-addressed stage cache: what DVC does for files, for every lifecycle stage.

A stage's cache key is a digest of everything that decides its output: the config
keys it reads, the source code it runs and the content digests of its inputs
(never their paths). Its output folder lives at `<store>/<stage>/<key>/`, with a
manifest (`stage.json`) that lists every file, its size and its SHA-256.

    entry = cache.reusable(stage, key)      # a verified earlier result, or None
    with cache.claim(stage, key) as work:   # compute into work/, then cache.commit(...)

- A store is shared and its contents are not trusted: an entry is used only after its
  manifest and every file pass lm_tasks.cache_manifest's checks (names inside the
  entry, no symlink, sizes, digests). A bad entry is refused with a warning naming it
  and recomputed; a fetch checks every name before it writes anything.
- A file's digest is recomputed only when its stat stamp changed since this user last
  hashed it (lm_tasks.stamps), so a hit costs the same for a 1 KB and a 1 GB entry;
  `cache.verify=full` re-hashes every file of every entry it uses.
- Writes go into `<key>.partial/` and are renamed into place at the end, so an
  interrupted stage never leaves an entry; pretraining resumes from the
  checkpoints in its `.partial` folder. Every rename is followed by a folder fsync.
- A per-key file lock makes concurrent jobs on one machine compute a stage once: the
  second waits, then finds the first one's entry. With a URL store a lease in the
  store (lm_tasks.cache_store) does the same across machines.
- `store` may be any fsspec URL (s3://, gs://, file://...): stages then work in a
  local staging folder and every committed entry is mirrored to the store, manifest
  last. An entry whose upload failed is uploaded again by the next run that finds it.
- Leftovers of dead processes (`.fetch-*`, `.trash-*` folders named after their
  owner, unlocked `.partial` folders without checkpoints to resume from, temporary
  files of interrupted checkpoint writes, lock files) are removed by the next claim.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterator

import lm_tasks
from lm_tasks.artifacts import replace, sync_dir
from lm_tasks.cache_manifest import MANIFEST, CorruptEntryError, verify, write_manifest
from lm_tasks.cache_store import RemoteStore, owner_is_dead, owner_tag
from lm_tasks.config import CacheConfig
from lm_tasks.stamps import Stamps

log = logging.getLogger(__name__)

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


# Where a (stage, key) stands (StageCache.state).
CACHED, IN_STORE, RUNNING, RESUMABLE, CORRUPT, MISSING = ("cached", "in store", "running", "resumable", "corrupt",
                                                          "missing")


@dataclass
class Entry:
    """A committed cache entry: its folder and manifest."""

    path: Path
    manifest: dict


class StageCache:
    """The cache configured by `cache.*`: entries under `<store>/<stage>/<key>/`."""

    def __init__(self, cfg: CacheConfig):
        self.cfg = cfg
        self.remote = RemoteStore(cfg.store.rstrip("/")) if "://" in cfg.store else None
        self.local = local_root(cfg)
        self.stamps = Stamps(cfg.stamp_dir, trust=cfg.verify == "stamp")
        refresh = cfg.refresh if isinstance(cfg.refresh, list) else [cfg.refresh]
        self.refresh = {str(name) for name in refresh if name}
        self._leased: set[str] = set()  # store leases this object holds (in `claim`)

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
        A bad local entry is discarded (with a warning) and fetched again or reported absent."""
        path = self.entry_dir(stage, key)
        if path.exists() or path.is_symlink():
            try:
                entry = Entry(path, verify(path, key, self.stamps))
            except CorruptEntryError as err:
                log.warning("cache: refused %s entry %s: %s; recomputing it", stage, key[:12], err)
                self._discard(path)
            except OSError:  # changed under us: a concurrent process is replacing it; it will be there
                return None
            else:
                self._upload_if_missing(stage, key, entry)
                touch(path)
                return entry
        return self._fetch(stage, key)

    def state(self, stage: str, key: str) -> tuple[str, dict | None]:
        """Where (stage, key) stands, with nothing fetched, resumed or removed: CACHED or
        IN_STORE with the entry's manifest; RUNNING (another process holds its lock),
        RESUMABLE (an interrupted attempt left checkpoints), CORRUPT (refused, it will be
        recomputed) or MISSING, without one."""
        path = self.entry_dir(stage, key)
        if path.exists() or path.is_symlink():
            try:
                return CACHED, verify(path, key, self.stamps)
            except CorruptEntryError:
                return CORRUPT, None
            except OSError:  # being replaced by a concurrent process right now
                return MISSING, None
        if self.remote:
            try:
                manifest = self.remote.manifest(entry_name(stage, key), key)
            except CorruptEntryError:
                return CORRUPT, None
            if manifest is not None:
                return IN_STORE, manifest
        lock = path.with_name(f"{key}.lock")
        if lock.exists() and _locked(lock):
            return RUNNING, None
        if (path.with_name(f"{key}.partial") / "checkpoints" / "last.ckpt").is_file():
            return RESUMABLE, None
        return MISSING, None

    def entry_dir(self, stage: str, key: str) -> Path:
        return self.local / entry_name(stage, key)

    # --- writing -------------------------------------------------------------

    @contextmanager
    def claim(self, stage: str, key: str, resume: bool = False) -> Iterator[Path]:
        """Hold the key's lock (and its lease in a URL store) and yield its `.partial` work folder.

        Without `resume` the work folder starts empty; with it, whatever an interrupted
        earlier attempt left there (checkpoints) is kept for the stage to resume from.
        """
        final = self.entry_dir(stage, key)
        work = final.with_name(f"{key}.partial")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.parent.is_symlink():  # the store is not trusted: its stage folders could point anywhere
            raise CorruptEntryError(f"cache: {final.parent} is a symbolic link, which a cache store never "
                                    "holds: remove it and run again")
        with file_lock(final.with_name(f"{key}.lock")), self._lease(stage, key):
            remove_leftovers(final.parent)
            if work.is_symlink() or not resume:
                remove(work)
            else:
                remove_untrusted_files(work)
            work.mkdir(exist_ok=True)
            yield work

    @contextmanager
    def try_exclusive(self, name: str) -> Iterator[bool]:
        """Hold the lock `name` if no other process does; yield whether it was acquired."""
        path = self.local / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path, wait=False) as held:
            yield held

    def commit(self, stage: str, key: str, work: Path, manifest: dict) -> Entry:
        """Write the manifest (every file's digest and size) and move `work` into place."""
        manifest = write_manifest(work, manifest, key)
        final = self.entry_dir(stage, key)
        self._discard(final)
        replace(work, final)
        self._remember(final, manifest)
        if self.remote:
            name = entry_name(stage, key)
            if name in self._leased and not self.remote.holds(name):
                raise RuntimeError(f"cache: lost the lease on {name} in {self.remote.url} (the store was away "
                                   "too long) and another machine may be writing it: not uploading; the local "
                                   "entry is kept and uploaded by the next run if the store lacks it")
            self.remote.push(name, final, manifest)
        return Entry(final, manifest)

    def _discard(self, path: Path) -> None:
        trash = path.with_name(f"{path.name}.trash-{owner_tag()}")
        try:
            replace(path, trash)  # atomic: readers see the old entry or none
        except FileNotFoundError:
            return  # absent, or discarded by a concurrent process
        remove(trash)

    # --- remote store ----------------------------------------------------------

    @contextmanager
    def _lease(self, stage: str, key: str) -> Iterator[None]:
        if not self.remote:
            yield
            return
        name = entry_name(stage, key)
        with self.remote.lease(name):
            self._leased.add(name)
            try:
                yield
            finally:
                self._leased.discard(name)

    def _fetch(self, stage: str, key: str) -> Entry | None:
        """The store's entry, downloaded into a private folder, checked, then renamed into place."""
        if not self.remote:
            return None
        final = self.entry_dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{key}.fetch-{owner_tag()}")
        try:
            manifest = self.remote.fetch(entry_name(stage, key), key, tmp)
        except CorruptEntryError as err:
            log.warning("cache: refused %s entry %s from the store: %s; recomputing it", stage, key[:12], err)
            return None
        except FileNotFoundError:  # being uploaded again by another machine right now
            return None
        finally:
            if tmp.exists() and not (tmp / MANIFEST).is_file():
                remove(tmp)  # a refused or interrupted download
        if manifest is None:
            return None
        try:
            os.rename(tmp, final)  # fails if a concurrent process put the entry there first
        except OSError:
            remove(tmp)
            return self.lookup(stage, key)
        sync_dir(final.parent)
        self._remember(final, manifest)
        log.info("cache: %s %s fetched from %s", stage, key[:12], self.remote.url)
        return Entry(final, manifest)

    def _remember(self, path: Path, manifest: dict) -> None:
        """Record the stamps of an entry's files, just hashed (committed or downloaded)."""
        for name, digest in manifest["files"].items():
            self.stamps.remember(path / name, digest)

    def _upload_if_missing(self, stage: str, key: str, entry: Entry) -> None:
        """Upload a local entry the store lacks (an earlier upload failed or was interrupted)."""
        name = entry_name(stage, key)
        if not self.remote or self.remote.has_entry(name):
            return
        with nullcontext(True) if name in self._leased else self.remote.lease(name, wait=False) as held:
            if held and not self.remote.has_entry(name):
                log.warning("cache: %s %s is missing from %s (an earlier upload failed): uploading it again",
                            stage, key[:12], self.remote.url)
                self.remote.push(name, entry.path, entry.manifest)


def local_root(cfg: CacheConfig) -> Path:
    """Where entries are on this machine: the store itself, or the staging folder of a URL store."""
    return Path(cfg.staging_dir if "://" in cfg.store else cfg.store)


def entry_name(stage: str, key: str) -> str:
    """`<stage>/<key>`, the same locally and in the store (finetune:qa -> finetune-qa)."""
    return f"{stage.replace(':', '-')}/{key}"


@contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """flock `path` (waiting for it, or not); yield whether it is held.

    The holder removes the file when it releases it, so no lock file outlives its use; a
    waiter that then gets the lock on the removed file tries again on the current one.
    The kernel releases a flock even on SIGKILL.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:  # ELOOP: a link planted at the lock's name would be followed
            if not path.is_symlink():
                raise
            log.warning("cache: removing the symbolic link %s planted at a lock's name (%s)", path, err)
            path.unlink(missing_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        if _is_current(fd, path):
            break
        os.close(fd)
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)  # still held: no one else can be using this file
        os.close(fd)


def _locked(path: Path) -> bool:
    """Whether a process holds the flock on `path` (tested without taking it for long, or
    creating the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a shared lock taken just now
    return False


def _is_current(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


LEFTOVER = re.compile(r"(?P<key>[0-9a-f]{64})\.(?:fetch|trash)-(?P<owner>.+)")
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}")  # tempfile.mkstemp/mkdtemp(prefix=".<name>.")
LEFTOVER_DAYS = 1  # another host's leftovers: its process cannot be asked if it still runs


def remove_leftovers(folder: Path) -> None:
    """Remove what dead processes left in a stage folder: their fetch and trash folders, lock
    files nobody holds, and `.partial` folders nobody works in unless they hold checkpoints
    to resume from (an interrupted pretraining of another configuration)."""
    for path in folder.iterdir():
        leftover = LEFTOVER.fullmatch(path.name)
        if leftover:
            if owner_is_dead(leftover["owner"]) or _age_days(path) > LEFTOVER_DAYS:
                log.info("cache: removing %s, left by a process that is gone", path)
                remove(path)
        elif path.suffix == ".partial" and path.is_symlink():
            remove(path)  # never a work folder of ours
        elif path.suffix == ".lock" or (path.suffix == ".partial" and not (path / "checkpoints").is_dir()):
            with file_lock(path.with_suffix(".lock"), wait=False) as free:
                if free and path.suffix == ".partial":
                    log.info("cache: removing %s, left by an interrupted stage", path)
                    remove(path)


def _age_days(path: Path) -> float:
    try:
        return (time.time() - path.lstat().st_mtime) / 86400
    except FileNotFoundError:
        return 0.0  # removed meanwhile by another process's sweep


def remove_untrusted_files(work: Path) -> None:
    """Before a work folder is resumed (holding its key's lock): remove the temporary files
    of interrupted atomic writes (checkpoints), and any symbolic link, through which the
    stage would write outside the store."""
    for folder, dirs, files in os.walk(work):  # does not follow links
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink() or TEMPORARY.fullmatch(name):
                log.info("cache: removing %s, %s", path, "a link" if path.is_symlink() else "an interrupted write")
                remove(path)


def touch(path: Path) -> None:
    """Mark an entry used now (its folder's mtime): garbage collection removes the least
    recently used first. Best effort: another user's entry in a shared store may refuse it."""
    try:
        os.utime(path)
    except OSError:
        pass


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


