"""`first_failed_rule` (lm_tasks/data/quality.py, the reference) for a whole batch of texts
at once: `first_failed_rules(texts, t) == [first_failed_rule(text, t) for text in texts]`,
exactly.

Each configured rule's signal is computed for every text of the batch with numpy, from
the bytes of the batch and their classes (lm_tasks/data/chars.py): words are the runs
of non-space bytes, lines the words between two line breaks, and characters the bytes
that do not continue a character. A signal is the same float as the reference's: it is
computed from integer counts with the same single division (or subtraction), so
no summation order is involved.

Repeated lines and n-grams are found by keying them as written (each word by
`words.written_word_keys`, a line or an n-gram by a polynomial over its words' keys)
and grouping equal keys. Equal lines and n-grams always get equal keys, so nothing
repeated is missed; then every member of a group is compared byte by byte with the
group's first, so a collision cannot merge different lines or n-grams: a text where one
did gets that signal from quality.py instead (in practice never, short of a 64-bit
collision or two lines with the same words but different spaces between them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np

from lm_tasks.data import chars
from lm_tasks.data.quality import _RULE_SIGNAL, _SIGNALS, RULES, TERMINAL_PUNCTUATION, _check_rule_names, _Document
from lm_tasks.data.words import gram_hashes, gram_starts, run_hashes, written_word_keys

_TERMINAL = [p.encode("utf-8") for p in TERMINAL_PUNCTUATION]


def first_failed_rules(texts: Sequence[str], thresholds: Mapping[str, float | None]) -> list[str | None]:
    """`first_failed_rule(text, thresholds)` of each text."""
    _check_rule_names(thresholds)
    passed = len(RULES)
    failed = np.full(len(texts), passed)  # index of the first failed rule
    signals = _Signals(texts) if len(texts) else None
    for i, rule in enumerate(RULES):
        limit = thresholds.get(rule)
        if limit is None or signals is None:
            continue
        name, is_minimum = _RULE_SIGNAL[rule]
        open_ = failed == passed
        value = signals.get(name, open_)
        failed[open_ & ((value < limit) if is_minimum else (value > limit))] = i
    return [RULES[i] if i < passed else None for i in failed.tolist()]


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as Python divides two ints (both exact in float64), 0.0 where the denominator is 0."""
    out = np.zeros(len(numerator))
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


