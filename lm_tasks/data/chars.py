"""The characters of a whole batch of texts as numpy arrays: UTF-8 bytes and their classes.

The texts are encoded to UTF-8 and joined with "\\n" (whitespace and a line break, so
no word or line runs from one text into the next). Every byte gets the classes of the
character it belongs to, as bits:

- `SPACE`: `str.isspace`, where `str.split` cuts words;
- `LETTER`: what the regex class `[^\\W\\d_]` matches, a letter of any script (the
  letters of lm_tasks/data/language.py and lm_tasks/data/quality.py);
- `BREAK`: where `str.splitlines` cuts lines;
- `CONTINUATION`: not the first byte of its character (counting characters is counting
  the bytes without this bit);
- `WORD`: what the regex class `\w` matches (letters, digits, underscore): the characters
  the normalised words of lm_tasks/data/words.py keep.

ASCII bytes get their classes from one `bytes.translate`. The non-ASCII characters
(few in most text) are decoded with numpy and looked up in a table indexed by code
point that is filled on demand: classifying all 1.1M code points up front would cost
a quarter of a second in every process.

These are the building blocks of the batch versions of the per-document reference
functions (lm_tasks/data/language_batch.py, lm_tasks/data/quality_batch.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPACE, LETTER, BREAK, CONTINUATION, WORD = 1, 2, 4, 8, 16
_UNCLASSIFIED = 0x80
_LETTER = re.compile(r"[^\W\d_]")
_WORD = re.compile(r"\w")
PADDING = 8  # zero bytes after the data: an 8-byte read at any byte stays inside


def _classify(char: str) -> int:
    return ((SPACE if char.isspace() else 0) | (LETTER if _LETTER.match(char) else 0)
            | (BREAK if len(f"a{char}b".splitlines()) == 2 else 0) | (WORD if _WORD.match(char) else 0))


_ASCII_LOWER = bytes(c + 32 if 65 <= c <= 90 else c for c in range(256))
_ASCII_CLASSES = bytes(_classify(chr(c)) if c < 0x80 else 0 for c in range(256))
# Code point -> classes, `_UNCLASSIFIED` until a batch holds that character.
_TABLE = np.full(0x110000, _UNCLASSIFIED, dtype=np.uint8)
_TABLE[:0x80] = np.frombuffer(_ASCII_CLASSES[:0x80], dtype=np.uint8)


@dataclass
class Batch:
    """A batch of texts as bytes: text i starts at byte starts[i]; a "\\n" separates two texts."""

    data: np.ndarray  # uint8: the joined UTF-8 bytes, then `PADDING` zero bytes
    classes: np.ndarray  # uint8 per byte of the joined texts (the padding has none)
    starts: np.ndarray  # int64 per text
    non_ascii: np.ndarray  # the index of every byte >= 0x80, ascending

    def mask(self, bit: int) -> np.ndarray:
        return (self.classes & bit).astype(bool)


def encode(texts: Sequence[str], lower_ascii: bool = False) -> Batch:
    """The bytes of `texts` and their classes (lone surrogates are encoded as they are,
    as `surrogatepass` does: they are no letter and no space). `lower_ascii`: with
    A-Z lowercased, which is `str.lower` for ASCII text (one pass over the batch's bytes)."""
    encoded = [text.encode("utf-8", "surrogatepass") for text in texts]
    joined = bytearray(b"\n").join(encoded)  # a bytearray: what translate makes of it is writable
    if lower_ascii:
        joined = joined.translate(_ASCII_LOWER)
    classes = np.frombuffer(joined.translate(_ASCII_CLASSES), dtype=np.uint8)
    ascii = joined.isascii()
    joined += bytes(PADDING)
    data = np.frombuffer(joined, dtype=np.uint8)
    starts = np.cumsum([0] + [len(e) + 1 for e in encoded[:-1]], dtype=np.int64)
    non_ascii = np.zeros(0, dtype=np.int64) if ascii else _classify_non_ascii(data, classes)
    return Batch(data, classes, starts[:len(texts)], non_ascii)


def _classify_non_ascii(data: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Gives every byte of a non-ASCII character the classes of its code point, in place;
    returns the index of every such byte."""
    at = np.flatnonzero(data[:len(classes)] >= 0x80)
    first = data[at] >= 0xC0  # a leading byte; the others (0x80-0xBF) continue a character
    lead = at[first]
    b0 = data[lead].astype(np.uint32)
    b1, b2, b3 = ((data[lead + k] & 0x3F).astype(np.uint32) for k in (1, 2, 3))  # the padding keeps these inside
    code_points = np.where(b0 >= 0xF0, (b0 & 0x07) << 18 | b1 << 12 | b2 << 6 | b3,
                           np.where(b0 >= 0xE0, (b0 & 0x0F) << 12 | b1 << 6 | b2, (b0 & 0x1F) << 6 | b1))
    of_char = code_point_classes(code_points)
    classes[at] = of_char[np.cumsum(first) - 1] | np.where(first, 0, CONTINUATION).astype(np.uint8)
    return at


def code_point_classes(code_points: np.ndarray) -> np.ndarray:
    """The classes of each code point (classifying, once per process, those never seen)."""
    found = _TABLE[code_points]
    new = found == _UNCLASSIFIED
    if new.any():
        new_points = np.unique(code_points[new])
        _TABLE[new_points] = [_classify(chr(c)) for c in new_points.tolist()]
        found = _TABLE[code_points]
    return found


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends): the first and the last index of every run of True in `mask`."""
    framed = np.zeros(len(mask) + 2, dtype=bool)
    framed[1:-1] = mask
    edges = np.flatnonzero(framed[1:] != framed[:-1])  # where a run starts, and one past where it ends
    return np.ascontiguousarray(edges[0::2]), edges[1::2] - 1  # contiguous: faster to index with


def per_text(run_starts: np.ndarray, text_starts: np.ndarray) -> np.ndarray:
    """offsets: the runs of text i (found by `runs` on a whole batch) are offsets[i]:offsets[i + 1]."""
    return np.r_[np.searchsorted(run_starts, text_starts), len(run_starts)].astype(np.int64)


def sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The sum of values[offsets[i]:offsets[i + 1]] for each i (0 for an empty range)."""
    total = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=total[1:])
    return total[offsets[1:]] - total[offsets[:-1]]
