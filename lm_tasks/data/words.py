"""Normalised words and hashed word n-grams, shared by near-duplicate removal and
decontamination, computed for a whole batch of texts at once.

Words are lowercased with punctuation removed ("Don't stop." -> ["dont", "stop"]).

A word's hash is a polynomial over its UTF-8 bytes, (b_0 + 1)·P^(k-1) + ... + (b_(k-1) + 1)
modulo 2^64, passed through the splitmix64 finaliser so that every bit depends on every
byte. The polynomial of every word of a batch comes from one prefix sum over the batch's
bytes (P is odd, so it has an inverse modulo 2^64, and the hash of bytes s..e is
P^e · (S[e] - S[s-1]) with S[i] = sum over k <= i of (b_k + 1)·P^-k): a handful of numpy
passes instead of a Python call per word. An n-gram's hash is a polynomial over its
words' hashes, computed for every n-gram of the batch at once; n-grams that would run
across two texts are left out.

`word_hash` is the same function for one word in plain Python: the definition the
vectorised code is tested against.

`written_word_keys` keys words as written (the words of the quality rules, lm_tasks/
data/quality_batch.py) from two 8-byte reads each, several times cheaper than the
polynomial; the quality rules compare the words of equal keys byte by byte anyway.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from lm_tasks.data import chars

_PUNCTUATION = re.compile(r"[^\w\s]")
_LOW_64 = (1 << 64) - 1
# Odd, so multiplying by it permutes 64-bit values: no two word sequences collide systematically.
_MULTIPLIER = np.uint64(0x100000001B3)
_BYTE_BASE = 0x9E3779B97F4A7C15  # odd: invertible modulo 2^64
_BYTE_BASE_INVERSE = pow(_BYTE_BASE, -1, 1 << 64)
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))
# The low n bytes of a little-endian 8-byte read, for n = 0..8.
LOW_BYTES = np.array([(1 << 8 * n) - 1 for n in range(9)], dtype=np.uint64)


def normalized_words(text: str | None) -> list[str]:
    """Lowercased words with punctuation removed ("Don't stop." -> ["dont", "stop"]): the
    definition `batch_word_hashes` computes for a batch."""
    return _PUNCTUATION.sub("", (text or "").lower()).split()


def word_hash(word: str) -> int:
    """The 64-bit hash of one normalised word (the reference for `batch_word_hashes`)."""
    h = 0
    for byte in word.encode("utf-8"):
        h = (h * _BYTE_BASE + byte + 1) & _LOW_64
    h ^= h >> 30
    h = (h * int(_MIX[0])) & _LOW_64
    h ^= h >> 27
    h = (h * int(_MIX[1])) & _LOW_64
    return h ^ (h >> 31)


def batch_word_hashes(texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets): the hashes of every normalised word of every text, in order;
    text i's words are hashes[offsets[i]:offsets[i + 1]].

    `normalized_words` for a whole batch in numpy: the texts lowercased (`str.lower` for
    non-ASCII text, one bytes pass for ASCII), their bytes classed (lm_tasks/data/chars.py),
    the bytes of characters that are neither `\\w` nor whitespace deleted, and the runs
    between whitespace taken as the words."""
    lowered = [text.lower() if text and not text.isascii() else text or "" for text in texts]
    batch = chars.encode(lowered, lower_ascii=True)
    keep = (batch.classes & (chars.WORD | chars.SPACE)).astype(bool)
    data = batch.data[:len(keep)][keep]
    if not len(data):
        return np.zeros(0, dtype=np.uint64), np.zeros(len(lowered) + 1, dtype=np.int64)
    space = (batch.classes[keep] & chars.SPACE).astype(bool)
    letter = ~space
    starts = np.flatnonzero(letter & np.r_[True, space[:-1]])
    ends = np.flatnonzero(letter & np.r_[space[1:], True])  # the last byte of each word
    kept_before = np.r_[0, np.cumsum(keep)]
    return run_hashes(data, starts, ends), chars.per_text(starts, kept_before[batch.starts])


