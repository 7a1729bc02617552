"""Heuristic document quality rules after Gopher (Rae et al. 2021) and C4 (Raffel et al. 2020).

Every rule reads one *signal* of a document (a count or a fraction) and fails the
document when the signal is below a minimum or above a maximum. `first_failed_rule`
checks the rules in `RULES` order, which is cheapest first: most rejected documents
are rejected by a word count or a character count, and the n-gram signals (the
costly ones) are computed only for documents that passed everything before them.

Definitions (all on `str.split()` words and `str.splitlines()` lines):

- `words`: the number of whitespace-separated words.
- `mean_word_length`: characters per word, punctuation attached to a word included.
- `symbol_word_ratio`: (number of "#" + number of "..." + number of "…") / words.
- `alpha_word_fraction`: words holding at least one letter (any script; a letter is
  what the regex class `[^\\W\\d_]` matches) / words.
- `punctuation_line_fraction`: non-empty lines whose last non-space character is one
  of `TERMINAL_PUNCTUATION` / non-empty lines.
- `duplicate_line_fraction`: non-empty lines equal (after stripping) to an earlier
  line / non-empty lines.
- `top_{2,3,4}gram_fraction`: characters of the words covered by the most frequent
  word n-gram / characters of all words; 0 unless that n-gram occurs at least twice.
  Ties go to the n-gram seen first. Overlapping occurrences ("a a a") are counted once.
- `duplicate_5gram_fraction`: characters of the words covered by any word 5-gram that
  occurs at least twice / characters of all words.

Characters are counted in words only (whitespace never counts) and n-grams compare
words exactly as written (case and punctuation included), which keeps the signals
cheap. A text without words has every signal 0.

The functions are pure and top-level so that `datasets` can fingerprint them.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Mapping

RULES = (
    "min_words",
    "max_words",
    "min_mean_word_length",
    "max_mean_word_length",
    "max_symbol_word_ratio",
    "min_alpha_word_fraction",
    "min_punctuation_line_fraction",
    "max_duplicate_line_fraction",
    "max_top_2gram_fraction",
    "max_top_3gram_fraction",
    "max_top_4gram_fraction",
    "max_duplicate_5gram_fraction",
)

# Rule name -> (the signal it reads, True when the threshold is a minimum).
_RULE_SIGNAL: dict[str, tuple[str, bool]] = {
    "min_words": ("words", True),
    "max_words": ("words", False),
    "min_mean_word_length": ("mean_word_length", True),
    "max_mean_word_length": ("mean_word_length", False),
    "max_symbol_word_ratio": ("symbol_word_ratio", False),
    "min_alpha_word_fraction": ("alpha_word_fraction", True),
    "min_punctuation_line_fraction": ("punctuation_line_fraction", True),
    "max_duplicate_line_fraction": ("duplicate_line_fraction", False),
    "max_top_2gram_fraction": ("top_2gram_fraction", False),
    "max_top_3gram_fraction": ("top_3gram_fraction", False),
    "max_top_4gram_fraction": ("top_4gram_fraction", False),
    "max_duplicate_5gram_fraction": ("duplicate_5gram_fraction", False),
}

# The published Gopher values. Gopher has no line-punctuation rule (C4 applies one to
# single lines, dropping lines rather than documents), so it is off here; FineWeb
# (Penedo et al. 2024) drops documents with at most 12% such lines, i.e. 0.12.
GOPHER_THRESHOLDS: dict[str, float | None] = {
    "min_words": 50,
    "max_words": 100_000,
    "min_mean_word_length": 3,
    "max_mean_word_length": 10,
    "max_symbol_word_ratio": 0.1,
    "min_alpha_word_fraction": 0.8,
    "min_punctuation_line_fraction": None,
    "max_duplicate_line_fraction": 0.3,
    "max_top_2gram_fraction": 0.20,
    "max_top_3gram_fraction": 0.18,
    "max_top_4gram_fraction": 0.16,
    "max_duplicate_5gram_fraction": 0.15,
}

# Sentence ends (ASCII and CJK), closing quotes and brackets, and the colon and
# semicolon that end a line introducing a list or a clause.
TERMINAL_PUNCTUATION = (".", "!", "?", "…", ":", ";", '"', "'", "”", "’", "»", ")", "。", "！", "？")

# A whole word without a single letter: only digits, underscores and symbols. The
# look-arounds pin it to whitespace (or the text's ends), i.e. to `str.split` words.
_WORD_WITHOUT_LETTER = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")
# For ASCII text, the same count from bytes: every whitespace character of `str.split`
# becomes a space, and bytes that are neither letters nor whitespace are deleted.
_ASCII_SPACES = bytes(0x20 if chr(c).isspace() and c < 0x80 else c for c in range(256))
_ASCII_NEITHER = bytes(c for c in range(0x80) if not (chr(c).isalpha() or chr(c).isspace()))


class _Document:
    """One text with its words, word lengths and lines, each computed on first use."""

    def __init__(self, text: str):
        self.text = text
        self.words = text.split()
        self._word_lengths: list[int] | None = None
        self._lines: list[str] | None = None
        self._signals: dict[str, float] = {}

    @property
    def word_lengths(self) -> list[int]:
        if self._word_lengths is None:
            self._word_lengths = list(map(len, self.words))
        return self._word_lengths

    @property
    def lines(self) -> list[str]:
        """Non-empty lines, stripped."""
        if self._lines is None:
            self._lines = [line for line in map(str.strip, self.text.splitlines()) if line]
        return self._lines

    def signal(self, name: str) -> float:
        value = self._signals.get(name)
        if value is None:
            value = self._signals[name] = _SIGNALS[name](self)
        return value


def _words(doc: _Document) -> float:
    return float(len(doc.words))


def _mean_word_length(doc: _Document) -> float:
    return sum(doc.word_lengths) / len(doc.words) if doc.words else 0.0


def _symbol_word_ratio(doc: _Document) -> float:
    if not doc.words:
        return 0.0
    text = doc.text
    return (text.count("#") + text.count("...") + text.count("…")) / len(doc.words)


def _alpha_word_fraction(doc: _Document) -> float:
    if not doc.words:
        return 0.0
    if doc.text.isascii():  # the words holding a letter: what split() still finds once all but letters and spaces are gone
        letters_and_spaces = doc.text.encode("ascii").translate(_ASCII_SPACES, _ASCII_NEITHER)
        without_letter = len(doc.words) - len(letters_and_spaces.split())
    else:
        without_letter = len(_WORD_WITHOUT_LETTER.findall(doc.text))
    return 1.0 - without_letter / len(doc.words)


def _punctuation_line_fraction(doc: _Document) -> float:
    lines = doc.lines
    if not lines:
        return 0.0
    return sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / len(lines)


def _duplicate_line_fraction(doc: _Document) -> float:
    lines = doc.lines
    if not lines:
        return 0.0
    return (len(lines) - len(set(lines))) / len(lines)


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n))))


def _covered_characters(word_lengths: list[int], starts: list[int], n: int) -> int:
    """Characters of the words inside n-grams starting at the (ascending) `starts`,
    each word counted once however many n-grams overlap it."""
    covered, covered_until = 0, 0
    for start in starts:
        begin, end = max(start, covered_until), start + n
        if begin < end:
            covered += sum(word_lengths[begin:end])
        covered_until = end
    return covered


def _top_ngram_fraction(doc: _Document, n: int) -> float:
    if len(doc.words) < n:
        return 0.0
    grams = _ngrams(doc.words, n)
    # most_common(1) keeps the first-seen n-gram among equally frequent ones.
    ((top, count),) = Counter(grams).most_common(1)
    if count < 2:
        return 0.0
    starts = [i for i, gram in enumerate(grams) if gram == top]
    return _covered_characters(doc.word_lengths, starts, n) / sum(doc.word_lengths)


def _duplicate_ngram_fraction(doc: _Document, n: int) -> float:
    if len(doc.words) < n:
        return 0.0
    grams = _ngrams(doc.words, n)
    if len(set(grams)) == len(grams):  # every n-gram is unique: the common case, no counting
        return 0.0
    counts = Counter(grams)
    starts = [i for i, gram in enumerate(grams) if counts[gram] > 1]
    return _covered_characters(doc.word_lengths, starts, n) / sum(doc.word_lengths)


_SIGNALS: dict[str, Callable[[_Document], float]] = {
    "words": _words,
    "mean_word_length": _mean_word_length,
    "symbol_word_ratio": _symbol_word_ratio,
    "alpha_word_fraction": _alpha_word_fraction,
    "punctuation_line_fraction": _punctuation_line_fraction,
    "duplicate_line_fraction": _duplicate_line_fraction,
    "top_2gram_fraction": lambda doc: _top_ngram_fraction(doc, 2),
    "top_3gram_fraction": lambda doc: _top_ngram_fraction(doc, 3),
    "top_4gram_fraction": lambda doc: _top_ngram_fraction(doc, 4),
    "duplicate_5gram_fraction": lambda doc: _duplicate_ngram_fraction(doc, 5),
}


def quality_signals(text: str) -> dict[str, float]:
    """Every signal of `text` (see the module docstring for the definitions)."""
    doc = _Document(text)
    return {name: doc.signal(name) for name in _SIGNALS}


def _check_rule_names(thresholds: Mapping[str, float | None]) -> None:
    unknown = [name for name in thresholds if name not in _RULE_SIGNAL]
    if unknown:
        raise ValueError(f"Unknown quality rule(s) {unknown}; valid rules: {', '.join(RULES)}")


def first_failed_rule(text: str, thresholds: Mapping[str, float | None]) -> str | None:
    """The first rule in `RULES` order that `text` fails, or None when it passes all.

    A rule missing from `thresholds` or set to None is not checked. A minimum fails
    when the signal is below it, a maximum when the signal is above it.
    """
    _check_rule_names(thresholds)
    return _first_failed_rule(text, thresholds)


def _first_failed_rule(text: str, thresholds: Mapping[str, float | None]) -> str | None:
    doc = _Document(text)
    for rule in RULES:
        limit = thresholds.get(rule)
        if limit is None:
            continue
        signal, is_minimum = _RULE_SIGNAL[rule]
        value = doc.signal(signal)
        if (value < limit) if is_minimum else (value > limit):
            return rule
    return None
