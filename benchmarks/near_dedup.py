"""Recall and speed of MinHash near-duplicate removal on planted near-duplicate copies.

    .venv/bin/python benchmarks/near_dedup.py [--docs 20000] [--dup-fraction 0.1] [--change 0.05]
        [--num-proc 1] [--source auto|scitldr|synthetic] [--out outputs/benchmarks/near_dedup.json]

Distinct documents are SciTLDR abstracts (../shared/data/scitldr, all splits, exact
repeats dropped) when that folder exists, else texts from a seeded synthetic word
generator. A `--dup-fraction` of the documents are copies of distinct documents with
a `--change` fraction of their words replaced by random other words. The run uses
`find_near_duplicates` at its defaults unless told otherwise, and reports:

- documents/s: all documents over the wall time of `find_near_duplicates`;
- recall: planted copies that land in their original's cluster;
- false merges: clusters that join distinct documents, judged by exact shingle
  Jaccard (the source's own near-duplicates, and pairs within the MinHash estimate's
  error of the threshold, are counted apart: see `score`);
- candidate and verified pairs.

A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from datasets import Dataset, disable_progress_bars

from lm_tasks.data.near_dedup import DEFAULT_NUM_PERM, DEFAULT_SHINGLE_SIZE, DEFAULT_THRESHOLD
from lm_tasks.data.near_dedup import find_near_duplicates, lsh_bands, shingles

SCITLDR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scitldr"


def scitldr_documents(folder: Path) -> list[str]:
    """Every distinct abstract of the three splits, in file order."""
    docs: dict[str, None] = {}
    for split in ("train", "validation", "test"):
        with open(folder / f"{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["document"].strip()
                if text:
                    docs[text] = None
    return list(docs)


def synthetic_documents(count: int, rng: random.Random) -> list[str]:
    """Sentences of pseudo-words drawn from a Zipf-like vocabulary (a few words are very common)."""
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    vocabulary = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(30_000)})
    rng.shuffle(vocabulary)
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    docs = []
    for _ in range(count):
        words = rng.choices(vocabulary, weights=weights, k=rng.randint(40, 300))
        sentences, start = [], 0
        while start < len(words):
            end = start + rng.randint(8, 25)
            sentences.append(" ".join(words[start:end]).capitalize() + ".")
            start = end
        docs.append(" ".join(sentences))
    return docs


def near_copy(text: str, change: float, vocabulary: list[str], rng: random.Random) -> str:
    """`text` with round(change * words) words (at least one) replaced by other vocabulary words."""
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(change * len(words)))):
        replacement = rng.choice(vocabulary)
        while replacement == words[i]:
            replacement = rng.choice(vocabulary)
        words[i] = replacement
    return " ".join(words)


def planted_corpus(originals: list[str], copies: int, change: float,
                   rng: random.Random) -> tuple[list[str], list[int]]:
    """Originals plus near copies, shuffled; `origin[i]` is the original document i comes from."""
    vocabulary = sorted({w for doc in originals for w in doc.split()})
    copied = rng.sample(range(len(originals)), copies)
    rows = [(doc, i) for i, doc in enumerate(originals)] + [(near_copy(originals[i], change, vocabulary, rng), i)
                                                           for i in copied]
    rng.shuffle(rows)
    return [doc for doc, _ in rows], [i for _, i in rows]


def jaccard(a: str, b: str, shingle_size: int) -> float:
    """Exact Jaccard similarity of two texts' shingle sets (no MinHash estimate)."""
    x, y = set(shingles(a, shingle_size)), set(shingles(b, shingle_size))
    return len(x & y) / len(x | y)


def linked(members: list[int], texts: list[str], origin: list[int], shingle_size: int, min_jaccard: float) -> bool:
    """Whether every member of a cluster is reachable through copies or pairs of exact Jaccard >= min_jaccard."""
    reached, frontier = {members[0]}, [members[0]]
    while frontier:
        doc = frontier.pop()
        for other in members:
            if other not in reached and (origin[other] == origin[doc] or
                                         jaccard(texts[doc], texts[other], shingle_size) >= min_jaccard):
                reached.add(other)
                frontier.append(other)
    return len(reached) == len(members)


