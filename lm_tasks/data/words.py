"""Normalised words and hashed word n-grams, shared by near-duplicate removal and
decontamination.

Words are lowercased with punctuation removed ("Don't stop." -> ["dont", "stop"]). A
word's hash is its 64-bit xxhash; an n-gram's hash is a polynomial over its words'
hashes, computed for every n-gram of a text at once with numpy. Hashing each word
once (with a cache: a few thousand frequent words make up most of any text) is much
cheaper than hashing every n-gram's string.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import xxhash

_PUNCTUATION = re.compile(r"[^\w\s]")
_ASCII_PUNCTUATION = bytes(c for c in range(0x80) if _PUNCTUATION.match(chr(c)))
# Odd, so multiplying by it permutes 64-bit values: no two word sequences collide systematically.
_MULTIPLIER = np.uint64(0x100000001B3)


def normalized_words(text: str | None) -> list[str]:
    """Lowercased words with punctuation removed ("Don't stop." -> ["dont", "stop"])."""
    text = (text or "").lower()
    if text.isascii():  # the same, several times faster: bytes.translate deletes what the regex would
        return text.encode("ascii").translate(None, _ASCII_PUNCTUATION).decode("ascii").split()
    return _PUNCTUATION.sub("", text).split()


# 65,536 words (about 13 MB per process) cover nearly every running word of a corpus.
@lru_cache(maxsize=1 << 16)
def word_hash(word: str) -> int:
    return xxhash.xxh64_intdigest(word.encode("utf-8"))


def word_hashes(words: list[str]) -> np.ndarray:
    return np.fromiter(map(word_hash, words), dtype=np.uint64, count=len(words))


def gram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit hash of every run of n consecutive words: a polynomial over the words'
    hashes (wrapping arithmetic), computed for all runs at once."""
    count = len(hashes) - n + 1
    grams = np.zeros(max(count, 0), dtype=np.uint64)
    for j in range(n if count > 0 else 0):
        grams = grams * _MULTIPLIER + hashes[j:j + count]
    return grams
