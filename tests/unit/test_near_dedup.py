"""MinHash + LSH near-duplicate removal on small seeded synthetic corpora."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasets import Dataset

from lm_tasks.data import near_dedup
from lm_tasks.data.near_dedup import DEFAULT_NUM_PERM, DEFAULT_SHINGLE_SIZE, DEFAULT_THRESHOLD, NearDedupResult
from lm_tasks.data.near_dedup import find_near_duplicates, lsh_bands, minhash_batch, shingles
from lm_tasks.data.words import normalized_words, word_hash

VOCABULARY = [f"w{i}" for i in range(3000)]


def document(rng: random.Random, words: int = 120) -> str:
    return " ".join(rng.choices(VOCABULARY, k=words))


def near_copy(text: str, rng: random.Random, change: float = 0.05) -> str:
    """`text` with round(change * words) of its words replaced by other words."""
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(change * len(words)))):
        words[i] = rng.choice([w for w in VOCABULARY[:50] if w != words[i]])
    return " ".join(words)


def planted(originals: int, copies: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Shuffled originals of 40-200 words plus near copies; returns texts and each one's original."""
    rng = random.Random(seed)
    docs = [document(rng, rng.randint(40, 200)) for _ in range(originals)]
    rows = [(d, i) for i, d in enumerate(docs)] + [(near_copy(docs[i], rng), i)
                                                  for i in rng.sample(range(originals), copies)]
    rng.shuffle(rows)
    return [t for t, _ in rows], [o for _, o in rows]


def run(texts: list[str], **kwargs) -> NearDedupResult:
    return find_near_duplicates(Dataset.from_dict({"text": texts}), **kwargs)


@pytest.mark.parametrize("num_perm,threshold", [(128, 0.5), (128, 0.8), (256, 0.7), (64, 0.3), (32, 0.5)])
def test_lsh_bands_put_the_s_curve_at_the_threshold(num_perm, threshold):
    bands, rows = lsh_bands(num_perm, threshold)
    assert bands >= 1 and rows >= 1 and bands * rows <= num_perm
    half = (1 - 0.5 ** (1 / bands)) ** (1 / rows)  # the similarity found half the time
    assert threshold - 0.15 < half < threshold + 0.05  # at or a little below: misses weigh more
    even = lsh_bands(num_perm, threshold, false_positive_weight=0.5, false_negative_weight=0.5)
    assert abs((1 - 0.5 ** (1 / even[0])) ** (1 / even[1]) - threshold) < 0.1


def test_lsh_bands_at_the_defaults():
    bands, rows = lsh_bands(DEFAULT_NUM_PERM, DEFAULT_THRESHOLD)
    assert (bands, rows) == (30, 4)
    def found(s: float) -> float:
        return 1 - (1 - s ** rows) ** bands

    assert found(0.7) > 0.999 and found(0.1) < 0.005
    assert lsh_bands(128, 0.8)[1] > rows  # a higher threshold asks for longer bands
    with pytest.raises(ValueError):
        lsh_bands(128, 1.0)


def test_shingles_normalise_words_and_keep_short_texts_whole():
    assert shingles("The cat, sat. On-the mat!", 3) == ["the cat sat", "cat sat onthe", "sat onthe mat"]
    assert shingles("Hello, World", 3) == ["hello world"]
    assert shingles("", 3) == [""]


def test_minhash_batch_signatures():
    text = document(random.Random(1), 100)
    out = minhash_batch({"text": [text, text.upper().replace(" ", " , "), text, "short text"]},
                        num_perm=64, shingle_size=3, seed=0)
    sigs = np.stack(out["_minhash"])
    assert sigs.shape == (4, 64) and sigs.dtype == np.uint32
    assert (sigs[0] == sigs[1]).all() and (sigs[0] == sigs[2]).all()  # case and punctuation do not count
    other_seed = minhash_batch({"text": [text]}, num_perm=64, shingle_size=3, seed=1)["_minhash"][0]
    assert (other_seed != sigs[0]).mean() > 0.9


