"""Near-duplicate removal with MinHash signatures and LSH banding, for corpora larger than memory.

How it works, top to bottom:

1. Every document becomes a set of word shingles (n-grams of lowercased words with
   punctuation stripped), each hashed to 64 bits (a polynomial over the words' hashes,
   lm_tasks/data/words.py, computed for a whole batch of documents at once).
2. `minhash_batch` turns the set into `num_perm` MinHash values, the minima of
   `num_perm` random permutations h(x) = m*x + c mod 2^32 (m odd) of the hashes' low
   32 bits. The shingle hashes are already uniformly spread, so these cheap
   permutations (two numpy passes per value) estimate Jaccard similarity as well as
   the textbook (a*x + b) mod (2^61 - 1) family on 64 bits, which needs about twenty
   passes in numpy: on 8,400 pairs of prose documents of known Jaccard similarity both
   have the error the theory gives, sqrt(J(1 - J) / num_perm), within 1%. The
   fraction of positions where two signatures agree estimates the Jaccard similarity
   of the two shingle sets.
3. `find_near_duplicates` runs that as a batched `Dataset.map`, so the signatures
   (and one hash per LSH band) are written to Arrow files on disk and the text is
   never loaded whole. Then, band by band, it reads a single uint64 column (one band
   hash per document), sorts it, and takes documents with equal band hashes as
   candidates. Candidates are verified against the full signatures and merged with a
   union-find; each connected component keeps its lowest index.

Memory: a few integer arrays of one entry per document (one band's hashes, their sort
order, the union-find parents), plus the candidate pairs of one band, whose
signatures are read back from the Arrow files in chunks.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, List, Value

from lm_tasks.data.mapping import LocalMap
from lm_tasks.data.words import batch_gram_hashes, batch_word_hashes, gram_hashes, mix64, normalized_words

# 3-word shingles: replacing 5% of the words destroys up to 3 shingles per replaced
# word, so a copy keeps Jaccard ~0.75 with its original (5-word shingles: ~0.63;
# measured on planted copies: 0.69 at worst, 0.75 median), while unrelated documents
# share almost no 3-grams. A threshold of 0.5 sits between the two, about five
# standard errors of a 128-value estimate (0.04 at Jaccard 0.7) below the copies, and
# 128 values split into 30 LSH bands of 4 rows (see `lsh_bands`). Measured recall and
# false merges: benchmarks/near_dedup.py.
DEFAULT_NUM_PERM = 128
DEFAULT_SHINGLE_SIZE = 3
DEFAULT_THRESHOLD = 0.5

_ROWS_AT_ONCE = 4096  # shingles hashed at once: 128 x 4096 x 4 bytes = 2 MiB of work array (an L2 cache)
_PAIR_CHUNK = 65_536  # signature pairs compared at once (2 x 64k x 128 x 4 bytes = 64 MiB)


@dataclass
class NearDedupResult:
    """`keep`: indices kept, ascending. `clusters`: groups of >= 2 near-duplicates, kept member first.

    `candidate_pairs`: pairs that LSH put in one bucket and that were compared
    (pairs already joined through other pairs are not compared again);
    `verified_pairs`: those whose estimated Jaccard reached the threshold.
    """

    keep: list[int]
    clusters: list[list[int]]
    candidate_pairs: int
    verified_pairs: int


def shingles(text: str | None, shingle_size: int) -> list[str]:
    """Word n-grams; a text with fewer words than `shingle_size` is one shingle (even if empty)."""
    words = normalized_words(text)
    if len(words) < shingle_size:
        return [" ".join(words)]
    return [" ".join(words[i:i + shingle_size]) for i in range(len(words) - shingle_size + 1)]


def lsh_bands(num_perm: int, threshold: float, false_positive_weight: float = 0.2,
              false_negative_weight: float = 0.8) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm that best separate pairs around `threshold`.

    Two documents of Jaccard s share at least one band with probability
    P(s) = 1 - (1 - s^rows)^bands, an S-curve whose midpoint is near (1/bands)^(1/rows).
    The false-positive area is the integral of P over [0, threshold] and the
    false-negative area the integral of 1 - P over [threshold, 1]; this returns the
    split with the smallest weighted sum of the two, found by trying every split.

    Misses weigh four times as much as false candidates by default: a false candidate
    is caught by the verification and costs one signature comparison, a miss leaves a
    duplicate in the corpus. For 128 permutations and threshold 0.5 that gives 30 bands
    of 4 rows: a pair of Jaccard 0.7 is missed with probability 3e-4 (equal weights
    would give 25 x 5 and 1e-2).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    below = np.linspace(0.0, threshold, 257)
    above = np.linspace(threshold, 1.0, 257)
    best, best_cost = (1, 1), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_pos = _integral(below, 1 - (1 - below ** rows) ** bands)
            false_neg = _integral(above, (1 - above ** rows) ** bands)
            cost = false_positive_weight * false_pos + false_negative_weight * false_neg
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


def _integral(x: np.ndarray, y: np.ndarray) -> float:
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())  # trapezoid rule


@lru_cache(maxsize=8)
def _hash_functions(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (m, c) of each hash function h(x) = m*x + c mod 2^32: m odd (so h permutes
    the 32-bit values), c any."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(np.uint32).max
    m = rng.integers(0, top, size=num_perm, dtype=np.uint32, endpoint=True) | np.uint32(1)
    c = rng.integers(0, top, size=num_perm, dtype=np.uint32, endpoint=True)
    return m, c


def shingle_hashes(text: str | None, shingle_size: int) -> np.ndarray:
    """The 64-bit hash of every shingle of `text` (lm_tasks/data/words.py); a text with
    fewer words than `shingle_size` is one shingle. Repeats are kept: they cannot change a minimum."""
    return batch_shingle_hashes([text], shingle_size)[0]


def batch_shingle_hashes(texts: list[str | None], shingle_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, bounds): `shingle_hashes` of every text, concatenated; text i's are
    hashes[bounds[i]:bounds[i + 1]], never empty."""
    words, offsets = batch_word_hashes(texts)
    lengths = np.diff(offsets)
    grams, _ = batch_gram_hashes(words, offsets, shingle_size)
    short = np.flatnonzero(lengths < shingle_size)  # one shingle of all its words (hash 0 for none)
    bounds = np.r_[0, np.cumsum(np.where(lengths < shingle_size, 1, lengths - shingle_size + 1))]
    hashes = np.empty(bounds[-1], dtype=np.uint64)
    long_slots = np.ones(len(hashes), dtype=bool)
    long_slots[bounds[short]] = False
    hashes[long_slots] = grams
    hashes[bounds[short]] = [gram_hashes(words[offsets[i]:offsets[i + 1]], lengths[i])[0] for i in short]
    return hashes, bounds


