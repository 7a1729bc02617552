"""Records read from untrusted files with a size limit: no record longer than `limit`
bytes is ever held in memory, whatever the file holds (a 2 GB line, a JSON array on one
line, a CSV field that never closes its quote).

Each reader yields `(data, size, line)` per record: its raw bytes (`None` when it is
longer than `limit`: it was read past in chunks and dropped), its size in bytes, and the
file line it starts on (1-based). Decoding and parsing happen after the size check, on
records within the limit only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

CHUNK = 1 << 20
BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n|\r|\n")
# The rest of a JSON string up to its closing quote (escapes skipped), and outside strings, structure.
_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
_STRUCTURE = re.compile(rb'["\[\]{},]')
_BACKSLASH = ord("\\")

Record = tuple[bytes | None, int, int]


class Oversized:
    """Bytes of one record read past, keeping only their size (and the quotes in them,
    which tell a CSV reader whether a quoted field is still open)."""

    def __init__(self) -> None:
        self.size = self.quotes = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        self.quotes += data.count(b'"')


def chunks(f: BinaryIO) -> Iterator[bytes]:
    """The file in CHUNK-sized pieces, a leading UTF-8 BOM dropped."""
    first = f.read(max(CHUNK, len(BOM)))
    if first:
        yield first.removeprefix(BOM)
    while chunk := f.read(CHUNK):
        yield chunk


def _whole_line_ends(f: BinaryIO) -> Iterator[bytes]:
    """`chunks`, moved so that none ends between the CR and the LF of a CRLF."""
    pending = b""
    for chunk in chunks(f):
        chunk = pending + chunk
        pending = b"\r" if chunk.endswith(b"\r") else b""
        if len(chunk) > len(pending):
            yield chunk[:len(chunk) - len(pending)]
    if pending:
        yield pending


def starts_json_array(f: BinaryIO) -> bool:
    """Whether the first non-blank byte is "[" (it reads from `f`: seek back or reopen after)."""
    for chunk in chunks(f):
        if chunk.strip():
            return chunk.lstrip().startswith(b"[")
    return False


def lines(f: BinaryIO, limit: int) -> Iterator[tuple[bytes | Oversized, int]]:
    """Every line with its end (CRLF, CR or LF end a line) and its size; a line longer
    than `limit` comes as an `Oversized`."""
    kept: list[bytes] | None = []  # the current line's pieces while it is within the limit
    skipped = Oversized()
    size = 0
    for chunk in _whole_line_ends(f):
        start = 0
        for match in _LINE_END.finditer(chunk):
            piece = chunk[start:match.end()]
            size += len(piece)
            yield _line(kept, skipped, piece, size, limit), size
            kept, skipped, size, start = [], Oversized(), 0, match.end()
        rest = chunk[start:]
        size += len(rest)
        if kept is not None and size <= limit:
            kept.append(rest)
        else:  # from here on the line is only counted
            if kept is not None:
                skipped.add(b"".join(kept))
            kept = None
            skipped.add(rest)
    if size:
        yield _line(kept, skipped, b"", size, limit), size


def _line(kept: list[bytes] | None, skipped: Oversized, piece: bytes, size: int, limit: int) -> bytes | Oversized:
    if kept is not None and size <= limit:
        return b"".join(kept) + piece
    if kept is not None:
        skipped.add(b"".join(kept))
    skipped.add(piece)
    return skipped


def csv_records(f: BinaryIO, limit: int) -> Iterator[Record]:
    """CSV records: a record runs on over line ends while a double quote is open (RFC 4180)."""
    record: list[bytes] | None = []
    size = first = number = 0
    quotes = 0
    for line, n in lines(f, limit):
        number += 1
        first = first or number
        size += n
        quotes += line.quotes if isinstance(line, Oversized) else line.count(b'"')
        if isinstance(line, Oversized) or size > limit:
            record = None
        elif record is not None:
            record.append(line)
        if quotes % 2 == 0:
            yield (b"".join(record) if record is not None else None), size, first
            record, size, first, quotes = [], 0, 0, 0
    if size:
        yield (b"".join(record) if record is not None else None), size, first


def json_array(f: BinaryIO, limit: int, path: str) -> Iterator[Record]:
    """The elements of a file whose first non-blank character is "[" (one JSON array),
    one at a time: the bytes of each element (not yet parsed), found by tracking strings
    and nesting. An array that does not close is a ValueError naming `path`."""
    element = _Element(1, limit)
    line = 1  # the line `start` is on
    depth = -1  # -1: before the array's "["; 0: between its elements
    in_string = escaped = False
    for chunk in chunks(f):
        pos = start = 0
        while pos < len(chunk):
            if escaped:  # the byte after a backslash that ended the last chunk
                pos, escaped = pos + 1, False
                continue
            if in_string:
                pos = _STRING_BODY.match(chunk, pos).end()
                if pos < len(chunk):  # at the closing quote, or at a backslash ending the chunk
                    escaped = in_string = chunk[pos] == _BACKSLASH
                    pos += 1
                continue
            match = _STRUCTURE.search(chunk, pos)
            if match is None:
                break
            pos, char = match.end(), match.group()
            if char == b'"':
                in_string = True
            elif depth < 0:  # the opening "["
                line += chunk.count(b"\n", start, pos)
                depth, start, element = 0, pos, _Element(line, limit)
            elif char in (b"[", b"{"):
                depth += 1
            elif depth > 0:
                if char != b",":  # a comma inside an element does not end it
                    depth -= 1
            elif char == b"}":
                where = line + chunk.count(b"\n", start, pos)
                raise ValueError(f"{path}:{where}: unbalanced '}}' in the JSON array")
            else:  # "," or the closing "]" of the array: an element ends
                element.add(chunk[start:match.start()])
                if element.pieces is None or element.started or char == b",":
                    yield element.data(), element.size, element.line
                line += chunk.count(b"\n", start, pos)
                start, element = pos, _Element(line, limit)
                if char == b"]":
                    return
        if depth >= 0:
            element.add(chunk[start:])
        line += chunk.count(b"\n", start)
    raise ValueError(f"{path}:{line}: the JSON array does not end (no closing ']')")


class _Element:
    """One JSON array element as it is read: its pieces (None once past the limit), its
    size in bytes from its first non-blank byte, and the line that byte is on."""

    def __init__(self, line: int, limit: int) -> None:
        self.pieces: list[bytes] | None = []
        self.size, self.line, self.limit, self.started = 0, line, limit, False

    def add(self, piece: bytes) -> None:
        if not self.started:  # blanks before the element count towards its line, not its size
            body = piece.lstrip()
            self.line += piece.count(b"\n", 0, len(piece) - len(body))
            piece, self.started = body, bool(body)
        self.size += len(piece)
        if self.pieces is not None and self.size <= self.limit:
            self.pieces.append(piece)
        else:
            self.pieces = None

    def data(self) -> bytes | None:
        return None if self.pieces is None else b"".join(self.pieces).rstrip()
