"""`detect_language` (lm_tasks/data/language.py, the reference) for a whole batch of
texts at once: `detect_languages(texts) == [detect_language(t) for t in texts]`, exactly.

The letter runs of every text come from the byte classes of the batch (lm_tasks/data/
chars.py). A function word has at most 8 bytes in UTF-8, so a run of at most 8 bytes
read as one little-endian integer is an exact key (letters hold no zero byte, so keys of
different lengths differ): one lookup per run finds the function words, no string is made.

The scores must be the same floats as the reference's, whose comparisons (and ties)
depend on the order of the additions: the reference adds count / k (k: the languages
listing a word) for each distinct tuple of languages, in the order the tuples first
occur in the text. So do we: every text's tuples are sorted by first occurrence and
their terms added left to right by one cumulative sum for the whole batch (a tuple
absent from a text adds 0.0, which changes no sum). Hits are integer counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lm_tasks.data import chars
from lm_tasks.data.language import (
    _LANGUAGES_OF,
    LANGUAGES,
    MARGIN,
    MAX_CHARS,
    MIN_FRACTION,
    MIN_HITS,
    MIN_WORDS,
    UNKNOWN,
)
from lm_tasks.data.words import LOW_BYTES, eight_byte_reads

# Every distinct tuple of languages a function word is listed for; membership as 0/1.
_TUPLES = sorted(set(_LANGUAGES_OF.values()))
_MEMBERS = np.array([[language in languages for language in LANGUAGES] for languages in _TUPLES], dtype=np.int64)
_SIZES = np.array([len(languages) for languages in _TUPLES], dtype=np.float64)
_LOW_64 = (1 << 64) - 1


def _key(word: bytes) -> int:
    assert 0 < len(word) <= 8, word  # the key holds 8 bytes
    return int.from_bytes(word, "little")


_WORDS = list(_LANGUAGES_OF)
# The last key is no word's (0xFF is no UTF-8 byte): where empty slots point.
_KEYS = np.array([_key(w.encode("utf-8")) for w in _WORDS] + [_LOW_64], dtype=np.uint64)
_TUPLE_OF_KEY = np.array([_TUPLES.index(_LANGUAGES_OF[w]) for w in _WORDS] + [0], dtype=np.int64)
# The low `length` bytes of an 8-byte read; none for a run longer than 8 bytes (no word's key is 0).
_LOW_BYTES = np.r_[LOW_BYTES, np.uint64(0)]


def _perfect_hash(keys: np.ndarray) -> tuple[np.uint64, np.ndarray]:
    """A multiplier that sends every key to its own slot (key · multiplier) >> 48, and the
    table slot -> index of its key (len(keys), the no-word key, in empty slots)."""
    rng = np.random.default_rng(0)
    for _ in range(1000):  # about one try in ten succeeds
        multiplier = np.uint64(rng.integers(1 << 62) * 2 + 1)
        slots = (keys * multiplier) >> np.uint64(48)
        if len(np.unique(slots)) == len(keys):
            table = np.full(1 << 16, len(keys), dtype=np.int16)
            table[slots] = np.arange(len(keys))
            return multiplier, table
    raise AssertionError("no perfect hash for the function words")


_MULTIPLIER, _SLOTS = _perfect_hash(_KEYS[:-1])


def detect_languages(texts: Sequence[str]) -> list[str]:
    """`detect_language` of each text."""
    if not len(texts):
        return []
    # str.lower for the texts with a non-ASCII character; the others are lowercased as bytes.
    batch = chars.encode([t[:MAX_CHARS] if t.isascii() else t[:MAX_CHARS].lower() for t in texts], lower_ascii=True)
    starts, ends = chars.runs(batch.mask(chars.LETTER))
    offsets = chars.per_text(starts, batch.starts)
    words = np.diff(offsets)

    # One unaligned 8-byte read at the start of every run, cut to the run's length.
    keys = eight_byte_reads(batch.data)[starts] & _LOW_BYTES[np.minimum(ends - starts + 1, 9, dtype=np.int64)]
    word = _SLOTS[(keys * _MULTIPLIER) >> np.uint64(48)]
    hit = np.flatnonzero(_KEYS[word] == keys)
    tuples = _TUPLE_OF_KEY[word[hit]]
    text = np.repeat(np.arange(len(texts)), words)[hit]

    # (text, tuple) -> how often, and where first; then each text's tuples in first-seen order.
    pair = text * len(_TUPLES) + tuples
    counts = np.bincount(pair, minlength=len(texts) * len(_TUPLES)).reshape(len(texts), len(_TUPLES))
    first = np.full(len(texts) * len(_TUPLES), len(hit), dtype=np.int64)
    np.minimum.at(first, pair, np.arange(len(hit)))
    present = int((counts > 0).sum(axis=1).max())  # the tuples ranked after these are absent everywhere
    order = np.argsort(first.reshape(len(texts), len(_TUPLES)), axis=1, kind="stable")[:, :present]
    terms = np.take_along_axis(counts, order, axis=1) / _SIZES[order]  # count / k, tuple by tuple in order
    # cumsum adds strictly left to right (a reduction might not): the last column is the reference's sum.
    scores = np.cumsum(terms[:, :, None] * _MEMBERS[order], axis=1)[:, -1] if present else np.zeros(
        (len(texts), len(LANGUAGES)))
    hits = counts @ _MEMBERS
    rows = np.arange(len(texts))

    # sorted(..., reverse=True) keeps ties in LANGUAGES order: a stable sort of the negated scores.
    best, runner_up = np.argsort(-scores, axis=1, kind="stable")[:, :2].T
    top, second = scores[rows, best], scores[rows, runner_up]
    unknown = ((words < MIN_WORDS) | (hits[rows, best] < MIN_HITS) | (top < MIN_FRACTION * words)
               | (top < MARGIN * second))
    return np.where(unknown, UNKNOWN, np.array(LANGUAGES)[best]).tolist()
