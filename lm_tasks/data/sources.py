"""Load raw text from the configured source: embedded, a Hub dataset, or local files.

Every source returns a `DatasetDict` with a "train" split and, when the source
provides one, a "validation" split, each with three columns:

    text     the raw text of one row
    source   where it came from: a file path, `hub:<name>[/<config>]:<split>`, `embedded:...`
    row      its place there: the first line (1-based) of a txt paragraph or jsonl/csv
             record, the record number (1-based) in a .json array, the row index of a
             parquet file or Hub split

and a "read" step report per split that counts the records skipped for being longer
than `data.max_record_bytes` (`oversized_record`, with their file and line in the samples).

Local files come from untrusted hands: they are read by bounded streaming readers
(lm_tasks/data/bounded.py) that never hold more than `data.max_record_bytes` of one
record, whatever the file holds; a longer record is read past in chunks, skipped and
counted, before anything is decoded or normalised. Errors name the file and line:
- any format but parquet: `.gz` and `.zst` files are decompressed, UTF-16/32 text (by its
  byte-order mark) transcoded, while streaming (lm_tasks/data/opening.py); `data.format`
  names the format of files whose extension does not (WikiText's `.raw`, `.tokens`).
- txt: decoded as UTF-8 with invalid bytes replaced by U+FFFD (normalisation then
  removes them and counts the rows); a leading BOM is dropped; CRLF, CR and LF all
  end a line. A paragraph (or, with `txt_sample_by=document`, the whole file, or with
  `line` a line) is one record; `auto` takes paragraphs unless the file's first 200
  lines hold no blank one (a record per line, the common layout), and logs which.
- jsonl: a line that is not valid JSON, or a record without the text field, is an
  error naming the file and line. Empty lines are skipped. A .json file holding one
  JSON array is streamed record by record; its rows are numbered by record (1-based).
- csv: a record runs over line ends while a double quote is open (RFC 4180); a missing
  text column is an error naming the file and its columns.
- parquet: read in small batches; a cell longer than the limit is skipped.
Hub rows longer than the limit are skipped too. `max_rows` / `max_bytes` stop reading
early; with `streaming=true` a Hub dataset is streamed, so only what is taken is downloaded.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, Value, concatenate_datasets, load_dataset

from lm_tasks.config import DataConfig
from lm_tasks.data.bounded import BOM, CHUNK, Oversized, csv_records, json_array, lines, starts_json_array
from lm_tasks.data.cleaning import StepReport, column_values
from lm_tasks.data.embedded import embedded_corpus
from lm_tasks.data.files import DataSourceError, expand_files
from lm_tasks.data.mapping import DaskMap
from lm_tasks.data.opening import COMPRESSED, DECOMPRESSION_ERRORS, file_format, open_utf8

log = logging.getLogger(__name__)

# `oversized`: 0, or the size in bytes of a record skipped for its size (removed by load_raw).
FEATURES = Features({"text": Value("string"), "source": Value("string"), "row": Value("int64"),
                     "oversized": Value("int64")})
LAYOUT_LINES, LAYOUT_MIN_LINES = 200, 20  # txt_sample_by=auto: the lines looked at, the fewest that decide
_BATCH_ROWS = 1000
_BATCH_CHARS = 1 << 23  # 8 Mi characters: at most 32 MiB of UTF-8 text per batch
CSV_FIELD_LIMIT = 1 << 17  # Python's default field limit: never lowered below it
OVERSIZED = "oversized_record"


class EmptyDataError(DataSourceError, ValueError):
    """No rows are left to train or validate on."""


class HubUnreachableError(DataSourceError, ConnectionError):
    """The Hub could not be reached (retried as an I/O error by the flows)."""


def load_raw(cfg: DataConfig, scratch_dir: str | Path, mapper=None) -> tuple[DatasetDict, dict[str, StepReport]]:
    """The raw rows of every split and the "read" step of each; Arrow files are written
    under `scratch_dir`. With a Dask `mapper` (lm_tasks.data.mapping.DaskMap) several local
    files are read on the workers, one file per partition, and concatenated in order."""
    if cfg.source == "embedded":
        splits = {"train": _generate(_read_embedded, {}, cfg, scratch_dir)}
    elif cfg.source == "hub":
        splits = _load_hub(cfg, scratch_dir)
    else:
        splits = {"train": _load_files(cfg, cfg.files, "data.files", scratch_dir, mapper)}
        if cfg.validation_files:
            splits["validation"] = _load_files(cfg, cfg.validation_files, "data.validation_files", scratch_dir, mapper)
    reads = {split: _drop_oversized(ds, split, cfg) for split, ds in splits.items()}
    return DatasetDict({split: ds for split, (ds, _) in reads.items()}), {split: r for split, (_, r) in reads.items()}


def _drop_oversized(ds: Dataset, split: str, cfg: DataConfig) -> tuple[Dataset, StepReport]:
    """The rows within the record limit, and the "read" step counting the others."""
    sizes = column_values(ds, "oversized")
    skipped = np.flatnonzero(sizes)
    kept = ds.select(np.flatnonzero(sizes == 0)) if len(skipped) else ds
    kept = kept.remove_columns("oversized")
    kept_bytes = int(pc.sum(pc.binary_length(pc.cast(kept.data.column("text"), "binary"))).as_py() or 0) \
        if len(kept) else 0
    report = StepReport("read", len(ds), len(kept), kept_bytes + int(sizes.sum()), kept_bytes)
    if len(skipped):
        first = ds.select(skipped[:max(cfg.cleaning.dropped_samples, 5)])
        places = [f"{r['source']}:{r['row']} ({r['oversized']:,} B)" for r in first]
        report.dropped, report.dropped_bytes = {OVERSIZED: len(skipped)}, {OVERSIZED: int(sizes.sum())}
        report.samples = [{"reason": OVERSIZED, "source": r["source"], "row": r["row"], "text": "",
                           "bytes": r["oversized"]} for r in first][:cfg.cleaning.dropped_samples]
        log.warning("%s data: skipped %d record(s) longer than data.max_record_bytes=%d: %s%s", split,
                    len(skipped), cfg.max_record_bytes, "; ".join(places[:5]), " ..." if len(skipped) > 5 else "")
        if not len(kept):
            raise EmptyDataError(
                f"Every record of the {split} data from source '{cfg.name}' is longer than "
                f"data.max_record_bytes={cfg.max_record_bytes} ({len(skipped)} skipped: {', '.join(places[:5])}). "
                "Check the file (a txt file without blank lines is one paragraph; try data.txt_sample_by=line) "
                "or raise data.max_record_bytes."
            )
    return kept, report


def _generate(reader, kwargs: dict, cfg: DataConfig, scratch_dir: str | Path) -> Dataset:
    """A Dataset of reader(**kwargs)'s records, cut at max_rows / max_bytes.

    The records go to an Arrow file under `scratch_dir` in batches of `_BATCH_ROWS` rows or
    `_BATCH_CHARS` characters, whichever comes first (`Dataset.from_generator` would encode
    them one by one, the slowest part of reading), so memory stays bounded.
    """
    Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=scratch_dir, prefix="read-", suffix=".arrow")
    os.close(fd)
    schema = FEATURES.arrow_schema
    rows = 0
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batch: dict[str, list] = {name: [] for name in FEATURES}
        chars = 0
        for record in _limited(reader, kwargs, cfg.max_rows, cfg.max_bytes):
            for name, values in batch.items():
                values.append(record[name])
            chars += len(record["text"])
            if len(batch["text"]) >= _BATCH_ROWS or chars >= _BATCH_CHARS:
                writer.write_batch(pa.record_batch(batch, schema=schema))
                rows += len(batch["text"])
                batch, chars = {name: [] for name in FEATURES}, 0
        if batch["text"]:
            writer.write_batch(pa.record_batch(batch, schema=schema))
            rows += len(batch["text"])
    if not rows:
        return Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
    return Dataset.from_file(path)


def _limited(reader, kwargs: dict, max_rows: int | None, max_bytes: int | None) -> Iterator[dict]:
    rows = n_bytes = 0
    for record in reader(**kwargs):
        if (max_rows is not None and rows >= max_rows) or (max_bytes is not None and n_bytes >= max_bytes):
            return
        if not record["oversized"]:  # a skipped record takes no share of what is read
            rows += 1
            if max_bytes is not None:
                n_bytes += len(record["text"].encode("utf-8", errors="replace"))
        yield record


# --- embedded ------------------------------------------------------------------------


def _read_embedded() -> Iterator[dict]:
    for i, text in enumerate(embedded_corpus()["text"]):
        yield _record(text, "embedded:pydoc_data.topics", i)


# --- the Hub -------------------------------------------------------------------------


def _hub_offline_mode() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_hub(cfg: DataConfig, scratch_dir: str | Path) -> dict[str, Dataset]:
    label = f"'{cfg.hub_name}'" + (f" (config '{cfg.hub_config}')" if cfg.hub_config else "")
    names = {"train": cfg.train_split, **({"validation": cfg.validation_split} if cfg.validation_split else {})}
    try:
        loaded = load_dataset(cfg.hub_name, cfg.hub_config, revision=cfg.hub_revision, streaming=cfg.streaming)
    except Exception as err:  # datasets raises many types for "unreachable" and "missing"
        # Offline mode on (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE) and not cached: trying again cannot help.
        offline_mode = "OfflineModeIsEnabled" in str(err) or _hub_offline_mode()
        unreachable = not offline_mode and (isinstance(err, ConnectionError) or "offline" in str(err).lower())
        kind = HubUnreachableError if unreachable else DataSourceError
        raise kind(
            f"Could not load the Hub dataset {label}: {type(err).__name__}: {err}\n"
            + ("Hugging Face's offline mode is on and the dataset is not in the local cache. " if offline_mode else "")
            + "Without network access, download the files elsewhere and use the local-files "
            "source instead: data=local data.files=[path/to/train.jsonl] data.text_column=<column>"
        ) from err
    splits = {}
    for split, name in names.items():
        if name not in loaded:
            raise DataSourceError(f"Hub dataset {label} has no split '{name}'; it has {sorted(loaded)}")
        columns = loaded[name].column_names  # None for some streamed datasets until read
        if columns is not None and cfg.text_column not in columns:
            raise DataSourceError(f"Hub dataset {label} split '{name}' has no column '{cfg.text_column}' "
                                  f"(columns: {columns}); set data.text_column to the column that holds the text")
        source = f"hub:{cfg.hub_name}" + (f"/{cfg.hub_config}" if cfg.hub_config else "") + f":{name}"
        splits[split] = _generate(_read_rows, {"rows": loaded[name], "column": cfg.text_column, "source": source,
                                               "limit": cfg.max_record_bytes}, cfg, scratch_dir)
    return splits


def _read_rows(rows, column: str, source: str, limit: int) -> Iterator[dict]:
    for i, record in enumerate(rows):
        if column not in record:
            raise DataSourceError(f"{source} row {i} has no column '{column}' (columns: {sorted(record)})")
        text = record[column] or ""
        # more characters than the limit is too long in bytes too: only shorter texts are encoded to measure
        size = len(text) if len(text) > limit else len(text.encode("utf-8", errors="replace"))
        yield _oversized(source, i, size) if size > limit else _record(text, source, i)


# --- local files ---------------------------------------------------------------------


def _load_files(cfg: DataConfig, patterns: list[str], key: str, scratch_dir: str | Path, mapper=None) -> Dataset:
    files = expand_files(patterns, key)
    for path in files:
        file_format(path, cfg.format)  # an unknown format fails here, before anything is read
    kwargs = {"files": files, "column": cfg.text_column, "sample_by": cfg.txt_sample_by,
              "limit": cfg.max_record_bytes, "configured_format": cfg.format}
    # max_rows / max_bytes cut the files read in order: only a whole read can be spread
    if isinstance(mapper, DaskMap) and len(files) > 1 and cfg.max_rows is None and cfg.max_bytes is None:
        calls = [(_read_files, {**kwargs, "files": [file]}, cfg, scratch_dir) for file in files]
        return concatenate_datasets(mapper.each(_generate, calls))
    return _generate(_read_files, kwargs, cfg, scratch_dir)


def _read_files(files: list[str], column: str, sample_by: str, limit: int, configured_format: str) -> Iterator[dict]:
    for path in files:
        try:
            yield from _read_file(path, file_format(path, configured_format), column, sample_by, limit)
        except DECOMPRESSION_ERRORS as err:
            raise DataSourceError(f"{path}: cannot decompress it ({type(err).__name__}: {err})") from None


def _read_file(path: str, kind: str, column: str, sample_by: str, limit: int) -> Iterator[dict]:
    if kind == "parquet":
        if Path(path).suffix.lower() in COMPRESSED:
            raise DataSourceError(f"{path}: parquet compresses its own columns; decompress the file first")
        yield from _read_parquet(path, column, limit)
        return
    if kind in ("jsonl", "json"):
        with open_utf8(path) as f:
            array = starts_json_array(f)
    if kind == "txt" and sample_by == "auto":
        sample_by = _txt_layout(path, limit)
    with open_utf8(path) as f:
        if kind == "txt":
            yield from _read_txt(f, path, sample_by, limit)
        elif kind == "csv":
            yield from _read_csv(f, path, column, limit)
        else:
            yield from _read_json(f, path, column, limit, array)


def _txt_layout(path: str, limit: int) -> str:
    """`txt_sample_by=auto`: a paragraph per record, unless the file's first lines (at least
    LAYOUT_MIN_LINES of them) hold no blank one: then a line per record, and the log says so."""
    seen = 0
    with open_utf8(path) as f:
        for line, _ in lines(f, limit):
            if not isinstance(line, Oversized) and not line.strip():
                return "paragraph"
            seen += 1
            if seen == LAYOUT_LINES:
                break
    if seen < LAYOUT_MIN_LINES:
        return "paragraph"
    log.warning("%s has no blank line in its first %d lines: read one record per line (data.txt_sample_by=auto; "
                "set it to paragraph or line to choose)", path, seen)
    return "line"


def _record(text: str, source: str, row: int) -> dict:
    return {"text": text, "source": source, "row": row, "oversized": 0}


def _oversized(source: str, row: int, size: int) -> dict:
    """A record longer than the limit: counted by its size, its text never read into memory."""
    return {"text": "", "source": source, "row": row, "oversized": size}


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")  # invalid bytes become U+FFFD (normalisation counts them)


def _read_txt(f: BinaryIO, path: str, sample_by: str, limit: int) -> Iterator[dict]:
    if sample_by == "document":
        data = f.read(limit + len(BOM) + 1).removeprefix(BOM)
        if len(data) > limit:  # read past (the stream may be decompressed: no size to ask for)
            yield _oversized(path, 1, len(data) + sum(len(chunk) for chunk in iter(lambda: f.read(CHUNK), b"")))
        else:
            yield _record(_decode(data), path, 1)
        return
    paragraph: list[str] | None = []  # None once the paragraph is past the limit
    start = size = 0
    for number, (line, n) in enumerate(lines(f, limit), start=1):
        text = None if isinstance(line, Oversized) else _decode(line)
        if sample_by == "line":
            if text is None:
                yield _oversized(path, number, n)
            elif text.strip():
                yield _record(text, path, number)
        elif text is None or text.strip():
            start, size = start or number, size + n
            if paragraph is not None and text is not None and size <= limit:
                paragraph.append(text)
            else:
                paragraph = None
        elif start:
            yield _paragraph(paragraph, path, start, size)
            paragraph, start, size = [], 0, 0
    if start:
        yield _paragraph(paragraph, path, start, size)


def _paragraph(lines_: list[str] | None, path: str, start: int, size: int) -> dict:
    return _oversized(path, start, size) if lines_ is None else _record("".join(lines_), path, start)


def _read_json(f: BinaryIO, path: str, column: str, limit: int, array: bool) -> Iterator[dict]:
    if array:  # one JSON array of records, streamed one record at a time
        try:
            for number, (data, size, line) in enumerate(json_array(f, limit, path), start=1):
                if data is None:
                    yield _oversized(path, number, size)
                    continue
                try:
                    record = json.loads(_decode(data))
                except json.JSONDecodeError as err:
                    raise DataSourceError(f"{path}:{line + err.lineno - 1}: record {number} is not valid JSON "
                                          f"({err.msg})") from None
                yield _record(_field(record, column, path, f"record {number}"), path, number)
        except ValueError as err:  # the array's structure is broken
            if isinstance(err, DataSourceError):
                raise
            raise DataSourceError(f"{err}; fix the file or write it as JSON lines") from None
        return
    for number, (line, n) in enumerate(lines(f, limit), start=1):
        if isinstance(line, Oversized):
            yield _oversized(path, number, n)
            continue
        text = _decode(line)
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataSourceError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); "
                                  "fix or remove that line") from None
        yield _record(_field(record, column, path, f"line {number}"), path, number)


def _field(record, column: str, path: str, where: str) -> str:
    if not isinstance(record, dict) or column not in record:
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataSourceError(f"{path} {where} has no column '{column}' (columns: {found}); "
                              "set data.text_column to the column that holds the text")
    value = record[column]
    return value if isinstance(value, str) else "" if value is None else str(value)


def _read_csv(f: BinaryIO, path: str, column: str, limit: int) -> Iterator[dict]:
    # Records are cut at the limit before csv parses them; the field limit is a second guard.
    csv.field_size_limit(max(limit, CSV_FIELD_LIMIT))
    records = csv_records(f, limit)
    header, _, _ = next(records, (b"", 0, 1))
    if header is None:
        raise DataSourceError(f"{path}: the header line is longer than data.max_record_bytes={limit}")
    names = next(csv.reader(io.StringIO(_decode(header), newline="")), [])
    if column not in names:
        raise DataSourceError(f"{path} has no column '{column}' (columns: {names}); "
                              "set data.text_column to the column that holds the text")
    index = names.index(column)
    for data, size, first in records:
        if data is None:
            yield _oversized(path, first, size)
            continue
        reader = csv.reader(io.StringIO(_decode(data), newline=""))
        lines_before = 0  # a record with a stray quote may hold several rows
        for values in reader:
            if values:  # blank lines are no rows
                yield _record(values[index] if index < len(values) else "", path, first + lines_before)
            lines_before = reader.line_num


def _read_parquet(path: str, column: str, limit: int) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:
        raise DataSourceError(f"Could not read {path} as parquet: {type(err).__name__}: {err}") from err
    if column not in parquet.schema_arrow.names:
        raise DataSourceError(f"{path} has no column '{column}' (columns: {parquet.schema_arrow.names}); "
                              "set data.text_column to the column that holds the text")
    row = 0
    # Small batches: Arrow holds one batch; cell sizes are checked there, before any
    # cell becomes a Python string.
    for batch in parquet.iter_batches(columns=[column], batch_size=256):
        cells = batch.column(0)
        if pa.types.is_string(cells.type) or pa.types.is_large_string(cells.type) or pa.types.is_binary(cells.type):
            sizes = pc.fill_null(pc.binary_length(cells), 0)
            cells = pc.if_else(pc.greater(sizes, limit), pa.scalar(None, cells.type), cells)
            sizes = sizes.to_pylist()
        else:
            sizes = [0] * len(cells)
        for text, size in zip(cells.to_pylist(), sizes):
            if size > limit:
                yield _oversized(path, row, size)
            else:
                yield _record(text if isinstance(text, str) else "" if text is None else str(text), path, row)
            row += 1