def minhash(text: str | None, num_perm: int, shingle_size: int, seed: int) -> np.ndarray:
    """The MinHash signature of one text: `num_perm` uint32 values."""
    return signatures([shingle_hashes(text, shingle_size)], num_perm, seed)[0]


def signatures(hashes: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """The MinHash signatures (one row of `num_perm` uint32 values each) of documents given
    by their shingle hashes (of which the low 32 bits are used)."""
    flat = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    return _signatures(flat, np.cumsum([0] + [len(h) for h in hashes]), num_perm, seed)


def _signatures(hashes: np.ndarray, bounds: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """`signatures` of the documents whose shingles are hashes[bounds[i]:bounds[i + 1]].

    All documents' hashes go through the hash functions together, `_ROWS_AT_ONCE`
    shingles at a time (so the work array stays in the CPU cache and the Python
    overhead is paid per chunk, not per document); the work array has one row per hash
    function, so that `minimum.reduceat` takes each document's minimum along contiguous memory.
    """
    m, c = _hash_functions(num_perm, seed)
    x = hashes.astype(np.uint32)
    out = np.full((num_perm, len(bounds) - 1), np.iinfo(np.uint32).max, dtype=np.uint32)
    for start in range(0, len(x), _ROWS_AT_ONCE):
        stop = min(start + _ROWS_AT_ONCE, len(x))
        first, last = np.searchsorted(bounds, [start, stop - 1], side="right") - 1  # documents in the chunk
        segments = np.maximum(bounds[first:last + 1], start) - start
        values = np.multiply(m[:, None], x[start:stop])  # (num_perm, shingles), wrapping: mod 2^32
        values += c[:, None]
        part = np.minimum.reduceat(values, segments, axis=1)
        np.minimum(out[:, first:last + 1], part, out=out[:, first:last + 1])  # a document may span chunks
    return np.ascontiguousarray(out.T)


def minhash_batch(batch: dict, num_perm: int, shingle_size: int, seed: int) -> dict:
    """Batched `Dataset.map` function: `{"_minhash": [uint32 array of num_perm values per text]}`."""
    return {"_minhash": list(_signatures(*batch_shingle_hashes(batch["text"], shingle_size), num_perm, seed))}


def signature_batch(batch: dict, num_perm: int, shingle_size: int, seed: int, bands: int, rows: int) -> pa.Table:
    """The signatures (`_minhash`) plus one column per LSH band holding a 64-bit hash of that
    band's values, as an Arrow table (no conversion to Python objects on the way to disk)."""
    sigs = _signatures(*batch_shingle_hashes(batch["text"], shingle_size), num_perm, seed)
    columns = {"_minhash": pa.FixedSizeListArray.from_arrays(pa.array(sigs.reshape(-1)), num_perm)}
    for band in range(bands):
        columns[f"_band_{band}"] = pa.array(band_hashes(sigs[:, band * rows:(band + 1) * rows]))
    return pa.table(columns)


def band_hashes(values: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of uint32 `values` (one document's band): the values folded
    in one at a time through `mix64`. A collision only makes a false candidate pair, which
    the signature comparison then rejects."""
    h = np.full(len(values), values.shape[1], dtype=np.uint64)
    for column in values.T:
        h = mix64(h ^ column.astype(np.uint64))
    return h


class _UnionFind:
    """Union-find over document indices whose root is always the smallest index of its set."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = int(parent[i])
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def roots(self, items: np.ndarray | None = None) -> np.ndarray:
        """Roots of `items` (all documents if None), by following parents until they stop moving."""
        r = self.parent if items is None else self.parent[items]
        while True:
            nxt = self.parent[r]
            if np.array_equal(nxt, r):
                return r
            r = nxt


def _buckets(band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bucket id, document) of every document sharing its band hash with another, by bucket then index."""
    order = np.argsort(band, kind="stable")
    sorted_hashes = band[order]
    starts = np.ones(len(band), dtype=bool)
    starts[1:] = sorted_hashes[1:] != sorted_hashes[:-1]
    bucket = np.cumsum(starts) - 1
    shared = np.bincount(bucket)[bucket] >= 2
    return bucket[shared], order[shared]


def _signature_rows(signatures: Dataset, indices: np.ndarray, num_perm: int) -> np.ndarray:
    table = signatures[indices.tolist()]  # arrow format: a pyarrow Table of those rows
    return table.column("_minhash").combine_chunks().flatten().to_numpy().reshape(-1, num_perm)


def _estimated_jaccard(signatures: Dataset, left: np.ndarray, right: np.ndarray, num_perm: int) -> np.ndarray:
    sims = np.empty(len(left))
    for start in range(0, len(left), _PAIR_CHUNK):
        part = slice(start, start + _PAIR_CHUNK)
        equal = _signature_rows(signatures, left[part], num_perm) == _signature_rows(signatures, right[part], num_perm)
        sims[part] = equal.mean(axis=1)
    return sims


def _merge_band(band: np.ndarray, signatures: Dataset, uf: _UnionFind, threshold: float,
                num_perm: int) -> tuple[int, int]:
    """Join the verified near-duplicates among one band's buckets; return (candidates, verified).

    Each bucket is verified as a star: its first document against every other one.
    Members that fail form the bucket again, led by their own first member, until
    none is left, so a bucket of k identical documents costs k - 1 comparisons while
    two unrelated groups that collide in a bucket are still both found.
    """
    bucket, docs = _buckets(band)
    candidates = verified = 0
    while len(docs):
        first = np.ones(len(docs), dtype=bool)
        first[1:] = bucket[1:] != bucket[:-1]
        leader = docs[np.maximum.accumulate(np.where(first, np.arange(len(docs)), 0))]
        bucket, leader, docs = bucket[~first], leader[~first], docs[~first]
        apart = uf.roots(leader) != uf.roots(docs)  # pairs already joined need no check
        similar = np.zeros(len(docs), dtype=bool)
        similar[apart] = _estimated_jaccard(signatures, leader[apart], docs[apart], num_perm) >= threshold
        for i, j in zip(leader[similar].tolist(), docs[similar].tolist()):
            uf.union(i, j)
        candidates += int(apart.sum())
        verified += int(similar.sum())
        failed = apart & ~similar
        bucket, docs = bucket[failed], docs[failed]
    return candidates, verified


def find_near_duplicates(ds: Dataset, num_perm: int = DEFAULT_NUM_PERM, shingle_size: int = DEFAULT_SHINGLE_SIZE,
                         threshold: float = DEFAULT_THRESHOLD, seed: int = 0,
                         num_proc: int | None = None, mapper=None) -> NearDedupResult:
    """Cluster the near-duplicates in the `text` column of `ds` (estimated Jaccard >= threshold).

    Signatures are written next to `ds`'s own cache files (and reused on a re-run, as
    any `Dataset.map` is), or into a temporary folder for an in-memory dataset.
    Deterministic for a given seed, whatever `num_proc` or `mapper` (lm_tasks.data.mapping)
    computes the signatures.
    """
    n = len(ds)
    if n == 0:
        return NearDedupResult(keep=[], clusters=[], candidate_pairs=0, verified_pairs=0)
    bands, rows = lsh_bands(num_perm, threshold)
    features = Features({"_minhash": List(Value("uint32"), length=num_perm),
                         **{f"_band_{b}": Value("uint64") for b in range(bands)}})
    with tempfile.TemporaryDirectory(prefix="near_dedup_") as tmp:
        cache_file = None if ds.cache_files else str(Path(tmp) / "signatures.arrow")
        mapper = mapper or LocalMap(num_proc or 1)
        signatures = mapper(ds, signature_batch, remove_columns=ds.column_names, features=features,
                            cache_file_name=cache_file,
                            fn_kwargs={"num_perm": num_perm, "shingle_size": shingle_size, "seed": seed,
                                       "bands": bands, "rows": rows},
                            desc="minhash").with_format("arrow")
        uf = _UnionFind(n)
        candidates = verified = 0
        for b in range(bands):
            band = signatures[f"_band_{b}"].to_numpy()
            c, v = _merge_band(band, signatures, uf, threshold, num_perm)
            candidates, verified = candidates + c, verified + v
        del signatures, band  # close the memory-mapped files before the folder goes
    return _result(uf.roots(), candidates, verified)


def _result(roots: np.ndarray, candidates: int, verified: int) -> NearDedupResult:
    keep = np.flatnonzero(roots == np.arange(len(roots)))
    in_cluster = np.flatnonzero(np.bincount(roots)[roots] >= 2)
    members = in_cluster[np.argsort(roots[in_cluster], kind="stable")]  # by root, each ascending
    cluster_roots = roots[members]
    starts = np.flatnonzero(np.r_[True, cluster_roots[1:] != cluster_roots[:-1]])
    clusters = [c.tolist() for c in np.split(members, starts[1:])] if len(members) else []
    return NearDedupResult(keep=keep.tolist(), clusters=clusters, candidate_pairs=candidates, verified_pairs=verified)
