"""Near-duplicate removal with MinHash signatures and LSH banding, for corpora larger than memory.

How it works, top to bottom:

1. Every document becomes a set of word shingles (n-grams of lowercased words with
   punctuation stripped), each hashed with 64-bit xxhash.
2. `minhash_batch` turns the set into `num_perm` MinHash values, one per universal
   hash permutation h(x) = (a*x + b) mod (2^61 - 1). The fraction of positions where
   two signatures agree estimates the Jaccard similarity of the two shingle sets.
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

import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash
from datasets import Dataset, Features, List, Value

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

_MERSENNE_61 = np.uint64((1 << 61) - 1)
_LOW_31 = np.uint64((1 << 31) - 1)
_LOW_30 = np.uint64((1 << 30) - 1)
_PUNCTUATION = re.compile(r"[^\w\s]")
_ROWS_AT_ONCE = 1024  # shingles permuted at once: 1024 x 128 x 8 bytes = 1 MiB per work array
_PAIR_CHUNK = 65_536  # signature pairs compared at once (2 x 64k x 128 x 8 bytes = 128 MiB)


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


def normalized_words(text: str | None) -> list[str]:
    """Lowercased words with punctuation removed ("Don't stop." -> ["dont", "stop"])."""
    return _PUNCTUATION.sub("", (text or "").lower()).split()


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
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of each permutation: a in [1, p), b in [0, p), p = 2^61 - 1."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _MERSENNE_61, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, _MERSENNE_61, size=num_perm, dtype=np.uint64)
    return a, b


def _mod_mersenne(v: np.ndarray) -> np.ndarray:
    """v mod (2^61 - 1) for any uint64 v, using 2^61 = 1 (mod 2^61 - 1)."""
    v = (v & _MERSENNE_61) + (v >> np.uint64(61))
    return np.minimum(v, v - _MERSENNE_61)  # v - p wraps around to a huge value when v < p


def _permuted(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a * x + b) mod (2^61 - 1) for every x (rows) and (a, b) (columns), exactly, in uint64.

    a * x needs up to 122 bits, so both are split into 31 + 30 bits:
    a*x = a1*x1*2^62 + (a1*x0 + a0*x1)*2^31 + a0*x0, and the powers of two fold back
    with 2^61 = 1 (so 2^62 = 2). Every partial sum stays below 2^64. The operations
    run in place on three buffers: each is one pass over memory, without allocating.
    """
    x = x[:, None]
    a0, a1 = a & _LOW_31, a >> np.uint64(31)
    x0, x1 = x & _LOW_31, x >> np.uint64(31)
    total = a1 * x1
    total <<= np.uint64(1)
    middle = a1 * x0  # + a0 * x1 < 2^62; middle * 2^31 = (middle >> 30) * 2^61 + (middle & (2^30 - 1)) * 2^31
    part = a0 * x1
    middle += part
    np.right_shift(middle, np.uint64(30), out=part)
    total += part
    middle &= _LOW_30
    middle <<= np.uint64(31)
    total += middle
    np.multiply(a0, x0, out=part)
    total += part
    total += b
    np.right_shift(total, np.uint64(61), out=part)  # total mod p, as in _mod_mersenne
    total &= _MERSENNE_61
    total += part
    np.subtract(total, _MERSENNE_61, out=part)
    return np.minimum(total, part, out=total)


def shingle_hashes(text: str | None, shingle_size: int) -> np.ndarray:
    """The 64-bit xxhash of every distinct shingle of `text` (in no particular order)."""
    words = normalized_words(text)
    if len(words) < shingle_size:
        grams = {" ".join(words)}
    else:  # the joins and the set run in C: `shingles` without its Python loop
        grams = set(map(" ".join, zip(*(words[i:] for i in range(shingle_size)))))
    return np.fromiter(map(_xxh64_text, grams), dtype=np.uint64, count=len(grams))


