"""Cleaning one split: normalise, filter by length, scrub PII, then filter by quality
rules, language, exact duplicates and near duplicates; after the validation split is made,
decontaminate the training rows against every evaluation text.

Every step is a `Dataset.map` of a top-level batched function (so `num_proc` works and
`datasets` can fingerprint it) followed, for filters, by dropping the rows it marked
with a reason. Each step reports rows and bytes in and out, the rows it dropped per
reason and a few of them (with their provenance) for the data report.

Documented treatments (counted in the report, never silent):
- invalid UTF-8 bytes were read as U+FFFD; normalisation removes them (`invalid_utf8_rows`);
- control characters, the zero-width space, bidi controls and the BOM are removed
  (zero-width joiners stay: emoji sequences need them); CRLF, CR, U+2028,
  U+2029 and NEL become LF; Unicode is brought to NFC (or NFKC);
- e-mail addresses, phone numbers and IP addresses become placeholders (`pii`);
- a row failing a rule is dropped, and the report names the rule.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

from lm_tasks.config import CleaningConfig
from lm_tasks.data.decontamination import NgramIndex, contamination_batch
from lm_tasks.data.language import language_batch
from lm_tasks.data.near_dedup import find_near_duplicates
from lm_tasks.data.pii import scrub_pii
from lm_tasks.data.quality import quality_batch

# C0/C1 control characters except tab and newline, the zero-width space, direction
# marks and bidi embedding/isolate controls, invisible operators, the BOM, and U+FFFD
# (what invalid UTF-8 bytes become when a file is read). The zero-width joiner and
# non-joiner (U+200D, U+200C) stay: emoji sequences and Persian and Indic scripts need them.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069"
    "\ufeff\ufffd]"
)
_LINE_BREAKS = re.compile("\r\n|\r|\u2028|\u2029|\x85")
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
SAMPLE_CHARS = 300  # characters of a dropped row kept in the report


@dataclass
class StepReport:
    """What one step did to one split."""

    step: str
    rows_in: int
    rows_out: int
    bytes_in: int
    bytes_out: int
    changed: int = 0  # rows rewritten (normalise, PII)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    details: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)  # a few dropped rows: reason, source, row, text

    def to_dict(self) -> dict:
        return asdict(self)


# --- the batched functions (top level, parameters as keyword arguments) ----------------


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
    return {"text": cleaned, "n_bytes": [len(t.encode("utf-8")) for t in cleaned],
            "_changed": [c != t for c, t in zip(cleaned, batch["text"])],
            "_invalid": ["\ufffd" in (t or "") for t in batch["text"]]}


def pii_batch(batch: dict, kinds: list[str]) -> dict:
    texts, counts = [], {kind: [] for kind in kinds}
    for text in batch["text"]:
        scrubbed, found = scrub_pii(text, tuple(kinds))
        texts.append(scrubbed)
        for kind in kinds:
            counts[kind].append(found.get(kind, 0))
    return {"text": texts, "n_bytes": [len(t.encode("utf-8")) for t in texts],
            **{f"_pii_{kind}": values for kind, values in counts.items()}}


def length_batch(batch: dict, min_chars: int, max_chars: int) -> dict:
    return {"_reason": ["too_short" if len(t) < max(min_chars, 1) else "too_long" if len(t) > max_chars else ""
                        for t in batch["text"]]}


def quality_reason_batch(batch: dict, thresholds: dict) -> dict:
    return {"_reason": quality_batch(batch, thresholds)["_rule"]}


def language_reason_batch(batch: dict, keep: list[str] | None) -> dict:
    languages = language_batch(batch)["_language"]
    reasons = ["" if keep is None or lang in keep else f"language_{lang}" for lang in languages]
    return {"_language": languages, "_reason": reasons}


def hash_batch(batch: dict) -> dict:
    return {"_hash": [hashlib.blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in batch["text"]]}


# --- the steps -----------------------------------------------------------------------


def clean_split(ds: Dataset, cfg: CleaningConfig, num_proc: int = 1) -> tuple[Dataset, list[StepReport]]:
    """Every step before the validation split; returns the kept rows and the step reports
    (up to the step that left no row, if one did)."""
    procs = num_proc if num_proc > 1 else None
    steps = [normalize, length_filter]  # length first: later steps need not scan rows that go anyway
    steps += [scrub] if cfg.pii else []
    steps += [quality_filter] if any(v is not None for v in asdict(cfg.quality).values()) else []
    steps += [language_filter]
    steps += [exact_dedup] if cfg.exact_dedup else []
    steps += [near_dedup] if cfg.near_dedup.enabled else []
    reports = []
    for step in steps:
        ds, report = step(ds, cfg, procs)
        reports.append(report)
        if not len(ds):
            break
    return ds, reports


def normalize(ds: Dataset, cfg: CleaningConfig, procs: int | None) -> tuple[Dataset, StepReport]:
    rows, raw_bytes = len(ds), _raw_bytes(ds)
    ds = ds.map(normalize_batch, batched=True, num_proc=procs, fn_kwargs={"unicode_form": cfg.unicode_form},
                desc="normalise")
    report = StepReport("normalize", rows, rows, raw_bytes, _bytes(ds), changed=_count(ds, "_changed"),
                        details={"invalid_utf8_rows": _count(ds, "_invalid")})
    return ds.remove_columns(["_changed", "_invalid"]), report


def length_filter(ds: Dataset, cfg: CleaningConfig, procs: int | None) -> tuple[Dataset, StepReport]:
    return _filter(ds, "length", length_batch, {"min_chars": cfg.min_chars, "max_chars": cfg.max_chars},
                   procs, cfg.dropped_samples)


def scrub(ds: Dataset, cfg: CleaningConfig, procs: int | None) -> tuple[Dataset, StepReport]:
    rows, before = len(ds), _bytes(ds)
    columns = [f"_pii_{kind}" for kind in cfg.pii]
    ds = ds.map(pii_batch, batched=True, num_proc=procs, fn_kwargs={"kinds": list(cfg.pii)}, desc="scrub PII")
    found = {kind: _sum(ds, f"_pii_{kind}") for kind in cfg.pii}
    report = StepReport("pii", rows, rows, before, _bytes(ds), changed=_nonzero_rows(ds, columns),
                        details={"replaced": found})
    return ds.remove_columns(columns), report


def quality_filter(ds: Dataset, cfg: CleaningConfig, procs: int | None) -> tuple[Dataset, StepReport]:
    thresholds = {k: v for k, v in asdict(cfg.quality).items() if v is not None}
    return _filter(ds, "quality", quality_reason_batch, {"thresholds": thresholds}, procs, cfg.dropped_samples)


def language_filter(ds: Dataset, cfg: CleaningConfig, procs: int | None) -> tuple[Dataset, StepReport]:
    ds = ds.map(language_reason_batch, batched=True, num_proc=procs, fn_kwargs={"keep": cfg.languages},
                desc="language")
    languages = _value_counts(ds, "_language")  # the mix of every row that reached this step
    ds, report = _drop_marked(ds.remove_columns("_language"), "language", cfg.dropped_samples, procs)
    report.details = {"languages": languages, "keep": cfg.languages}
    return ds, report


def decontaminate(ds: Dataset, index: NgramIndex, cfg: CleaningConfig, num_proc: int = 1,
                  ) -> tuple[Dataset, StepReport]:
    """Drop rows sharing an n-gram with the evaluation texts in `index`."""
    procs = num_proc if num_proc > 1 else None
    ds = ds.map(contamination_batch, batched=True, num_proc=procs, fn_kwargs={"index": index},
                desc="decontaminate")
    ds = ds.map(_contaminated_reason, batched=True, input_columns="_contaminated", remove_columns="_contaminated")
    ds, report = _drop_marked(ds, "decontamination", cfg.dropped_samples, procs)
    report.details = {"eval_ngrams": len(index), "ngram": cfg.decontamination.ngram}
    return ds, report


def _contaminated_reason(flags: list[bool]) -> dict:
    return {"_reason": ["shares_eval_ngram" if flag else "" for flag in flags]}


def exact_dedup(ds: Dataset, cfg: CleaningConfig, procs: int | None) -> tuple[Dataset, StepReport]:
    """Keep the first row of every distinct normalised text."""
    hashes = ds.map(hash_batch, batched=True, num_proc=procs, desc="hash")["_hash"] if len(ds) else []
    seen: dict[str, int] = {}
    reasons = []
    for h in hashes:
        reasons.append("" if h not in seen else "duplicate")
        seen[h] = seen.get(h, 0) + 1
    sizes = Counter(n for n in seen.values() if n > 1)
    ds = ds.add_column("_reason", reasons)
    ds, report = _drop_marked(ds, "exact_dedup", cfg.dropped_samples, procs)
    report.details = {"cluster_sizes": {str(k): v for k, v in sorted(sizes.items())}}
    return ds, report


def near_dedup(ds: Dataset, cfg: CleaningConfig, procs: int | None) -> tuple[Dataset, StepReport]:
    """MinHash + LSH: keep the first row of every cluster of near duplicates."""
    n = cfg.near_dedup
    result = find_near_duplicates(ds, num_perm=n.num_perm, shingle_size=n.shingle_size, threshold=n.threshold,
                                  num_proc=procs)
    reasons = [""] * len(ds)
    kept_of = {}
    for cluster in result.clusters:
        for member in cluster[1:]:
            reasons[member] = "near_duplicate"
            kept_of[member] = cluster[0]
    marked = ds.add_column("_reason", reasons)

    def duplicate_of(i: int) -> dict:  # the kept row a dropped one duplicates
        kept = marked[kept_of[i]]
        return {"duplicate_of": {"source": kept["source"], "row": kept["row"], "text": kept["text"][:SAMPLE_CHARS]}}

    ds, report = _drop_marked(marked, "near_dedup", cfg.dropped_samples, procs, describe=duplicate_of)
    sizes = Counter(len(c) for c in result.clusters)
    report.details = {"cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
                      "candidate_pairs": result.candidate_pairs, "verified_pairs": result.verified_pairs,
                      "num_perm": n.num_perm, "shingle_size": n.shingle_size, "threshold": n.threshold}
    return ds, report


# --- helpers -------------------------------------------------------------------------


def _filter(ds: Dataset, step: str, fn, kwargs: dict, procs: int | None,
            samples: int) -> tuple[Dataset, StepReport]:
    ds = ds.map(fn, batched=True, num_proc=procs, fn_kwargs=kwargs, desc=step)
    return _drop_marked(ds, step, samples, procs)


def _drop_marked(ds: Dataset, step: str, samples: int, procs: int | None,
                 describe=None) -> tuple[Dataset, StepReport]:
    """Drop the rows whose `_reason` is not empty; report them by reason with a few
    samples (`describe(index)` adds to a sample)."""
    rows, before = len(ds), _bytes(ds)
    dropped, examples = {}, []
    if rows:
        reasons = ds.with_format("arrow")["_reason"]
        dropped = {item["values"]: item["counts"] for item in pc.value_counts(reasons).to_pylist() if item["values"]}
        for reason in sorted(dropped):
            for i in pc.indices_nonzero(pc.equal(reasons, reason))[:samples].to_pylist():
                row = ds[i]
                examples.append({"reason": reason, "source": row["source"], "row": row["row"],
                                 "text": row["text"][:SAMPLE_CHARS], **(describe(i) if describe else {})})
    kept = ds.filter(_is_kept, batched=True, input_columns="_reason", num_proc=procs, desc=f"{step} filter")
    kept = kept.remove_columns("_reason")
    return kept, StepReport(step, rows, len(kept), before, _bytes(kept), dropped=dropped, samples=examples)


def _is_kept(reasons: list[str]) -> list[bool]:
    return [not r for r in reasons]


def _raw_bytes(ds: Dataset) -> int:
    if not len(ds):
        return 0
    return int(pc.sum(pc.binary_length(pc.cast(ds.with_format("arrow")["text"], "binary"))).as_py() or 0)


def _bytes(ds: Dataset) -> int:
    return _sum(ds, "n_bytes")


def _sum(ds: Dataset, column: str) -> int:
    return int(pc.sum(ds.with_format("arrow")[column]).as_py() or 0) if len(ds) else 0


def _count(ds: Dataset, column: str) -> int:
    return int(pc.sum(pc.cast(ds.with_format("arrow")[column], "int64")).as_py() or 0) if len(ds) else 0


def _nonzero_rows(ds: Dataset, columns: list[str]) -> int:
    if not len(ds):
        return 0
    table = ds.with_format("arrow")[:]
    total = np.zeros(len(ds), dtype=np.int64)
    for column in columns:
        total += table[column].to_numpy()
    return int((total > 0).sum())


def _value_counts(ds: Dataset, column: str) -> dict[str, int]:
    if not len(ds):
        return {}
    counts = pc.value_counts(ds.with_format("arrow")[column]).to_pylist()
    return {item["values"]: item["counts"] for item in sorted(counts, key=lambda c: -c["counts"])}
