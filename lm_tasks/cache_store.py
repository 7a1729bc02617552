"""A cache store at an fsspec URL (s3://, gs://, file://...) that several machines share.

Each machine computes in its own staging folder; the store holds what they share:

    <store>/<stage>/<key>/stage.json ...   a committed entry (manifest uploaded last)
    <store>/<stage>/<key>.lease            who is computing or uploading that key now

- `push` uploads an entry: any old copy first removed, then the files, the manifest
  last, so a reader sees a whole entry or none.
- `fetch` checks the manifest (lm_tasks.cache_manifest) and the store's listing of the
  entry (no symlink, every file of its recorded size) before it writes anything, then
  downloads into a private folder, checking each file's size and digest as it streams.
- `Lease` is a lock that works across machines: an object created only if absent
  (fsspec's exclusive mode "xb": local and NFS folders, s3fs >= 2025.7, gcsfs, adlfs), naming
  its owner and an expiry, renewed by a heartbeat thread while held. A lease is taken
  over when its owner is a dead process on this host, when its expiry has passed, or
  when it has not changed for LEASE_SECONDS on the waiter's own clock (so a planted
  lease, a torn one, or a skewed clock cannot block a key for ever).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import fsspec

from lm_tasks.cache_manifest import MANIFEST, MAX_FILES, MAX_MANIFEST_BYTES, CorruptEntryError, parse_manifest

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0
POLL_SECONDS = 0.5


def owner_tag() -> str:
    """`<host>-<pid>-<random>`: names this process in leases and leftover folders."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def owner_is_dead(tag: str) -> bool:
    """Whether the process an owner tag names is known to be gone (it ran on this host)."""
    parts = tag.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return False  # another host's: only its lease expiry or its age tells
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class RemoteStore:
    """The entries under one fsspec URL."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self._held: dict[str, Lease] = {}  # the leases this process holds, by entry name

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def has_entry(self, name: str) -> bool:
        return self.fs.exists(self._path(f"{name}/{MANIFEST}"))

    def push(self, name: str, local: Path, manifest: dict) -> None:
        """Upload the verified local entry `local` as `name`."""
        root = self._path(name)
        try:  # an old copy goes first, links and all: nothing is written through a planted link
            self.fs.rm(root, recursive=True)
        except FileNotFoundError:
            pass
        for file in manifest["files"]:
            parent = f"{root}/{file}".rsplit("/", 1)[0]
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.put_file(str(local / file), f"{root}/{file}")
        self.fs.put_file(str(local / MANIFEST), f"{root}/{MANIFEST}")  # last: marks the entry complete
        log.info("cache: %s mirrored to %s", name, self.url)

    def fetch(self, name: str, key: str, into: Path) -> dict | None:
        """Download the entry `name` into the new folder `into` and return its manifest, or
        None when the store has no such entry. Raises CorruptEntryError (nothing written)
        when the entry is not safe to use, and on any file that does not match."""
        root = self._path(name)
        raw = self._manifest_bytes(name)
        if raw is None:
            return None
        where = f"{self.url}/{name}"
        manifest = parse_manifest(raw, where, key)
        self._check_listing(root, manifest, where)
        into.mkdir()
        for file, digest in manifest["files"].items():
            (into / file).parent.mkdir(parents=True, exist_ok=True)
            self._download(f"{root}/{file}", into / file, manifest["sizes"][file], digest, f"{where}: {file}")
        (into / MANIFEST).write_bytes(raw)
        return manifest

    def manifest(self, name: str, key: str) -> dict | None:
        """The checked manifest of the store's entry `name` (nothing downloaded), or None when
        the store has none. Raises CorruptEntryError when it is not safe to use."""
        raw = self._manifest_bytes(name)
        return None if raw is None else parse_manifest(raw, f"{self.url}/{name}", key)

    def _manifest_bytes(self, name: str) -> bytes | None:
        try:
            with self.fs.open(self._path(f"{name}/{MANIFEST}"), "rb") as f:
                return f.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            return None

    def _check_listing(self, root: str, manifest: dict, where: str) -> None:
        """Every listed file is a regular file of its recorded size, and nothing is a link."""
        listing = self.fs.find(root, withdirs=True, detail=True)
        if len(listing) > 2 * MAX_FILES:
            raise CorruptEntryError(f"{where}: the entry holds more than {2 * MAX_FILES} files and folders")
        found = {}
        for path, info in listing.items():
            relative = path[len(root):].lstrip("/")
            if info.get("islink"):
                raise CorruptEntryError(f"{where}: {relative or '.'} is a symlink")
            found[relative] = info
        for file, size in manifest["sizes"].items():
            info = found.get(file)
            if info is None or info.get("type") != "file":
                raise CorruptEntryError(f"{where}: {file} listed in the manifest is missing")
            if info.get("size") != size:
                raise CorruptEntryError(f"{where}: {file} is {info.get('size')} bytes, the manifest says {size}")

    def _download(self, source: str, target: Path, size: int, digest: str, what: str) -> None:
        """Copy one file, never more than its recorded size, checking its digest."""
        h, copied = hashlib.sha256(), 0
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with self.fs.open(source, "rb") as src, open(fd, "wb") as dst:
            while chunk := src.read(min(1 << 20, size + 1 - copied)):
                copied += len(chunk)
                if copied > size:
                    raise CorruptEntryError(f"{what} is longer than the manifest says")
                h.update(chunk)
                dst.write(chunk)
        if copied != size or h.hexdigest() != digest:
            raise CorruptEntryError(f"{what} does not match its size and digest in the manifest")

    # --- leases ----------------------------------------------------------------

    @contextmanager
    def lease(self, name: str, wait: bool = True) -> Iterator[bool]:
        """Hold the lease on `name` (waiting for it, or not); yield whether it is held."""
        lease = Lease(self.fs, self._path(f"{name}.lease"))
        if not lease.acquire(wait):
            yield False
            return
        self._held[name] = lease
        try:
            yield True
        finally:
            del self._held[name]
            try:
                lease.release()
            except Exception as err:  # a store outage: the lease expires by itself; keep the stage's outcome
                log.warning("cache: could not release the lease %s (%s: %s)", lease.path, type(err).__name__, err)

    def holds(self, name: str) -> bool:
        """Whether this process still holds the lease on `name`: another machine takes a lease
        over when it was not renewed in time (a long store outage), and then computes too."""
        return name in self._held and self._held[name]._owned()


class Lease:
    """An exclusive, expiring lock object in the store."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        self.owner = owner_tag()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self, wait: bool) -> bool:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        seen, since, logged = None, time.monotonic(), False
        while not self._create():
            current = self._read()
            if current is None:
                continue  # released just now: try again
            if current != seen:
                seen, since = current, time.monotonic()
            if self._stale(current, time.monotonic() - since):
                log.warning("cache: taking over the stale lease %s (%s)", self.path, _describe(current))
                self._remove_if(current)
                continue
            if not wait:
                return False
            if not logged:
                log.info("cache: waiting for %s, held by %s", self.path, _describe(current))
                logged = True
            time.sleep(POLL_SECONDS)
        self._heartbeat = threading.Thread(target=self._renew, name=f"lease {self.path}", daemon=True)
        self._heartbeat.start()
        return True

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._owned():
            self.fs.rm(self.path)

    def _content(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + LEASE_SECONDS}).encode()

    def _create(self) -> bool:
        try:
            with self.fs.open(self.path, "xb") as f:  # exclusive create: one creator wins
                f.write(self._content())
        except FileExistsError:
            return False
        return self._owned()  # read back: a store that ignores "x" lets the last writer win

    def _read(self) -> bytes | None:
        """The lease's first 4 KB; b"" (unreadable, so stale in time) for anything that is not a
        readable file (a folder planted at its name); None when there is no lease."""
        try:
            return self.fs.cat_file(self.path, start=0, end=4096)
        except FileNotFoundError:
            return None
        except OSError:
            return b""

    def _owned(self) -> bool:
        return _parse(self._read()).get("owner") == self.owner

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 4):
            try:
                if not self._owned():
                    log.error("cache: the lease %s was taken over while this process held it", self.path)
                    return
                self.fs.pipe_file(self.path, self._content())
            except Exception as err:  # a store outage: keep trying, the lease has time left
                log.warning("cache: could not renew the lease %s (%s: %s)", self.path, type(err).__name__, err)

    def _stale(self, current: bytes, unchanged_for: float) -> bool:
        lease = _parse(current)
        owner, expires = lease.get("owner"), lease.get("expires")
        return ((isinstance(owner, str) and owner_is_dead(owner))
                or (isinstance(expires, (int, float)) and expires < time.time())
                or unchanged_for > LEASE_SECONDS)

    def _remove_if(self, expected: bytes) -> None:
        """Remove the lease if it is still the stale one (not a lease just taken by another)."""
        if self._read() == expected:
            try:
                self.fs.rm(self.path, recursive=True)  # a planted folder too
            except FileNotFoundError:
                pass


def _parse(raw: bytes | None) -> dict:
    try:
        lease = json.loads(raw or b"")
    except ValueError:
        return {}
    return lease if isinstance(lease, dict) else {}


def _describe(raw: bytes | None) -> str:
    lease = _parse(raw)
    return f"owner {str(lease.get('owner'))[:100]}" if lease else "unreadable"