def _xxh64_text(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode("utf-8"))


def minhash(text: str | None, num_perm: int, shingle_size: int, seed: int) -> np.ndarray:
    """The MinHash signature of one text: `num_perm` uint64 values below 2^61."""
    return signatures([shingle_hashes(text, shingle_size)], num_perm, seed)[0]


def signatures(hashes: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """The MinHash signatures (one row each) of documents given by their shingle hashes.

    All documents' hashes are permuted together, `_ROWS_AT_ONCE` shingles at a time (so
    the work arrays stay in the CPU cache and the Python overhead is paid per chunk, not
    per document), and `minimum.reduceat` takes each document's minimum within a chunk.
    """
    a, b = _permutations(num_perm, seed)
    bounds = np.cumsum([0] + [len(h) for h in hashes])  # document i: rows bounds[i]:bounds[i + 1], never empty
    x = _mod_mersenne(np.concatenate(hashes)) if hashes else np.zeros(0, dtype=np.uint64)
    out = np.full((len(hashes), num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    for start in range(0, len(x), _ROWS_AT_ONCE):
        stop = min(start + _ROWS_AT_ONCE, len(x))
        first, last = np.searchsorted(bounds, [start, stop - 1], side="right") - 1  # documents in the chunk
        segments = np.maximum(bounds[first:last + 1], start) - start
        part = np.minimum.reduceat(_permuted(x[start:stop], a, b), segments, axis=0)
        np.minimum(out[first:last + 1], part, out=out[first:last + 1])  # a document may span chunks
    return out


def minhash_batch(batch: dict, num_perm: int, shingle_size: int, seed: int) -> dict:
    """Batched `Dataset.map` function: `{"_minhash": [uint64 array of num_perm values per text]}`."""
    return {"_minhash": list(signatures([shingle_hashes(t, shingle_size) for t in batch["text"]], num_perm, seed))}


def signature_batch(batch: dict, num_perm: int, shingle_size: int, seed: int, bands: int, rows: int) -> pa.Table:
    """The signatures (`_minhash`) plus one column per LSH band holding the xxhash of that
    band's values, as an Arrow table (no conversion to Python objects on the way to disk)."""
    sigs = signatures([shingle_hashes(t, shingle_size) for t in batch["text"]], num_perm, seed)
    columns = {"_minhash": pa.FixedSizeListArray.from_arrays(pa.array(sigs.reshape(-1)), num_perm)}
    for band in range(bands):
        values = np.ascontiguousarray(sigs[:, band * rows:(band + 1) * rows])  # each row: the band's bytes
        columns[f"_band_{band}"] = pa.array(np.fromiter(map(xxhash.xxh64_intdigest, values), dtype=np.uint64,
                                                        count=len(values)))
    return pa.table(columns)


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
                         num_proc: int | None = None) -> NearDedupResult:
    """Cluster the near-duplicates in the `text` column of `ds` (estimated Jaccard >= threshold).

    Signatures are written next to `ds`'s own cache files (and reused on a re-run, as
    any `Dataset.map` is), or into a temporary folder for an in-memory dataset.
    Deterministic for a given seed, whatever `num_proc`.
    """
    n = len(ds)
    if n == 0:
        return NearDedupResult(keep=[], clusters=[], candidate_pairs=0, verified_pairs=0)
    bands, rows = lsh_bands(num_perm, threshold)
    features = Features({"_minhash": List(Value("uint64"), length=num_perm),
                         **{f"_band_{b}": Value("uint64") for b in range(bands)}})
    with tempfile.TemporaryDirectory(prefix="near_dedup_") as tmp:
        cache_file = None if ds.cache_files else str(Path(tmp) / "signatures.arrow")
        signatures = ds.map(signature_batch, batched=True, remove_columns=ds.column_names, features=features,
                            num_proc=num_proc if num_proc and num_proc > 1 else None, cache_file_name=cache_file,
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
