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
polynomial over the words' 64-bit hashes), 8 bytes a gram. It
pickles as that one buffer, so `datasets` fingerprints `fn_kwargs={"index": index}`
at memory speed (about 80 ms for 10 million grams) once per `map` call, and worker
processes receive it quickly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice

import numpy as np

from lm_tasks.data.words import batch_gram_hashes, batch_word_hashes, gram_hashes

DEFAULT_NGRAM = 13
DEFAULT_MIN_WORDS = 8
_BATCH = 1000  # texts hashed at once


class NgramIndex:
    """The hashed word n-grams of a set of evaluation texts (see the module notes on short texts)."""

    def __init__(self, texts: Iterable[str], n: int = DEFAULT_NGRAM, min_words: int = DEFAULT_MIN_WORDS) -> None:
        if not 1 <= min_words <= n:
            raise ValueError(f"need 1 <= min_words <= n, got min_words={min_words}, n={n}")
        parts, short_lengths = [], set()
        texts = iter(texts)
        while batch := list(islice(texts, _BATCH)):
            words, offsets = batch_word_hashes(batch)
            parts.append(batch_gram_hashes(words, offsets, n)[0])
            lengths = np.diff(offsets)
            for i in np.flatnonzero((lengths >= min_words) & (lengths < n)):  # the whole text as one gram
                parts.append(gram_hashes(words[offsets[i]:offsets[i + 1]], lengths[i]))
                short_lengths.add(int(lengths[i]))
        self.n = n
        self.min_words = min_words
        self.short_lengths = tuple(sorted(short_lengths))  # gram lengths below n that occur
        grams = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        del parts
        grams.sort()  # in place, then the distinct values: half the peak memory of np.unique
        self.grams = grams[np.r_[True, grams[1:] != grams[:-1]]] if len(grams) else grams
        self._flags: np.ndarray | None = None  # see _filter

    def __len__(self) -> int:
        return len(self.grams)

    def __reduce__(self):
        # Pickle (and so fingerprint) only the sorted array and the settings: compact and content-based.
        return _restore_index, (self.grams, self.n, self.min_words, self.short_lengths)

    def contains_any(self, text: str | None) -> bool:
        """Whether `text` contains any indexed gram: an n-gram, or a whole short evaluation text."""
        return bool(self.contaminated([text])[0])

    def contaminated(self, texts: Sequence[str | None]) -> np.ndarray:
        """`contains_any` of every text, for a batch at once (one boolean per text)."""
        found = np.zeros(len(texts), dtype=bool)
        if not len(self.grams):
            return found
        flags = self._filter()
        shift = np.uint64(64 - (len(flags).bit_length() - 1))
        words, offsets = batch_word_hashes(texts)
        for length in (self.n, *self.short_lengths):
            grams, text = batch_gram_hashes(words, offsets, length)
            maybe = np.flatnonzero(flags[grams >> shift])
            grams, text = grams[maybe], text[maybe]
            at = np.minimum(np.searchsorted(self.grams, grams), len(self.grams) - 1)
            found[text[self.grams[at] == grams]] = True
        return found

    def _filter(self) -> np.ndarray:
        """One flag per value of a gram hash's top bits (2^16 to 2^25 flags, about 16 per indexed
        gram), set where an indexed gram has them: a lookup in a few MB rules out nearly every
        training gram before the binary search (a random access into the whole index, which is
        what costs). Made on first use in each process; never pickled."""
        if self._flags is None:
            bits = int(np.clip(np.ceil(np.log2(16 * len(self.grams) + 1)), 16, 25))
            self._flags = np.zeros(1 << bits, dtype=bool)
            self._flags[self.grams >> np.uint64(64 - bits)] = True
        return self._flags


def _restore_index(grams: np.ndarray, n: int, min_words: int, short_lengths: tuple[int, ...]) -> NgramIndex:
    index = NgramIndex.__new__(NgramIndex)
    index.grams, index.n, index.min_words, index.short_lengths = grams, n, min_words, short_lengths
    index._flags = None
    return index
