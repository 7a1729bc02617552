"""N-gram overlap decontamination against evaluation texts."""

from __future__ import annotations

import pickle
import random

import pytest
from datasets import Dataset
from datasets.fingerprint import Hasher

from lm_tasks.data.cleaning import contamination_reason_batch, eval_text_hashes
from lm_tasks.data.decontamination import NgramIndex

RNG = random.Random(0)
VOCABULARY = [f"v{i}" for i in range(5000)]
FILLER = [f"filler{i}" for i in range(100)]  # never in an evaluation text


def words(k: int) -> list[str]:
    return RNG.sample(VOCABULARY, k)  # distinct words: no n-gram repeats by chance


def around(span: list[str]) -> str:
    """`span` between filler words, which cannot extend it into a longer match."""
    return " ".join(FILLER[:20] + span + FILLER[20:40])


EVAL = words(30)
SHORT_EVAL = words(10)  # e.g. one translation sentence
TINY_EVAL = words(5)


@pytest.fixture(scope="module")
def index() -> NgramIndex:
    return NgramIndex([" ".join(EVAL), " ".join(SHORT_EVAL), " ".join(TINY_EVAL)])


def test_index_size_counts_each_gram_once(index):
    assert len(index) == (30 - 13 + 1) + 1  # 18 13-grams, the short text whole, the tiny one skipped
    assert len(NgramIndex([" ".join(EVAL)] * 3)) == 18
    assert len(NgramIndex([])) == 0 and not NgramIndex([]).contains_any(" ".join(EVAL))


def test_a_shared_13_gram_is_contamination_12_words_are_not(index):
    assert index.contains_any(around(EVAL[5:18]))
    assert not index.contains_any(around(EVAL[5:17]))
    assert not index.contains_any(around(EVAL[0:12] + ["x"] + EVAL[13:25]))  # one word changed in every 13-gram
    assert index.contains_any(" ".join(EVAL))


def test_matching_ignores_case_and_punctuation(index):
    span = EVAL[3:16]
    assert index.contains_any("Prefix. " + ", ".join(w.upper() for w in span) + "! suffix")


def test_short_eval_texts_match_whole_tiny_ones_never(index):
    assert index.contains_any(around(SHORT_EVAL))
    assert index.contains_any(" ".join(SHORT_EVAL))
    assert not index.contains_any(around(SHORT_EVAL[:9]))
    assert not index.contains_any(around(TINY_EVAL))
    assert NgramIndex([" ".join(TINY_EVAL)], min_words=5).contains_any(around(TINY_EVAL))


def test_n_is_configurable():
    small = NgramIndex([" ".join(EVAL)], n=8)
    assert len(small) == 30 - 8 + 1
    assert small.contains_any(around(EVAL[10:18])) and not small.contains_any(around(EVAL[10:17]))
    with pytest.raises(ValueError):
        NgramIndex([], n=5, min_words=8)


def test_dataset_map_with_the_index_in_fn_kwargs(index):
    train = Dataset.from_dict({"text": [around(EVAL[:13]), around([]), around(SHORT_EVAL), "short"]})
    flagged = train.map(contamination_reason_batch, batched=True,
                        fn_kwargs={"index": index, "eval_hashes": eval_text_hashes([])})
    assert list(flagged["_reason"]) == ["shares_eval_ngram", "", "shares_eval_ngram", ""]


def test_the_index_pickles_and_fingerprints_by_content(index):
    same = NgramIndex([" ".join(EVAL), " ".join(SHORT_EVAL), " ".join(TINY_EVAL)])
    assert Hasher.hash(same) == Hasher.hash(index)  # so `datasets` can reuse its cache across runs
    assert Hasher.hash(NgramIndex([" ".join(EVAL)])) != Hasher.hash(index)
    data = pickle.dumps(index)
    assert len(data) < 8 * len(index) + 1000  # the sorted hash array and the settings, nothing more
    restored = pickle.loads(data)
    assert len(restored) == len(index) and restored.contains_any(around(SHORT_EVAL))
