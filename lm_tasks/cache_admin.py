"""Looking after a stage cache: list its entries, verify them, collect the old ones.

    python -m flows.cache list   [overrides]                  # stage, key, size, last use, runs, where
    python -m flows.cache verify [--fix] [overrides]          # re-hash every file of every local entry
    python -m flows.cache gc --older-than 30d --max-size 20G [--remote] [--dry-run] [overrides]

- An entry's age is the time since a run last used it: every cache hit marks its folder
  (`lm_tasks.cache.touch`), so collection removes the least recently used first.
- Collection never removes an entry that a registered model version needs: the entry of
  the registered weights (the version's `model_digest` tag) and, through each entry's
  recorded inputs, every entry upstream of it (its tokenizer, its data). The registry is
  read from `tracking.tracking_uri`; when it cannot be read, nothing is removed.
- An entry being computed or used (its key's lock held) is skipped; the interrupted
  attempts (`.partial` folders) are collected by age like entries. With a URL store,
  `--remote` collects the store's entries too (manifest first, so no reader sees half an
  entry); otherwise only this machine's staging copies go.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from lm_tasks.cache import StageCache, entry_name, file_lock, remove
from lm_tasks.cache_manifest import MANIFEST, CorruptEntryError, parse_manifest, verify
from lm_tasks.cache_store import owner_tag
from lm_tasks.config import LifecycleConfig

log = logging.getLogger(__name__)

KEY = re.compile(r"[0-9a-f]{64}")
LOCAL, STORE = "local", "store"


@dataclass
class CacheEntry:
    stage: str  # as the folder names it: data, pretrain, finetune-qa, evaluate-lm...
    key: str
    where: list[str]  # local and/or store
    size: int  # bytes
    last_used: float  # epoch seconds
    run_id: str = ""  # the MLflow run that computed it
    digest: str = ""  # its output's content digest
    inputs: dict = field(default_factory=dict)  # input name -> digest
    partial: bool = False  # an interrupted attempt, not an entry
    used_by: list[str] = field(default_factory=list)  # lifecycle runs that used it
    needed_by: list[str] = field(default_factory=list)  # registered versions that need it ("name v3")

    @property
    def age_days(self) -> float:
        return (time.time() - self.last_used) / 86400


def list_entries(cache: StageCache) -> list[CacheEntry]:
    """Every entry and interrupted attempt, here and in the store, oldest use first."""
    found: dict[tuple[str, str, bool], CacheEntry] = {}
    for entry in _local_entries(cache.local):
        found[(entry.stage, entry.key, entry.partial)] = entry
    for entry in _store_entries(cache) if cache.remote else []:
        known = found.get((entry.stage, entry.key, False))
        if known:
            known.where.append(STORE)
        else:
            found[(entry.stage, entry.key, False)] = entry
    return sorted(found.values(), key=lambda e: e.last_used)


def _local_entries(root: Path) -> list[CacheEntry]:
    entries = []
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()) if root.is_dir() else []:
        for path in sorted(stage_dir.iterdir()):
            key, partial = path.name.removesuffix(".partial"), path.name.endswith(".partial")
            if not KEY.fullmatch(key) or path.is_symlink() or not path.is_dir():
                continue  # locks, leftovers, a planted link: not entries
            if partial:  # last used when its newest checkpoint was written
                files = [f.lstat() for f in path.rglob("*") if f.is_file() and not f.is_symlink()]
                entries.append(CacheEntry(stage_dir.name, key, [LOCAL], sum(f.st_size for f in files),
                                          max([f.st_mtime for f in files], default=_mtime(path)), partial=True))
                continue
            try:
                manifest = parse_manifest((path / MANIFEST).read_bytes(), str(path), key)
            except (OSError, CorruptEntryError):
                manifest = {"sizes": {}}  # listed all the same: `verify` says what is wrong with it
            entries.append(_entry(stage_dir.name, key, LOCAL, manifest, _mtime(path)))
    return entries


def _store_entries(cache: StageCache) -> list[CacheEntry]:
    remote, entries = cache.remote, []
    for stage_dir in remote.fs.ls(remote.root, detail=False):
        stage = stage_dir.rstrip("/").rsplit("/", 1)[-1]
        if not remote.fs.isdir(stage_dir):
            continue
        for path in remote.fs.ls(stage_dir, detail=False):
            key = path.rstrip("/").rsplit("/", 1)[-1]
            if not KEY.fullmatch(key):
                continue
            try:
                manifest = remote.manifest(f"{stage}/{key}", key)
            except CorruptEntryError:
                manifest = {"sizes": {}}
            if manifest is not None:
                modified = remote.fs.modified(f"{path}/{MANIFEST}").timestamp()
                entries.append(_entry(stage, key, STORE, manifest, modified))
    return entries


def _entry(stage: str, key: str, where: str, manifest: dict, last_used: float) -> CacheEntry:
    return CacheEntry(stage, key, [where], sum(manifest.get("sizes", {}).values()), last_used,
                      manifest.get("run_id", ""), manifest.get("digest", ""), manifest.get("inputs", {}))


def _mtime(path: Path) -> float:
    return path.lstat().st_mtime


# --- what uses and what needs an entry (MLflow) ---------------------------------------


def attach_runs(cfg: LifecycleConfig, entries: list[CacheEntry]) -> None:
    """Fill each entry's `used_by`: the lifecycle runs of this experiment whose stage came
    from the run that computed the entry (their `stage.<stage>.run_id` tags, lm_tasks.lineage)."""
    from mlflow.tracking import MlflowClient

    from lm_tasks import tracking

    experiment_id = tracking.configure(cfg.tracking)
    runs = MlflowClient().search_runs([experiment_id], "tags.stage = 'lifecycle'", max_results=10_000)
    by_producer: dict[str, list[str]] = {}
    for run in runs:
        for tag, value in run.data.tags.items():
            if tag.startswith("stage.") and tag.endswith(".run_id"):
                by_producer.setdefault(value, []).append(run.info.run_id)
    for entry in entries:
        entry.used_by = by_producer.get(entry.run_id, []) if entry.run_id else []


def attach_registered(cfg: LifecycleConfig, entries: list[CacheEntry]) -> None:
    """Fill `needed_by` with the registered model versions each entry serves, directly (its
    weights) or upstream (their tokenizer and data). Raises when the registry is unreadable."""
    from mlflow.tracking import MlflowClient

    from lm_tasks import tracking

    tracking.configure(cfg.tracking)
    client, versions, token = MlflowClient(), [], None
    while True:  # every version of every registered model, page by page
        page = client.search_model_versions(max_results=1000, page_token=token)
        versions += list(page)
        token = page.token
        if not token:
            break
    by_digest: dict[str, list[CacheEntry]] = {}
    for entry in entries:
        if entry.digest:
            by_digest.setdefault(entry.digest, []).append(entry)
    for version in versions:
        label = f"{version.name} v{version.version}"
        todo, seen = [version.tags.get("model_digest")], set()
        while todo:
            digest = todo.pop()
            if not digest or digest in seen:
                continue
            seen.add(digest)
            for entry in by_digest.get(digest, []):
                if label not in entry.needed_by:
                    entry.needed_by.append(label)
                todo.extend(entry.inputs.values())


# --- verify and collect ---------------------------------------------------------------


def verify_entries(cache: StageCache, fix: bool = False) -> list[tuple[CacheEntry, str]]:
    """Re-hash every file of every local entry; (entry, problem) for each that fails, which a
    run would refuse and recompute. With `fix`, those entries are removed."""
    problems = []
    for entry in list_entries(cache):
        if LOCAL not in entry.where or entry.partial:
            continue
        path = cache.local / entry.stage / entry.key
        try:
            verify(path, entry.key)  # no stamps: every byte is read again
        except CorruptEntryError as err:
            problems.append((entry, str(err)))
            if fix:
                _remove_local(path)
    return problems


@dataclass
class Collection:
    removed: list[CacheEntry]
    kept_needed: list[CacheEntry]  # old or over the size, but a registered version needs them
    skipped_busy: list[CacheEntry]  # in use (their key's lock held)
    size_before: int
    size_after: int


def collect(cache: StageCache, entries: list[CacheEntry], older_than_days: float | None = None,
            max_size: int | None = None, remote: bool = False, dry_run: bool = False) -> Collection:
    """Remove the entries unused for `older_than_days`, then the least recently used until
    the rest fits in `max_size` bytes; never one a registered version needs (`needed_by`,
    see attach_registered) or one in use."""
    scope = [e for e in entries if LOCAL in e.where or (remote and STORE in e.where)]
    size = sum(e.size for e in scope)
    candidates, kept, busy, removed = [], [], [], []
    total = size
    for entry in scope:  # least recently used first
        too_old = older_than_days is not None and entry.age_days > older_than_days
        too_big = max_size is not None and total > max_size
        if not (too_old or too_big):
            continue
        if entry.needed_by:
            kept.append(entry)
            continue
        candidates.append(entry)
        total -= entry.size
    for entry in candidates:
        if dry_run or _remove_entry(cache, entry, remote):
            removed.append(entry)
        else:
            busy.append(entry)
    return Collection(removed, kept, busy, size, size - sum(e.size for e in removed))


def _remove_entry(cache: StageCache, entry: CacheEntry, remote: bool) -> bool:
    """Remove one entry (here, and in the store with `remote`) unless its key's lock is held."""
    folder = cache.local / entry.stage
    name = f"{entry.key}.partial" if entry.partial else entry.key
    folder.mkdir(parents=True, exist_ok=True)  # for the lock of an entry only in the store
    with file_lock(folder / f"{entry.key}.lock", wait=False) as free:
        if not free:
            return False
        if LOCAL in entry.where:
            _remove_local(folder / name)
        if remote and STORE in entry.where and not entry.partial:
            store_path = cache.remote._path(entry_name(entry.stage, entry.key))
            cache.remote.fs.rm(f"{store_path}/{MANIFEST}")  # first: the entry is gone for every reader
            cache.remote.fs.rm(store_path, recursive=True)
    log.info("cache: removed %s %s (%s, unused for %.1f days)", entry.stage, entry.key[:12], human_size(entry.size),
             entry.age_days)
    return True


