"""Cleaning one split: normalise, filter by length, scrub PII, then filter by quality
rules, language, exact duplicates and near duplicates; after the validation split is made,
decontaminate the training rows against every evaluation text.

The per-row steps (normalise, length, PII, quality, language) run as one `Dataset.map`
pass; deduplication and decontamination look across rows and run after it. Every pass
is a top-level batched function (so `num_proc` works and `datasets` can fingerprint
it) that marks the rows to drop with a reason. Each step reports rows and bytes in and
out, the rows it dropped per reason and a few of them (with their provenance) for the
data report.

Documented treatments (counted in the report, never silent):
- invalid UTF-8 bytes were read as U+FFFD; normalisation removes them (`invalid_utf8_rows`);
- control characters, the zero-width space, bidi controls and the BOM are removed
  (zero-width joiners stay: emoji sequences need them); CRLF, CR, U+2028,
  U+2029 and NEL become LF; Unicode is brought to NFC (or NFKC);
- e-mail addresses, phone numbers and IP addresses become placeholders (`pii`);
- a row failing a rule is dropped, and the report names the rule.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from datasets import Dataset, Features, Value

from lm_tasks.config import CleaningConfig
from lm_tasks.data.columns import column
from lm_tasks.data.decontamination import NgramIndex
from lm_tasks.data.language_batch import detect_languages
from lm_tasks.data.mapping import LocalMap
from lm_tasks.data.near_dedup import find_near_duplicates
from lm_tasks.data.pii import scrub_pii
from lm_tasks.data.quality_batch import first_failed_rules

# C0/C1 control characters except tab and newline, the zero-width space, direction
# marks and bidi embedding/isolate controls, invisible operators, the BOM, and U+FFFD
# (what invalid UTF-8 bytes become when a file is read). The zero-width joiner and
# non-joiner (U+200D, U+200C) stay: emoji sequences and Persian and Indic scripts need them.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069"
    "\ufeff\ufffd]"
)
# The ASCII characters `_INVISIBLE` keeps: what deleting them from ASCII text leaves, it would remove.
_ASCII_VISIBLE = bytes(c for c in range(0x80) if not _INVISIBLE.match(chr(c)))
_LINE_BREAKS = re.compile("\r\n|\r|\u2028|\u2029|\x85")
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
SAMPLE_CHARS = 300  # characters of a dropped row kept in the report
_ROWS_AT_ONCE = 1000  # rows per call of the batch checks: their numpy arrays then stay in the CPU caches
_LOW_64 = (1 << 64) - 1


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
    dropped_bytes: dict[str, int] = field(default_factory=dict)  # reason -> bytes of those rows
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
    # Each pattern runs only when the text can hold a match (substring tests are much
    # cheaper than a regex scan); ASCII text has no exotic breaks or spaces and is in
    # every Unicode normal form.
    ascii_only = text.isascii()
    if not ascii_only or "\r" in text:
        text = _LINE_BREAKS.sub("\n", text)
    if not ascii_only or text.encode("ascii").translate(None, _ASCII_VISIBLE):
        text = _INVISIBLE.sub("", text)
    if not ascii_only:
        if unicode_form != "none":  # after removing invisibles: one between a letter and its accent blocks composing
            text = unicodedata.normalize(unicode_form, text)
        text = _ODD_SPACES.sub(" ", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING_SPACE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


# The per-row steps run in one pass (every extra `map` would copy the text column again);
# a row dropped by a step skips the ones after it. The step that dropped a row and the
# row's size after each step are recorded, so each step's counts come out exactly as if
# the steps had run one after another. Normalisation and PII go row by row; the quality
# rules and the language check each run once for the whole batch (quality_batch.py,
# language_batch.py: the same results as quality.py and language.py, several times cheaper).
def clean_rows_batch(batch: dict, unicode_form: str, min_chars: int, max_chars: int, pii: list[str],
                     thresholds: dict, languages: list[str] | None) -> dict:
    out: dict[str, list] = {key: [] for key in ("text", "n_bytes", "_raw_bytes", "_norm_bytes", "_changed",
                                                "_invalid", "_language", "_step", "_reason")}
    for kind in pii:
        out[f"_pii_{kind}"] = []
    checked = []  # the rows that passed the length check
    for raw in batch["text"]:
        raw = raw or ""
        text = normalize_text(raw, unicode_form)
        out["_raw_bytes"].append(_utf8_length(raw, errors="replace"))
        out["_norm_bytes"].append(_utf8_length(text))
        out["_changed"].append(text != raw)
        out["_invalid"].append("\ufffd" in raw)
        step, reason, found = "", "", {}
        if len(text) < max(min_chars, 1) or len(text) > max_chars:
            step, reason = "length", "too_short" if len(text) < max(min_chars, 1) else "too_long"
        else:
            if pii:
                text, found = scrub_pii(text, tuple(pii))
            checked.append(len(out["text"]))
        for kind in pii:
            out[f"_pii_{kind}"].append(found.get(kind, 0))
        out["text"].append(text)
        out["n_bytes"].append(_utf8_length(text))
        out["_language"].append("")
        out["_step"].append(step)
        out["_reason"].append(reason)
    texts = out["text"]
    for at in range(0, len(checked), _ROWS_AT_ONCE):
        rows = checked[at:at + _ROWS_AT_ONCE]
        rules = first_failed_rules([texts[i] for i in rows], thresholds) if thresholds else [None] * len(rows)
        for i, rule in zip(rows, rules):
            if rule:
                out["_step"][i], out["_reason"][i] = "quality", rule
        passed = [i for i, rule in zip(rows, rules) if not rule]
        for i, language in zip(passed, detect_languages([texts[i] for i in passed])):
            out["_language"][i] = language
            if languages and language not in languages:
                out["_step"][i], out["_reason"][i] = "language", f"language_{language}"
    return out


def _utf8_length(text: str, errors: str = "strict") -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", errors))  # ASCII: one byte a character, no copy


def clean_text(text: str, cfg: CleaningConfig) -> str:
    """A text rewritten as the per-row steps rewrite a kept row (normal form, PII placeholders):
    evaluation texts are brought to the same form before training rows are matched against them."""
    text = normalize_text(text, cfg.unicode_form)
    return scrub_pii(text, tuple(cfg.pii))[0] if cfg.pii else text


def text_hash(text: str) -> int:
    """128-bit hash of a text: collisions stay negligible at billions of rows."""
    return xxhash.xxh3_128_intdigest(text.encode("utf-8"))


def hash_batch(batch: dict) -> dict:
    hashes = [text_hash(t) for t in batch["text"]]
    return {"_h0": np.array([h >> 64 for h in hashes], dtype=np.uint64),
            "_h1": np.array([h & _LOW_64 for h in hashes], dtype=np.uint64)}


def eval_text_hashes(texts) -> np.ndarray:
    """Sorted 64-bit hashes of evaluation texts, for `contamination_reason_batch`."""
    return np.unique(np.fromiter((xxhash.xxh3_64_intdigest(t.encode("utf-8")) for t in texts), dtype=np.uint64))


def contamination_reason_batch(batch: dict, index: NgramIndex, eval_hashes: np.ndarray) -> dict:
    texts = batch["text"]
    hashes = np.fromiter((xxhash.xxh3_64_intdigest(t.encode("utf-8")) for t in texts), dtype=np.uint64,
                         count=len(texts))
    at = np.minimum(np.searchsorted(eval_hashes, hashes), max(len(eval_hashes) - 1, 0))
    equal = eval_hashes[at] == hashes if len(eval_hashes) else np.zeros(len(texts), dtype=bool)
    shares = index.contaminated(texts)
    return {"_reason": np.where(equal, "equals_eval_text", np.where(shares, "shares_eval_ngram", "")).tolist()}


# --- the steps -----------------------------------------------------------------------


def clean_split(ds: Dataset, cfg: CleaningConfig, mapper=None) -> tuple[Dataset, list[StepReport]]:
    """Every step before the validation split; returns the kept rows and the step reports
    (up to the step that left no row, if one did). `mapper` runs the per-row passes
    (lm_tasks.data.mapping; default: this process)."""
    mapper = mapper or LocalMap()
    ds, reports = row_steps(ds, cfg, mapper)
    for step in ([exact_dedup] if cfg.exact_dedup else []) + ([near_dedup] if cfg.near_dedup.enabled else []):
        if not len(ds):
            break
        ds, report = step(ds, cfg, mapper)
        reports.append(report)
    return ds, reports


def row_steps(ds: Dataset, cfg: CleaningConfig, mapper) -> tuple[Dataset, list[StepReport]]:
    """Normalise, length, PII, quality rules, language: one pass, one report per step."""
    thresholds = {k: v for k, v in asdict(cfg.quality).items() if v is not None}
    kwargs = {"unicode_form": cfg.unicode_form, "min_chars": cfg.min_chars, "max_chars": cfg.max_chars,
              "pii": list(cfg.pii), "thresholds": thresholds, "languages": cfg.languages}
    ds = mapper(ds, clean_rows_batch, fn_kwargs=kwargs, desc="clean rows")
    table = ds.with_format("arrow")[:] if len(ds) else None

    def column(name: str) -> np.ndarray:
        return table[name].to_numpy(zero_copy_only=False) if table is not None else np.zeros(0)

    step, raw, norm, final = column("_step"), column("_raw_bytes"), column("_norm_bytes"), column("n_bytes")
    every = np.ones(len(ds), dtype=bool)
    passed = {"length": step != "length"}
    passed["quality"] = passed["length"] & (step != "quality")
    passed["language"] = passed["quality"] & (step != "language")

    def report(name: str, rows_in: np.ndarray, rows_out: np.ndarray, bytes_in: np.ndarray, bytes_out: np.ndarray,
               **extra) -> StepReport:
        return StepReport(name, int(rows_in.sum()), int(rows_out.sum()), int(bytes_in[rows_in].sum()),
                          int(bytes_out[rows_out].sum()), **extra)

    reports = [report("normalize", every, every, raw, norm, changed=int(column("_changed").sum()),
                      details={"invalid_utf8_rows": int(column("_invalid").sum())}),
               report("length", every, passed["length"], norm, norm)]
    if cfg.pii:
        found = {kind: column(f"_pii_{kind}") for kind in cfg.pii}
        changed = sum(found.values()) > 0
        reports.append(report("pii", passed["length"], passed["length"], norm, final,
                              changed=int((changed & passed["length"]).sum()),
                              details={"replaced": {kind: int(n.sum()) for kind, n in found.items()}}))
    if thresholds:
        reports.append(report("quality", passed["length"], passed["quality"], final, final))
    # the language mix of every row that reached the language check
    languages = _value_counts(pc.filter(table["_language"], passed["quality"])) if table is not None else {}
    reports.append(report("language", passed["quality"], passed["language"], final, final,
                          details={"languages": languages, "keep": cfg.languages}))
    for r in reports:  # what each step dropped, by reason, with a few samples
        if table is not None:
            mine = pc.if_else(pc.equal(table["_step"], r.step), table["_reason"], "")
            r.dropped, r.dropped_bytes, r.samples = _by_reason(ds, mine, cfg.dropped_samples)
    kept = ds.select(np.flatnonzero(passed["language"])) if len(ds) else ds
    kept = kept.remove_columns([c for c in ds.column_names if c.startswith("_")])
    return kept, [r for r in reports if r.rows_in or r.step == "normalize"]


def decontaminate(ds: Dataset, index: NgramIndex, eval_hashes: np.ndarray, cfg: CleaningConfig,
                  mapper=None) -> tuple[Dataset, StepReport]:
    """Drop rows sharing an n-gram with the evaluation texts in `index`, or equal to one
    (`eval_hashes`: from `eval_text_hashes`; this catches texts too short for n-grams)."""
    reasons = _reasons(ds, contamination_reason_batch, {"index": index, "eval_hashes": eval_hashes},
                       mapper or LocalMap(), "decontaminate")
    ds, report = _drop(ds, "decontamination", reasons, cfg.dropped_samples)
    report.details = {"eval_ngrams": len(index), "ngram": cfg.decontamination.ngram}
    return ds, report


def exact_dedup(ds: Dataset, cfg: CleaningConfig, mapper) -> tuple[Dataset, StepReport]:
    """Keep the first row of every distinct normalised text (128-bit hashes, 16 bytes a row
    in memory; the text stays on disk)."""
    hashes = mapper(ds, hash_batch, fn_kwargs={}, remove_columns=ds.column_names, desc="hash",
                    features=Features({"_h0": Value("uint64"), "_h1": Value("uint64")}))
    pairs = np.stack([column_values(hashes, "_h0"), column_values(hashes, "_h1")], axis=1)
    _, first, counts = np.unique(pairs, axis=0, return_index=True, return_counts=True)
    duplicate = np.ones(len(ds), dtype=bool)
    duplicate[first] = False
    ds, report = _drop(ds, "exact_dedup", pa.array(np.where(duplicate, "duplicate", "")), cfg.dropped_samples)
    sizes = Counter(int(n) for n in counts if n > 1)
    report.details = {"cluster_sizes": {str(k): v for k, v in sorted(sizes.items())}}
    return ds, report


def near_dedup(ds: Dataset, cfg: CleaningConfig, mapper) -> tuple[Dataset, StepReport]:
    """MinHash + LSH: keep the first row of every cluster of near duplicates."""
    n = cfg.near_dedup
    result = find_near_duplicates(ds, num_perm=n.num_perm, shingle_size=n.shingle_size, threshold=n.threshold,
                                  mapper=mapper)
    kept_of = {member: cluster[0] for cluster in result.clusters for member in cluster[1:]}
    duplicate = np.zeros(len(ds), dtype=bool)
    duplicate[list(kept_of)] = True

    def duplicate_of(i: int) -> dict:  # the kept row a dropped one duplicates
        kept = ds[kept_of[i]]
        return {"duplicate_of": {"source": kept["source"], "row": kept["row"], "text": kept["text"][:SAMPLE_CHARS]}}

    kept, report = _drop(ds, "near_dedup", pa.array(np.where(duplicate, "near_duplicate", "")),
                         cfg.dropped_samples, describe=duplicate_of)
    sizes = Counter(len(c) for c in result.clusters)
    report.details = {"cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
                      "candidate_pairs": result.candidate_pairs, "verified_pairs": result.verified_pairs,
                      "num_perm": n.num_perm, "shingle_size": n.shingle_size, "threshold": n.threshold}
    return kept, report


# --- helpers -------------------------------------------------------------------------


def _reasons(ds: Dataset, fn, kwargs: dict, mapper, desc: str):
    """`fn`'s `_reason` per row, computed without copying the other columns."""
    marked = mapper(ds, fn, fn_kwargs=kwargs, remove_columns=ds.column_names, desc=desc)
    return marked.with_format("arrow")["_reason"]


