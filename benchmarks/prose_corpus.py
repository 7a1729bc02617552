"""A large benchmark corpus of real prose: new documents recombined from real sentences.

    .venv/bin/python benchmarks/prose_corpus.py --mb 100 --out /tmp/prose_100mb.jsonl [--data-root ../shared/data]

Sentences come from ../shared/data (SciTLDR abstracts, SQuAD contexts, Tiny
Shakespeare, SST-2 and Multi30k English sentences). Each document is 1-3 paragraphs of
3-12 sentences drawn at random (seeded) from the pool, so documents are new texts
rather than repetitions that exact or near dedup would simply delete, while the words,
sentence lengths and punctuation are those of real prose. A held-out validation file
is drawn from a disjoint 5% of the sentences (see `write_corpus`). Written as JSON
lines with a `text` field. A benchmark input: write it under /tmp, never commit it.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(root: Path) -> list[str]:
    """Every distinct sentence of the real corpora, in a fixed order."""
    texts: list[str] = []
    for split in ("train", "validation", "test"):
        texts += [json.loads(line)["document"] for line in open(root / "scitldr" / f"{split}.jsonl")]
        texts += [json.loads(line)["text"] for line in open(root / "sst2" / f"{split}.jsonl")]
        texts += [json.loads(line)["translation"]["en"] for line in open(root / "multi30k_en_de" / f"{split}.jsonl")]
    texts += list(dict.fromkeys(json.loads(line)["context"] for line in open(root / "squad_v1.1" / "validation.jsonl")))
    texts += (root / "tinyshakespeare" / "input.txt").read_text().split("\n\n")
    pool = (s.strip() for text in texts for s in _SENTENCE_END.split(text.replace("\n", " ")))
    return list(dict.fromkeys(s for s in pool if len(s.split()) >= 3))


def write_corpus(out: Path, n_bytes: int, root: Path, seed: int = 0, val_fraction: float = 0.05) -> dict:
    """Write `out` (training documents) and `<out stem>.validation.jsonl` (`val_fraction` of
    `n_bytes`) from disjoint sentence pools, so that the validation documents are held out:
    drawn from one pool, nearly every validation 13-gram would also be in training
    documents (each sentence recurs about 10 times per 100 MB) and decontamination would
    drop most of the corpus. Returns {path: documents}."""
    pool = sentences(root)
    rng = np.random.default_rng(seed)
    held_out = rng.permutation(len(pool)) < round(val_fraction * len(pool))
    validation = out.with_name(out.stem + ".validation.jsonl")
    train_pool = [s for s, h in zip(pool, held_out) if not h]
    validation_pool = [s for s, h in zip(pool, held_out) if h]
    return {str(out): _write_documents(out, train_pool, (1 - val_fraction) * n_bytes, rng),
            str(validation): _write_documents(validation, validation_pool, val_fraction * n_bytes, rng)}


def _write_documents(path: Path, pool: list[str], n_bytes: float, rng: np.random.Generator) -> int:
    """Documents of 1-3 paragraphs of 3-12 random sentences of `pool` until `n_bytes` of text."""
    written = docs = 0
    with open(path, "w") as f:
        while written < n_bytes:
            paragraphs = [" ".join(pool[i] for i in rng.integers(0, len(pool), rng.integers(3, 13)))
                          for _ in range(rng.integers(1, 4))]
            text = "\n\n".join(paragraphs)
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            written += len(text.encode("utf-8"))
            docs += 1
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--out", default="/tmp/prose_100mb.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="../shared/data")
    args = parser.parse_args()
    for path, docs in write_corpus(Path(args.out), int(args.mb * 1e6), Path(args.data_root), args.seed).items():
        print(f"{path}: {docs:,} documents, {Path(path).stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
