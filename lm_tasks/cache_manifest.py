"""A cache entry's manifest (`stage.json`): what it lists, and the checks before an entry is used.

A store is shared, so its contents are not trusted: a manifest may name any path and an
entry may hold symlinks. Before any file of an entry is read or written:

- the manifest is at most MAX_MANIFEST_BYTES, a JSON object whose `files` maps each file's
  name to its SHA-256 and whose `sizes` maps the same names to byte counts, with at most
  MAX_FILES files;
- every name is a plain relative path inside the entry: no absolute path, no `..` or `.`,
  no empty part, no backslash, nothing that normalises to another spelling;
- the entry holds no symlink anywhere (a link could lead out of it);
- every file has its recorded size and digest, and the entry holds no file it does not list;
- the fields a stage records beside its files (run id, digest, metrics...) have their types.

An entry failing any of these raises CorruptEntryError, naming the entry; the cache then
refuses it and recomputes the stage.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path, PurePosixPath

from lm_tasks.artifacts import write_json
from lm_tasks.stamps import Stamps, sized_digest

MANIFEST = "stage.json"
MAX_MANIFEST_BYTES = 4 << 20  # a manifest lists names and digests: a few MB is thousands of files
MAX_FILES = 10_000
DIGEST = re.compile(r"[0-9a-f]{64}")
# The fields a stage records beside its files (lm_tasks.stages.StageResult), read back on a hit.
FIELD_TYPES = {"stage": str, "output_dir": str, "digest": str, "run_id": str, "seconds": (int, float),
               "metrics": dict, "cached": bool, "part": str, "inputs": dict}


class CorruptEntryError(RuntimeError):
    """A cache entry that does not match its manifest, or whose manifest is not safe to use."""


def write_manifest(work: Path, fields: dict, key: str) -> dict:
    """List every file under `work` (name, digest, size) in `work/stage.json`; return the manifest."""
    files, sizes = {}, {}
    for path in sorted(work.rglob("*")):
        if path.is_symlink():
            raise ValueError(f"{path} is a symlink: a cache entry holds only real files (it would be refused)")
        if path.is_file() and path != work / MANIFEST:
            name = path.relative_to(work).as_posix()
            files[name], sizes[name] = sized_digest(path)
    manifest = {**fields, "key": key, "files": files, "sizes": sizes}
    write_json(work / MANIFEST, manifest, sort_keys=False)  # metrics keep their order
    return manifest


def parse_manifest(raw: bytes, where: str, key: str) -> dict:
    """The manifest in `raw` (read from `where`), after checking its size, types and names."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise CorruptEntryError(f"{where}: the manifest is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(raw)
    except ValueError as err:
        raise CorruptEntryError(f"{where}: the manifest is not JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise CorruptEntryError(f"{where}: the manifest is not a JSON object")
    if manifest.get("key") != key:
        raise CorruptEntryError(f"{where}: the manifest is for key {str(manifest.get('key'))[:80]!r}, not {key}")
    files, sizes = manifest.get("files"), manifest.get("sizes")
    if not isinstance(files, dict) or not isinstance(sizes, dict) or files.keys() != sizes.keys():
        raise CorruptEntryError(f"{where}: the manifest needs `files` and `sizes` objects over the same names "
                                "(an entry written by an older version is recomputed once)")
    if len(files) > MAX_FILES:
        raise CorruptEntryError(f"{where}: the manifest lists {len(files)} files, more than {MAX_FILES}")
    for name, digest in files.items():
        if not safe_name(name):
            raise CorruptEntryError(f"{where}: the manifest names {name[:200]!r}, which is not a plain relative "
                                    "path inside the entry")
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise CorruptEntryError(f"{where}: the digest of {name!r} is not a SHA-256 hex digest")
        size = sizes[name]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CorruptEntryError(f"{where}: the size of {name!r} is not a byte count")
    for field, kind in FIELD_TYPES.items():
        if field in manifest and not isinstance(manifest[field], kind):
            raise CorruptEntryError(f"{where}: the manifest's {field!r} is not a {getattr(kind, '__name__', 'number')}")
    metrics = manifest.get("metrics", {})
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
               for k, v in metrics.items()):
        raise CorruptEntryError(f"{where}: the manifest's metrics are not names with numbers")
    if not all(isinstance(k, str) and isinstance(v, str) and DIGEST.fullmatch(v)
               for k, v in manifest.get("inputs", {}).items()):
        raise CorruptEntryError(f"{where}: the manifest's inputs are not names with digests")
    folders = {str(parent) for name in files for parent in PurePosixPath(name).parents}
    if folders & files.keys():
        raise CorruptEntryError(f"{where}: the manifest names a file that is also a folder")
    return manifest


def safe_name(name) -> bool:
    """Whether `name` is a relative POSIX path of plain parts, written the one normal way."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name or name == MANIFEST:
        return False
    parts = name.split("/")
    return (not name.startswith("/") and all(part not in ("", ".", "..") for part in parts)
            and PurePosixPath(name).as_posix() == name)


def read_manifest_bytes(entry: Path) -> bytes:
    """An entry's manifest, read without following a link or blocking on a FIFO, and never more
    than MAX_MANIFEST_BYTES + 1 bytes (the store may plant /dev/zero under that name)."""
    path = entry / MANIFEST
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise CorruptEntryError(f"{path} is unreadable ({err})") from err
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CorruptEntryError(f"{path} is not a regular file")
        return f.read(MAX_MANIFEST_BYTES + 1)


def verify(path: Path, key: str | None = None, stamps: Stamps | None = None) -> dict:
    """The manifest of the entry at `path`, after every check above (the key defaults to the
    folder's name). File digests come from `stamps` (re-read only when a file's stat stamp
    changed since it was last hashed), else every file is read."""
    stamps = stamps or Stamps(None)
    key = key or path.name
    for folder in (path.parent, path):
        if folder.is_symlink():
            raise CorruptEntryError(f"{folder} is a symlink")
    present = set()
    for folder, dirs, names in os.walk(path):
        for name in dirs + names:
            if os.path.islink(os.path.join(folder, name)):
                raise CorruptEntryError(f"{path}: {os.path.join(folder, name)} is a symlink")
        present.update(Path(folder, name).relative_to(path).as_posix() for name in names)
    manifest = parse_manifest(read_manifest_bytes(path), str(path), key)
    unlisted = present - manifest["files"].keys() - {MANIFEST}
    if unlisted:  # files the manifest does not vouch for would travel on (exported, logged) unchecked
        raise CorruptEntryError(f"{path}: {sorted(unlisted)[0]!r} is not listed in the manifest")
    for name, digest in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise CorruptEntryError(f"{file} listed in the manifest is missing")
        if file.stat().st_size != manifest["sizes"][name]:
            raise CorruptEntryError(f"{file} does not have the size in the manifest")
        if stamps.digest(file) != digest:
            raise CorruptEntryError(f"{file} does not match its digest in the manifest")
    return manifest
