"""Remembered file digests: a file's SHA-256 is not recomputed while its stat stamp holds.

A stamp is (device, inode, size, mtime_ns, ctime_ns). Rewriting a file changes its size
or mtime, replacing it changes its inode, and its ctime changes on any write or `touch`
and cannot be set back by a user, so an unchanged stamp means unchanged bytes. Checking
a cache hit or an input corpus then costs one `stat` per file, whatever its size.

The stamps are kept in a folder private to the user (`cache.stamp_dir`), never in the
shared cache store: whoever else writes to the store cannot forge one. A digest is only
remembered when the file's stamp was the same before and after it was read, so a file
changing while it is hashed is read again next time. `cache.verify=full` re-hashes every
file (and refreshes the stamps).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from lm_tasks.artifacts import atomic_path

log = logging.getLogger(__name__)


def stat_stamp(path: str | Path) -> list[int]:
    """The stamp of the file at `path` (not following a symlink)."""
    st = os.lstat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def sized_digest(path: str | Path) -> tuple[str, int]:
    """SHA-256 and byte count of a file, read without following a symlink."""
    h, size = hashlib.sha256(), 0
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class Stamps:
    """Digests remembered under `folder` (None: nothing remembered, every file is read).
    With `trust=False` every file is read and its stamp refreshed (`cache.verify=full`)."""

    def __init__(self, folder: str | Path | None, trust: bool = True):
        self.folder = Path(folder).expanduser() if folder else None
        self.trust = trust

    def digest(self, path: str | Path) -> str:
        """The SHA-256 of the file at `path`, read only when its stamp changed."""
        path = Path(path).absolute()
        before = stat_stamp(path)
        record = self._recall(path) if self.trust else None
        if record and record["stamp"] == before:
            return record["sha256"]
        digest, _ = sized_digest(path)
        if stat_stamp(path) == before:  # not changed while it was read
            self.remember(path, digest, before)
        return digest

    def remember(self, path: str | Path, digest: str, stamp: list[int] | None = None) -> None:
        """Record `digest` for the file at `path` as it is now (or as it was at `stamp`)."""
        if self.folder is None:
            return
        path = Path(path).absolute()
        record = {"path": str(path), "stamp": stamp or stat_stamp(path), "sha256": digest}
        try:
            with atomic_path(self._record_path(path)) as tmp:
                tmp.write_text(json.dumps(record))
        except OSError as err:  # a read-only home folder: correct, only slower
            log.warning("cache: cannot record file stamps in %s (%s); every file is re-hashed", self.folder, err)
            self.folder = None

    def _recall(self, path: Path) -> dict | None:
        """The record for `path`, if there is a well-formed one."""
        if self.folder is None:
            return None
        try:
            record = json.loads(self._record_path(path).read_text())
        except (OSError, ValueError):
            return None
        valid = (isinstance(record, dict) and record.get("path") == str(path)
                 and isinstance(record.get("sha256"), str) and isinstance(record.get("stamp"), list))
        return record if valid else None

    def _record_path(self, path: Path) -> Path:
        name = hashlib.sha256(str(path).encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.json"