def _remove_local(path: Path) -> None:
    trash = path.with_name(f"{path.name}.trash-{owner_tag()}")
    os.replace(path, trash)  # atomic: a reader sees the whole entry or none
    remove(trash)


# --- units ---------------------------------------------------------------------------

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DURATIONS = {"s": 1 / 86400, "m": 1 / 1440, "h": 1 / 24, "d": 1, "w": 7}


def parse_size(text: str) -> int:
    """`500M`, `20G`, `1.5T`, `1000` (bytes) -> bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size: write e.g. 500M, 20G or 1.5T")
    return int(float(match[1]) * UNITS[match[2].upper()])


def parse_days(text: str) -> float:
    """`30d`, `12h`, `2w`, `90m` (minutes), `30` (days) -> days."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([smhdw]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: write e.g. 30d, 12h or 2w")
    return float(match[1]) * DURATIONS[match[2] or "d"]


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def human_age(days: float) -> str:
    if days < 1 / 24:
        return f"{days * 1440:.0f} min"
    if days < 1:
        return f"{days * 24:.1f} h"
    return f"{days:.1f} d"


def render(entries: list[CacheEntry]) -> str:
    """The entries as a table, most recently used last."""
    rows = [("stage", "key", "size", "last used", "where", "runs", "needed by")]
    for e in entries:
        rows.append((e.stage + (" (partial)" if e.partial else ""), e.key[:12], human_size(e.size),
                     human_age(e.age_days) + " ago", "+".join(e.where), str(len(e.used_by)),
                     ", ".join(e.needed_by) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"{len(entries)} entries, {human_size(sum(e.size for e in entries))}")
    return "\n".join(lines)
