"""The batch word hashing of near-dedup and decontamination against its plain definition."""

import random

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