def test_signatures_are_minima_of_the_hash_functions(monkeypatch):
    """Each value is min over the text's shingles of (m * x + c) mod 2^32, x the low 32 bits of
    the shingle's polynomial hash, also for documents split across chunks and short texts."""
    monkeypatch.setattr(near_dedup, "_ROWS_AT_ONCE", 7)
    rng = random.Random(3)
    texts = [document(rng, k) for k in (1, 2, 3, 5, 40, 9)] + ["", "Don't stop, don't."]
    m, c = near_dedup._hash_functions(16, 0)

    def shingle_hash(words: list[str]) -> int:
        h = 0
        for word in words:
            h = (h * 0x100000001B3 + word_hash(word)) % 2 ** 64
        return h % 2 ** 32

    for text, sig in zip(texts, near_dedup.signatures([near_dedup.shingle_hashes(t, 3) for t in texts], 16, 0)):
        words = normalized_words(text)
        n = min(3, len(words))
        hashes = [shingle_hash(words[i:i + n]) for i in range(len(words) - n + 1)]
        assert sig.tolist() == [min((int(mi) * x + int(ci)) % 2 ** 32 for x in hashes) for mi, ci in zip(m, c)]


def test_estimated_jaccard_tracks_the_exact_one():
    rng = random.Random(2)
    a = document(rng, 300)
    b = near_copy(a, rng, change=0.05)
    exact = len(set(shingles(a, 3)) & set(shingles(b, 3))) / len(set(shingles(a, 3)) | set(shingles(b, 3)))
    sig_a, sig_b = minhash_batch({"text": [a, b]}, num_perm=256, shingle_size=3, seed=0)["_minhash"]
    assert abs((sig_a == sig_b).mean() - exact) < 0.1
    assert 0.65 < exact < 0.85  # what the default threshold of 0.5 is chosen against


def test_planted_near_duplicates_are_found_without_false_merges():
    texts, origin = planted(originals=250, copies=50)
    result = run(texts)
    cluster_of = {doc: c for c, members in enumerate(result.clusters) for doc in members}
    pairs = [[d for d, o in enumerate(origin) if o == i] for i in set(origin)]
    pairs = [p for p in pairs if len(p) == 2]
    found = sum(a in cluster_of and cluster_of.get(b) == cluster_of[a] for a, b in pairs)
    assert len(pairs) == 50 and found / len(pairs) >= 0.9
    assert all(len({origin[d] for d in members}) == 1 for members in result.clusters)  # no false merges
    assert len(result.keep) == len(texts) - found and result.verified_pairs >= found


def test_clusters_keep_the_lowest_index():
    rng = random.Random(3)
    x, y, z = document(rng), document(rng), document(rng)
    texts = [x, y, near_copy(x, rng), z, near_copy(y, rng), x]
    result = run(texts)
    assert result.clusters == [[0, 2, 5], [1, 4]]
    assert result.keep == [0, 1, 3]


def test_exact_duplicates_form_one_cluster():
    rng = random.Random(4)
    a, b = document(rng), document(rng)
    result = run([b, a, a, a, b, a])
    assert result.clusters == [[0, 4], [1, 2, 3, 5]]
    assert result.keep == [0, 1]
    assert result.candidate_pairs == result.verified_pairs == 4  # one check per joined document


def test_empty_single_and_short_documents():
    assert run([]) == NearDedupResult(keep=[], clusters=[], candidate_pairs=0, verified_pairs=0)
    assert run(["just one document here"]).keep == [0]
    short = run(["Hello world", "hello, WORLD!", "hello there", "", None, "w1 w2 w3 w4"])
    assert short.clusters == [[0, 1], [3, 4]]  # "" and None are both empty
    assert short.keep == [0, 2, 3, 5]


def test_verification_rejects_false_candidates(monkeypatch):
    # Zero-row bands give every document the same band hash: all pairs become candidates.
    monkeypatch.setattr(near_dedup, "lsh_bands", lambda num_perm, threshold: (1, 0))
    rng = random.Random(5)
    x, y = document(rng), document(rng)
    texts = [document(rng), x, document(rng), y, near_copy(x, rng), near_copy(y, rng), x]
    result = run(texts)
    assert result.clusters == [[1, 4, 6], [3, 5]]
    assert result.candidate_pairs > result.verified_pairs


def test_deterministic_for_a_seed_and_any_num_proc():
    texts, _ = planted(originals=60, copies=15, seed=6)
    first = run(texts, seed=3)
    assert run(texts, seed=3) == first
    assert run(texts, seed=3, num_proc=2) == first
    assert run(texts, seed=4).clusters == first.clusters  # another seed: other hashes, same duplicates here


def test_defaults_are_exposed():
    assert (DEFAULT_NUM_PERM, DEFAULT_SHINGLE_SIZE, DEFAULT_THRESHOLD) == (128, 3, 0.5)