def run_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The hash of each run data[starts[i]:ends[i] + 1] (ascending, not overlapping) of an
    array of bytes (`word_hash` of those bytes) or of other unsigned integers (lm_tasks/
    data/quality_batch.py keys a line by its words' keys).

    The mixed byte polynomial (wrapping uint64 arithmetic), for the runs of about `_CHUNK`
    bytes at a time: the prefix sums and the tables of powers stay small whatever the
    size of the batch."""
    out = np.empty(len(starts), dtype=np.uint64)
    first_words = np.unique(np.searchsorted(starts, np.arange(0, len(data), _CHUNK)))
    for a, b in zip(first_words, np.r_[first_words[1:], len(starts)]):
        if a == b:
            continue
        base = starts[a]
        region = data[base:ends[b - 1] + 1]
        s, e = starts[a:b] - base, ends[a:b] - base
        powers, inverse_powers = _powers(len(region))
        prefix = np.zeros(len(region) + 1, dtype=np.uint64)
        np.cumsum((region.astype(np.uint64) + np.uint64(1)) * inverse_powers, out=prefix[1:])
        out[a:b] = powers[e] * (prefix[e + 1] - prefix[s])
    return mix64(out)


def eight_byte_reads(data: np.ndarray) -> np.ndarray:
    """reads[i]: bytes data[i:i + 8] as a little-endian integer, for every i up to the last 8
    bytes (a strided view: nothing is copied). Pad `data` with 8 bytes to read at its end."""
    return np.ndarray(len(data) - 7, dtype="<u8", buffer=data, strides=(1,))


def written_word_keys(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 64-bit key of each word data[starts[i]:ends[i] + 1] as written (`data`: uint8, padded
    with 8 bytes): its first 8 bytes, and for a longer word also its last 8 bytes and its
    length, mixed. Equal words always get equal keys. Different words share one by chance
    (as 64-bit hashes do) or, beyond 16 bytes, by agreeing at both ends and in length;
    users of the keys who must tell such words apart compare their bytes."""
    length = ends - starts + 1
    reads = eight_byte_reads(data)
    keys = reads[starts] & LOW_BYTES[np.minimum(length, 8)]
    long = np.flatnonzero(length > 8)
    keys[long] ^= mix64(reads[ends[long] - 7] + length[long].astype(np.uint64))
    return mix64(keys)


def mix64(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, in place: a bijection of uint64 whose every output bit depends on every input bit."""
    h ^= h >> np.uint64(30)
    h *= _MIX[0]
    h ^= h >> np.uint64(27)
    h *= _MIX[1]
    h ^= h >> np.uint64(31)
    return h


_CHUNK = 1 << 19
_POWER_CACHE: list[np.ndarray] = []


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i modulo 2^64 for i < n: slices of a table of 2 * `_CHUNK` (16 MB, made
    once per process); a longer run (one word of more than `_CHUNK` bytes) gets its own."""
    def table(size: int) -> list[np.ndarray]:
        powers = [np.full(size, base, dtype=np.uint64) for base in (_BYTE_BASE, _BYTE_BASE_INVERSE)]
        for p in powers:
            p[0] = 1
            np.multiply.accumulate(p, out=p)
        return powers

    if n > 2 * _CHUNK:
        return tuple(table(n))
    if not _POWER_CACHE:
        _POWER_CACHE[:] = table(2 * _CHUNK)
    return _POWER_CACHE[0][:n], _POWER_CACHE[1][:n]


def word_hashes(words: list[str]) -> np.ndarray:
    """The hashes of words that are already normalised."""
    return batch_word_hashes([" ".join(words)])[0]


def gram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit hash of every run of n consecutive words: a polynomial over the words'
    hashes (wrapping arithmetic), computed for all runs at once."""
    count = len(hashes) - n + 1
    grams = np.zeros(max(count, 0), dtype=np.uint64)
    for j in range(n if count > 0 else 0):
        grams *= _MULTIPLIER  # in place: no new array per word of the n-gram
        grams += hashes[j:j + count]
    return grams


def batch_gram_hashes(hashes: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(grams, text): the hash of every run of n words inside one text of a batch (from
    `batch_word_hashes`), in order, and the index of the text each belongs to."""
    first, text = gram_starts(offsets, n)
    return gram_hashes(hashes, n)[first], text


def gram_starts(offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(first, text): the index of the first word of every run of n words inside one text
    (text i's words are offsets[i]:offsets[i + 1]), in order, and the text each belongs to."""
    counts = np.maximum(np.diff(offsets) - n + 1, 0)
    inside = np.ones(max(int(offsets[-1]) - n + 1, 0), dtype=bool)
    for k in range(1, n):  # a text's last n - 1 words start no n-gram inside it
        last = offsets[1:] - k
        inside[last[(last >= offsets[:-1]) & (last < len(inside))]] = False
    return np.flatnonzero(inside), np.repeat(np.arange(len(counts)), counts)
