"""The batch quality rules and language check (and the cleaning pass using them) against
the per-document reference functions: exactly the same results on generated texts."""

from __future__ import annotations

import functools
import random
import re

import numpy as np
import pytest

from lm_tasks.data import chars, quality_batch
from lm_tasks.data.cleaning import clean_rows_batch, normalize_text
from lm_tasks.data.language import _FUNCTION_WORDS, MAX_CHARS, detect_language
from lm_tasks.data.language_batch import detect_languages
from lm_tasks.data.pii import scrub_pii
from lm_tasks.data.quality import _RULE_SIGNAL, GOPHER_THRESHOLDS, RULES, _Document, first_failed_rule, quality_signals
from lm_tasks.data.quality_batch import first_failed_rules

FUNCTION_WORDS = sorted({w for words in _FUNCTION_WORDS.values() for w in words.split()})
OTHER_WORDS = [
    "river", "Haus", "maison", "ciudad", "città", "rivier", "cidade", "älv", "å", "café", "naïve", "Straße",
    "ÉCOLE", "İstanbul", "ǅemal", "Σίσυφος", "ΟΔΟΣ", "привет", "日本語のテキスト", "中文", "مرحبا", "שלום", "👍🏽",
    "1,234", "3.14", "2021-03-04", "²", "½", "Ⅻ", "٣", "_under_score", "#", "##tag", "...", "....", "......",
    "…", "—", "--", "&", "@", "http://x.example/a?q=1", "don't", "l'homme", "qu'il", "O'Brien", "e-mail",
    "a" * 40, "b" * 17 + "é", "x\u200by", "\u0301", "ﬁne", "\ufeff", "Ǆ", "ß", "ΣΑΣ",
]
PUNCTUATION = [",", ".", "!", "?", ":", ";", '"', "'", "”", "’", "»", ")", "。", "！", "？", "…", "...", "#"]
SEPARATORS = [" "] * 30 + ["  ", "\t", "\n", "\n", "\n\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e",
                           "\x1f", "\x85", "\xa0", "\u2028", "\u2029", "\u3000", " \n ", "\n\t"]


def generated_texts(count: int, seed: int = 0) -> list[str]:
    """Texts of random words (function words of every language, other words in several
    scripts, numbers, symbols), punctuation and whitespace, with repeated lines and n-grams."""
    rng = random.Random(seed)

    def word() -> str:
        w = rng.choice(FUNCTION_WORDS) if rng.random() < 0.5 else rng.choice(OTHER_WORDS)
        w = rng.choice([w, w, w, w.capitalize(), w.upper()])
        if rng.random() < 0.15:
            w += rng.choice(PUNCTUATION)
        if rng.random() < 0.03:
            w = rng.choice(['"', "“", "(", "«", "¿"]) + w
        return w

    def words(n: int) -> list[str]:
        return [word() for _ in range(n)]

    texts = []
    for _ in range(count):
        n = rng.choice([0, 1, 2, 3, 4, 5, 8, 12, 20, 40, 80, 200])
        parts = words(n)
        if parts and rng.random() < 0.3:  # a repeated phrase (n-grams) or line
            phrase = words(rng.randint(1, 7))
            for _ in range(rng.randint(2, 6)):
                parts[rng.randrange(len(parts) + 1):0] = phrase + (["\n"] if rng.random() < 0.5 else [])
        if parts and rng.random() < 0.1:
            parts = parts * rng.randint(2, 4)
        text = ""
        for p in parts:
            text += p if p == "\n" else p + rng.choice(SEPARATORS)
        if rng.random() < 0.2:
            text = rng.choice(SEPARATORS) + text
        if rng.random() < 0.05:
            text = text.rstrip()
        texts.append(text)
    return texts