def score(clusters: list[list[int]], texts: list[str], origin: list[int], shingle_size: int, threshold: float,
          num_perm: int) -> dict:
    """Recall of the planted copies, and the clusters that join distinct originals, by kind.

    Real corpora hold near-duplicates of their own (SciTLDR has resubmitted abstracts),
    and merging those is right: a cluster is a source near-duplicate when its members
    link up through copies and exact Jaccard >= threshold. A MinHash estimate has a
    standard error of sqrt(t (1 - t) / num_perm) at the threshold t, so pairs within
    three of those below it are borderline merges; anything else is a false merge.
    """
    cluster_of = {doc: c for c, members in enumerate(clusters) for doc in members}
    by_origin: dict[int, list[int]] = {}
    for doc, o in enumerate(origin):
        by_origin.setdefault(o, []).append(doc)
    planted = found = 0
    for docs in by_origin.values():
        for copy in docs[1:]:  # every pair (first, other) of one origin should share a cluster
            planted += 1
            found += docs[0] in cluster_of and cluster_of.get(copy) == cluster_of[docs[0]]
    joined = [members for members in clusters if len({origin[d] for d in members}) > 1]
    tolerance = 3 * (threshold * (1 - threshold) / num_perm) ** 0.5
    not_near = [c for c in joined if not linked(c, texts, origin, shingle_size, threshold)]
    false = [c for c in not_near if not linked(c, texts, origin, shingle_size, threshold - tolerance)]
    return {"planted_pairs": planted, "found_pairs": found, "recall": found / planted if planted else 1.0,
            "source_near_duplicates": len(joined) - len(not_near), "borderline_merges": len(not_near) - len(false),
            "borderline_min_jaccard": threshold - tolerance, "false_merges": len(false),
            "borderline_examples": [[texts[d][:100] for d in c] for c in not_near if c not in false][:3],
            "false_merge_examples": [[texts[d][:100] for d in c] for c in false[:3]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000, help="documents in all, copies included")
    parser.add_argument("--dup-fraction", type=float, default=0.1, help="share of the documents that are copies")
    parser.add_argument("--change", type=float, default=0.05, help="share of a copy's words replaced")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--source", choices=["auto", "scitldr", "synthetic"], default="auto")
    parser.add_argument("--num-perm", type=int, default=DEFAULT_NUM_PERM)
    parser.add_argument("--shingle-size", type=int, default=DEFAULT_SHINGLE_SIZE)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/benchmarks/near_dedup.json")
    args = parser.parse_args()
    disable_progress_bars()
    rng = random.Random(args.seed)

    wanted_originals = args.docs - round(args.docs * args.dup_fraction)
    source = args.source if args.source != "auto" else ("scitldr" if SCITLDR.is_dir() else "synthetic")
    if source == "scitldr":
        originals = scitldr_documents(SCITLDR)
        if len(originals) < wanted_originals:
            print(f"note: SciTLDR has {len(originals)} distinct abstracts, fewer than the "
                  f"{wanted_originals} asked for; using them all")
        originals = originals[:wanted_originals]
    else:
        originals = synthetic_documents(wanted_originals, rng)
    copies = min(len(originals), round(len(originals) * args.dup_fraction / (1 - args.dup_fraction)))
    texts, origin = planted_corpus(originals, copies, args.change, rng)

    ds = Dataset.from_dict({"text": texts})
    start = time.perf_counter()
    result = find_near_duplicates(ds, num_perm=args.num_perm, shingle_size=args.shingle_size,
                                  threshold=args.threshold, seed=args.seed, num_proc=args.num_proc)
    seconds = time.perf_counter() - start
    bands, rows = lsh_bands(args.num_perm, args.threshold)
    report = {"source": source, "documents": len(texts), "originals": len(originals), "copies": copies,
              "change": args.change, "num_proc": args.num_proc, "num_perm": args.num_perm,
              "shingle_size": args.shingle_size, "threshold": args.threshold, "bands": bands, "rows": rows,
              "seconds": seconds, "docs_per_sec": len(texts) / seconds, "kept": len(result.keep),
              "clusters": len(result.clusters), "candidate_pairs": result.candidate_pairs,
              "verified_pairs": result.verified_pairs,
              **score(result.clusters, texts, origin, args.shingle_size, args.threshold, args.num_perm)}

    print(f"{'near-dedup':<24}{source}: {len(texts)} docs, {copies} planted copies, {args.change:.0%} of words changed")
    for key, fmt in [("docs_per_sec", ".0f"), ("recall", ".4f"), ("false_merges", "d"),
                     ("borderline_merges", "d"), ("source_near_duplicates", "d"), ("candidate_pairs", "d"),
                     ("verified_pairs", "d"), ("kept", "d"), ("seconds", ".2f")]:
        print(f"{key:<24}{report[key]:>12{fmt}}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
