"""How a local data file is opened: its format, its compression and its text encoding.

- Format: `data.format` (txt, jsonl, json, csv, parquet), or `auto`: the extension, looked
  up under a compression suffix (`corpus.jsonl.gz` is jsonl). Plain text under another
  name (WikiText's `.raw` and `.tokens`, no extension at all) reads with `data.format=txt`.
- Compression: `.gz` (gzip) and `.zst` (Zstandard) are decompressed while streaming.
- Encoding: UTF-8 (the readers drop a leading UTF-8 BOM). A UTF-16 or UTF-32 byte-order mark
  is detected and the text transcoded to UTF-8 while streaming, so the bounded readers
  (lm_tasks/data/bounded.py) always see UTF-8 bytes.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

import zstandard

from lm_tasks.config import DATA_FORMATS
from lm_tasks.data.bounded import CHUNK
from lm_tasks.data.files import DataSourceError

COMPRESSED = (".gz", ".zst")
# Longest first: a UTF-32 LE mark begins with the UTF-16 LE one.
WIDE_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
             (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
# What a failed decompression raises: a truncated or corrupt stream, or not one at all.
DECOMPRESSION_ERRORS = (gzip.BadGzipFile, EOFError, zstandard.ZstdError)


def file_format(path: str, configured: str) -> str:
    """The reader a file takes: `data.format`, or with `auto` its extension."""
    if configured != "auto":
        return configured
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    extension = suffixes[-1].lstrip(".") if suffixes else ""
    if extension in DATA_FORMATS:
        return extension
    named = f"extension '.{extension}'" if extension else "no extension"
    raise DataSourceError(f"{path} has {named}, which names no format; set data.format to txt (plain text "
                          f"such as WikiText's .raw or .tokens), jsonl, json, csv or parquet. .gz and .zst files "
                          "are decompressed by their extension.")


@contextmanager
def open_utf8(path: str) -> Iterator[BinaryIO]:
    """The file's bytes, decompressed by extension and transcoded to UTF-8 from UTF-16/32
    when a byte-order mark says so; streamed, never read whole. (Parquet is read by path.)"""
    suffix = Path(path).suffix.lower()
    with ExitStack() as stack:
        stream: BinaryIO = stack.enter_context(open(path, "rb"))
        if suffix == ".gz":
            stream = stack.enter_context(gzip.GzipFile(fileobj=stream))
        elif suffix == ".zst":
            stream = io.BufferedReader(_Produced(_zstd_frames(stream)), CHUNK)
        head = stream.peek(4)[:4]  # may raise DECOMPRESSION_ERRORS, which the readers name with the file
        wide = next(((bom, encoding) for bom, encoding in WIDE_BOMS if head.startswith(bom)), None)
        if wide is not None:
            stream.read(len(wide[0]))
            text = io.TextIOWrapper(stream, encoding=wide[1], errors="replace", newline="")
            stream = io.BufferedReader(_Produced(_utf8(text)), CHUNK)
        yield stream


def _zstd_frames(raw: BinaryIO) -> Iterator[bytes]:
    """A .zst file's frames, decompressed; a last frame cut short is an error, not an early end."""
    frame = None
    while chunk := raw.read(CHUNK):
        while chunk:
            if frame is None or frame.eof:
                frame = zstandard.ZstdDecompressor().decompressobj()
            yield frame.decompress(chunk)
            chunk = frame.unused_data if frame.eof else b""
    if frame is not None and not frame.eof:
        raise zstandard.ZstdError("the file ends inside a frame (truncated?)")


def _utf8(text: io.TextIOBase) -> Iterator[bytes]:
    while chars := text.read(CHUNK // 4):
        yield chars.encode("utf-8")


class _Produced(io.RawIOBase):
    """A readable stream of the bytes a generator produces."""

    def __init__(self, pieces: Iterator[bytes]):
        super().__init__()
        self.pieces, self.pending = pieces, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            self.pending = next(self.pieces, None)
            if self.pending is None:
                self.pending = b""
                return 0
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n