def _drop(ds: Dataset, step: str, reasons, samples: int, describe=None) -> tuple[Dataset, StepReport]:
    """Keep the rows whose reason is empty (an index selection: nothing is copied); report
    the others by reason with a few samples."""
    rows, before = len(ds), _bytes(ds)
    dropped, dropped_bytes, examples = _by_reason(ds, reasons, samples, describe) if rows else ({}, {}, [])
    kept = ds.select(pc.indices_nonzero(pc.equal(reasons, "")).to_numpy().astype(np.int64)) if rows else ds
    return kept, StepReport(step, rows, len(kept), before, _bytes(kept), dropped=dropped,
                            dropped_bytes=dropped_bytes, samples=examples)


def _by_reason(ds: Dataset, reasons, samples: int,
               describe=None) -> tuple[dict[str, int], dict[str, int], list[dict]]:
    """Rows and bytes per non-empty reason (`reasons`: an Arrow array aligned with ds) and the
    first `samples` of each with their provenance (`describe(index)` adds to a sample)."""
    marked = pc.not_equal(reasons, "")  # grouped after filtering: most rows have no reason
    sums = pa.table({"reason": reasons, "n_bytes": column(ds, "n_bytes")}).filter(marked).group_by(
        "reason").aggregate([("n_bytes", "sum"), ("n_bytes", "count")]).to_pylist()
    dropped = {s["reason"]: s["n_bytes_count"] for s in sums}
    dropped_bytes = {s["reason"]: s["n_bytes_sum"] for s in sums}
    examples = []
    for reason in sorted(dropped):
        for i in pc.indices_nonzero(pc.equal(reasons, reason))[:samples].to_pylist():
            row = ds[i]
            examples.append({"reason": reason, "source": row["source"], "row": row["row"],
                             "text": row["text"][:SAMPLE_CHARS], **(describe(i) if describe else {})})
    return dropped, dropped_bytes, examples


def column_values(ds: Dataset, name: str) -> np.ndarray:
    """A numeric column as one numpy array, read through Arrow (the numpy format would
    convert it row by row)."""
    return column(ds, name).to_numpy()


def _bytes(ds: Dataset) -> int:
    return int(pc.sum(column(ds, "n_bytes")).as_py() or 0) if len(ds) else 0


def _value_counts(values) -> dict[str, int]:
    counts = pc.value_counts(values).to_pylist()
    return {item["values"]: item["counts"] for item in sorted(counts, key=lambda c: -c["counts"])}
