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
- Nor one used within `keep_recent_days` (a hit holds no lock while a lifecycle reads the
  entry) or one being computed (its key's lock held). Interrupted attempts (`.partial`
  folders) are collected by age like entries. With a URL store, `--remote` collects the
  store's entries too, each under its store lease, manifest first (no reader sees half an
  entry); otherwise only this machine's staging copies go.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from lm_tasks.cache import StageCache, entry_name, file_lock, remove
from lm_tasks.cache_manifest import MANIFEST, CorruptEntryError, parse_manifest, read_manifest_bytes, verify
from lm_tasks.cache_store import owner_tag
from lm_tasks.config import LifecycleConfig

log = logging.getLogger(__name__)

KEY = re.compile(r"[0-9a-f]{64}")
STAGE = re.compile(r"[a-z][a-z0-9_-]*")  # data, pretrain, finetune-qa...: what a store listing may name
LOCAL, STORE = "local", "store"
KEEP_RECENT_DAYS = 1.0  # gc leaves entries used within this long (see collect)


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


def list_entries(cache: StageCache, remote: bool = True) -> list[CacheEntry]:
    """Every entry and interrupted attempt, here and (with `remote`) in the store, least
    recently used first."""
    found: dict[tuple[str, str, bool], CacheEntry] = {}
    for entry in _local_entries(cache.local):
        found[(entry.stage, entry.key, entry.partial)] = entry
    for entry in _store_entries(cache) if cache.remote and remote else []:
        known = found.get((entry.stage, entry.key, False))
        if known:
            known.where.append(STORE)
        else:
            found[(entry.stage, entry.key, False)] = entry
    return sorted(found.values(), key=lambda e: e.last_used)


def _local_entries(root: Path) -> list[CacheEntry]:
    entries = []
    for stage_dir in _children(root):
        if not STAGE.fullmatch(stage_dir.name) or stage_dir.is_symlink() or not stage_dir.is_dir():
            continue
        for path in _children(stage_dir):
            key, partial = path.name.removesuffix(".partial"), path.name.endswith(".partial")
            if not KEY.fullmatch(key) or path.is_symlink() or not path.is_dir():
                continue  # locks, leftovers, a planted link: not entries
            try:
                entries.append(_partial(stage_dir.name, key, path) if partial else
                               _entry(stage_dir.name, key, LOCAL, _manifest(path, key), path.lstat().st_mtime))
            except FileNotFoundError:  # removed meanwhile (committed, discarded, collected)
                continue
    return entries


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _manifest(path: Path, key: str) -> dict:
    try:
        return parse_manifest(read_manifest_bytes(path), str(path), key)
    except CorruptEntryError:
        return {"sizes": {}}  # listed all the same: `verify` says what is wrong with it


def _partial(stage: str, key: str, path: Path) -> CacheEntry:
    """An interrupted attempt, last used when its newest checkpoint was written."""
    sizes, times = 0, [path.lstat().st_mtime]
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:  # a checkpoint's temporary file, renamed meanwhile
                continue
            sizes += st.st_size
            times.append(st.st_mtime)
    return CacheEntry(stage, key, [LOCAL], sizes, max(times), partial=True)


def _store_entries(cache: StageCache) -> list[CacheEntry]:
    remote, entries = cache.remote, []
    for stage_dir in _store_listing(remote.fs, remote.root):
        stage = stage_dir.rstrip("/").rsplit("/", 1)[-1]
        if not STAGE.fullmatch(stage):
            continue
        for path in _store_listing(remote.fs, stage_dir):
            key = path.rstrip("/").rsplit("/", 1)[-1]
            if not KEY.fullmatch(key):
                continue
            try:
                manifest = remote.manifest(f"{stage}/{key}", key)
                modified = remote.fs.modified(f"{path}/{MANIFEST}").timestamp()
            except CorruptEntryError:
                manifest, modified = {"sizes": {}}, 0.0
            except FileNotFoundError:  # being uploaded or removed right now
                continue
            if manifest is not None:
                entries.append(_entry(stage, key, STORE, manifest, modified))
    return entries


def _store_listing(fs, path: str) -> list[str]:
    try:
        return [p for p in fs.ls(path, detail=False) if fs.isdir(p)]
    except FileNotFoundError:  # a store nothing was written to yet
        return []