class _Signals:
    """The signals of a batch of texts, each computed on first use."""

    def __init__(self, texts: Sequence[str]):
        self.texts = texts
        self.batch = chars.encode(texts)
        self.starts, self.ends = chars.runs((self.batch.classes & chars.SPACE) == 0)  # words: first and last byte
        self.offsets = chars.per_text(self.starts, self.batch.starts)
        self.word_counts = np.diff(self.offsets)

    def get(self, name: str, wanted: np.ndarray) -> np.ndarray:
        """Signal `name` of every text (exact where `wanted`)."""
        value, collided = getattr(self, name)
        for i in np.flatnonzero(wanted & (False if collided is None else collided)).tolist():
            value[i] = _SIGNALS[name](_Document(self.texts[i]))
        return value

    # --- the signals: (value per text, texts where a key collision leaves it to quality.py)

    @cached_property
    def words(self):
        return self.word_counts.astype(np.float64), None

    @cached_property
    def mean_word_length(self):
        return _ratio(self.text_chars, self.word_counts), None

    @cached_property
    def symbol_word_ratio(self):
        symbols = np.array([t.count("#") + t.count("...") + (0 if t.isascii() else t.count("…")) for t in self.texts],
                           dtype=np.int64)
        return _ratio(symbols, self.word_counts), None

    @cached_property
    def alpha_word_fraction(self):
        has_letter = self._any(chars.LETTER, self.starts, self.ends)
        without = self.word_counts - chars.sums(has_letter, self.offsets)
        value = np.zeros(len(self.texts))
        np.subtract(1.0, _ratio(without, self.word_counts), out=value, where=self.word_counts > 0)
        return value, None

    @cached_property
    def punctuation_line_fraction(self):
        starts, ends, offsets = self.lines
        data = self.batch.data
        terminal = np.zeros(len(ends), dtype=bool)
        for mark in _TERMINAL:  # a line ends with `mark` when its last len(mark) bytes are mark's
            match = ends - starts + 1 >= len(mark)
            for k, byte in enumerate(reversed(mark)):
                match &= data[ends - k] == byte
            terminal |= match
        return _ratio(chars.sums(terminal, offsets), np.diff(offsets)), None

    @cached_property
    def duplicate_line_fraction(self):
        starts, ends, offsets = self.lines
        text = np.repeat(np.arange(len(self.texts)), np.diff(offsets))
        members, first = _repeats(_tagged(self.line_keys, text, len(self.texts)))
        equal = self._equal(starts[members], ends[members], starts[first], ends[first])
        collided = self._collided(text[members], equal)
        repeated = np.bincount(text[members[members != first]], minlength=len(self.texts))
        return _ratio(repeated, np.diff(offsets)), collided

    @cached_property
    def duplicate_5gram_fraction(self):
        first_word, text, members, first = self._repeated_grams(5)
        collided = self._collided(text[members], self._equal_grams(first_word[members], first_word[first], 5))
        return self._covered_fraction(first_word[members], 5), collided

    def _top_gram_fraction(self, n: int):
        first_word, text, members, first = self._repeated_grams(n)
        collided = self._collided(text[members], self._equal_grams(first_word[members], first_word[first], n))
        # The biggest group of each text, ties to the one seen first (as Counter.most_common).
        groups, sizes = np.unique(first, return_counts=True)
        top = groups[np.lexsort((groups, -sizes, text[groups]))]
        top = top[np.r_[True, text[top[1:]] != text[top[:-1]]]] if len(top) else top
        return self._covered_fraction(first_word[members[np.isin(first, top)]], n), collided

    @cached_property
    def top_2gram_fraction(self):
        return self._top_gram_fraction(2)

    @cached_property
    def top_3gram_fraction(self):
        return self._top_gram_fraction(3)

    @cached_property
    def top_4gram_fraction(self):
        return self._top_gram_fraction(4)

    # --- what the signals are made of

    @cached_property
    def continuing(self) -> np.ndarray:
        """The index of every byte that continues a character inside a word."""
        at = self.batch.non_ascii
        return at[(self.batch.classes[at] & (chars.CONTINUATION | chars.SPACE)) == chars.CONTINUATION]

    def characters(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Characters in bytes starts[i]..ends[i] of words: bytes less the continuing ones."""
        continuing = np.searchsorted(self.continuing, ends, side="right") - np.searchsorted(self.continuing, starts)
        return ends - starts + 1 - continuing

    @cached_property
    def text_chars(self) -> np.ndarray:
        """Characters in the words of each text."""
        continuing = np.diff(np.searchsorted(self.continuing, np.r_[self.batch.starts, len(self.batch.classes)]))
        return chars.sums(self.ends - self.starts + 1, self.offsets) - continuing

    @cached_property
    def lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, ends, offsets): the first and last byte of each line stripped of
        whitespace, without the empty ones; text i's are offsets[i]:offsets[i + 1]. A
        stripped line runs from the first to the last word between two line breaks
        (every line break is whitespace; CR LF is two breaks with an empty line between)."""
        first, last = self.line_words
        return self.starts[first], self.ends[last], np.searchsorted(first, self.offsets).astype(np.int64)

    @cached_property
    def line_words(self) -> tuple[np.ndarray, np.ndarray]:
        """The first and the last word of each stripped line."""
        # A word starts a line when a break lies between it and the word before (or it is the first).
        new_line = np.ones(len(self.starts), dtype=bool)
        new_line[1:] = self._any(chars.BREAK, self.ends[:-1] + 1, self.starts[1:] - 1)
        first = np.flatnonzero(new_line)
        return first, np.append(first[1:], len(self.starts))[:len(first)] - 1

    @cached_property
    def word_keys(self) -> np.ndarray:
        return written_word_keys(self.batch.data, self.starts, self.ends)

    @cached_property
    def line_keys(self) -> np.ndarray:
        return run_hashes(self.word_keys, *self.line_words)

    def _repeated_grams(self, n: int):
        """(first word, text) of every n-gram, and (members, first) from `_repeats` for them."""
        first_word, text = gram_starts(self.offsets, n)
        grams = gram_hashes(self.word_keys, n)[first_word]
        return (first_word, text) + _repeats(_tagged(grams, text, len(self.texts)))

    def _covered_fraction(self, gram_first_words: np.ndarray, n: int) -> np.ndarray:
        """Characters of the words inside the n-grams starting at these words (each word
        counted once) / characters of all words, per text."""
        covered = np.unique(np.add.outer(gram_first_words, np.arange(n)))
        text = np.searchsorted(self.offsets, covered, side="right") - 1
        characters = np.bincount(text, self.characters(self.starts[covered], self.ends[covered]),
                                 minlength=len(self.texts))  # float64 sums of ints below 2^53: exact
        return _ratio(characters.astype(np.int64), self.text_chars)

    def _any(self, bit: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Whether some byte lo[i]..hi[i] has class `bit`, for each (non-empty) range."""
        classes = self.batch.classes
        found = ((classes[lo] | classes[hi]) & bit).astype(bool)  # the two ends settle most ranges
        rest = np.flatnonzero(~found & (hi - lo > 1))
        length = hi[rest] - lo[rest] - 1
        owner = np.repeat(rest, length)
        inner = np.arange(len(owner)) + np.repeat(lo[rest] + 1 - (np.cumsum(length) - length), length)
        found[owner[(classes[inner] & bit).astype(bool)]] = True
        return found

    def _equal(self, a_starts, a_ends, b_starts, b_ends) -> np.ndarray:
        """Whether bytes a_starts[i]..a_ends[i] equal bytes b_starts[i]..b_ends[i], for each i."""
        length = a_ends - a_starts + 1
        equal = length == b_ends - b_starts + 1
        pair = np.repeat(np.flatnonzero(equal), length[equal])
        within = np.arange(len(pair)) - np.repeat(np.cumsum(length[equal]) - length[equal], length[equal])
        data = self.batch.data
        equal[pair[data[a_starts[pair] + within] != data[b_starts[pair] + within]]] = False
        return equal

    def _equal_grams(self, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
        """Whether the n words from word a[i] equal the n words from word b[i], for each i."""
        a, b = (np.add.outer(x, np.arange(n)).ravel() for x in (a, b))
        return self._equal(self.starts[a], self.ends[a], self.starts[b], self.ends[b]).reshape(-1, n).all(axis=1)

    def _collided(self, text: np.ndarray, equal: np.ndarray) -> np.ndarray:
        collided = np.zeros(len(self.texts), dtype=bool)
        collided[text[~equal]] = True
        return collided


def _tagged(hashes: np.ndarray, text: np.ndarray, texts: int) -> np.ndarray:
    """Keys that group items by text, then by hash: the text's index in the high bits."""
    bits = max(texts - 1, 1).bit_length()
    keys = hashes >> np.uint64(bits)
    keys |= text.astype(np.uint64) << np.uint64(64 - bits)
    return keys


def _repeats(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(members, first): the items whose key occurs more than once, group by group and in
    order within a group, and for each the first item of its group."""
    ordered = np.sort(keys)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(repeated):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Most keys occur once: a bit table on their low bits (random hash bits) rules them out
    # before the binary search.
    low = np.uint64((1 << 20) - 1)
    maybe = np.zeros(1 << 20, dtype=bool)
    maybe[repeated & low] = True
    candidates = np.flatnonzero(maybe[keys & low])
    group = np.minimum(np.searchsorted(repeated, keys[candidates]), len(repeated) - 1)
    found = repeated[group] == keys[candidates]
    members, group = candidates[found], group[found]
    order = np.argsort(group, kind="stable")
    members, group = members[order], group[order]
    starts = np.r_[True, group[1:] != group[:-1]]
    return members, members[starts][np.cumsum(starts) - 1]