EDGE_CASES = [
    "", " ", "\n", " \t\n\x1c\x1d\x1e\x1f\x85\xa0\u2028\u3000", "word", "the", "the and", "the and of",
    "le la les", "de en in a", "de de de de de", "日本語のテキストです。中文文本。", "# # # ...", "... . ..",
    "line one\nline one\n line one \n\nline two\r\nline one\rline one", "ab ab ab ab ab ab", "a a a",
    "\u2028the\u2029of\x85and\x0bthe\x0cand\x1cof\x1dthe\x1eand", "x" * 100_000, ("é" * 9 + " ") * 50,
    "the " * 5 + "a\ud800b the and", "\ud800 \udfff of the", "İİİ the of and the of and",
    ("zz " * (MAX_CHARS // 3)) + "the and of the and of the and of",  # function words only past MAX_CHARS
    "q" * (MAX_CHARS - 3) + " the and of the and of", "İ" * (MAX_CHARS - 1) + " the and of the of",
    "der die und " * 40 + "le la les " * 32, "ﬁ ﬂ the of and", "\x00 \x00the of and\x00",
    "Σ ς σ ΑΣ. the of and", "wörd wörd wörd wörd wörd wörd", "café café café café café\ncafé café café café café",
]


@functools.cache
def all_texts() -> list[str]:
    return generated_texts(3000) + EDGE_CASES


@functools.cache
def reference_signals() -> list[dict[str, float]]:
    return [quality_signals(t) for t in all_texts()]


def test_languages_equal_the_reference():
    texts = all_texts() + [" ".join(random.Random(i).choices(FUNCTION_WORDS, k=random.Random(-i).randint(1, 30)))
                           for i in range(2000)]  # mixes of function words: ties and near-ties of the scores
    detected = detect_languages(texts)
    assert detected == [detect_language(t) for t in texts]
    assert len(set(detected)) >= 8  # most languages and "unknown" come out
    assert detect_languages([]) == []


def test_signals_equal_the_reference_exactly():
    texts = all_texts()
    signals = quality_batch._Signals(texts)
    reference = reference_signals()
    for name in reference[0]:
        values = signals.get(name, np.ones(len(texts), dtype=bool)).tolist()
        assert values == [r[name] for r in reference], name


def threshold_sets() -> list[dict]:
    """Every rule alone, and all together, each with a threshold some texts fail (a signal
    value itself, so equality is tested too); the default and Gopher thresholds."""
    reference = reference_signals()
    rng = random.Random(1)
    alone = {}
    for rule in RULES:
        signal, is_minimum = _RULE_SIGNAL[rule]
        values = sorted({r[signal] for r in reference})
        alone[rule] = values[int(len(values) * (rng.uniform(0.2, 0.5) if is_minimum else rng.uniform(0.5, 0.8)))]
    default = {"min_mean_word_length": 1.5, "max_mean_word_length": 20, "max_symbol_word_ratio": 0.5,
               "min_alpha_word_fraction": 0.5, "max_duplicate_line_fraction": 0.5, "max_duplicate_5gram_fraction": 0.6}
    return [{rule: value} for rule, value in alone.items()] + [alone, default, dict(GOPHER_THRESHOLDS),
                                                                 {**GOPHER_THRESHOLDS, "max_words": None}]


def test_first_failed_rules_equal_the_reference():
    texts = all_texts()
    fired = set()
    for thresholds in threshold_sets():
        rules = first_failed_rules(texts, thresholds)
        assert rules == [first_failed_rule(t, thresholds) for t in texts], thresholds
        fired |= set(rules)
    assert fired == set(RULES) | {None}  # every rule fails some texts
    assert first_failed_rules([], GOPHER_THRESHOLDS) == []
    with pytest.raises(ValueError, match="max_wrods"):
        first_failed_rules(texts, {"max_wrods": 10})


def test_colliding_keys_fall_back_to_the_reference(monkeypatch):
    """Words whose keys collide (forced here: 4 keys in all) are told apart byte by byte,
    and the texts where that happened get their signals from quality.py."""
    real_keys, fallbacks = quality_batch.written_word_keys, []
    monkeypatch.setattr(quality_batch, "written_word_keys", lambda *args: real_keys(*args) & np.uint64(3))
    monkeypatch.setattr(quality_batch, "_Document", lambda text: fallbacks.append(text) or _Document(text))
    texts = all_texts()[:1500]
    for thresholds in threshold_sets():
        assert first_failed_rules(texts, thresholds) == [first_failed_rule(t, thresholds) for t in texts]
    assert len(fallbacks) > 100


def test_byte_classes_are_the_classes_of_each_character():
    rng = random.Random(2)
    points = list(range(0x300)) + [0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x3000, 0xD800, 0xDFFF, 0xFEFF, 0x10FFFF]
    points += [rng.randrange(0x110000) for _ in range(5000)]
    texts = ["".join(map(chr, points[i:i + 97])) for i in range(0, len(points), 97)]
    batch = chars.encode(texts)
    letter, word = re.compile(r"[^\W\d_]"), re.compile(r"\w")
    expected = []
    for text in texts:
        for char in text:
            bits = ((chars.SPACE if char.isspace() else 0) | (chars.LETTER if letter.match(char) else 0)
                    | (chars.BREAK if len(f"a{char}b".splitlines()) == 2 else 0) | (chars.WORD if word.match(char) else 0))
            size = len(char.encode("utf-8", "surrogatepass"))
            expected += [bits] + [bits | chars.CONTINUATION] * (size - 1)
        expected.append(chars.SPACE | chars.BREAK)  # the "\n" between texts
    assert batch.classes.tolist() == expected[:-1]
    assert batch.starts.tolist() == np.cumsum([0] + [len(t.encode("utf-8", "surrogatepass")) + 1
                                                     for t in texts[:-1]]).tolist()


def clean_rows_reference(batch: dict, unicode_form: str, min_chars: int, max_chars: int, pii: list[str],
                         thresholds: dict, languages: list[str] | None) -> dict:
    """`clean_rows_batch` with the per-document quality and language functions, row by row."""
    out: dict[str, list] = {key: [] for key in ("text", "n_bytes", "_raw_bytes", "_norm_bytes", "_changed",
                                                "_invalid", "_language", "_step", "_reason")}
    for kind in pii:
        out[f"_pii_{kind}"] = []
    for raw in batch["text"]:
        raw = raw or ""
        text = normalize_text(raw, unicode_form)
        out["_raw_bytes"].append(len(raw.encode("utf-8", errors="replace")))
        out["_norm_bytes"].append(len(text.encode("utf-8")))
        out["_changed"].append(text != raw)
        out["_invalid"].append("\ufffd" in raw)
        step, reason, language, found = "", "", "", {}
        if len(text) < max(min_chars, 1) or len(text) > max_chars:
            step, reason = "length", "too_short" if len(text) < max(min_chars, 1) else "too_long"
        else:
            if pii:
                text, found = scrub_pii(text, tuple(pii))
            rule = first_failed_rule(text, thresholds) if thresholds else None
            if rule:
                step, reason = "quality", rule
            else:
                language = detect_language(text)
                if languages and language not in languages:
                    step, reason = "language", f"language_{language}"
        for kind in pii:
            out[f"_pii_{kind}"].append(found.get(kind, 0))
        out["text"].append(text)
        out["n_bytes"].append(len(text.encode("utf-8")))
        out["_language"].append(language)
        out["_step"].append(step)
        out["_reason"].append(reason)
    return out


@pytest.mark.parametrize("languages", [None, ["en", "de"]])
def test_clean_rows_batch_equals_the_row_by_row_pass(languages):
    texts = all_texts()[:1000] + EDGE_CASES + [None, "mail me at a.b@example.com or +44 20 7946 0958",
                                               "\ufeffThe\u200b cat\r\nsat\x00 on the mat"]
    batch = {"text": [t.replace("\ud800", "").replace("\udfff", "") if t else t for t in texts]}  # no lone surrogates
    for thresholds in ({}, *threshold_sets()[-4:-1]):
        kwargs = {"unicode_form": "NFC", "min_chars": 3, "max_chars": 50_000, "pii": ["email", "phone", "ip"],
                  "thresholds": thresholds, "languages": languages}
        assert clean_rows_batch(batch, **kwargs) == clean_rows_reference(batch, **kwargs)


def test_normalisation_skips_the_invisible_pattern_only_when_it_cannot_match():
    for c in range(0x80):  # an "é" sends the text through the pattern whatever it holds
        text = f"x{chr(c)}y z{chr(c) * 3}w"
        assert normalize_text(text) + "é" == normalize_text(text + "é"), c
