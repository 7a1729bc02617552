"""The batch word hashing of near-dedup, decontamination and the quality rules against its plain definition."""

import random
import re

import numpy as np

from lm_tasks.data import words
from lm_tasks.data.words import batch_gram_hashes, batch_word_hashes, gram_hashes, normalized_words, word_hash


def test_word_hash_is_a_polynomial_over_the_bytes_then_mixed():
    assert word_hash("a") != word_hash("b") and word_hash("ab") != word_hash("ba")
    assert word_hash("") == 0  # no byte: the empty polynomial, which mixing keeps at 0
    assert len({word_hash(w) for w in ("dont", "stop", "don", "t", "stopdont")}) == 5


def test_batch_hashes_equal_the_plain_definition_word_by_word():
    texts = ["Don't stop, don't.", "", None, "Héllo wörld\u00a0 naïve café", "a", "   \n\t",
             "The cat sat on the mat. " * 3, "日本語 テキスト", "tabs\tand\x1cfile separators"]
    hashes, offsets = batch_word_hashes(texts)
    assert offsets.tolist() == [0, 3, 3, 3, 7, 8, 8, 26, 28, 32]
    for i, text in enumerate(texts):
        assert hashes[offsets[i]:offsets[i + 1]].tolist() == [word_hash(w) for w in normalized_words(text)]


def test_batches_larger_than_a_chunk_and_words_longer_than_one(monkeypatch):
    monkeypatch.setattr(words, "_CHUNK", 64)  # many chunks, and a 500-byte word longer than two of them
    monkeypatch.setattr(words, "_POWER_CACHE", [])
    rng = random.Random(0)
    vocabulary = ["".join(rng.choice("abcdé") for _ in range(rng.randint(1, 12))) for _ in range(300)]
    texts = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 60))) for _ in range(100)] + ["x" * 500]
    hashes, offsets = batch_word_hashes(texts)
    for i, text in enumerate(texts):
        assert hashes[offsets[i]:offsets[i + 1]].tolist() == [word_hash(w) for w in normalized_words(text)]


def test_batch_grams_stay_inside_their_text():
    texts = ["one two three four", "five six", "seven eight nine"]
    hashes, offsets = batch_word_hashes(texts)
    grams, text = batch_gram_hashes(hashes, offsets, 3)
    assert text.tolist() == [0, 0, 2]  # "three four five" and "six seven eight" run across texts: left out
    expected = [gram_hashes(hashes[offsets[i]:offsets[i + 1]], 3) for i in range(3)]
    assert (grams == np.concatenate(expected)).all()


def test_gram_starts_are_the_n_grams_inside_one_text():
    rng = random.Random(3)
    for n in range(1, 7):
        counts = [rng.choice([0, 1, 2, n - 1, n, n + 1, 20]) for _ in range(50)]
        offsets = np.cumsum([0] + counts)
        first, text = words.gram_starts(offsets, n)
        expected = [(s, i) for i in range(len(counts)) for s in range(offsets[i], offsets[i + 1] - n + 1)]
        assert list(zip(first.tolist(), text.tolist())) == expected


def test_written_word_keys_depend_on_the_word_only():
    texts = ["alpha beta alpha", "a" * 30 + " beta " + "a" * 30, "x" + "é" * 12 + " alpha"]
    data = np.frombuffer(b"\n".join(t.encode() for t in texts) + bytes(8), dtype=np.uint8)
    runs = [(m.start(), m.end() - 1) for m in re.finditer(rb"\S+", bytes(data[:-8]))]
    keys = words.written_word_keys(data, *(np.array(x) for x in zip(*runs)))
    by_word: dict[bytes, set] = {}
    for (s, e), key in zip(runs, keys.tolist()):
        by_word.setdefault(bytes(data[s:e + 1]), set()).add(key)
    assert all(len(k) == 1 for k in by_word.values()) and len({k.pop() for k in by_word.values()}) == len(by_word)


def test_batch_words_follow_str_lower_and_the_regex_classes_outside_ascii():
    """Characters whose lowercase grows (İ: "i" and a combining dot, which is not \\w), combining
    marks, non-ASCII digits and numerals, underscores, CJK and typographic punctuation, exotic
    spaces, a lone surrogate."""
    texts = ["İstanbul’da “quoted” — dash", "x² ½ ٣٤ under_score", "日本、東京。 «guillemets»",
             "a\u2003b\u3000c\u00a0d\u2028e", "caf\u0065\u0301 Ǆemal", "lone \ud800 surrogate", "ABC def", "‼", ""]
    hashes, offsets = batch_word_hashes(texts)
    for i, text in enumerate(texts):
        assert hashes[offsets[i]:offsets[i + 1]].tolist() == [word_hash(w) for w in normalized_words(text)], text
    assert normalized_words(texts[0])[0] == "istanbulda"
    assert normalized_words(texts[1]) == ["x²", "½", "٣٤", "under_score"]
