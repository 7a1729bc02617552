"""Files that other stages read: written atomically, identified by content digest.

A stage writes into a temporary sibling and renames it into place, so an
interrupted write never leaves a file or folder that a later run would load. Every
rename is followed by an fsync of the folder that holds it, so that after a power
loss the new name is there (or the old one), not neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


@contextmanager
def atomic_path(target: str | Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `target`; move it onto `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    work = tmp if is_dir else tmp / target.name
    try:
        yield work
        if is_dir and target.exists():
            shutil.rmtree(target)
        replace(work, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace(src: str | Path, dst: str | Path) -> None:
    """os.replace, made durable: the folders of both names are synced."""
    os.replace(src, dst)
    sync_dir(Path(dst).parent)
    if Path(src).parent != Path(dst).parent:
        sync_dir(Path(src).parent)


def sync_dir(folder: str | Path) -> None:
    """fsync a folder, so that the names created, renamed or removed in it persist."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | Path, payload: dict, sort_keys: bool = True) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys, default=str) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_digest(paths: list[Path], root: Path, digest: Callable[[Path], str] = file_digest) -> str:
    """One digest over several files: their names relative to `root` and their bytes
    (each file's digest from `digest`)."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode())
        h.update(digest(path).encode())
    return h.hexdigest()
