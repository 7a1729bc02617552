"""Text cleaning as pure, batched functions for `Dataset.map` / `Dataset.filter`.

The functions are top-level and take their parameters as keyword arguments so
that `datasets` can fingerprint them and reuse its cache across runs (pass the
parameters through `fn_kwargs`). `clean_dataset` chains the steps and counts the
rows going in and out of each.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass

from datasets import Dataset

from lm_tasks.config import CleaningConfig

# C0/C1 control characters except tab and newline, zero-width and bidi controls,
# the BOM, and U+FFFD (what invalid UTF-8 bytes become when a file is read).
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ufffd]"
)
_LINE_BREAKS = re.compile("\r\n|\r|\u2028|\u2029|\x85")
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass
class StepStats:
    """Rows into and out of one cleaning step (`changed`: rows it rewrote)."""

    step: str
    rows_in: int
    rows_out: int
    changed: int = 0


def normalize_text(text: str, unicode_form: str = "NFC") -> str:
    """Unicode normal form, one line-break style, no invisible characters, tidy whitespace.

    Indentation inside a line is kept (it carries meaning in code and verse);
    trailing spaces, runs of blank lines and leading/trailing whitespace go.
    """
    if unicode_form != "none":
        text = unicodedata.normalize(unicode_form, text)
    text = _LINE_BREAKS.sub("\n", text)
    text = _INVISIBLE.sub("", text)
    text = _ODD_SPACES.sub(" ", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def normalize_batch(batch: dict, unicode_form: str) -> dict:
    cleaned = [normalize_text(t or "", unicode_form) for t in batch["text"]]
    return {"text": cleaned, "_changed": [c != t for c, t in zip(cleaned, batch["text"])]}


def length_mask(batch: dict, min_chars: int, max_chars: int) -> list[bool]:
    return [min_chars <= len(t) <= max_chars and len(t) > 0 for t in batch["text"]]


def hash_batch(batch: dict) -> dict:
    return {"_hash": [hashlib.blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in batch["text"]]}


def first_occurrences(hashes: list[str]) -> list[int]:
    """Indices of the first row of every distinct hash, in order."""
    seen: set[str] = set()
    keep = []
    for i, h in enumerate(hashes):
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return keep


def clean_dataset(ds: Dataset, cfg: CleaningConfig, num_proc: int = 1) -> tuple[Dataset, list[dict]]:
    """Run every cleaning step; return the cleaned rows and per-step statistics."""
    procs = num_proc if num_proc > 1 else None
    stats = []

    rows = len(ds)
    ds = ds.map(normalize_batch, batched=True, num_proc=procs, fn_kwargs={"unicode_form": cfg.unicode_form},
                desc="normalise")
    changed = sum(ds["_changed"]) if rows else 0
    ds = ds.remove_columns("_changed")
    stats.append(StepStats("normalize", rows, rows, changed))

    rows = len(ds)
    ds = ds.filter(length_mask, batched=True, num_proc=procs, desc="length filter",
                   fn_kwargs={"min_chars": cfg.min_chars, "max_chars": cfg.max_chars})
    stats.append(StepStats("length_filter", rows, len(ds)))

    if cfg.dedup:
        rows = len(ds)
        if rows:
            hashes = ds.map(hash_batch, batched=True, num_proc=procs, desc="hash")["_hash"]
            ds = ds.select(first_occurrences(hashes)).flatten_indices()
        stats.append(StepStats("exact_dedup", rows, len(ds)))
    return ds, [asdict(s) for s in stats]
