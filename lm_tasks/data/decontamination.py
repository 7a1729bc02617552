"""Drop training documents that share a long word n-gram with an evaluation text (GPT-3 style).

A training document is contaminated when it contains any word n-gram (13 words by
default, as in the GPT-3 paper) of any evaluation text. Words are compared after
the same normalisation as near-duplicate removal: lowercased, punctuation stripped.

Short evaluation texts: a text with fewer than `n` words has no n-gram, yet short
sentences (a 10-word translation pair, a one-line question) are the eval items
most often copied verbatim. So a text of `min_words <= length < n` words is indexed
whole, as one gram of its own length, and a training document is flagged when it
contains that word sequence. Texts under `min_words` words (8 by default, the
lower bound GPT-3 used for its per-task n) are skipped: phrases that short appear in
unrelated text by chance.

The index is a sorted numpy array of 64-bit gram hashes (lm_tasks/data/words.py: a
polynomial over the words' xxhash64 values), 8 bytes a gram. It
pickles as that one buffer, so `datasets` fingerprints `fn_kwargs={"index": index}`
at memory speed (about 80 ms for 10 million grams) once per `map` call, and worker
processes receive it quickly.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lm_tasks.data.words import gram_hashes, normalized_words, word_hashes

DEFAULT_NGRAM = 13
DEFAULT_MIN_WORDS = 8


class NgramIndex:
    """The hashed word n-grams of a set of evaluation texts (see the module notes on short texts)."""

    def __init__(self, texts: Iterable[str], n: int = DEFAULT_NGRAM, min_words: int = DEFAULT_MIN_WORDS) -> None:
        if not 1 <= min_words <= n:
            raise ValueError(f"need 1 <= min_words <= n, got min_words={min_words}, n={n}")
        parts, short_lengths = [], set()
        for text in texts:
            words = word_hashes(normalized_words(text))
            if len(words) >= n:
                parts.append(gram_hashes(words, n))
            elif len(words) >= min_words:
                parts.append(gram_hashes(words, len(words)))  # the whole text as one gram
                short_lengths.add(len(words))
        self.n = n
        self.min_words = min_words
        self.short_lengths = tuple(sorted(short_lengths))  # gram lengths below n that occur
        self.grams = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.grams)

    def __reduce__(self):
        # Pickle (and so fingerprint) only the sorted array and the settings: compact and content-based.
        return _restore_index, (self.grams, self.n, self.min_words, self.short_lengths)

    def contains_any(self, text: str | None) -> bool:
        """Whether `text` contains any indexed gram: an n-gram, or a whole short evaluation text."""
        if not len(self.grams):
            return False
        words = word_hashes(normalized_words(text))
        for length in (self.n, *self.short_lengths):
            if len(words) < length:
                continue
            hashes = gram_hashes(words, length)
            found = np.minimum(np.searchsorted(self.grams, hashes), len(self.grams) - 1)
            if np.any(self.grams[found] == hashes):
                return True
        return False


def _restore_index(grams: np.ndarray, n: int, min_words: int, short_lengths: tuple[int, ...]) -> NgramIndex:
    index = NgramIndex.__new__(NgramIndex)
    index.grams, index.n, index.min_words, index.short_lengths = grams, n, min_words, short_lengths
    return index