def _entry(stage: str, key: str, where: str, manifest: dict, last_used: float) -> CacheEntry:
    return CacheEntry(stage, key, [where], sum(manifest.get("sizes", {}).values()), last_used,
                      manifest.get("run_id", ""), manifest.get("digest", ""), manifest.get("inputs", {}))


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
                todo.extend((entry.inputs or _inputs_from_run(client, entry.run_id)).values())


def _inputs_from_run(client, run_id: str) -> dict:
    """The inputs of an entry written before entries recorded them: the `input.<name>_digest`
    tags of the run that computed it, when this tracking store has that run."""
    from mlflow.exceptions import MlflowException

    from lm_tasks import lineage

    if not run_id:
        return {}
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException:  # a run of another tracking store
        return {}
    return lineage.input_digests(tags)


# --- verify and collect ---------------------------------------------------------------


def verify_entries(cache: StageCache, fix: bool = False) -> list[tuple[CacheEntry, str]]:
    """Re-hash every file of every local entry; (entry, problem) for each that fails, which a
    run would refuse and recompute. With `fix`, those entries are removed."""
    problems = []
    for entry in list_entries(cache, remote=False):
        if entry.partial:
            continue
        path = cache.local / entry.stage / entry.key
        try:
            verify(path, entry.key)  # no stamps: every byte is read again
        except CorruptEntryError as err:
            problems.append((entry, str(err)))
            if fix:
                with file_lock(path.with_name(f"{entry.key}.lock"), wait=False) as free:
                    if free:  # not while a process commits it again
                        _remove_local(path)
        except FileNotFoundError:  # discarded meanwhile
            continue
    return problems


@dataclass
class Collection:
    removed: list[CacheEntry]
    kept_needed: list[CacheEntry]  # old or over the size, but a registered version needs them
    skipped_busy: list[CacheEntry]  # used recently, or being computed (their key's lock held)
    size_before: int
    size_after: int


def collect(cache: StageCache, entries: list[CacheEntry], older_than_days: float | None = None,
            max_size: int | None = None, remote: bool = False, dry_run: bool = False,
            keep_recent_days: float = KEEP_RECENT_DAYS) -> Collection:
    """Remove the entries unused for `older_than_days`, then the least recently used until
    the rest fits in `max_size` bytes; never one a registered version needs (`needed_by`,
    see attach_registered), one used in the last `keep_recent_days` (a running lifecycle
    may be reading it: a hit marks an entry used, but holds no lock while it reads), or
    one whose key's lock is held (being computed)."""
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
        if entry.age_days < keep_recent_days:
            busy.append(entry)
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
    """Remove one entry (here, and in the store with `remote`) unless its key's lock, or its
    lease in the store, is held."""
    folder = cache.local / entry.stage
    from_store = remote and STORE in entry.where and not entry.partial
    name = entry_name(entry.stage, entry.key)
    folder.mkdir(parents=True, exist_ok=True)  # for the lock of an entry only in the store
    with file_lock(folder / f"{entry.key}.lock", wait=False) as free, \
            (cache.remote.lease(name, wait=False) if from_store else nullcontext(True)) as leased:
        if not (free and leased):
            return False
        if LOCAL in entry.where:
            _remove_local(folder / (f"{entry.key}.partial" if entry.partial else entry.key))
            if entry.stage == "pretrain":  # the staging of its checkpoint snapshots (eval.checkpoints), if left
                remove(cache.local / ".snapshots" / f"pretrain-{entry.key}")
        if from_store:
            store_path = cache.remote._path(name)
            cache.remote.fs.rm(f"{store_path}/{MANIFEST}")  # first: the entry is gone for every reader
            cache.remote.fs.rm(store_path, recursive=True)
    log.info("cache: removed %s %s (%s, unused for %.1f days)", entry.stage, entry.key[:12], human_size(entry.size),
             entry.age_days)
    return True


def _remove_local(path: Path) -> None:
    trash = path.with_name(f"{path.name}.trash-{owner_tag()}")
    try:
        os.replace(path, trash)  # atomic: a reader sees the whole entry or none
    except FileNotFoundError:  # discarded meanwhile by a run that refused it
        return
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
